#include "core/wait_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace poolkeeper::core {
namespace {

using std::chrono::seconds;

constexpr TimePoint kT0{std::chrono::hours(1)};
constexpr TimePoint kNever = TimePoint::max();

// Pops the whole queue in service order.
std::vector<std::uint64_t> drain_order(WaitQueue& q) {
  std::vector<std::uint64_t> ids;
  while (Waiter* w = q.front()) {
    ids.push_back(w->id);
    q.remove(w->id);
  }
  return ids;
}

class WaitQueueTest : public ::testing::Test {
 protected:
  WaitQueue q_;
};

// Verifies that a new queue is empty and has no front or earliest deadline.
TEST_F(WaitQueueTest, StartsEmpty) {
  EXPECT_TRUE(q_.empty());
  EXPECT_EQ(q_.size(), 0u);
  EXPECT_EQ(q_.front(), nullptr);
  EXPECT_EQ(q_.earliest_deadline(), nullptr);
}

// Verifies that with aging off, higher priorities are served first and FIFO within a priority.
TEST_F(WaitQueueTest, ServesHigherPriorityFirstThenFifoWithoutAging) {
  const auto low1 = q_.push(2, kNever, kT0, Duration{0}).id;
  const auto high1 = q_.push(7, kNever, kT0 + seconds(1), Duration{0}).id;
  const auto low2 = q_.push(2, kNever, kT0 + seconds(2), Duration{0}).id;
  const auto crit = q_.push(9, kNever, kT0 + seconds(3), Duration{0}).id;
  const auto high2 = q_.push(7, kNever, kT0 + seconds(4), Duration{0}).id;
  const auto low3 = q_.push(2, kNever, kT0 + seconds(5), Duration{0}).id;
  EXPECT_EQ(q_.size(), 6u);
  EXPECT_EQ(drain_order(q_), (std::vector<std::uint64_t>{crit, high1, high2, low1, low2, low3}));
  EXPECT_TRUE(q_.empty());
}

// Verifies that waiters pushed at the same instant with the same priority keep arrival order.
TEST_F(WaitQueueTest, KeepsArrivalOrderForEqualKeys) {
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(q_.push(5, kNever, kT0, seconds(1)).id);
  EXPECT_EQ(drain_order(q_), ids);
}

// Verifies that with aging, a priority-p waiter is overtaken only by arrivals within (9-p)*aging.
TEST_F(WaitQueueTest, AgingBoundsOvertakingOfLowPriority) {
  const Duration aging = seconds(1);
  const auto low = q_.push(0, kNever, kT0, aging).id;
  // A critical request 5 s later sorts as if queued at t0 - 4 s: it overtakes.
  const auto early_crit = q_.push(9, kNever, kT0 + seconds(5), aging).id;
  // A critical request 10 s later sorts as if queued at t0 + 1 s: it does not.
  const auto late_crit = q_.push(9, kNever, kT0 + seconds(10), aging).id;
  EXPECT_EQ(drain_order(q_), (std::vector<std::uint64_t>{early_crit, low, late_crit}));
}

// Verifies the aging key formula: priority p at t sorts as priority 0 at t - p*aging.
TEST_F(WaitQueueTest, AgingKeyEquatesPriorityWithWaitingTime) {
  const Duration aging = std::chrono::milliseconds(500);
  Waiter& a = q_.push(4, kNever, kT0 + seconds(2), aging);
  EXPECT_EQ(a.key, (kT0 + seconds(2) - 4 * aging).time_since_epoch().count());
  const auto a_id = a.id;
  // A priority-0 waiter queued 2 s earlier has the same key; the tie goes to arrival order.
  const auto b_id = q_.push(0, kNever, kT0, aging).id;
  EXPECT_EQ(drain_order(q_), (std::vector<std::uint64_t>{a_id, b_id}));
}

// Verifies that ids are unique, found while queued, and not found after removal.
TEST_F(WaitQueueTest, FindsOnlyActiveWaiters) {
  std::set<std::uint64_t> ids;
  for (int i = 0; i < 10; ++i) ids.insert(q_.push(i % 10, kNever, kT0, Duration{0}).id);
  EXPECT_EQ(ids.size(), 10u);
  const std::uint64_t victim = *std::next(ids.begin(), 3);
  ASSERT_NE(q_.find(victim), nullptr);
  EXPECT_EQ(q_.find(victim)->id, victim);
  q_.remove(victim);
  EXPECT_EQ(q_.find(victim), nullptr);
  EXPECT_EQ(q_.size(), 9u);
  // Removing twice is harmless.
  q_.remove(victim);
  EXPECT_EQ(q_.size(), 9u);
  EXPECT_EQ(q_.find(0xdeadbeef12345678ULL), nullptr);
}

// Verifies that a reused slot gets a new id, and the old id stays unknown.
TEST_F(WaitQueueTest, NeverReusesAnIdWhenASlotIsReused) {
  const auto first = q_.push(5, kNever, kT0, Duration{0}).id;
  q_.remove(first);
  const auto second = q_.push(5, kNever, kT0, Duration{0}).id;
  EXPECT_NE(first, second);
  EXPECT_EQ(q_.find(first), nullptr);
  ASSERT_NE(q_.find(second), nullptr);
  std::set<std::uint64_t> seen{first, second};
  for (int i = 0; i < 100; ++i) {
    const auto id = q_.push(5, kNever, kT0, Duration{0}).id;
    EXPECT_TRUE(seen.insert(id).second) << "id " << id << " issued twice";
    q_.remove(id);
  }
}

// Verifies that the earliest deadline is tracked through pushes and removals.
TEST_F(WaitQueueTest, TracksEarliestDeadline) {
  const auto a = q_.push(5, kT0 + seconds(30), kT0, Duration{0}).id;
  const auto b = q_.push(9, kT0 + seconds(10), kT0, Duration{0}).id;
  const auto c = q_.push(1, kT0 + seconds(20), kT0, Duration{0}).id;
  q_.push(1, kNever, kT0, Duration{0});
  ASSERT_NE(q_.earliest_deadline(), nullptr);
  EXPECT_EQ(q_.earliest_deadline()->id, b);
  q_.remove(b);
  EXPECT_EQ(q_.earliest_deadline()->id, c);
  q_.remove(c);
  EXPECT_EQ(q_.earliest_deadline()->id, a);
  q_.remove(a);
  EXPECT_EQ(q_.earliest_deadline()->deadline, kNever);
}

// Verifies that ahead_of counts the waiters served before a given one.
TEST_F(WaitQueueTest, CountsWaitersAhead) {
  const auto p5a = q_.push(5, kNever, kT0, Duration{0}).id;
  const auto p9 = q_.push(9, kNever, kT0, Duration{0}).id;
  const auto p5b = q_.push(5, kNever, kT0, Duration{0}).id;
  const auto p1 = q_.push(1, kNever, kT0, Duration{0}).id;
  EXPECT_EQ(q_.ahead_of(*q_.find(p9)), 0);
  EXPECT_EQ(q_.ahead_of(*q_.find(p5a)), 1);
  EXPECT_EQ(q_.ahead_of(*q_.find(p5b)), 2);
  EXPECT_EQ(q_.ahead_of(*q_.find(p1)), 3);
}

// Verifies that best_matching returns the first in service order among accepted waiters.
TEST_F(WaitQueueTest, BestMatchingRespectsServiceOrder) {
  Waiter& a = q_.push(3, kNever, kT0, Duration{0});
  a.owner = "alice";
  const auto a_id = a.id;
  Waiter& b = q_.push(7, kNever, kT0, Duration{0});
  b.owner = "bob";
  Waiter& c = q_.push(5, kNever, kT0, Duration{0});
  c.owner = "alice";
  const auto c_id = c.id;
  Waiter* best = q_.best_matching([](const Waiter& w) { return w.owner == "alice"; });
  ASSERT_NE(best, nullptr);
  EXPECT_EQ(best->id, c_id);
  q_.remove(c_id);
  best = q_.best_matching([](const Waiter& w) { return w.owner == "alice"; });
  ASSERT_NE(best, nullptr);
  EXPECT_EQ(best->id, a_id);
  EXPECT_EQ(q_.best_matching([](const Waiter& w) { return w.owner == "carol"; }), nullptr);
}

// Verifies that a pushed waiter starts with cleared owner, client session and lease timeout.
TEST_F(WaitQueueTest, ReusedSlotStartsClean) {
  Waiter& a = q_.push(5, kNever, kT0, Duration{0});
  a.owner = "alice";
  a.client_session = "c1";
  a.lease_timeout = seconds(3);
  q_.remove(a.id);
  Waiter& b = q_.push(2, kT0 + seconds(1), kT0 + seconds(1), Duration{0});
  EXPECT_TRUE(b.owner.empty());
  EXPECT_TRUE(b.client_session.empty());
  EXPECT_EQ(b.lease_timeout, Duration{0});
  EXPECT_EQ(b.priority, 2);
  EXPECT_EQ(b.deadline, kT0 + seconds(1));
  EXPECT_EQ(b.enqueued_at, kT0 + seconds(1));
}

// Verifies both heaps against a reference model under random pushes and removals.
TEST_F(WaitQueueTest, MatchesReferenceModelUnderRandomOperations) {
  const std::uint64_t seed = 20240611;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  struct Ref {
    std::uint64_t id;
    std::int64_t key;
    std::uint64_t seq;
    TimePoint deadline;
  };
  std::vector<Ref> model;
  std::uint64_t seq = 0;
  const Duration aging = seconds(1);
  TimePoint now = kT0;
  for (int step = 0; step < 5000; ++step) {
    now += std::chrono::milliseconds(rng() % 700);
    const int op = static_cast<int>(rng() % 10);
    if (op < 5 || model.empty()) {
      const int p = static_cast<int>(rng() % 10);
      const TimePoint deadline = now + std::chrono::milliseconds(rng() % 20000);
      Waiter& w = q_.push(p, deadline, now, aging);
      model.push_back({w.id, w.key, seq++, deadline});
    } else if (op < 8) {
      const std::size_t i = rng() % model.size();
      q_.remove(model[i].id);
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      // pop the front and compare it with the model's minimum
      auto best = std::min_element(model.begin(), model.end(), [](const Ref& a, const Ref& b) {
        return a.key != b.key ? a.key < b.key : a.seq < b.seq;
      });
      ASSERT_NE(q_.front(), nullptr);
      ASSERT_EQ(q_.front()->id, best->id) << "step " << step;
      q_.remove(best->id);
      model.erase(best);
    }
    ASSERT_EQ(q_.size(), model.size());
    if (!model.empty()) {
      auto soonest = std::min_element(model.begin(), model.end(), [](const Ref& a, const Ref& b) {
        return a.deadline != b.deadline ? a.deadline < b.deadline : a.seq < b.seq;
      });
      ASSERT_NE(q_.earliest_deadline(), nullptr);
      ASSERT_EQ(q_.earliest_deadline()->id, soonest->id) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace poolkeeper::core
