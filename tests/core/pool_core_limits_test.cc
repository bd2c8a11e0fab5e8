// PoolCore: idle timeout, lease timeout, max lifetime with jitter, max uses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

class PoolCoreTest : public CoreHarnessTest {};

// Verifies that idle sessions above min close after the idle timeout, longest idle first.
TEST_F(PoolCoreTest, EvictsIdleSessionAfterIdleTimeout) {
  PoolConfig c = quiet_config(1, 3);
  c.idle_timeout = seconds(60);
  CoreHarness& h = make_started(c);
  const Grant a = h.lease_now();
  const WaiterId wb = h.queue();
  const WaiterId wc = h.queue();
  h.settle();
  ASSERT_TRUE(h.grant_of(wb) && h.grant_of(wc));
  const Grant b = h.granted(wb);
  const Grant cc = h.granted(wc);

  ASSERT_TRUE(h.release(a.lease).has_value());   // idle since t
  h.advance(seconds(10));
  ASSERT_TRUE(h.release(b.lease).has_value());   // idle since t + 10 s
  h.advance(seconds(10));
  ASSERT_TRUE(h.release(cc.lease).has_value());  // idle since t + 20 s

  h.advance(seconds(39));  // t + 59 s
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  h.advance(seconds(2));   // t + 61 s: only a is past its idle timeout
  ASSERT_EQ(h.count_stops(StopReason::kIdleTimeout), 1);
  EXPECT_EQ(h.stops(StopReason::kIdleTimeout)[0].session, a.session);
  h.advance(seconds(10));  // t + 71 s: b too
  ASSERT_EQ(h.count_stops(StopReason::kIdleTimeout), 2);
  EXPECT_EQ(h.stops(StopReason::kIdleTimeout)[1].session, b.session);
  h.complete_stops();
  h.advance_in_steps(minutes(30), minutes(1));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 2) << "min 1 stays";
  EXPECT_FALSE(h.stopped(cc.session));
  EXPECT_EQ(h.idle(), 1);
}

// Verifies that a session used again before its idle timeout is not closed.
TEST_F(PoolCoreTest, ReuseResetsIdleClock) {
  PoolConfig c = quiet_config(0, 1);
  c.idle_timeout = seconds(60);
  CoreHarness& h = make(c);
  h.start();
  const WaiterId w = h.queue();
  h.settle();
  ASSERT_TRUE(h.release(h.granted(w).lease).has_value());
  h.advance(seconds(50));
  ASSERT_TRUE(h.release(h.lease_now().lease).has_value());
  h.advance(seconds(50));
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  h.advance(seconds(11));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 1);
}

// Verifies that the idle timeout keeps min_idle idle spares.
TEST_F(PoolCoreTest, IdleTimeoutKeepsMinIdleSpares) {
  PoolConfig c = quiet_config(0, 3);
  c.min_idle = 1;
  c.idle_timeout = seconds(60);
  CoreHarness& h = make_started(c);
  const Grant a = h.lease_now();
  h.settle();
  const Grant b = h.lease_now();
  h.settle();
  ASSERT_EQ(h.idle(), 1);
  ASSERT_TRUE(h.release(a.lease).has_value());
  ASSERT_TRUE(h.release(b.lease).has_value());
  ASSERT_EQ(h.idle(), 3);
  h.advance(seconds(61));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 2);
  h.settle();
  h.advance_in_steps(minutes(10), minutes(1));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 2);
  EXPECT_EQ(h.idle(), 1);
}

// Verifies that an idle timeout of zero never closes idle sessions.
TEST_F(PoolCoreTest, ZeroIdleTimeoutKeepsIdleSessions) {
  CoreHarness& h = make(quiet_config(0, 2));
  h.start();
  const WaiterId w = h.queue();
  h.settle();
  ASSERT_TRUE(h.release(h.granted(w).lease).has_value());
  h.advance_in_steps(hours(24), hours(1));
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  EXPECT_EQ(h.idle(), 1);
}

// Verifies that without jitter idle sessions recycle at max_lifetime and leased ones on release.
TEST_F(PoolCoreTest, RecyclesSessionsPastMaxLifetime) {
  PoolConfig c = quiet_config(2, 2);
  c.max_lifetime = seconds(100);
  CoreHarness& h = make_started(c);
  const Grant leased = h.lease_now();
  h.advance(seconds(99));
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  h.advance(seconds(2));
  ASSERT_EQ(h.count_stops(StopReason::kMaxLifetime), 1);
  EXPECT_NE(h.stops(StopReason::kMaxLifetime)[0].session, leased.session);
  EXPECT_FALSE(h.stopped(leased.session)) << "a leased session is not taken away";
  ASSERT_TRUE(h.release(leased.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kMaxLifetime), 2);
  EXPECT_EQ(h.stops(StopReason::kMaxLifetime)[1].session, leased.session);
  h.settle();
  EXPECT_EQ(h.idle(), 2) << "recycled sessions are replaced to keep min";
}

// Verifies that lifetime jitter spreads recycling over [max_lifetime*(1-jitter), max_lifetime].
TEST_F(PoolCoreTest, LifetimeJitterSpreadsRecycling) {
  PoolConfig c = quiet_config(20, 20);
  c.max_lifetime = seconds(100);
  c.lifetime_jitter = 0.5;
  CoreHarness& h = make_started(c);
  const TimePoint t0 = h.now();
  std::set<SessionId> originals;
  for (const Action& a : h.actions_of(ActionType::kStartSession)) originals.insert(a.session);
  ASSERT_EQ(originals.size(), 20u);

  std::map<SessionId, Duration> recycled_at;
  for (int s = 1; s <= 101; ++s) {
    const std::size_t mark = h.mark();
    h.advance(seconds(1));
    for (const Action& a : h.stops(StopReason::kMaxLifetime, mark)) {
      if (originals.count(a.session)) recycled_at[a.session] = h.now() - t0;
    }
  }
  ASSERT_EQ(recycled_at.size(), 20u) << "every session recycles by max_lifetime";
  std::set<Duration> distinct;
  for (const auto& [session, at] : recycled_at) {
    EXPECT_GE(at, seconds(50)) << "recycled before max_lifetime * (1 - jitter)";
    EXPECT_LE(at, seconds(101));
    distinct.insert(at);
  }
  EXPECT_GE(distinct.size(), 8u) << "sessions started together recycle together";
}

// Verifies that lifetime jitter differs between seeds but is deterministic for one seed.
TEST_F(PoolCoreTest, LifetimeJitterIsDeterministicPerSeed) {
  auto recycle_times = [](std::uint64_t seed) {
    PoolConfig c = quiet_config(5, 5);
    c.max_lifetime = seconds(100);
    c.lifetime_jitter = 0.9;
    CoreHarness h(c, {.seed = seed});
    h.start();
    h.settle();
    std::vector<Duration> times;
    const TimePoint t0 = h.now();
    for (int s = 0; s < 101; ++s) {
      const std::size_t mark = h.mark();
      h.advance(seconds(1));
      for (std::size_t i = 0; i < h.stops(StopReason::kMaxLifetime, mark).size(); ++i) {
        times.push_back(h.now() - t0);
      }
    }
    return times;
  };
  EXPECT_EQ(recycle_times(11), recycle_times(11));
  EXPECT_NE(recycle_times(11), recycle_times(12));
}

// Verifies that a session is recycled after max_uses leases.
TEST_F(PoolCoreTest, RecyclesSessionAfterMaxUses) {
  PoolConfig c = quiet_config(1, 1);
  c.max_uses = 3;
  CoreHarness& h = make_started(c);
  SessionId first = 0;
  for (int i = 0; i < 2; ++i) {
    const Grant g = h.lease_now();
    first = g.session;
    ASSERT_TRUE(h.release(g.lease).has_value());
  }
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  const Grant third = h.lease_now();
  EXPECT_EQ(third.session, first);
  ASSERT_TRUE(h.release(third.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kMaxUses), 1);
  EXPECT_EQ(h.stops(StopReason::kMaxUses)[0].session, first);
  h.settle();
  const Grant fresh = h.lease_now();
  EXPECT_NE(fresh.session, first);
  EXPECT_EQ(h.info(fresh.session).uses, 1);
}

// Verifies that next_due() covers lease timeouts and idle timeouts, so a shell that sleeps
// until next_due() still reclaims leases and closes idle sessions on time.
TEST_F(PoolCoreTest, NextDueCoversLeaseAndIdleTimeouts) {
  PoolConfig c = quiet_config(0, 2);
  c.lease_timeout = seconds(10);
  c.idle_timeout = seconds(60);
  CoreHarness& h = make(c);
  h.start();
  const WaiterId w = h.queue();
  h.settle();
  ASSERT_TRUE(h.grant_of(w).has_value());
  const Grant g = h.granted(w);
  EXPECT_LE(h.core().next_due().time_since_epoch(), g.expires_at.time_since_epoch())
      << "a lease timeout is not due";
  h.advance(seconds(11));
  ASSERT_EQ(h.count_stops(StopReason::kLeaseAbandoned), 1);
  h.settle();
  const WaiterId w2 = h.queue();
  h.settle();
  ASSERT_TRUE(h.grant_of(w2).has_value());
  ASSERT_TRUE(h.release(h.granted(w2).lease).has_value());
  EXPECT_LE(h.core().next_due().time_since_epoch(), (h.now() + seconds(60)).time_since_epoch())
      << "an idle timeout is not due";
}

// Verifies that next_due() is the earliest waiter deadline, and max() when nothing is due.
TEST_F(PoolCoreTest, NextDueCoversWaiterDeadlines) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  EXPECT_EQ(h.core().next_due().time_since_epoch(), TimePoint::max().time_since_epoch());
  h.lease_now();
  const TimePoint deadline = h.now() + seconds(7);
  h.queue({.deadline = deadline});
  EXPECT_EQ(h.core().next_due().time_since_epoch(), deadline.time_since_epoch());
}

// Verifies that a reclaimed lease's session is replaced so waiters are served.
TEST_F(PoolCoreTest, ReclaimedSessionIsReplacedForWaiters) {
  PoolConfig c = quiet_config(0, 1);
  c.lease_timeout = seconds(5);
  CoreHarness& h = make(c);
  h.start();
  const WaiterId a = h.queue({.owner = "slow"});
  h.settle();
  ASSERT_TRUE(h.grant_of(a).has_value());
  const WaiterId b = h.queue({.owner = "next"});
  h.advance(seconds(6));
  ASSERT_EQ(h.count_stops(StopReason::kLeaseAbandoned), 1);
  EXPECT_FALSE(h.answered(b));
  h.settle();
  ASSERT_TRUE(h.grant_of(b).has_value());
  EXPECT_NE(h.granted(b).session, h.granted(a).session);
}

// Verifies that a session recycled over a resource limit is stopped at once
// when idle and replaced, and when leased is stopped at its release, never
// handed out again.
TEST_F(PoolCoreTest, RecyclesSessionOverResourceLimit) {
  CoreHarness& h = make_started(quiet_config(2, 4));
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  ASSERT_TRUE(h.release(b.lease).has_value());
  h.recycle(b.session, StopReason::kMemoryLimit);
  ASSERT_EQ(h.count_stops(StopReason::kMemoryLimit), 1);
  EXPECT_EQ(h.stops(StopReason::kMemoryLimit)[0].session, b.session);
  EXPECT_EQ(h.complete_starts().size(), 1u) << "a replacement starts while the old one stops";

  h.recycle(a.session, StopReason::kCpuLimit);
  EXPECT_EQ(h.count_stops(StopReason::kCpuLimit), 0) << "the current lease finishes first";
  auto held = h.core().leased_session(a.lease, std::nullopt);
  ASSERT_TRUE(held.has_value());
  EXPECT_EQ(held->session, a.session);
  ASSERT_TRUE(h.release(a.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kCpuLimit), 1);
  EXPECT_EQ(h.stops(StopReason::kCpuLimit)[0].session, a.session);
  h.complete_stops();
  h.settle();
  const Grant c = h.lease_now();
  EXPECT_NE(c.session, a.session);
  EXPECT_NE(c.session, b.session);
  EXPECT_EQ(h.core().leased_session(a.lease, std::nullopt).error().code,
            ErrorCode::kLeaseAlreadyReleased);
}

// Verifies that a session recycled while it is being checked is stopped when
// the check ends, and its replacement starts as the stop begins.
TEST_F(PoolCoreTest, RecycledDuringCheckIsReplacedAtOnce) {
  PoolConfig c = quiet_config(1, 2);
  c.health_error_penalty = 60;  // one failed lease sends the session to a check
  CoreHarness& h = make_started(c);
  const Grant a = h.lease_now();
  ASSERT_TRUE(h.release(a.lease, ReleaseOutcome::kError).has_value());
  ASSERT_EQ(h.info(a.session).state, SessionState::kChecking);
  h.recycle(a.session, StopReason::kMemoryLimit);
  EXPECT_EQ(h.count_stops(StopReason::kMemoryLimit), 0) << "the check finishes first";
  const int starts = h.count(ActionType::kStartSession);
  h.check_result(a.session, true);
  ASSERT_EQ(h.count_stops(StopReason::kMemoryLimit), 1);
  EXPECT_EQ(h.count(ActionType::kStartSession), starts + 1)
      << "the replacement starts before the stop completes";
  EXPECT_FALSE(h.stopped(a.session) && h.count(ActionType::kGrant) > 0);
}

// Verifies the resource-limit rules on sampled usage: memory and CPU time
// recycle at once, CPU percent only when above for cpu_percent_samples
// samples in a row; unknown values are ignored.
TEST_F(PoolCoreTest, RecyclesOnSampledUsageOverLimits) {
  PoolConfig c = quiet_config(3, 3);
  c.max_memory = std::int64_t{100} << 20;
  c.max_cpu_time = seconds(10);
  c.max_cpu_percent = 80;
  c.cpu_percent_samples = 3;
  CoreHarness& h = make_started(c);
  std::vector<SessionId> ids;
  for (const SessionInfo& info : h.core().sessions(h.now())) ids.push_back(info.id);
  ASSERT_EQ(ids.size(), 3u);

  h.usage_sampled(ids[0], {.memory_bytes = std::int64_t{100} << 20});
  h.usage_sampled(ids[0], {.memory_bytes = -1, .cpu_percent = -1, .cpu_time = seconds(-1)});
  EXPECT_EQ(h.count(ActionType::kStopSession), 0) << "at the limit and unknown values pass";
  h.usage_sampled(ids[0], {.memory_bytes = std::int64_t{200} << 20});
  ASSERT_EQ(h.count_stops(StopReason::kMemoryLimit), 1);
  EXPECT_EQ(h.stops(StopReason::kMemoryLimit)[0].session, ids[0]);
  const auto over = h.events_of(EventType::kSessionOverLimit);
  ASSERT_EQ(over.size(), 1u);
  EXPECT_EQ(over[0].value, std::int64_t{200} << 20);

  h.usage_sampled(ids[1], {.cpu_time = seconds(11)});
  ASSERT_EQ(h.count_stops(StopReason::kCpuLimit), 1);
  EXPECT_EQ(h.stops(StopReason::kCpuLimit)[0].session, ids[1]);

  for (double percent : {90.0, 95.0, 50.0, 90.0, 99.0}) {
    h.usage_sampled(ids[2], {.cpu_percent = percent});
  }
  EXPECT_EQ(h.count_stops(StopReason::kCpuLimit), 1) << "a dip resets the run of samples";
  h.usage_sampled(ids[2], {.cpu_percent = 85.0});
  ASSERT_EQ(h.count_stops(StopReason::kCpuLimit), 2);
  EXPECT_EQ(h.stops(StopReason::kCpuLimit)[1].session, ids[2]);
  EXPECT_EQ(h.events_of(EventType::kSessionOverLimit).size(), 3u);
}

}  // namespace
}  // namespace poolkeeper::testing
