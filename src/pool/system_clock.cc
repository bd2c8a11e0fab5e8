#include <time.h>

#include <chrono>

#include "poolkeeper/clock.h"

namespace poolkeeper {
namespace {

class RealClock final : public Clock {
 public:
  TimePoint now() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::steady_clock::now());
  }
  WallTime wall_now() const override {
    return std::chrono::time_point_cast<Duration>(std::chrono::system_clock::now());
  }
  // CLOCK_MONOTONIC_COARSE is the monotonic clock as of the last timer tick,
  // read without touching the clock source: never ahead of now(). (Adding the
  // tick length does not make it an upper bound: a tick can come late.)
  TimePoint coarse_now() const override {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return TimePoint{std::chrono::seconds(ts.tv_sec) + Duration(ts.tv_nsec)};
  }
};

}  // namespace

Clock& real_clock() {
  static RealClock clock;
  return clock;
}

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(real_clock().wall_now().time_since_epoch()).count();
}

}  // namespace poolkeeper
