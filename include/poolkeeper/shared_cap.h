// A cap on live sessions shared by several pools (all pools of a daemon, or
// all pools of one provider account).
//
// Each core reserves one unit per session from `starting` until it is
// stopped. Pools built on this core run on different threads, so the count is
// atomic; a reservation never overshoots the limit.
#pragma once

#include <atomic>

namespace poolkeeper {

class SharedCap {
 public:
  explicit SharedCap(int limit) : limit_(limit) {}
  SharedCap(const SharedCap&) = delete;
  SharedCap& operator=(const SharedCap&) = delete;

  bool try_reserve() {
    int used = used_.load(std::memory_order_relaxed);
    while (used < limit_) {
      if (used_.compare_exchange_weak(used, used + 1, std::memory_order_acq_rel)) return true;
    }
    return false;
  }
  void release() { used_.fetch_sub(1, std::memory_order_acq_rel); }
  int used() const { return used_.load(std::memory_order_acquire); }
  int limit() const { return limit_; }

 private:
  const int limit_;
  std::atomic<int> used_{0};
};

}  // namespace poolkeeper
