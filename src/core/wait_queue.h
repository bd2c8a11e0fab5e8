// The wait queue of a pool: who is served next, and whose deadline is next.
//
// Order: higher priority first, FIFO within a priority, with aging. A waiter
// of priority p queued at time t sorts as if it were a priority-0 waiter
// queued at t - p * aging. The key is fixed at enqueue time, so the queue is
// an ordinary heap, and a waiter can only be overtaken by requests that
// arrive within (kCriticalPriority - p) * aging after it: its wait is bounded
// whatever the load of higher priorities. With aging off, order is strict
// priority, then FIFO.
//
// Two indexed binary heaps (order and deadline) share the waiter slots, so
// removing any waiter (cancel, timeout) is O(log n) and nothing allocates once
// the slot table has grown.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "poolkeeper/clock.h"

namespace poolkeeper::core {

struct Waiter {
  std::uint64_t id = 0;
  std::int64_t key = 0;          // order key (smaller first)
  std::uint64_t seq = 0;         // tie-break: arrival order
  int priority = 0;
  TimePoint deadline = TimePoint::max();
  TimePoint enqueued_at{};
  Duration lease_timeout{0};
  std::string owner;
  std::string client_session;
  std::uint32_t order_pos = 0;
  std::uint32_t deadline_pos = 0;
  std::uint32_t generation = 0;
  bool active = false;
};

class WaitQueue {
 public:
  // Queues a waiter; returns it (valid until the next push or remove).
  Waiter& push(int priority, TimePoint deadline, TimePoint now, Duration aging);
  Waiter* find(std::uint64_t id);
  void remove(std::uint64_t id);

  bool empty() const { return order_.empty(); }
  std::size_t size() const { return order_.size(); }
  Waiter* front() { return order_.empty() ? nullptr : &slots_[order_[0]]; }
  const Waiter* front() const { return order_.empty() ? nullptr : &slots_[order_[0]]; }
  Waiter* earliest_deadline() { return by_deadline_.empty() ? nullptr : &slots_[by_deadline_[0]]; }
  // Recomputes every waiter's key for a new `aging` (a reloaded config), as
  // if each had been queued with it: keys made with different agings do not
  // compare. O(n).
  void reorder(Duration aging);
  // Waiters ahead of `w` in service order (O(n)).
  int ahead_of(const Waiter& w) const;

  template <class F>
  void for_each(F&& f) {
    for (std::uint32_t slot : order_) f(slots_[slot]);
  }
  template <class F>
  void for_each(F&& f) const {
    for (std::uint32_t slot : order_) f(static_cast<const Waiter&>(slots_[slot]));
  }
  // The waiter that would be served first among those `pred` accepts, or null. O(n).
  template <class Pred>
  Waiter* best_matching(Pred&& pred) {
    Waiter* best = nullptr;
    for (std::uint32_t slot : order_) {
      Waiter& w = slots_[slot];
      if (pred(w) && (best == nullptr || before(w, *best))) best = &w;
    }
    return best;
  }

 private:
  static bool before(const Waiter& a, const Waiter& b) {
    return a.key != b.key ? a.key < b.key : a.seq < b.seq;
  }
  static std::int64_t key_of(int priority, TimePoint enqueued_at, Duration aging) {
    return aging.count() > 0 ? enqueued_at.time_since_epoch().count() -
                                   static_cast<std::int64_t>(priority) * aging.count()
                             : -static_cast<std::int64_t>(priority);
  }
  static bool deadline_before(const Waiter& a, const Waiter& b) {
    return a.deadline != b.deadline ? a.deadline < b.deadline : a.seq < b.seq;
  }
  void order_up(std::uint32_t pos);
  void order_down(std::uint32_t pos);
  void deadline_up(std::uint32_t pos);
  void deadline_down(std::uint32_t pos);

  std::vector<Waiter> slots_;
  std::vector<std::uint32_t> free_;
  std::vector<std::uint32_t> order_;
  std::vector<std::uint32_t> by_deadline_;
  std::uint64_t next_seq_ = 0;
};

}  // namespace poolkeeper::core
