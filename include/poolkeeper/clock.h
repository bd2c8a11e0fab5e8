// Time for poolkeeper: one Clock interface, injected everywhere.
//
// Rules (timeouts, deadlines, lifetimes) use the monotonic `now()`; the
// ledger and logs use `wall_now()`. Only the real clock returned by
// `real_clock()` reads the system clocks; tests use a manual clock.
//
// Thread-safety: `real_clock()` may be used from any thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace poolkeeper {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::time_point<std::chrono::steady_clock, Duration>;
using WallTime = std::chrono::time_point<std::chrono::system_clock, Duration>;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint now() const = 0;
  virtual WallTime wall_now() const = 0;
  // A cheap reading for hot paths: never later than now() at the call, and
  // usually within a clock tick (a few milliseconds) of it, though a late
  // tick on a busy host can make it lag further. Good for time stamps whose
  // lateness is harmless (idle since, last used); a deadline a caller waits
  // on must start from now(). The default is now().
  virtual TimePoint coarse_now() const { return now(); }
};

// The process-wide real clock (steady_clock and system_clock).
Clock& real_clock();

// The real clock's wall time as UNIX milliseconds: what the ledger, the
// store and the alerts record.
std::int64_t wall_ms();

// The deadline `timeout` after `now`: `now` for a timeout of zero or less
// (try once), TimePoint::max() when the sum would overflow (wait forever).
inline TimePoint deadline_after(TimePoint now, Duration timeout) {
  if (timeout.count() <= 0) return now;
  if (timeout > TimePoint::max() - now) return TimePoint::max();
  return now + timeout;
}

}  // namespace poolkeeper
