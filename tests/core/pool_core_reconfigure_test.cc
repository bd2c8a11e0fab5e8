// PoolCore::reconfigure: a reload of sizes and limits on a running pool
// keeps every lease and waiter.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using ::testing::HasSubstr;

class PoolCoreReconfigureTest : public CoreHarnessTest {};

// Verifies that raising min starts the missing sessions while a lease is held,
// and that the lease is released normally afterwards.
TEST_F(PoolCoreReconfigureTest, RaisingMinStartsSessionsAndKeepsLeases) {
  CoreHarness& h = make_started(quiet_config(1, 4));
  const Grant g = h.lease_now();
  PoolConfig c = h.core().config();
  c.min = 3;
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.stats().target, 3);
  EXPECT_EQ(h.core().session_count(), 3);
  h.settle();
  EXPECT_EQ(h.idle(), 2);
  ASSERT_TRUE(h.release(g.lease).has_value());
  EXPECT_EQ(h.idle(), 3);
  EXPECT_EQ(h.events_of(EventType::kReconfigured).size(), 1u);
}

// Verifies that lowering max closes idle sessions above it at once and
// leased ones as they come back, and that nothing new starts above it.
TEST_F(PoolCoreReconfigureTest, LoweringMaxClosesIdleAtOnceAndLeasedOnReturn) {
  CoreHarness& h = make_started(quiet_config(4, 4));
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  const Grant c3 = h.lease_now();
  PoolConfig c = h.core().config();
  c.min = 1;
  c.max = 2;
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kOverflow), 1) << "the one idle session";
  ASSERT_TRUE(h.release(a.lease).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kOverflow), 2) << "three live over a max of two";
  ASSERT_TRUE(h.release(b.lease).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kOverflow), 2) << "two live: within max, stays";
  EXPECT_EQ(h.idle(), 1);
  h.complete_stops();
  const std::size_t mark = h.mark();
  (void)h.lease_now();
  const WaiterId w = h.queue({.deadline = h.now() + seconds(10)});
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 0) << "max is 2 and both are leased";
  ASSERT_TRUE(h.release(c3.lease).has_value());
  EXPECT_TRUE(h.answered(w));
}

// Verifies that waiters keep their place across a reload, and that a raised
// max serves them in order.
TEST_F(PoolCoreReconfigureTest, RaisingMaxServesWaitersInOrder) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  (void)h.lease_now();
  const WaiterId first = h.queue({.deadline = h.now() + seconds(10)});
  h.advance(milliseconds(5));
  const WaiterId second = h.queue({.deadline = h.now() + seconds(10)});
  PoolConfig c = h.core().config();
  c.max = 3;
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.core().queue_length(), 2);
  ASSERT_EQ(h.complete_starts(1).size(), 1u);
  EXPECT_TRUE(h.answered(first));
  EXPECT_FALSE(h.answered(second));
  h.complete_starts();
  EXPECT_TRUE(h.answered(second));
}

// Verifies that an operator's scale target survives a reload that leaves
// the sizes alone, and is reset to the new min by one that changes them.
TEST_F(PoolCoreReconfigureTest, ScaleTargetKeptUnlessSizesChange) {
  CoreHarness& h = make_started(quiet_config(1, 6));
  ASSERT_TRUE(h.scale(4).has_value());
  h.settle();
  PoolConfig c = h.core().config();
  c.idle_timeout = minutes(1);
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.stats().target, 4);
  c.min = 2;
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.stats().target, 2);
  h.advance(minutes(2));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 2) << "sessions above the new min time out";
}

// Verifies that a bad config or a new name is refused with the key named,
// and changes nothing.
TEST_F(PoolCoreReconfigureTest, BadConfigChangesNothing) {
  CoreHarness& h = make_started(quiet_config(2, 4));
  const std::size_t mark = h.mark();
  PoolConfig c = h.core().config();
  c.min = 5;
  auto bad = h.reconfigure(c);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidConfig);
  EXPECT_THAT(bad.error().message, HasSubstr("max"));
  c = h.core().config();
  c.name = "other";
  auto renamed = h.reconfigure(c);
  ASSERT_FALSE(renamed.has_value());
  EXPECT_EQ(renamed.error().code, ErrorCode::kInvalidConfig);
  EXPECT_THAT(renamed.error().message, HasSubstr("name"));
  EXPECT_EQ(h.core().config().min, 2);
  EXPECT_EQ(h.core().config().name, "test");
  EXPECT_EQ(h.mark(), mark);
  EXPECT_TRUE(h.events_of(EventType::kReconfigured).empty());
}

// Verifies that a new max_lifetime applies to live sessions, counted from
// their start: idle ones past it stop at once, a leased one when it comes back.
TEST_F(PoolCoreReconfigureTest, NewLifetimeAppliesToLiveSessions) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant g = h.lease_now();
  h.advance(hours(2));
  PoolConfig c = h.core().config();
  c.max_lifetime = hours(1);
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kMaxLifetime), 1);
  ASSERT_TRUE(h.release(g.lease).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kMaxLifetime), 2);
  h.settle();
  EXPECT_EQ(h.idle(), 2) << "replaced to keep min";
  c.max_lifetime = Duration{0};
  ASSERT_TRUE(h.reconfigure(c).has_value());
  h.advance(hours(3));
  EXPECT_EQ(h.count_stops(StopReason::kMaxLifetime), 2) << "lifetime off again";
}

// Verifies that turning health checks on schedules every idle session
// within one and a half intervals.
TEST_F(PoolCoreReconfigureTest, TurningChecksOnSchedulesThem) {
  CoreHarness& h = make_started(quiet_config(3, 3));
  h.advance(minutes(10));
  EXPECT_EQ(h.count(ActionType::kCheckSession), 0);
  PoolConfig c = h.core().config();
  c.check_interval = seconds(30);
  ASSERT_TRUE(h.reconfigure(c).has_value());
  h.advance_in_steps(seconds(45), seconds(1));
  EXPECT_EQ(h.count(ActionType::kCheckSession), 3);
}

// Verifies that a change of aging re-sorts the waiters already queued: with
// aging off, the later high-priority waiter goes first; once aging is on,
// the low-priority waiter's ten seconds of waiting outrank it.
TEST_F(PoolCoreReconfigureTest, NewAgingReordersTheQueue) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId low = h.queue({.priority = kLowPriority, .deadline = h.now() + minutes(1)});
  h.advance(seconds(10));
  const WaiterId high = h.queue({.priority = kHighPriority, .deadline = h.now() + minutes(1)});
  PoolConfig c = h.core().config();
  c.aging = seconds(1);
  ASSERT_TRUE(h.reconfigure(c).has_value());
  ASSERT_TRUE(h.release(g.lease).has_value());
  EXPECT_TRUE(h.answered(low));
  EXPECT_FALSE(h.answered(high));
}

// Verifies that a reload during shutdown starts nothing.
TEST_F(PoolCoreReconfigureTest, ReloadDuringShutdownStartsNothing) {
  CoreHarness& h = make_started(quiet_config(1, 2));
  h.shutdown();
  const std::size_t mark = h.mark();
  PoolConfig c = h.core().config();
  c.min = 2;
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 0);
}

}  // namespace
}  // namespace poolkeeper::testing
