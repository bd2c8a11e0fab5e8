#include "core/wait_queue.h"

#include <utility>

namespace poolkeeper::core {

Waiter& WaitQueue::push(int priority, TimePoint deadline, TimePoint now, Duration aging) {
  std::uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  Waiter& w = slots_[slot];
  ++w.generation;
  w.id = (static_cast<std::uint64_t>(w.generation) << 32) | slot;
  w.seq = next_seq_++;
  w.priority = priority;
  w.deadline = deadline;
  w.enqueued_at = now;
  w.key = key_of(priority, now, aging);
  w.lease_timeout = Duration{0};
  w.owner.clear();
  w.client_session.clear();
  w.active = true;
  w.order_pos = static_cast<std::uint32_t>(order_.size());
  order_.push_back(slot);
  order_up(w.order_pos);
  w.deadline_pos = static_cast<std::uint32_t>(by_deadline_.size());
  by_deadline_.push_back(slot);
  deadline_up(w.deadline_pos);
  return w;
}

void WaitQueue::reorder(Duration aging) {
  for (std::uint32_t slot : order_) {
    Waiter& w = slots_[slot];
    w.key = key_of(w.priority, w.enqueued_at, aging);
  }
  // Heapify bottom-up; order_down keeps every waiter's order_pos current.
  for (std::size_t pos = order_.size() / 2; pos-- > 0;) order_down(static_cast<std::uint32_t>(pos));
}

Waiter* WaitQueue::find(std::uint64_t id) {
  const auto slot = static_cast<std::uint32_t>(id & 0xffffffffu);
  if (slot >= slots_.size()) return nullptr;
  Waiter& w = slots_[slot];
  return (w.active && w.id == id) ? &w : nullptr;
}

void WaitQueue::remove(std::uint64_t id) {
  Waiter* w = find(id);
  if (w == nullptr) return;
  const auto slot = static_cast<std::uint32_t>(id & 0xffffffffu);
  w->active = false;

  std::uint32_t pos = w->order_pos;
  std::uint32_t last = order_.back();
  order_.pop_back();
  if (last != slot) {
    order_[pos] = last;
    slots_[last].order_pos = pos;
    order_up(pos);
    order_down(slots_[last].order_pos);
  }

  pos = w->deadline_pos;
  last = by_deadline_.back();
  by_deadline_.pop_back();
  if (last != slot) {
    by_deadline_[pos] = last;
    slots_[last].deadline_pos = pos;
    deadline_up(pos);
    deadline_down(slots_[last].deadline_pos);
  }
  w->owner.clear();
  w->client_session.clear();
  free_.push_back(slot);
}

int WaitQueue::ahead_of(const Waiter& w) const {
  int n = 0;
  for (std::uint32_t slot : order_) {
    if (before(slots_[slot], w)) ++n;
  }
  return n;
}

void WaitQueue::order_up(std::uint32_t pos) {
  while (pos > 0) {
    const std::uint32_t parent = (pos - 1) / 2;
    if (!before(slots_[order_[pos]], slots_[order_[parent]])) break;
    std::swap(order_[pos], order_[parent]);
    slots_[order_[pos]].order_pos = pos;
    slots_[order_[parent]].order_pos = parent;
    pos = parent;
  }
}

void WaitQueue::order_down(std::uint32_t pos) {
  const auto n = static_cast<std::uint32_t>(order_.size());
  for (;;) {
    std::uint32_t best = pos;
    const std::uint32_t l = 2 * pos + 1;
    const std::uint32_t r = l + 1;
    if (l < n && before(slots_[order_[l]], slots_[order_[best]])) best = l;
    if (r < n && before(slots_[order_[r]], slots_[order_[best]])) best = r;
    if (best == pos) return;
    std::swap(order_[pos], order_[best]);
    slots_[order_[pos]].order_pos = pos;
    slots_[order_[best]].order_pos = best;
    pos = best;
  }
}

void WaitQueue::deadline_up(std::uint32_t pos) {
  while (pos > 0) {
    const std::uint32_t parent = (pos - 1) / 2;
    if (!deadline_before(slots_[by_deadline_[pos]], slots_[by_deadline_[parent]])) break;
    std::swap(by_deadline_[pos], by_deadline_[parent]);
    slots_[by_deadline_[pos]].deadline_pos = pos;
    slots_[by_deadline_[parent]].deadline_pos = parent;
    pos = parent;
  }
}

void WaitQueue::deadline_down(std::uint32_t pos) {
  const auto n = static_cast<std::uint32_t>(by_deadline_.size());
  for (;;) {
    std::uint32_t best = pos;
    const std::uint32_t l = 2 * pos + 1;
    const std::uint32_t r = l + 1;
    if (l < n && deadline_before(slots_[by_deadline_[l]], slots_[by_deadline_[best]])) best = l;
    if (r < n && deadline_before(slots_[by_deadline_[r]], slots_[by_deadline_[best]])) best = r;
    if (best == pos) return;
    std::swap(by_deadline_[pos], by_deadline_[best]);
    slots_[by_deadline_[pos]].deadline_pos = pos;
    slots_[by_deadline_[best]].deadline_pos = best;
    pos = best;
  }
}

}  // namespace poolkeeper::core
