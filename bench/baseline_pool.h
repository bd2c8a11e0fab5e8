// BaselinePool<T>: the plain object pool Pool<T> is measured against.
//
// A vector of free objects under one mutex, a condition variable for waiters,
// and nothing else: no sizing rules, no priorities, no health, no timeouts
// beyond the acquire deadline. It is what a careful programmer would write in
// an afternoon, so the benchmark shows what Pool<T>'s features cost on the
// hot path. It is a stand-alone reference, not part of the library, so it
// reads std::chrono::steady_clock directly.
//
// Thread-safety: acquire() and release (via the Lease) may be called from any
// thread. The pool must outlive every lease it hands out.
//
//   poolkeeper::bench::BaselinePool<Conn> pool(4, [] { return Conn::open("db"); });
//   if (auto lease = pool.acquire(std::chrono::seconds(1))) {
//     (*lease)->query("select 1");  // pushed back when `lease` goes out of scope
//   }
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace poolkeeper::bench {

template <class T>
class BaselinePool {
 public:
  // One exclusive hold on one object; pushes it back on destruction.
  class Lease {
   public:
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), object_(std::move(other.object_)) {}
    Lease& operator=(Lease&& other) noexcept {
      if (this != &other) {
        release();
        pool_ = std::exchange(other.pool_, nullptr);
        object_ = std::move(other.object_);
      }
      return *this;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }

    T& operator*() const { return *object_; }
    T* operator->() const { return object_.get(); }

    void release() {
      if (pool_ != nullptr) std::exchange(pool_, nullptr)->put_back(std::move(object_));
    }

   private:
    friend class BaselinePool;
    Lease(BaselinePool* pool, std::unique_ptr<T> object)
        : pool_(pool), object_(std::move(object)) {}

    BaselinePool* pool_;
    std::unique_ptr<T> object_;
  };

  // Makes `size` objects with `make` (a callable returning T) up front.
  template <class Make>
  BaselinePool(std::size_t size, Make&& make) {
    free_.reserve(size);
    for (std::size_t i = 0; i < size; ++i) free_.push_back(std::make_unique<T>(make()));
  }
  BaselinePool(const BaselinePool&) = delete;
  BaselinePool& operator=(const BaselinePool&) = delete;

  // Waits until an object is free or `timeout` passes (std::nullopt).
  std::optional<Lease> acquire(std::chrono::nanoseconds timeout) {
    std::unique_lock lock(mutex_);
    if (free_.empty()) {
      const auto deadline = std::chrono::steady_clock::now() + timeout;
      ++waiting_;
      const bool got =
          available_.wait_until(lock, deadline, [this] { return !free_.empty(); });
      --waiting_;
      if (!got) return std::nullopt;
    }
    std::unique_ptr<T> object = std::move(free_.back());
    free_.pop_back();
    return Lease(this, std::move(object));
  }

 private:
  void put_back(std::unique_ptr<T> object) {
    bool wake;
    {
      std::lock_guard lock(mutex_);
      free_.push_back(std::move(object));
      wake = waiting_ > 0;
    }
    // Notify outside the lock so the woken thread does not block on it at
    // once; skip the call entirely when nobody waits.
    if (wake) available_.notify_one();
  }

  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<std::unique_ptr<T>> free_;  // guarded by mutex_
  int waiting_ = 0;                        // guarded by mutex_
};

}  // namespace poolkeeper::bench
