// PoolCore: health scores, checks, validation after idle, periodic checks, start backoff.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using ::testing::HasSubstr;

class PoolCoreTest : public CoreHarnessTest {
 protected:
  // Leases the only session and releases it with `outcome`; returns the session.
  SessionId use_once(CoreHarness& h, ReleaseOutcome outcome) {
    const Grant g = h.lease_now();
    EXPECT_TRUE(h.release(g.lease, outcome).has_value());
    return g.session;
  }
};

// Verifies that error releases lower the score and a score below the threshold sends the
// session to a check instead of idle; a passed check restores it and serves waiters.
TEST_F(PoolCoreTest, ErrorReleasesLeadToCheckThenRecovery) {
  CoreHarness& h = make_started(quiet_config(1, 1));  // penalty 25, threshold 50
  SessionId s = use_once(h, ReleaseOutcome::kError);
  EXPECT_EQ(h.info(s).health, 75);
  use_once(h, ReleaseOutcome::kError);
  EXPECT_EQ(h.info(s).health, 50);
  EXPECT_EQ(h.info(s).state, SessionState::kIdle) << "50 is not below 50";
  EXPECT_EQ(h.count(ActionType::kCheckSession), 0);

  EXPECT_EQ(h.stats().unhealthy, 0);
  use_once(h, ReleaseOutcome::kError);
  EXPECT_EQ(h.info(s).health, 25);
  EXPECT_EQ(h.info(s).state, SessionState::kChecking);
  EXPECT_EQ(h.stats().unhealthy, 1) << "below health_check_below";
  ASSERT_EQ(h.count(ActionType::kCheckSession), 1);
  EXPECT_EQ(h.actions_of(ActionType::kCheckSession)[0].session, s);
  EXPECT_EQ(h.events_of(EventType::kSessionUnhealthy).size(), 1u);

  const WaiterId w = h.queue();  // nothing idle while it is checked
  h.check_result(s, true);
  EXPECT_GE(h.info(s).health, 50);
  EXPECT_EQ(h.events_of(EventType::kSessionRecovered).size(), 1u);
  ASSERT_TRUE(h.grant_of(w).has_value());
  EXPECT_EQ(h.granted(w).session, s);
  EXPECT_EQ(h.stats().unhealthy, 0);
  EXPECT_EQ(h.stats().utilization, 1.0) << "its one ready session is leased";
  EXPECT_EQ(h.stats().checks, 1u);
  EXPECT_EQ(h.stats().check_failures, 0u);
}

// Verifies that a failed check stops the session as unhealthy and replaces it.
TEST_F(PoolCoreTest, FailedCheckReplacesSession) {
  PoolConfig c = quiet_config(1, 1);
  c.health_error_penalty = 60;
  CoreHarness& h = make_started(c);
  const SessionId s = use_once(h, ReleaseOutcome::kError);  // 40 < 50
  ASSERT_EQ(h.info(s).state, SessionState::kChecking);
  const WaiterId w = h.queue();
  h.check_result(s, false);
  ASSERT_EQ(h.count_stops(StopReason::kUnhealthy), 1);
  EXPECT_EQ(h.stops(StopReason::kUnhealthy)[0].session, s);
  EXPECT_EQ(h.stats().check_failures, 1u);
  h.settle();
  ASSERT_TRUE(h.grant_of(w).has_value());
  EXPECT_NE(h.granted(w).session, s);
  EXPECT_EQ(h.info(h.granted(w).session).health, 100);
}

// Verifies that a check result for a session the core no longer knows is ignored.
TEST_F(PoolCoreTest, IgnoresResultsForStaleSessions) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
  h.settle();
  const std::size_t mark = h.mark();
  h.check_result(g.session, false);
  h.exited(g.session, "late");
  h.stop_confirmed(g.session);
  EXPECT_EQ(h.mark(), mark) << "stale results emit nothing";
  EXPECT_EQ(h.idle(), 1);
  EXPECT_EQ(h.core().session_count(), 1);
}

// Verifies that a session idle longer than validate_after_idle is checked before handing out.
TEST_F(PoolCoreTest, ValidatesSessionAfterLongIdle) {
  PoolConfig c = quiet_config(1, 1);
  c.validate_after_idle = seconds(30);
  CoreHarness& h = make_started(c);
  h.advance(seconds(10));
  const Grant fresh = h.lease_now();  // idle 10 s: handed out at once
  EXPECT_EQ(h.count(ActionType::kCheckSession), 0);
  ASSERT_TRUE(h.release(fresh.lease).has_value());

  h.advance(seconds(31));
  auto r = h.acquire({});
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->granted) << "a session idle 31 s must be validated first";
  ASSERT_EQ(h.count(ActionType::kCheckSession), 1);
  EXPECT_EQ(h.actions_of(ActionType::kCheckSession)[0].session, fresh.session);
  h.check_result(fresh.session, true);
  ASSERT_TRUE(h.grant_of(r->waiter).has_value());
  EXPECT_EQ(h.granted(r->waiter).session, fresh.session);
}

// Verifies that a session failing validation is replaced and the waiter gets the new one.
TEST_F(PoolCoreTest, FailedValidationReplacesSessionForWaiter) {
  PoolConfig c = quiet_config(1, 1);
  c.validate_after_idle = seconds(30);
  CoreHarness& h = make_started(c);
  const SessionId old = h.actions_of(ActionType::kStartSession)[0].session;
  h.advance(seconds(31));
  auto r = h.acquire({});
  ASSERT_TRUE(r.has_value());
  ASSERT_FALSE(r->granted);
  h.check_result(old, false);
  EXPECT_EQ(h.count_stops(StopReason::kUnhealthy), 1);
  h.settle();
  ASSERT_TRUE(h.grant_of(r->waiter).has_value());
  EXPECT_NE(h.granted(r->waiter).session, old);
}

// Verifies that idle sessions are checked periodically when check_interval is set.
TEST_F(PoolCoreTest, ChecksIdleSessionsEveryCheckInterval) {
  PoolConfig c = quiet_config(1, 1);
  c.check_interval = seconds(10);
  CoreHarness& h = make_started(c);
  for (int s = 0; s < 60; ++s) {
    h.advance(seconds(1));
    h.finish_checks(true);
  }
  const int checks = h.count(ActionType::kCheckSession);
  EXPECT_GE(checks, 3) << "about one check per 10 s over 60 s";
  EXPECT_LE(checks, 12);
  EXPECT_EQ(h.idle(), 1);
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
}

// Verifies that without check_interval idle sessions are never checked.
TEST_F(PoolCoreTest, NoPeriodicChecksWhenIntervalIsZero) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  h.advance_in_steps(minutes(10), seconds(1));
  EXPECT_EQ(h.count(ActionType::kCheckSession), 0);
}

// Verifies that periodic checks leave leased sessions alone.
TEST_F(PoolCoreTest, PeriodicChecksSkipLeasedSessions) {
  PoolConfig c = quiet_config(1, 1);
  c.check_interval = seconds(10);
  CoreHarness& h = make_started(c);
  const Grant g = h.lease_now();
  h.advance_in_steps(seconds(60), seconds(1));
  EXPECT_EQ(h.count(ActionType::kCheckSession), 0);
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);
}

// Verifies that start failures back off exponentially, each delay in [d/2, d], capped at the
// maximum, and that a success resets the backoff.
TEST_F(PoolCoreTest, StartFailuresBackOffExponentiallyUpToMax) {
  PoolConfig c = quiet_config(1, 1);
  c.start_backoff_initial = seconds(1);
  c.start_backoff_max = seconds(8);
  CoreHarness& h = make(c);
  h.start();
  ASSERT_EQ(h.pending_starts().size(), 1u);
  const Duration step = milliseconds(50);

  // Fails the pending start and measures how long until the next one is asked for.
  auto fail_and_measure = [&](std::string_view error) -> Duration {
    const TimePoint failed_at = h.now();
    h.fail_start(h.pending_starts().front(), error);
    EXPECT_TRUE(h.pending_starts().empty()) << "retried at once";
    while (h.pending_starts().empty() && h.now() - failed_at < seconds(60)) h.advance(step);
    return h.now() - failed_at;
  };

  const Duration expected[] = {seconds(1), seconds(2), seconds(4), seconds(8), seconds(8),
                               seconds(8)};
  for (Duration d : expected) {
    const Duration delay = fail_and_measure("connection refused");
    EXPECT_GE(delay, d / 2) << "expected a delay in [" << (d / 2).count() << ", " << d.count()
                            << "] ns";
    EXPECT_LE(delay, d + step);
  }
  EXPECT_EQ(h.stats().start_failures, 6u);
  EXPECT_EQ(h.events_of(EventType::kSessionStartFailed).size(), 6u);

  // A success resets the backoff.
  h.complete_starts();
  EXPECT_EQ(h.idle(), 1);
  const Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
  h.complete_stops();
  ASSERT_EQ(h.pending_starts().size(), 1u);
  const Duration delay = fail_and_measure("connection refused");
  EXPECT_GE(delay, milliseconds(500));
  EXPECT_LE(delay, seconds(1) + step);
}

// Verifies that waiters keep waiting through start failures and their timeout names the last
// start failure.
TEST_F(PoolCoreTest, TimeoutMessageNamesLastStartFailure) {
  PoolConfig c = quiet_config(0, 1);
  c.start_backoff_initial = milliseconds(500);
  c.start_backoff_max = seconds(2);
  CoreHarness& h = make(c);
  h.start();
  const WaiterId w = h.queue({.deadline = h.now() + seconds(6)});
  ASSERT_EQ(h.pending_starts().size(), 1u);
  h.fail_starts("connection refused");
  EXPECT_FALSE(h.answered(w)) << "a start failure does not end the wait";
  int failures = 1;
  while (!h.answered(w) && failures < 100) {
    h.advance(milliseconds(100));
    failures += h.fail_starts("quota exceeded for account 42");
  }
  EXPECT_GE(failures, 3);
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kAcquireTimeout);
  EXPECT_THAT(h.rejected(w).message, HasSubstr("quota exceeded for account 42"));
}

// Verifies that a session that dies while idle is replaced to keep min.
TEST_F(PoolCoreTest, ReplacesIdleSessionThatExited) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const SessionId victim = h.actions_of(ActionType::kStartSession)[0].session;
  h.exited(victim, "oom");
  EXPECT_EQ(h.count(ActionType::kStartSession), 3);
  EXPECT_FALSE(h.session(victim).has_value());
  h.settle();
  EXPECT_EQ(h.idle(), 2);
}

}  // namespace
}  // namespace poolkeeper::testing
