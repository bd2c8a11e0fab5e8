// A small mutex for the pool's lock: one compare-exchange to lock and one
// exchange to unlock when uncontended (lighter than a general-purpose pthread
// mutex), parking on a futex when contended. The three-state design is
// Drepper's "Futexes Are Tricky", mutex 2.
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

  // No spinning: on this class of virtual machine, PAUSE-based spinning made
  // contended cycles several times slower (the hypervisor traps PAUSE loops).
  void lock_slow() {
    // Mark contended; whoever unlocks then wakes one sleeper.
    while (state_.exchange(kContended, std::memory_order_acquire) != kFree) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAIT_PRIVATE,
              kContended, nullptr, nullptr, 0);
    }
  }

  std::atomic<std::uint32_t> state_{kFree};
};

}  // namespace poolkeeper::detail
