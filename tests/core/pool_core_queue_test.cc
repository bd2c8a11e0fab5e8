// PoolCore: the wait queue (priority, FIFO, aging, deadlines, cap, cancel, early rejection).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class PoolCoreTest : public CoreHarnessTest {
 protected:
  // Releases `lease` and returns the waiter that got the session (0 when none did).
  WaiterId hand_over(CoreHarness& h, LeaseId lease) {
    const std::size_t before = h.grant_order().size();
    EXPECT_TRUE(h.release(lease).has_value());
    if (h.grant_order().size() != before + 1) return 0;
    return h.grant_order().back();
  }
};

// Verifies that higher priorities are served first, FIFO within a priority.
TEST_F(PoolCoreTest, ServesHigherPriorityFirstThenFifo) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  LeaseId lease = h.lease_now().lease;
  const WaiterId p2 = h.queue({.priority = 2});
  const WaiterId p7a = h.queue({.priority = 7});
  const WaiterId p5 = h.queue({.priority = 5});
  const WaiterId p7b = h.queue({.priority = 7});
  const WaiterId crit = h.queue({.priority = kCriticalPriority});
  for (int i = 0; i < 5; ++i) {
    const WaiterId w = hand_over(h, lease);
    ASSERT_NE(w, 0u);
    lease = h.granted(w).lease;
  }
  EXPECT_THAT(h.grant_order(), ElementsAre(crit, p7a, p7b, p5, p2));
}

// Verifies that priorities outside 0..9 are refused with kInvalidArgument.
TEST_F(PoolCoreTest, RefusesPriorityOutsideRange) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  for (int p : {-1, 10}) {
    auto r = h.acquire({.priority = p});
    ASSERT_FALSE(r.has_value()) << p;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << p;
  }
  EXPECT_NE(h.lease_now({.priority = kLowestPriority}).lease, 0u);
}

// Verifies that a queued acquire reports its position (waiters ahead + 1).
TEST_F(PoolCoreTest, ReportsQueuePosition) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.lease_now();
  auto a = h.acquire({.priority = 5});
  auto b = h.acquire({.priority = 5});
  auto c = h.acquire({.priority = 9});
  auto d = h.acquire({.priority = 1});
  ASSERT_TRUE(a && b && c && d);
  EXPECT_EQ(a->queue_position, 1);
  EXPECT_EQ(b->queue_position, 2);
  EXPECT_EQ(c->queue_position, 1);
  EXPECT_EQ(d->queue_position, 4);
}

// Verifies that with aging a low priority is overtaken only by arrivals within (9-p)*aging.
TEST_F(PoolCoreTest, AgingLetsOnlyRecentArrivalsOvertake) {
  PoolConfig c = quiet_config(1, 1);
  c.aging = seconds(1);
  CoreHarness& h = make_started(c);
  LeaseId lease = h.lease_now().lease;
  const WaiterId low = h.queue({.priority = 0});
  h.advance(seconds(5));
  const WaiterId early_crit = h.queue({.priority = 9});
  h.advance(seconds(5));
  const WaiterId late_crit = h.queue({.priority = 9});
  for (int i = 0; i < 3; ++i) {
    const WaiterId w = hand_over(h, lease);
    ASSERT_NE(w, 0u);
    lease = h.granted(w).lease;
  }
  EXPECT_THAT(h.grant_order(), ElementsAre(early_crit, low, late_crit));
}

// Verifies that under a steady stream of critical requests a priority-0 waiter is still served
// within 9 aging steps.
TEST_F(PoolCoreTest, AgingBoundsWaitOfLowPriority) {
  PoolConfig c = quiet_config(1, 1);
  c.aging = seconds(1);
  CoreHarness& h = make_started(c);
  LeaseId lease = h.lease_now().lease;
  const TimePoint t0 = h.now();
  const WaiterId low = h.queue({.priority = 0});
  int overtakers = 0;
  for (int k = 1; k <= 20 && !h.answered(low); ++k) {
    h.advance(seconds(1));
    h.queue({.priority = kCriticalPriority});
    const WaiterId w = hand_over(h, lease);
    ASSERT_NE(w, 0u);
    lease = h.granted(w).lease;
    if (w != low) ++overtakers;
  }
  ASSERT_TRUE(h.grant_of(low).has_value());
  // Arrivals at t0+1 .. t0+8 s sort before it; the one at t0+9 s ties and loses on arrival.
  EXPECT_EQ(overtakers, 8);
  EXPECT_EQ(h.now() - t0, seconds(9));
}

// Verifies that with aging off a low priority waits as long as higher ones keep arriving.
TEST_F(PoolCoreTest, AgingOffGivesStrictPriority) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  LeaseId lease = h.lease_now().lease;
  const WaiterId low = h.queue({.priority = 0});
  for (int k = 1; k <= 20; ++k) {
    h.advance(seconds(1));
    h.queue({.priority = 1});
    const WaiterId w = hand_over(h, lease);
    ASSERT_NE(w, 0u);
    ASSERT_NE(w, low) << "served at step " << k;
    lease = h.granted(w).lease;
  }
  EXPECT_FALSE(h.answered(low));
}

// Verifies that tick rejects a waiter whose deadline passed with kAcquireTimeout, not before.
TEST_F(PoolCoreTest, TimesOutWaiterWhenDeadlinePasses) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.lease_now();
  const TimePoint deadline = h.now() + seconds(5);
  const WaiterId w = h.queue({.deadline = deadline});
  EXPECT_LE(h.core().next_due().time_since_epoch(), deadline.time_since_epoch());
  h.advance(seconds(4));
  EXPECT_FALSE(h.answered(w));
  h.advance(seconds(2));
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kAcquireTimeout);
  EXPECT_EQ(h.events_of(EventType::kWaiterTimedOut).size(), 1u);
  EXPECT_EQ(h.stats().timeouts, 1u);
  EXPECT_EQ(h.core().queue_length(), 0);
}

// Verifies that waiters time out in deadline order, each on the tick after its deadline.
TEST_F(PoolCoreTest, TimesOutEachWaiterAtItsOwnDeadline) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.lease_now();
  const WaiterId w10 = h.queue({.priority = 9, .deadline = h.now() + seconds(10)});
  const WaiterId w3 = h.queue({.priority = 1, .deadline = h.now() + seconds(3)});
  const WaiterId forever = h.queue({.priority = 1});
  h.advance(seconds(4));
  EXPECT_TRUE(h.reject_of(w3).has_value());
  EXPECT_FALSE(h.answered(w10));
  h.advance(seconds(7));
  EXPECT_TRUE(h.reject_of(w10).has_value());
  h.advance(hours(24));
  EXPECT_FALSE(h.answered(forever));
}

// Verifies that an acquire that must wait but whose deadline already passed is refused at once.
TEST_F(PoolCoreTest, RefusesAtOnceWhenDeadlineAlreadyPassed) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.lease_now();
  for (Duration offset : {Duration{0}, Duration{-seconds(1)}}) {
    auto r = h.acquire({.deadline = h.now() + offset});
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, ErrorCode::kAcquireTimeout);
  }
  EXPECT_EQ(h.core().queue_length(), 0);
}

// Verifies that a past deadline does not refuse an acquire that can be granted at once.
TEST_F(PoolCoreTest, PastDeadlineStillGrantsIdleSession) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  auto r = h.acquire({.deadline = h.now()});
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE(r->granted);
}

// Verifies that waiters beyond max_queue are refused with kQueueFull.
TEST_F(PoolCoreTest, RefusesWaitersBeyondMaxQueue) {
  PoolConfig c = quiet_config(1, 1);
  c.max_queue = 2;
  CoreHarness& h = make_started(c);
  h.lease_now();
  const WaiterId a = h.queue();
  h.queue();
  auto full = h.acquire({.priority = kCriticalPriority});
  ASSERT_FALSE(full.has_value());
  EXPECT_EQ(full.error().code, ErrorCode::kQueueFull);
  EXPECT_EQ(h.core().queue_length(), 2);
  ASSERT_TRUE(h.cancel(a).has_value());
  EXPECT_TRUE(h.acquire({}).has_value()) << "room again after a cancel";
}

// Verifies that max_queue 0 refuses every acquire that would have to wait.
TEST_F(PoolCoreTest, MaxQueueZeroRefusesEveryWait) {
  PoolConfig c = quiet_config(1, 1);
  c.max_queue = 0;
  CoreHarness& h = make_started(c);
  EXPECT_NE(h.lease_now().lease, 0u);
  auto r = h.acquire({});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kQueueFull);
}

// Verifies that cancel removes the waiter without emitting an action, and a second cancel
// is kUnknownWaiter.
TEST_F(PoolCoreTest, CancelRemovesWaiterSilently) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.cancel(w).has_value());
  EXPECT_TRUE(h.last().actions.empty());
  EXPECT_EQ(h.core().queue_length(), 0);
  EXPECT_EQ(h.stats().cancellations, 1u);
  ASSERT_TRUE(h.release(g.lease).has_value());
  EXPECT_FALSE(h.answered(w));
  EXPECT_EQ(h.idle(), 1);
  auto again = h.cancel(w);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::kUnknownWaiter);
}

// Verifies that cancelling a waiter that was already granted is kUnknownWaiter.
TEST_F(PoolCoreTest, CancelAfterGrantIsUnknownWaiter) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(g.lease).has_value());
  ASSERT_TRUE(h.grant_of(w).has_value());
  Output out;
  auto r = h.core().cancel(w, h.now(), out);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnknownWaiter);
  EXPECT_EQ(h.core().lease_of(g.session), h.granted(w).lease) << "the grant stands";
}

// Verifies that a cancelled waiter's pending start still serves the next waiter.
TEST_F(PoolCoreTest, CancelledWaitersSessionServesOthers) {
  CoreHarness& h = make(quiet_config(0, 1));
  h.start();
  const WaiterId a = h.queue();
  const WaiterId b = h.queue();
  ASSERT_TRUE(h.cancel(a).has_value());
  h.settle();
  EXPECT_FALSE(h.answered(a));
  EXPECT_TRUE(h.grant_of(b).has_value());
}

// Verifies that after learning hold and start times, an unreachable deadline is refused at
// once with kDeadlineUnreachable and a retry hint, while a reachable one is queued.
TEST_F(PoolCoreTest, RejectsEarlyWhenPredictedWaitExceedsDeadline) {
  PoolConfig c = quiet_config(0, 1);
  c.early_reject = true;
  CoreHarness& h = make(c);
  h.start();
  LeaseId lease = h.lease_after_start(seconds(2)).lease;
  // Each lease is held 10 s.
  for (int i = 0; i < 30; ++i) {
    h.clock.advance(seconds(10));
    ASSERT_TRUE(h.release(lease).has_value());
    lease = h.lease_now().lease;
  }
  auto r = h.acquire_within(milliseconds(100));
  ASSERT_FALSE(r.has_value()) << "queued although a ~10 s wait cannot meet a 100 ms deadline";
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineUnreachable);
  EXPECT_GT(r.error().retry_after, milliseconds(0));
  EXPECT_NE(r.error().message.find("at queue position 1 exceeds the deadline (100 ms away)"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(h.core().queue_length(), 0);
  EXPECT_GE(h.stats().rejections, 1u);

  auto ok = h.acquire_within(hours(1));
  ASSERT_TRUE(ok.has_value()) << ok.error().message;
  EXPECT_FALSE(ok->granted);
  EXPECT_EQ(ok->queue_position, 1);
  EXPECT_GT(ok->estimated_wait, Duration{0});
  h.clock.advance(seconds(1));
  auto second = h.acquire_within(hours(2));
  ASSERT_TRUE(second.has_value()) << second.error().message;
  EXPECT_EQ(second->queue_position, 2);
  EXPECT_GT(second->estimated_wait, ok->estimated_wait);

  // The queue as the API shows it: serving order, waits so far, deadlines, predictions.
  h.clock.advance(seconds(1));
  const auto view = h.core().queue_view(h.clock.now());
  ASSERT_EQ(view.size(), 2u);
  EXPECT_EQ(view[0].position, 1);
  EXPECT_EQ(view[0].waited, seconds(2));
  EXPECT_EQ(view[0].deadline_in, hours(1) - seconds(2));
  EXPECT_EQ(view[0].estimated_wait, ok->estimated_wait);
  EXPECT_EQ(view[1].position, 2);
  EXPECT_EQ(view[1].waited, seconds(1));
  EXPECT_EQ(view[1].estimated_wait, second->estimated_wait);
}

// Verifies that a core that has learned nothing never rejects early.
TEST_F(PoolCoreTest, DoesNotRejectEarlyBeforeLearning) {
  PoolConfig c = quiet_config(1, 1);
  c.early_reject = true;
  CoreHarness& h = make_started(c);
  h.lease_now();
  auto r = h.acquire_within(milliseconds(100));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_FALSE(r->granted);
  h.advance(milliseconds(200));
  ASSERT_TRUE(h.reject_of(r->waiter).has_value());
  EXPECT_EQ(h.rejected(r->waiter).code, ErrorCode::kAcquireTimeout);
}

// Verifies that early_reject = false queues even hopeless requests.
TEST_F(PoolCoreTest, EarlyRejectOffQueuesHopelessRequests) {
  PoolConfig c = quiet_config(1, 1);
  CoreHarness& h = make_started(c);
  LeaseId lease = h.lease_now().lease;
  for (int i = 0; i < 30; ++i) {
    h.clock.advance(seconds(10));
    ASSERT_TRUE(h.release(lease).has_value());
    lease = h.lease_now().lease;
  }
  auto r = h.acquire_within(milliseconds(100));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_FALSE(r->granted);
}

// Verifies that every queued waiter gets exactly one answer whatever its fate.
TEST_F(PoolCoreTest, AnswersEveryWaiterExactlyOnce) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId granted = h.queue({.priority = 9});
  const WaiterId timed_out = h.queue({.deadline = h.now() + seconds(1)});
  const WaiterId cancelled = h.queue();
  const WaiterId shut = h.queue();
  ASSERT_TRUE(h.release(g.lease).has_value());
  h.advance(seconds(2));
  ASSERT_TRUE(h.cancel(cancelled).has_value());
  h.shutdown();
  h.advance(minutes(5));
  EXPECT_EQ(h.answers(granted), 1);
  EXPECT_TRUE(h.grant_of(granted).has_value());
  EXPECT_EQ(h.answers(timed_out), 1);
  EXPECT_EQ(h.rejected(timed_out).code, ErrorCode::kAcquireTimeout);
  EXPECT_EQ(h.answers(cancelled), 0);
  EXPECT_EQ(h.answers(shut), 1);
  EXPECT_EQ(h.rejected(shut).code, ErrorCode::kShutdown);
}

// Verifies that a timeout rejection carries a human-readable message.
TEST_F(PoolCoreTest, TimeoutErrorHasMessage) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.lease_now();
  const WaiterId w = h.queue({.deadline = h.now() + seconds(1)});
  h.advance(seconds(2));
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_FALSE(h.rejected(w).message.empty());
}

}  // namespace
}  // namespace poolkeeper::testing
