// PoolCore: reservations and operator controls (pause, resume, drain, emergency stop, shutdown).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using ::testing::HasSubstr;

class PoolCoreTest : public CoreHarnessTest {};

// ---------------------------------------------------------------- health of the pool

// Verifies when stats() calls a pool degraded: below min while sessions
// start or after one died, not while draining, not when scaled below min,
// and always when emergency-stopped.
TEST_F(PoolCoreTest, StatsSayWhenThePoolIsDegraded) {
  CoreHarness& h = make(quiet_config(2, 4));
  h.start();
  EXPECT_TRUE(h.stats().degraded) << "nothing usable yet";
  EXPECT_EQ(h.stats().min, 2);
  h.settle();
  EXPECT_FALSE(h.stats().degraded);
  const SessionId s = h.actions_of(ActionType::kStartSession)[0].session;
  h.exited(s, "killed");
  EXPECT_TRUE(h.stats().degraded) << "one of two died";
  h.settle();
  EXPECT_FALSE(h.stats().degraded) << "replaced";
  ASSERT_TRUE(h.scale(0).has_value());
  h.settle();
  EXPECT_FALSE(h.stats().degraded) << "scaled to 0 on purpose";
  h.emergency_stop();
  EXPECT_TRUE(h.stats().degraded);
}

// ---------------------------------------------------------------- reservations

// Verifies that a reserved session is leased only by its owner and returns to the
// reservation after each lease.
TEST_F(PoolCoreTest, ReservedSessionIsLeasedOnlyByItsOwner) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const SessionId s = h.actions_of(ActionType::kStartSession)[0].session;
  auto r = h.reserve("campaign", hours(1));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->owner, "campaign");
  EXPECT_EQ(r->session, s);
  EXPECT_EQ(r->expires_at, h.now() + hours(1));
  EXPECT_TRUE(h.info(s).reserved);
  EXPECT_EQ(h.info(s).reserved_for, "campaign");
  EXPECT_EQ(h.stats().reservations, 1);

  const WaiterId other = h.queue({.owner = "someone-else"});
  EXPECT_FALSE(h.answered(other));

  const Grant g = h.lease_now({.owner = "campaign"});
  EXPECT_EQ(g.session, s);
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kOk, "campaign").has_value());
  EXPECT_FALSE(h.answered(other)) << "the session went back to the reservation";
  EXPECT_TRUE(h.info(s).reserved);
  EXPECT_EQ(h.lease_now({.owner = "campaign"}).session, s);
}

// Verifies that an expired reservation returns its session to the pool and ends.
TEST_F(PoolCoreTest, ExpiredReservationReturnsSessionToPool) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  auto r = h.reserve("campaign", minutes(10));
  ASSERT_TRUE(r.has_value());
  const WaiterId other = h.queue({.owner = "someone-else"});
  h.advance(minutes(9));
  EXPECT_FALSE(h.answered(other));
  h.advance(minutes(2));
  ASSERT_TRUE(h.grant_of(other).has_value());
  EXPECT_EQ(h.granted(other).session, r->session);
  EXPECT_TRUE(h.core().reservations().empty());
  EXPECT_EQ(h.events_of(EventType::kReservationEnded).size(), 1u);
  EXPECT_EQ(h.stats().reservations, 0);
}

// Verifies that cancel_reservation checks the id and the owner, then frees the session.
TEST_F(PoolCoreTest, CancelReservationChecksOwner) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  auto r = h.reserve("campaign", hours(1));
  ASSERT_TRUE(r.has_value());
  const WaiterId other = h.queue({.owner = "someone-else"});

  auto wrong_owner = h.cancel_reservation(r->id, "mallory");
  ASSERT_FALSE(wrong_owner.has_value());
  EXPECT_EQ(wrong_owner.error().code, ErrorCode::kNotReservationOwner);
  auto unknown = h.cancel_reservation(r->id + 1000, "campaign");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code, ErrorCode::kUnknownReservation);
  EXPECT_FALSE(h.answered(other));

  ASSERT_TRUE(h.cancel_reservation(r->id, "campaign").has_value());
  ASSERT_TRUE(h.grant_of(other).has_value());
  EXPECT_EQ(h.granted(other).session, r->session);
  EXPECT_TRUE(h.core().reservations().empty());
  auto twice = h.cancel_reservation(r->id, "campaign");
  ASSERT_FALSE(twice.has_value());
  EXPECT_EQ(twice.error().code, ErrorCode::kUnknownReservation);
}

// Verifies that reserve starts a session when none is idle, and it goes to the reservation.
TEST_F(PoolCoreTest, ReserveStartsSessionWhenNoneIsIdle) {
  CoreHarness& h = make_started(quiet_config(0, 2));
  auto r = h.reserve("campaign", hours(1));
  ASSERT_TRUE(r.has_value()) << r.error().message;
  ASSERT_EQ(h.count(ActionType::kStartSession), 1);
  const SessionId s = h.pending_starts().front();
  h.complete_starts();
  const auto all = h.core().reservations();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].session, s);
  // Someone else's demand gets a session of its own.
  const WaiterId other = h.queue({.owner = "someone-else"});
  h.settle();
  ASSERT_TRUE(h.grant_of(other).has_value());
  EXPECT_NE(h.granted(other).session, s);
  EXPECT_EQ(h.lease_now({.owner = "campaign"}).session, s);
}

// Verifies that a reservation whose session closes takes the next idle session.
TEST_F(PoolCoreTest, ReservationTakesNextIdleSessionWhenItsSessionCloses) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  auto r = h.reserve("campaign", hours(1));
  ASSERT_TRUE(r.has_value());
  const SessionId first = r->session;
  ASSERT_NE(first, 0u);
  h.exited(first, "crashed");
  auto all = h.core().reservations();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_NE(all[0].session, first);
  h.settle();
  all = h.core().reservations();
  ASSERT_EQ(all.size(), 1u);
  ASSERT_NE(all[0].session, 0u);
  EXPECT_NE(all[0].session, first);
  EXPECT_EQ(h.lease_now({.owner = "campaign"}).session, all[0].session);
}

// ---------------------------------------------------------------- pause and resume

// Verifies that pause refuses waiters and new acquires with kPoolPaused but keeps leases and
// warm sessions, and resume ends it.
TEST_F(PoolCoreTest, PauseRefusesAcquiresButKeepsLeasesAndSessions) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant g = h.lease_now();
  const Grant other = h.lease_now();
  const WaiterId w = h.queue();
  h.pause();
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kPoolPaused);
  EXPECT_TRUE(h.stats().paused);
  EXPECT_EQ(h.events_of(EventType::kPaused).size(), 1u);
  auto refused = h.acquire({});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kPoolPaused);
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);

  // Sessions released during the pause stay warm.
  ASSERT_TRUE(h.release(other.lease).has_value());
  EXPECT_EQ(h.idle(), 1);
  h.pause();  // pausing again changes nothing
  h.advance(minutes(10));
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  EXPECT_EQ(h.idle(), 1);
  auto still = h.acquire({});
  ASSERT_FALSE(still.has_value()) << "an idle session is not handed out while paused";
  EXPECT_EQ(still.error().code, ErrorCode::kPoolPaused);
  ASSERT_TRUE(h.release(g.lease).has_value());
  EXPECT_EQ(h.idle(), 2);

  h.resume();
  EXPECT_FALSE(h.stats().paused);
  EXPECT_EQ(h.events_of(EventType::kResumed).size(), 1u);
  h.lease_now();
}

// Verifies that pausing a pool with idle sessions keeps them warm.
TEST_F(PoolCoreTest, PauseKeepsIdleSessions) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  h.pause();
  h.advance(minutes(1));
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  EXPECT_EQ(h.idle(), 2);
}

// ---------------------------------------------------------------- drain

// Verifies that drain closes idle sessions at once and leased ones on release, refuses
// acquires with kPoolDraining, and reports drained when empty.
TEST_F(PoolCoreTest, DrainClosesIdleAtOnceAndLeasedOnRelease) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant g = h.lease_now();
  h.drain();
  EXPECT_TRUE(h.stats().draining);
  ASSERT_EQ(h.count_stops(StopReason::kDrained), 1);
  EXPECT_NE(h.stops(StopReason::kDrained)[0].session, g.session);
  auto refused = h.acquire({});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kPoolDraining);
  h.complete_stops();
  EXPECT_FALSE(h.core().drained()) << "a lease is still out";
  EXPECT_EQ(h.count(ActionType::kStartSession), 2) << "draining does not restore min";

  ASSERT_TRUE(h.release(g.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kDrained), 2);
  EXPECT_EQ(h.stops(StopReason::kDrained)[1].session, g.session);
  EXPECT_FALSE(h.core().drained()) << "closing sessions are not gone yet";
  h.complete_stops();
  EXPECT_TRUE(h.core().drained());
  EXPECT_EQ(h.events_of(EventType::kDrained).size(), 1u);
  EXPECT_EQ(h.core().session_count(), 0);
}

// Verifies that drain rejects waiters with kPoolDraining, and a session that finishes
// starting during drain is closed.
TEST_F(PoolCoreTest, DrainRejectsWaitersAndClosesLateStarts) {
  CoreHarness& h = make(quiet_config(0, 1));
  h.start();
  const WaiterId w = h.queue();
  ASSERT_EQ(h.pending_starts().size(), 1u);
  const SessionId s = h.pending_starts().front();
  h.drain();
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kPoolDraining);
  h.settle();
  EXPECT_TRUE(h.stopped(s));
  EXPECT_TRUE(h.core().drained());
  EXPECT_EQ(h.core().session_count(), 0);
}

// Verifies that resume ends a drain and the pool warms up again.
TEST_F(PoolCoreTest, ResumeEndsDrain) {
  CoreHarness& h = make_started(quiet_config(1, 2));
  h.drain();
  h.settle();
  ASSERT_TRUE(h.core().drained());
  h.resume();
  EXPECT_FALSE(h.stats().draining);
  h.settle();
  EXPECT_EQ(h.idle(), 1);
  EXPECT_NE(h.lease_now().lease, 0u);
}

// ---------------------------------------------------------------- emergency stop

// Verifies that emergency stop refuses everything below critical, waiters included, and
// still serves critical requests; emergency_resume ends it.
TEST_F(PoolCoreTest, EmergencyStopAllowsOnlyCritical) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId normal = h.queue({.priority = kNormalPriority});
  const WaiterId high = h.queue({.priority = kHighPriority});
  const WaiterId critical = h.queue({.priority = kCriticalPriority});
  h.emergency_stop();
  EXPECT_TRUE(h.stats().emergency_stopped);
  EXPECT_EQ(h.events_of(EventType::kEmergencyStop).size(), 1u);
  ASSERT_TRUE(h.reject_of(normal).has_value());
  EXPECT_EQ(h.rejected(normal).code, ErrorCode::kEmergencyStop);
  ASSERT_TRUE(h.reject_of(high).has_value());
  EXPECT_EQ(h.rejected(high).code, ErrorCode::kEmergencyStop);
  EXPECT_FALSE(h.answered(critical));

  auto refused = h.acquire({.priority = kHighPriority});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kEmergencyStop);

  ASSERT_TRUE(h.release(g.lease).has_value());
  ASSERT_TRUE(h.grant_of(critical).has_value());
  ASSERT_TRUE(h.release(h.granted(critical).lease).has_value());
  EXPECT_NE(h.lease_now({.priority = kCriticalPriority}).lease, 0u) << "critical is served";

  h.emergency_resume();
  EXPECT_FALSE(h.stats().emergency_stopped);
  EXPECT_EQ(h.events_of(EventType::kEmergencyResume).size(), 1u);
  auto normal_again = h.acquire({.priority = kLowestPriority});
  ASSERT_TRUE(normal_again.has_value()) << normal_again.error().message;
}

// ---------------------------------------------------------------- shutdown

// Verifies that shutdown answers waiters with kShutdown, stops idle sessions at once and
// leased ones on release, and refuses acquires for good.
TEST_F(PoolCoreTest, ShutdownAnswersWaitersAndStopsSessions) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  const WaiterId w = h.queue({.priority = kCriticalPriority});
  h.shutdown();
  ASSERT_TRUE(h.reject_of(w).has_value());
  EXPECT_EQ(h.rejected(w).code, ErrorCode::kShutdown);
  EXPECT_EQ(h.count(ActionType::kStopSession), 0) << "the leased session stays until released";
  auto refused = h.acquire({.priority = kCriticalPriority});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kShutdown);

  ASSERT_TRUE(h.release(g.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kShutdown), 1);
  EXPECT_EQ(h.stops(StopReason::kShutdown)[0].session, g.session);
  h.complete_stops();
  EXPECT_TRUE(h.core().drained());
  h.advance(hours(1));
  EXPECT_EQ(h.count(ActionType::kStartSession), 1) << "nothing restarts after shutdown";
}

// Verifies that leases still held when shutdown's grace ends are reclaimed:
// their sessions stop, a late release gets kShutdown, and the pool drains;
// a lease returned in time ends normally.
TEST_F(PoolCoreTest, ShutdownReclaimsLeasesAfterGrace) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant early = h.lease_now();
  const Grant late = h.lease_now();
  h.shutdown(h.now() + seconds(5));
  EXPECT_EQ(h.core().next_due(), h.now() + seconds(5));
  h.advance(seconds(4));
  ASSERT_TRUE(h.release(early.lease).has_value()) << "returned within the grace period";
  EXPECT_EQ(h.count_stops(StopReason::kShutdown), 1);
  h.advance(seconds(2));
  ASSERT_EQ(h.count_stops(StopReason::kShutdown), 2);
  EXPECT_EQ(h.stops(StopReason::kShutdown)[1].session, late.session);
  EXPECT_EQ(h.events_of(EventType::kLeaseReclaimed).size(), 1u);
  auto refused = h.release(late.lease);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kShutdown);
  h.complete_stops();
  EXPECT_TRUE(h.core().drained());
}

// Verifies that shutdown stops idle sessions at once and is final (resume does not undo it).
TEST_F(PoolCoreTest, ShutdownIsFinal) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  h.shutdown();
  EXPECT_EQ(h.count_stops(StopReason::kShutdown), 2);
  h.complete_stops();
  EXPECT_TRUE(h.core().drained());
  h.resume();
  h.emergency_resume();
  auto refused = h.acquire({});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kShutdown);
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
  EXPECT_EQ(h.core().session_count(), 0);
}

}  // namespace
}  // namespace poolkeeper::testing
