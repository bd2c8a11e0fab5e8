// Waiting on conditions in tests that use real threads and the real clock.
//
// Multi-threaded tests never sleep for a fixed time: they poll a condition
// until it holds or a generous deadline passes, yielding in between. On a
// loaded machine the condition simply takes longer; the deadline only bounds
// how long a real failure takes to report.
//
// Thread-safety: free functions; `pred` is called from the calling thread only.
//
//   ASSERT_TRUE(poolkeeper::testing::wait_until(
//       [&] { return pool->stats().queue_length == 2; }, poolkeeper::testing::kLongWait));
#pragma once

#include <chrono>
#include <thread>

#include "poolkeeper/clock.h"

namespace poolkeeper::testing {

// How long a test waits for something that should happen "soon".
inline constexpr Duration kLongWait = std::chrono::seconds(10);

// The monotonic time of the real clock.
inline TimePoint real_now() { return real_clock().now(); }

// Polls `pred` until it returns true (true) or `timeout` passes (false). The
// predicate is checked once more after the deadline, so a condition that
// became true just before it is not missed.
template <class Pred>
bool wait_until(Pred&& pred, Duration timeout = kLongWait) {
  const TimePoint deadline = real_now() + timeout;
  int spins = 0;
  while (real_now() < deadline) {
    if (pred()) return true;
    // Yield first (cheap, fast reaction); back off to short naps so a waiting
    // test does not steal a core from the threads it waits for.
    if (++spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  return pred();
}

// Time elapsed since `start` on the real clock.
inline Duration elapsed_since(TimePoint start) { return real_now() - start; }

}  // namespace poolkeeper::testing
