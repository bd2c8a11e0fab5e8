// A Clock that only moves when a test advances it.
//
// Thread-safety: now() and advance() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>

#include "poolkeeper/clock.h"

namespace poolkeeper::testing {

class ManualClock final : public Clock {
 public:
  explicit ManualClock(TimePoint start = TimePoint{std::chrono::hours(1)}) : now_(start.time_since_epoch().count()) {}

  TimePoint now() const override { return TimePoint{Duration{now_.load(std::memory_order_acquire)}}; }
  WallTime wall_now() const override {
    return WallTime{std::chrono::hours(24 * 365 * 56)} + Duration{now_.load(std::memory_order_acquire)};
  }
  void advance(Duration d) { now_.fetch_add(d.count(), std::memory_order_acq_rel); }
  void set(TimePoint t) { now_.store(t.time_since_epoch().count(), std::memory_order_release); }

 private:
  std::atomic<Duration::rep> now_;
};

}  // namespace poolkeeper::testing
