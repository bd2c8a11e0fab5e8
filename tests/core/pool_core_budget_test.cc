// PoolCore under a spent budget: no new sessions, no idle spares kept, live
// sessions reused, refusals when nothing live can serve.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using std::chrono::seconds;

class PoolCoreBudgetTest : public CoreHarnessTest {};

// Verifies that with the budget spent, live sessions are still leased and
// reused, but nothing starts: not for a waiter, not to replace a session
// that died, not for min.
TEST_F(PoolCoreBudgetTest, ReusesLiveSessionsAndStartsNone) {
  CoreHarness& h = make_started(quiet_config(2, 4));
  ASSERT_EQ(h.count_state(SessionState::kIdle), 2);
  const std::size_t mark = h.actions().size();
  h.set_budget_exceeded(true, "pool budget: spent 1000000 of 1000000 today");
  ASSERT_EQ(h.events_of(EventType::kBudgetExceeded).size(), 1u);
  EXPECT_EQ(h.events_of(EventType::kBudgetExceeded)[0].detail,
            "pool budget: spent 1000000 of 1000000 today");
  EXPECT_TRUE(h.stats().budget_exceeded);

  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  const WaiterId w = h.queue({.deadline = h.now() + seconds(60)});
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 0) << "a waiter starts nothing";
  ASSERT_TRUE(h.release(a.lease).has_value());
  EXPECT_EQ(h.granted(w).session, a.session) << "the waiter reuses the released session";

  h.exited(b.session, "crashed");
  h.settle();
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 0) << "no replacement below min";
  EXPECT_EQ(h.count_state(SessionState::kLeased), 1);
}

// Verifies that with the budget spent, early rejection predicts the wait
// from the leases that may come back, not from a start that cannot happen:
// a pool below max that learned slow starts still queues a short acquire.
TEST_F(PoolCoreBudgetTest, EarlyRejectDoesNotCountOnAStartTheBudgetForbids) {
  PoolConfig c = quiet_config(0, 2);
  c.early_reject = true;
  CoreHarness& h = make(c);
  h.start();
  ASSERT_TRUE(h.release(h.lease_after_start(seconds(2)).lease).has_value());
  const auto slow = h.acquire_within(std::chrono::milliseconds(100));
  ASSERT_TRUE(slow.has_value()) << slow.error().message;
  ASSERT_TRUE(slow->granted);
  auto before = h.acquire_within(std::chrono::milliseconds(100));  // the pool could still grow
  ASSERT_FALSE(before.has_value());
  EXPECT_EQ(before.error().code, ErrorCode::kDeadlineUnreachable);

  h.set_budget_exceeded(true, "pool budget spent");
  auto r = h.acquire_within(std::chrono::milliseconds(100));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_FALSE(r->granted) << "queued for the lease to come back";
  h.advance(std::chrono::milliseconds(100));
  EXPECT_EQ(h.rejected(r->waiter).code, ErrorCode::kAcquireTimeout);
}

// Verifies that when no session is live an acquire is refused at once with
// budget_exceeded and the reason, and queued waiters are answered the same
// way when the last live session goes.
TEST_F(PoolCoreBudgetTest, RefusesWhenNothingLiveCanServe) {
  CoreHarness& h = make_started(quiet_config(1, 2));
  const Grant g = h.lease_now();
  h.set_budget_exceeded(true, "tenant budget spent");
  const WaiterId w = h.queue({.deadline = h.now() + seconds(60)});
  EXPECT_FALSE(h.answered(w)) << "the leased session may come back";
  h.exited(g.session, "crashed");
  h.settle();
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kBudgetExceeded);
  EXPECT_EQ(h.rejected(w).message, "tenant budget spent");
  auto r = h.acquire({.deadline = h.now() + seconds(60)});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kBudgetExceeded);
  EXPECT_EQ(h.stats().sessions, 0);
}

// Verifies that idle sessions are not kept as spares while the budget is
// spent: the idle timeout takes them below min and min_idle.
TEST_F(PoolCoreBudgetTest, IdleSparesLeaveByTheIdleTimeout) {
  PoolConfig c = quiet_config(3, 4);
  c.min_idle = 1;
  c.idle_timeout = seconds(30);
  CoreHarness& h = make_started(c);
  ASSERT_EQ(h.count_state(SessionState::kIdle), 3);
  h.advance(seconds(31));
  EXPECT_EQ(h.count_state(SessionState::kIdle), 3) << "min keeps them while the budget allows";
  h.set_budget_exceeded(true);
  h.advance(seconds(1));
  h.settle();
  EXPECT_EQ(h.stats().sessions, 0);
  EXPECT_FALSE(h.stats().degraded) << "below min by policy, not by failure";
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 3);
}

// Verifies that restoring the budget brings the pool back to its size, and
// that a second report while spent only updates the reason.
TEST_F(PoolCoreBudgetTest, RestoringTheBudgetRefillsThePool) {
  CoreHarness& h = make_started(quiet_config(2, 4));
  h.set_budget_exceeded(true, "first");
  h.set_budget_exceeded(true, "second");
  EXPECT_EQ(h.events_of(EventType::kBudgetExceeded).size(), 1u);
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  h.exited(a.session);
  h.exited(b.session);
  h.settle();
  EXPECT_EQ(h.stats().sessions, 0);
  auto r = h.acquire({.deadline = h.now() + seconds(5)});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message, "second");
  const std::size_t mark = h.actions().size();
  h.set_budget_exceeded(false);
  EXPECT_EQ(h.events_of(EventType::kBudgetRestored).size(), 1u);
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 2);
  h.settle();
  EXPECT_FALSE(h.stats().budget_exceeded);
  EXPECT_EQ(h.count_state(SessionState::kIdle), 2);
}

}  // namespace
}  // namespace poolkeeper::testing
