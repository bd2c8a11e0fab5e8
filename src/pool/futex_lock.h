// A small mutex for the pool's lock: one atomic exchange to lock and one to
// unlock when uncontended (lighter than a general-purpose pthread mutex), a
// short spin when contended (critical sections are tens of nanoseconds), then
// parking on a futex. The three-state design is Drepper's "Futexes Are
// Tricky", mutex 2.
//
// Thread-safety: a BasicLockable for any thread; not recursive.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace poolkeeper::detail {

class FutexLock {
 public:
  void lock() {
    std::uint32_t expected = kFree;
    if (state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
      return;
    }
    lock_slow();
  }

  bool try_lock() {
    std::uint32_t expected = kFree;
    return state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() {
    if (state_.exchange(kFree, std::memory_order_release) == kContended) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAKE_PRIVATE, 1,
              nullptr, nullptr, 0);
    }
  }

 private:
  static constexpr std::uint32_t kFree = 0;
  static constexpr std::uint32_t kLocked = 1;
  static constexpr std::uint32_t kContended = 2;

  void lock_slow() {
    for (int i = 0; i < 64; ++i) {
      __builtin_ia32_pause();
      if (state_.load(std::memory_order_relaxed) == kFree) {
        std::uint32_t expected = kFree;
        if (state_.compare_exchange_weak(expected, kLocked, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
          return;
        }
      }
    }
    // Mark contended; whoever unlocks then wakes one sleeper.
    while (state_.exchange(kContended, std::memory_order_acquire) != kFree) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAIT_PRIVATE,
              kContended, nullptr, nullptr, 0);
    }
  }

  std::atomic<std::uint32_t> state_{kFree};
};

}  // namespace poolkeeper::detail
