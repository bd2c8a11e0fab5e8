// A Pool<T> factory for tests that counts every call and can be told to fail.
//
// `Widget` is the pooled object: an id, a `scratch` field tests write to (so
// ASan sees a use-after-free if the pool destroyed an object still leased),
// and an in-use flag that multi-threaded tests set while they hold the
// object, to prove no object is ever held by two threads at once. The
// factory's counters are shared (shared_ptr) with the pool's callbacks and
// with every Widget, so they stay valid however long the pool's worker
// threads or outstanding leases live.
//
// Thread-safety: all counters and switches are atomics; `destroyed_ids()`
// takes a lock. Safe from the pool's worker threads and the test's threads.
//
//   auto counters = std::make_shared<FactoryCounters>();
//   auto pool = Pool<Widget>::create(config, counting_factory(counters)).value();
//   counters->fail_next_creates(3);   // the next three creates fail
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <expected>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "poolkeeper/error.h"
#include "poolkeeper/pool.h"
#include "testing/wait.h"

namespace poolkeeper {

// Lets GoogleTest print error codes by name ("acquire_timeout").
inline void PrintTo(ErrorCode code, std::ostream* os) { *os << to_string(code); }

namespace testing {

// How failing creates fail.
enum class CreateFailure : int {
  kNone = 0,
  kThrow = 1,        // create throws std::runtime_error
  kReturnError = 2,  // create returns an error string
  kAlternate = 3,    // odd failures throw, even ones return an error
};

struct FactoryCounters {
  // calls
  std::atomic<int> create_calls{0};
  std::atomic<int> created{0};          // creates that returned an object
  std::atomic<int> create_failures{0};  // creates that threw or returned an error
  std::atomic<int> destroyed{0};        // destroy callbacks
  std::atomic<int> validations{0};
  std::atomic<int> resets{0};
  std::atomic<int> live{0};             // Widgets alive (made and not yet deleted)
  std::atomic<int> destroyed_while_in_use{0};
  std::atomic<int> next_id{1};

  // switches
  std::atomic<int> failure_mode{static_cast<int>(CreateFailure::kAlternate)};
  std::atomic<bool> fail_all_creates{false};  // every create fails (with failure_mode)
  std::atomic<int> fail_creates_left{0};      // this many creates fail, then they succeed
  std::atomic<int> fail_every_nth_create{0};  // >0: create call n fails when n % this == 0
  std::atomic<bool> validate_result{true};
  std::atomic<int> reset_failures_left{0};    // this many resets return false
  // destroy of the object with this id (0: none) blocks until the gate opens
  // (or kLongWait passes); `destroy_blocked` tells it has started.
  std::atomic<int> block_destroy_of{0};
  std::atomic<bool> destroy_blocked{false};
  std::atomic<bool> destroy_gate_open{false};

  void fail_next_creates(int n) { fail_creates_left.store(n, std::memory_order_release); }

  void record_destroyed(int id) {
    std::lock_guard lock(mutex_);
    destroyed_ids_.push_back(id);
  }
  std::vector<int> destroyed_ids() const {
    std::lock_guard lock(mutex_);
    return destroyed_ids_;
  }
  bool was_destroyed(int id) const {
    std::lock_guard lock(mutex_);
    return std::find(destroyed_ids_.begin(), destroyed_ids_.end(), id) != destroyed_ids_.end();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<int> destroyed_ids_;  // guarded by mutex_
};

// Takes one from `counter` if it is positive.
inline bool take_one(std::atomic<int>& counter) {
  int left = counter.load(std::memory_order_acquire);
  while (left > 0) {
    if (counter.compare_exchange_weak(left, left - 1, std::memory_order_acq_rel)) return true;
  }
  return false;
}

// Decrements FactoryCounters::live when a (not moved-from) Widget dies.
class LiveToken {
 public:
  LiveToken() = default;
  explicit LiveToken(std::shared_ptr<FactoryCounters> counters) : counters_(std::move(counters)) {}
  LiveToken(LiveToken&&) noexcept = default;
  LiveToken& operator=(LiveToken&& other) noexcept {
    if (this != &other) {
      drop();
      counters_ = std::move(other.counters_);
    }
    return *this;
  }
  ~LiveToken() { drop(); }

 private:
  void drop() {
    if (counters_) counters_->live.fetch_sub(1, std::memory_order_acq_rel);
    counters_.reset();
  }

  std::shared_ptr<FactoryCounters> counters_;
};

struct Widget {
  int id = 0;
  std::int64_t scratch = 0;
  std::unique_ptr<std::atomic<bool>> in_use = std::make_unique<std::atomic<bool>>(false);
  LiveToken token;

  // Marks the object held by the calling thread; false if someone else holds it.
  bool hold() { return !in_use->exchange(true, std::memory_order_acq_rel); }
  void unhold() { in_use->store(false, std::memory_order_release); }
};

inline constexpr const char* kCreateErrorText = "create failed: db down";
inline constexpr const char* kCreateThrowText = "create threw: db down";

inline Factory<Widget> counting_factory(std::shared_ptr<FactoryCounters> counters) {
  Factory<Widget> factory;
  factory.create = [c = counters]() -> std::expected<Widget, std::string> {
    const int call = c->create_calls.fetch_add(1, std::memory_order_acq_rel) + 1;
    const int nth = c->fail_every_nth_create.load(std::memory_order_acquire);
    const bool fail = c->fail_all_creates.load(std::memory_order_acquire) ||
                      take_one(c->fail_creates_left) || (nth > 0 && call % nth == 0);
    if (fail) {
      const int failure = c->create_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
      auto mode = static_cast<CreateFailure>(c->failure_mode.load(std::memory_order_acquire));
      if (mode == CreateFailure::kAlternate) {
        mode = failure % 2 == 1 ? CreateFailure::kThrow : CreateFailure::kReturnError;
      }
      if (mode == CreateFailure::kThrow) throw std::runtime_error(kCreateThrowText);
      return std::unexpected(std::string(kCreateErrorText));
    }
    Widget w;
    w.id = c->next_id.fetch_add(1, std::memory_order_acq_rel);
    c->live.fetch_add(1, std::memory_order_acq_rel);
    w.token = LiveToken(c);
    c->created.fetch_add(1, std::memory_order_acq_rel);
    return w;
  };
  factory.validate = [c = counters](Widget&) {
    c->validations.fetch_add(1, std::memory_order_acq_rel);
    return c->validate_result.load(std::memory_order_acquire);
  };
  factory.reset = [c = counters](Widget&) {
    c->resets.fetch_add(1, std::memory_order_acq_rel);
    return !take_one(c->reset_failures_left);
  };
  factory.destroy = [c = counters](Widget& w) {
    if (w.in_use->load(std::memory_order_acquire)) {
      c->destroyed_while_in_use.fetch_add(1, std::memory_order_acq_rel);
    }
    if (w.id != 0 && w.id == c->block_destroy_of.load(std::memory_order_acquire)) {
      c->destroy_blocked.store(true, std::memory_order_release);
      wait_until([&] { return c->destroy_gate_open.load(std::memory_order_acquire); });
    }
    c->record_destroyed(w.id);
    c->destroyed.fetch_add(1, std::memory_order_acq_rel);
  };
  return factory;
}

// The error code of a failed call, or std::nullopt when it succeeded.
template <class T>
std::optional<ErrorCode> error_code(const std::expected<T, Error>& result) {
  if (result) return std::nullopt;
  return result.error().code;
}

// "ok" or "<code>: <message>", for failure messages.
template <class T>
std::string describe(const std::expected<T, Error>& result) {
  if (result) return "ok";
  return std::string(to_string(result.error().code)) + ": " + result.error().message;
}

}  // namespace testing
}  // namespace poolkeeper
