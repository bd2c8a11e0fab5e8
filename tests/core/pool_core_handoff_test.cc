// Tests of handoff_after: bounded overtaking of the wait queue for throughput.
#include <gtest/gtest.h>

#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using std::chrono::milliseconds;

class PoolCoreHandoffTest : public CoreHarnessTest {
 protected:
  PoolConfig handoff_config(int max = 1) {
    PoolConfig c = quiet_config(max, max);
    c.handoff_after = milliseconds(1);
    return c;
  }
};

// Verifies that strict handoff (the default) gives a freed session to the first waiter directly.
TEST_F(PoolCoreHandoffTest, StrictHandoffGrantsTheFirstWaiter) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant held = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(held.lease).has_value());
  EXPECT_TRUE(h.grant_of(w).has_value());
  EXPECT_TRUE(h.wakes().empty());
}

// Verifies that within handoff_after a freed session stays free, the first waiter is woken,
// and a new acquire of the same priority may take the session first.
TEST_F(PoolCoreHandoffTest, NewAcquireMayOvertakeAFreshWaiter) {
  CoreHarness& h = make_started(handoff_config());
  const Grant held = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(held.lease).has_value());
  EXPECT_FALSE(h.grant_of(w).has_value());
  ASSERT_EQ(h.wakes().size(), 1u);
  EXPECT_EQ(h.wakes()[0], w);
  EXPECT_EQ(h.idle(), 1);

  const Grant barged = h.lease_now();  // same priority: may overtake
  h.retry(w);                           // too late: keeps its place
  EXPECT_FALSE(h.grant_of(w).has_value());
  EXPECT_EQ(h.core().queue_length(), 1);

  ASSERT_TRUE(h.release(barged.lease).has_value());
  h.retry(w);
  EXPECT_TRUE(h.grant_of(w).has_value()) << "a woken waiter that finds the session free gets it";
}

// Verifies that a new acquire of lower priority than the first waiter never overtakes it.
TEST_F(PoolCoreHandoffTest, LowerPriorityNeverOvertakes) {
  CoreHarness& h = make_started(handoff_config());
  const Grant held = h.lease_now();
  const WaiterId w = h.queue({.priority = kHighPriority});
  ASSERT_TRUE(h.release(held.lease).has_value());
  const WaiterId late = h.queue({.priority = kLowPriority});
  EXPECT_NE(late, 0u);
  h.retry(w);
  EXPECT_TRUE(h.grant_of(w).has_value());
  EXPECT_FALSE(h.grant_of(late).has_value());
}

// Verifies that once the first waiter has waited handoff_after, a freed session is handed to it
// directly and new acquires queue behind it.
TEST_F(PoolCoreHandoffTest, WaiterThatWaitedLongEnoughIsOwedTheSession) {
  CoreHarness& h = make_started(handoff_config());
  const Grant held = h.lease_now();
  const WaiterId w = h.queue();
  h.advance(milliseconds(1));
  ASSERT_TRUE(h.release(held.lease).has_value());
  EXPECT_TRUE(h.grant_of(w).has_value());
  EXPECT_TRUE(h.wakes().empty());
}

// Verifies that a woken waiter that never retries is granted the free session by a tick once
// it has waited handoff_after: nobody waits forever on a lost wake.
TEST_F(PoolCoreHandoffTest, TickGrantsAWokenWaiterThatNeverRetried) {
  CoreHarness& h = make_started(handoff_config());
  const Grant held = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(held.lease).has_value());
  ASSERT_EQ(h.wakes().size(), 1u);
  h.advance(milliseconds(2));
  h.tick();
  EXPECT_TRUE(h.grant_of(w).has_value());
}

// Verifies that only one wake is outstanding at a time: releases while the woken waiter has
// not retried wake nobody else.
TEST_F(PoolCoreHandoffTest, OneWakeAtATime) {
  CoreHarness& h = make_started(handoff_config(2));
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  const WaiterId w1 = h.queue();
  const WaiterId w2 = h.queue();
  ASSERT_TRUE(h.release(a.lease).has_value());
  ASSERT_TRUE(h.release(b.lease).has_value());
  ASSERT_EQ(h.wakes().size(), 1u);
  EXPECT_EQ(h.wakes()[0], w1);
  h.retry(w1);
  EXPECT_TRUE(h.grant_of(w1).has_value());
  ASSERT_EQ(h.wakes().size(), 2u) << "the next waiter is woken for the session still free";
  EXPECT_EQ(h.wakes()[1], w2);
  h.retry(w2);
  EXPECT_TRUE(h.grant_of(w2).has_value());
}

// Verifies that a negative handoff_after is refused, naming the key.
TEST_F(PoolCoreHandoffTest, NegativeHandoffAfterIsRefused) {
  PoolConfig c = quiet_config();
  c.handoff_after = milliseconds(-1);
  auto ok = validate_config(c);
  ASSERT_FALSE(ok.has_value());
  EXPECT_EQ(ok.error().code, ErrorCode::kInvalidConfig);
  EXPECT_EQ(ok.error().message.rfind("handoff_after:", 0), 0u) << ok.error().message;
}

}  // namespace
}  // namespace poolkeeper::testing
