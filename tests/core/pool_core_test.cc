// PoolCore: sizing, leases, statistics, and invariants under random operations.
#include "core/pool_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "poolkeeper/shared_cap.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

using ::testing::HasSubstr;

class PoolCoreTest : public CoreHarnessTest {};

// ---------------------------------------------------------------- sizing

// Verifies that start() starts exactly `min` sessions, which become idle, and nothing more.
TEST_F(PoolCoreTest, StartsMinSessionsAndKeepsThemWarm) {
  CoreHarness& h = make(quiet_config(2, 4));
  h.start();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
  EXPECT_EQ(h.count_state(SessionState::kStarting), 2);
  EXPECT_EQ(h.core().session_count(), 2);
  h.complete_starts();
  EXPECT_EQ(h.idle(), 2);
  EXPECT_EQ(h.stats().sessions_created, 2u);
  EXPECT_EQ(h.stats().target, 2);
  h.advance_in_steps(minutes(30), minutes(1));
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  EXPECT_EQ(h.idle(), 2);
}

// Verifies that a lazy pool with min 0 starts nothing until demand arrives.
TEST_F(PoolCoreTest, LazyPoolStartsNothingWithoutDemand) {
  CoreHarness& h = make(quiet_config(0, 4));
  h.start();
  EXPECT_EQ(h.count(ActionType::kStartSession), 0);
  const WaiterId w = h.queue();
  EXPECT_EQ(h.count(ActionType::kStartSession), 1);
  const SessionId s = h.pending_starts().front();
  h.complete_starts();
  ASSERT_TRUE(h.grant_of(w).has_value());
  EXPECT_EQ(h.granted(w).session, s);
  EXPECT_NE(h.granted(w).lease, 0u);
}

// Verifies that eager start keeps `max` sessions even with min 0.
TEST_F(PoolCoreTest, EagerStartKeepsMaxSessions) {
  PoolConfig c = quiet_config(0, 3);
  c.start = StartMode::kEager;
  CoreHarness& h = make(c);
  h.start();
  EXPECT_EQ(h.count(ActionType::kStartSession), 3);
  h.settle();
  EXPECT_EQ(h.idle(), 3);
  // A session that dies is replaced: eager keeps max.
  const SessionId victim = h.actions_of(ActionType::kStartSession)[0].session;
  h.exited(victim);
  EXPECT_EQ(h.count(ActionType::kStartSession), 4);
}

// Verifies that no more than max_starting sessions start at once, and warm-up proceeds on ticks.
TEST_F(PoolCoreTest, StartsAtMostMaxStartingAtOnce) {
  PoolConfig c = quiet_config(5, 5);
  c.max_starting = 2;
  CoreHarness& h = make(c);
  h.start();
  EXPECT_EQ(h.pending_starts().size(), 2u);
  for (int i = 0; i < 20 && h.idle() < 5; ++i) {
    h.complete_starts(1);
    h.advance(milliseconds(10));
    EXPECT_LE(h.pending_starts().size(), 2u);
    EXPECT_LE(h.count_state(SessionState::kStarting), 2);
  }
  EXPECT_EQ(h.idle(), 5);
  EXPECT_EQ(h.count(ActionType::kStartSession), 5);
}

// Verifies that when a start completes, the freed max_starting slot is used at once (the pool
// starts what is missing whenever something changes, without waiting for a tick).
TEST_F(PoolCoreTest, StartsNextSessionWhenAStartCompletes) {
  PoolConfig c = quiet_config(5, 5);
  c.max_starting = 2;
  CoreHarness& h = make(c);
  h.start();
  ASSERT_EQ(h.pending_starts().size(), 2u);
  h.complete_starts(1);
  EXPECT_EQ(h.pending_starts().size(), 2u) << "the warm-up stalls until the next tick";
  EXPECT_EQ(h.count(ActionType::kStartSession), 3);
}

// Verifies that max_starting also bounds starts for waiting demand.
TEST_F(PoolCoreTest, MaxStartingBoundsStartsForDemand) {
  PoolConfig c = quiet_config(0, 8);
  c.max_starting = 3;
  CoreHarness& h = make(c);
  h.start();
  for (int i = 0; i < 6; ++i) h.queue();
  EXPECT_EQ(h.count(ActionType::kStartSession), 3);
  h.complete_starts(1);
  EXPECT_EQ(h.count(ActionType::kStartSession), 4);
  h.settle();
  EXPECT_EQ(h.count(ActionType::kStartSession), 6);
  EXPECT_EQ(h.leased(), 6);
}

// Verifies that each waiter not covered by a starting session gets a start of its own when
// starts become possible again (here: after a start-failure backoff).
TEST_F(PoolCoreTest, StartsOneSessionPerUncoveredWaiter) {
  PoolConfig c = quiet_config(0, 4);
  c.start_backoff_initial = seconds(1);
  CoreHarness& h = make(c);
  h.start();
  h.queue();
  ASSERT_EQ(h.pending_starts().size(), 1u);
  h.fail_starts("boom");
  h.queue();
  h.queue();
  EXPECT_TRUE(h.pending_starts().empty()) << "started during the backoff";
  h.advance(milliseconds(1100));
  EXPECT_EQ(h.pending_starts().size(), 3u) << "one start per waiting acquire";
  h.complete_starts();
  EXPECT_EQ(h.leased(), 3);
  EXPECT_EQ(h.core().queue_length(), 0);
}

// Verifies that a waiter covered by a session being checked does not start another one.
TEST_F(PoolCoreTest, WaiterCoveredByCheckingSessionStartsNothing) {
  PoolConfig c = quiet_config(1, 2);
  c.health_error_penalty = 60;
  CoreHarness& h = make_started(c);
  const Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kError).has_value());
  ASSERT_EQ(h.info(g.session).state, SessionState::kChecking);
  const WaiterId w = h.queue();
  EXPECT_EQ(h.count(ActionType::kStartSession), 1) << "the checking session covers the waiter";
  h.check_result(g.session, true);
  EXPECT_EQ(h.granted(w).session, g.session);
}

// Verifies that demand never starts more than max sessions (without overflow).
TEST_F(PoolCoreTest, NeverStartsMoreThanMax) {
  CoreHarness& h = make(quiet_config(0, 2));
  h.start();
  const WaiterId w1 = h.queue();
  const WaiterId w2 = h.queue();
  const WaiterId w3 = h.queue();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
  h.complete_starts();
  ASSERT_TRUE(h.grant_of(w1).has_value());
  ASSERT_TRUE(h.grant_of(w2).has_value());
  EXPECT_FALSE(h.answered(w3));
  EXPECT_EQ(h.core().session_count(), 2);
  ASSERT_TRUE(h.release(h.granted(w1).lease).has_value());
  ASSERT_TRUE(h.grant_of(w3).has_value());
  EXPECT_EQ(h.granted(w3).session, h.granted(w1).session);
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
}

// Verifies that overflow sessions start for waiters beyond max and close on release above max.
TEST_F(PoolCoreTest, OverflowSessionClosesOnReleaseAboveMax) {
  PoolConfig c = quiet_config(0, 1);
  c.overflow = 1;
  CoreHarness& h = make(c);
  h.start();
  const WaiterId a = h.queue();
  const WaiterId b = h.queue();
  const WaiterId w = h.queue();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2) << "max 1 + overflow 1";
  h.complete_starts();
  ASSERT_TRUE(h.grant_of(a).has_value());
  ASSERT_TRUE(h.grant_of(b).has_value());
  EXPECT_EQ(h.stats().overflow_created, 1u);
  EXPECT_EQ(h.core().session_count(), 2);

  // Someone waits: the released session goes to the waiter, nothing closes.
  ASSERT_TRUE(h.release(h.granted(a).lease).has_value());
  ASSERT_TRUE(h.grant_of(w).has_value());
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);

  // Nobody waits and the pool holds 2 > max: the released session closes.
  ASSERT_TRUE(h.release(h.granted(b).lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kOverflow), 1);
  EXPECT_EQ(h.stops(StopReason::kOverflow)[0].session, h.granted(b).session);
  h.complete_stops();
  EXPECT_EQ(h.core().session_count(), 1);

  // Back at max: the last release keeps its session idle.
  ASSERT_TRUE(h.release(h.granted(w).lease).has_value());
  EXPECT_EQ(h.count(ActionType::kStopSession), 1);
  EXPECT_EQ(h.idle(), 1);
}

// Verifies that min_idle keeps idle spares beyond demand, but never goes above max.
TEST_F(PoolCoreTest, MinIdleKeepsSparesWithinMax) {
  PoolConfig c = quiet_config(0, 2);
  c.min_idle = 1;
  CoreHarness& h = make(c);
  h.start();
  EXPECT_EQ(h.count(ActionType::kStartSession), 1);
  h.settle();
  EXPECT_EQ(h.idle(), 1);
  h.lease_now();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2) << "a new spare replaces the leased one";
  h.settle();
  EXPECT_EQ(h.idle(), 1);
  h.lease_now();
  h.settle();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2) << "no spare above max";
  EXPECT_EQ(h.core().session_count(), 2);
}

// Verifies that scale(target) starts sessions up to the target and reports it.
TEST_F(PoolCoreTest, ScaleUpStartsSessionsToTarget) {
  CoreHarness& h = make_started(quiet_config(0, 4));
  ASSERT_TRUE(h.scale(3).has_value());
  EXPECT_EQ(h.count(ActionType::kStartSession), 3);
  h.settle();
  EXPECT_EQ(h.idle(), 3);
  EXPECT_EQ(h.stats().target, 3);
  EXPECT_EQ(h.events_of(EventType::kScaled).size(), 1u);
}

// Verifies that scaling down closes idle sessions above the target at once.
TEST_F(PoolCoreTest, ScaleDownClosesIdleSessionsAtOnce) {
  CoreHarness& h = make_started(quiet_config(3, 4));
  ASSERT_EQ(h.idle(), 3);
  ASSERT_TRUE(h.scale(1).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kScaledDown), 2);
  EXPECT_EQ(h.count_state(SessionState::kClosing), 2);
  h.complete_stops();
  EXPECT_EQ(h.core().session_count(), 1);
  EXPECT_EQ(h.stats().target, 1);
  EXPECT_EQ(h.count(ActionType::kStartSession), 3) << "min no longer applies after scale";
}

// Verifies that scaling down closes leased sessions when released, while nobody waits.
TEST_F(PoolCoreTest, ScaleDownClosesLeasedSessionsOnRelease) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  ASSERT_TRUE(h.scale(0).has_value());
  EXPECT_EQ(h.count(ActionType::kStopSession), 0) << "leased sessions stay until released";
  ASSERT_TRUE(h.release(a.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kScaledDown), 1);
  EXPECT_EQ(h.stops(StopReason::kScaledDown)[0].session, a.session);
  ASSERT_TRUE(h.release(b.lease).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kScaledDown), 2);
  EXPECT_EQ(h.stops(StopReason::kScaledDown)[1].session, b.session);
  h.complete_stops();
  EXPECT_EQ(h.core().session_count(), 0);
}

// Verifies that a scaled-down leased session goes to a waiter instead of closing.
TEST_F(PoolCoreTest, ScaleDownHandsReleasedSessionToWaiterFirst) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant a = h.lease_now();
  ASSERT_TRUE(h.scale(0).has_value());
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(a.lease).has_value());
  ASSERT_TRUE(h.grant_of(w).has_value());
  EXPECT_EQ(h.granted(w).session, a.session);
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
}

// Verifies that a scale-down closes only sessions above the target: when a leased session is
// lost another way (broken), releasing the other one must not take the pool below target.
TEST_F(PoolCoreTest, ScaleDownNeverClosesSessionsAtOrBelowTarget) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  ASSERT_TRUE(h.scale(1).has_value());  // one leased session is now above the target
  ASSERT_TRUE(h.release(a.lease, ReleaseOutcome::kBroken).has_value());
  h.complete_stops();
  ASSERT_EQ(h.core().session_count(), 1) << "the pool is at its target";
  const std::size_t mark = h.mark();
  ASSERT_TRUE(h.release(b.lease).has_value());
  EXPECT_EQ(h.count_stops(StopReason::kScaledDown, mark), 0)
      << "closed a session the target keeps (and then starts a replacement)";
  EXPECT_EQ(h.count(ActionType::kStartSession, mark), 0);
  EXPECT_EQ(h.idle(), 1);
}

// Verifies that scaling down while sessions are still starting converges to the target: the
// sessions started for the old warm size are not kept idle above the new one.
TEST_F(PoolCoreTest, ScaleDownDuringWarmUpConvergesToTarget) {
  CoreHarness& h = make(quiet_config(3, 3));
  h.start();
  ASSERT_EQ(h.pending_starts().size(), 3u);
  ASSERT_TRUE(h.scale(1).has_value());
  h.settle();
  h.advance(seconds(1));
  h.settle();
  EXPECT_EQ(h.core().session_count(), 1) << "idle sessions above the target stay";
  EXPECT_EQ(h.count_stops(StopReason::kScaledDown), 2);
}

// Verifies that a scale-down keeps the min_idle spare instead of closing it and starting
// another one.
TEST_F(PoolCoreTest, ScaleDownKeepsMinIdleSpare) {
  PoolConfig c = quiet_config(0, 3);
  c.min_idle = 1;
  CoreHarness& h = make_started(c);
  ASSERT_EQ(h.idle(), 1);
  ASSERT_TRUE(h.scale(0).has_value());
  h.settle();
  EXPECT_EQ(h.idle(), 1);
  EXPECT_EQ(h.count(ActionType::kStartSession), 1) << "closed the spare and started a new one";
}

// Verifies that scale refuses targets outside 0..max with kInvalidArgument.
TEST_F(PoolCoreTest, ScaleRefusesTargetOutsideRange) {
  CoreHarness& h = make_started(quiet_config(0, 4));
  auto below = h.scale(-1);
  ASSERT_FALSE(below.has_value());
  EXPECT_EQ(below.error().code, ErrorCode::kInvalidArgument);
  auto above = h.scale(5);
  ASSERT_FALSE(above.has_value());
  EXPECT_EQ(above.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(h.count(ActionType::kStartSession), 0);
  EXPECT_TRUE(h.scale(4).has_value());
  EXPECT_EQ(h.count(ActionType::kStartSession), 4);
}

// Verifies that demand grows a scaled pool up to max and the idle timeout shrinks it back.
TEST_F(PoolCoreTest, DemandGrowsScaledPoolAndIdleTimeoutShrinksIt) {
  PoolConfig c = quiet_config(0, 3);
  c.idle_timeout = minutes(1);
  CoreHarness& h = make_started(c);
  ASSERT_TRUE(h.scale(1).has_value());
  h.settle();
  std::vector<LeaseId> leases{h.lease_now().lease};
  const WaiterId w2 = h.queue();
  const WaiterId w3 = h.queue();
  h.settle();
  ASSERT_TRUE(h.grant_of(w2) && h.grant_of(w3));
  leases.push_back(h.granted(w2).lease);
  leases.push_back(h.granted(w3).lease);
  EXPECT_EQ(h.core().session_count(), 3);
  for (LeaseId l : leases) ASSERT_TRUE(h.release(l).has_value());
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  h.advance(seconds(61));
  EXPECT_EQ(h.count_stops(StopReason::kIdleTimeout), 2);
  h.complete_stops();
  EXPECT_EQ(h.core().session_count(), 1);
}

// Verifies that a SharedCap bounds the sum of two pools, counting closing sessions.
TEST_F(PoolCoreTest, SharedCapBoundsSessionsAcrossPools) {
  SharedCap cap(3);
  CoreHarness a(quiet_config(2, 4), {.seed = 1, .shared_cap = &cap});
  CoreHarness b(quiet_config(2, 4), {.seed = 2, .shared_cap = &cap});
  a.start();
  b.start();
  EXPECT_EQ(a.count(ActionType::kStartSession), 2);
  EXPECT_EQ(b.count(ActionType::kStartSession), 1);
  EXPECT_EQ(cap.used(), 3);
  a.settle();
  b.settle();

  // B's demand cannot start a session while the cap is full.
  b.lease_now();
  const WaiterId w = b.queue();
  EXPECT_EQ(b.count(ActionType::kStartSession), 1);

  // A closes one session; until it is confirmed stopped it still counts.
  ASSERT_TRUE(a.scale(1).has_value());
  ASSERT_EQ(a.count_stops(StopReason::kScaledDown), 1);
  EXPECT_EQ(cap.used(), 3);
  b.tick();
  EXPECT_EQ(b.count(ActionType::kStartSession), 1);

  a.complete_stops();
  EXPECT_EQ(cap.used(), 2);
  b.tick();
  EXPECT_EQ(b.count(ActionType::kStartSession), 2);
  EXPECT_EQ(cap.used(), 3);
  b.complete_starts();
  EXPECT_TRUE(b.grant_of(w).has_value());
  EXPECT_LE(a.core().session_count() + b.core().session_count(), 3);
}

// Verifies that a failed start gives its shared-cap unit back.
TEST_F(PoolCoreTest, FailedStartReturnsSharedCapUnit) {
  SharedCap cap(1);
  PoolConfig c = quiet_config(1, 1);
  CoreHarness& h = make(c, {.seed = 3, .shared_cap = &cap});
  h.start();
  EXPECT_EQ(cap.used(), 1);
  h.fail_starts("no quota");
  EXPECT_EQ(cap.used(), 0);
}

// Verifies that session ids are never reused, even when a slot is.
TEST_F(PoolCoreTest, SessionIdsAreNeverReused) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  std::set<SessionId> ids;
  for (int i = 0; i < 5; ++i) {
    const Grant g = h.lease_now();
    EXPECT_TRUE(ids.insert(g.session).second) << "session id " << g.session << " reused";
    ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
    h.settle();
  }
  EXPECT_EQ(ids.size(), 5u);
  // One slot, five incarnations: ids are incarnation << 32 | slot.
  std::set<std::uint64_t> slots;
  for (SessionId id : ids) slots.insert(id & 0xffffffffu);
  EXPECT_EQ(slots.size(), 1u);
}

// Verifies that a closing session still counts against max until it is confirmed stopped.
TEST_F(PoolCoreTest, ClosingSessionCountsAgainstMax) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kBroken), 1);
  EXPECT_EQ(h.count(ActionType::kStartSession), 1) << "no replacement while the old one closes";
  EXPECT_EQ(h.core().session_count(), 1);
  h.complete_stops();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
}

// ---------------------------------------------------------------- leases

// Verifies that lease ids are non-zero and never issued twice.
TEST_F(PoolCoreTest, LeaseIdsAreUnique) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  std::set<LeaseId> ids;
  for (int i = 0; i < 2000; ++i) {
    const Grant g = h.lease_now();
    ASSERT_NE(g.lease, 0u);
    ASSERT_TRUE(ids.insert(g.lease).second) << "lease id issued twice at " << i;
    ASSERT_TRUE(h.release(g.lease).has_value());
  }
}

// Verifies that releasing an id that was never issued is kUnknownLease.
TEST_F(PoolCoreTest, ReleaseOfNeverIssuedLeaseIsUnknownLease) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  for (LeaseId bogus : {LeaseId{0}, LeaseId{1}, LeaseId{0x123456789abcdefULL}, g.lease + 1}) {
    auto r = h.release(bogus);
    ASSERT_FALSE(r.has_value()) << bogus;
    EXPECT_EQ(r.error().code, ErrorCode::kUnknownLease) << bogus;
  }
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);
}

// Verifies that a lease id from another core (other keys) is unknown here.
TEST_F(PoolCoreTest, LeaseFromAnotherPoolIsUnknownLease) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  CoreHarness other(quiet_config(1, 1), {.seed = 777});
  other.start();
  other.settle();
  const Grant foreign = other.lease_now();
  h.lease_now();
  auto r = h.release(foreign.lease);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kUnknownLease);
}

// Verifies that releasing twice is kLeaseAlreadyReleased, also long after.
TEST_F(PoolCoreTest, ReleasingTwiceIsLeaseAlreadyReleased) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant first = h.lease_now();
  ASSERT_TRUE(h.release(first.lease).has_value());
  auto again = h.release(first.lease);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code, ErrorCode::kLeaseAlreadyReleased);
  // Many leases later on the same session, the answer stays precise.
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(h.release(h.lease_now().lease).has_value());
  auto late = h.release(first.lease);
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code, ErrorCode::kLeaseAlreadyReleased);
}

// Verifies that another owner cannot release a lease, and the lease survives the attempt.
TEST_F(PoolCoreTest, ReleaseByAnotherOwnerIsNotLeaseOwner) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now({.owner = "alice"});
  auto r = h.release(g.lease, ReleaseOutcome::kOk, "bob");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kNotLeaseOwner);
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);
  EXPECT_EQ(h.leased(), 1);
  ASSERT_EQ(h.info(g.session).lease_owner, "alice");
  EXPECT_TRUE(h.release(g.lease, ReleaseOutcome::kOk, "alice").has_value());
  EXPECT_EQ(h.core().lease_of(g.session), 0u);
}

// Verifies that a release without an owner check (the shell's own) is accepted.
TEST_F(PoolCoreTest, ReleaseWithoutOwnerSkipsOwnerCheck) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now({.owner = "alice"});
  EXPECT_TRUE(h.release(g.lease, ReleaseOutcome::kOk, std::nullopt).has_value());
}

// Verifies that a lease held past its lease timeout is reclaimed, stopped and reported.
TEST_F(PoolCoreTest, ReclaimsLeaseAfterLeaseTimeout) {
  PoolConfig c = quiet_config(1, 1);
  c.lease_timeout = seconds(10);
  CoreHarness& h = make_started(c);
  const Grant g = h.lease_now({.owner = "alice"});
  EXPECT_EQ(g.expires_at, h.now() + seconds(10));
  h.advance(seconds(9));
  EXPECT_TRUE(h.events_of(EventType::kLeaseReclaimed).empty());
  EXPECT_EQ(h.count(ActionType::kStopSession), 0);
  h.advance(seconds(2));
  const auto reclaimed = h.events_of(EventType::kLeaseReclaimed);
  ASSERT_EQ(reclaimed.size(), 1u);
  EXPECT_EQ(reclaimed[0].lease, g.lease);
  EXPECT_THAT(reclaimed[0].detail, HasSubstr("alice"));
  ASSERT_EQ(h.count_stops(StopReason::kLeaseAbandoned), 1);
  EXPECT_EQ(h.stops(StopReason::kLeaseAbandoned)[0].session, g.session);
  EXPECT_EQ(h.stats().reclaimed, 1u);

  auto r = h.release(g.lease, ReleaseOutcome::kOk, "alice");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kLeaseReclaimed);

  // The session is replaced once the old one is gone.
  h.complete_stops();
  EXPECT_EQ(h.count(ActionType::kStartSession), 2);
}

// Verifies that a request's own lease timeout overrides the pool's.
TEST_F(PoolCoreTest, RequestLeaseTimeoutOverridesPoolDefault) {
  PoolConfig c = quiet_config(1, 1);
  c.lease_timeout = minutes(10);
  CoreHarness& h = make_started(c);
  const Grant g = h.lease_now({.lease_timeout = seconds(3)});
  EXPECT_EQ(g.expires_at, h.now() + seconds(3));
  h.advance(seconds(4));
  EXPECT_EQ(h.count_stops(StopReason::kLeaseAbandoned), 1);
  auto r = h.release(g.lease);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kLeaseReclaimed);
}

// Verifies that a lease never expires when no lease timeout is configured.
TEST_F(PoolCoreTest, LeaseWithoutTimeoutNeverExpires) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  EXPECT_EQ(g.expires_at, TimePoint::max());
  h.advance_in_steps(hours(48), hours(1));
  EXPECT_EQ(h.stats().reclaimed, 0u);
  EXPECT_TRUE(h.release(g.lease).has_value());
}

// Verifies that releasing a lease whose session died is kSessionLost, and the session is replaced.
TEST_F(PoolCoreTest, ReleaseAfterSessionDiedIsSessionLost) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now();
  h.exited(g.session, "segfault");
  const auto lost = h.events_of(EventType::kLeaseLost);
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].lease, g.lease);
  EXPECT_EQ(h.count(ActionType::kStartSession), 2) << "the dead session is replaced";
  auto r = h.release(g.lease);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kSessionLost);
  EXPECT_EQ(h.core().lease_of(g.session), 0u);
}

// Verifies that a broken release stops the session and replaces it.
TEST_F(PoolCoreTest, BrokenReleaseStopsAndReplacesSession) {
  CoreHarness& h = make_started(quiet_config(1, 2));
  const Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
  ASSERT_EQ(h.count_stops(StopReason::kBroken), 1);
  EXPECT_EQ(h.stops(StopReason::kBroken)[0].session, g.session);
  EXPECT_EQ(h.stats().broken_releases, 1u);
  h.settle();
  EXPECT_EQ(h.idle(), 1);
  const Grant next = h.lease_now();
  EXPECT_NE(next.session, g.session);
}

// Verifies that ok releases raise health (capped at 100) and error releases lower it.
TEST_F(PoolCoreTest, ReleaseOutcomeMovesHealthScore) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kOk).has_value());
  EXPECT_EQ(h.info(g.session).health, 100);
  g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kError).has_value());
  EXPECT_EQ(h.info(g.session).health, 75);
  g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kOk).has_value());
  EXPECT_EQ(h.info(g.session).health, 80);
  EXPECT_EQ(h.info(g.session).uses, 3);
  // Also when the session goes straight to a waiter.
  g = h.lease_now();
  const WaiterId w = h.queue();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kOk).has_value());
  EXPECT_EQ(h.granted(w).session, g.session);
  EXPECT_EQ(h.info(g.session).health, 85);
}

// Verifies that lease_of and sessions() report the lease holder and client session.
TEST_F(PoolCoreTest, ReportsLeaseOnSession) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now({.client_session = "conv-1", .owner = "bob"});
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);
  const auto info = h.session(g.session);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, SessionState::kLeased);
  EXPECT_EQ(info->lease_owner, "bob");
  EXPECT_EQ(info->client_session, "conv-1");
  EXPECT_EQ(h.core().sessions(h.now()).size(), 1u);
  EXPECT_FALSE(h.session(g.session + 1).has_value());
}

// Verifies that lease granted/released events appear only when lease_events is on.
TEST_F(PoolCoreTest, LeaseEventsOnlyWhenEnabled) {
  for (bool on : {false, true}) {
    SCOPED_TRACE(on);
    PoolConfig c = quiet_config(1, 1);
    c.lease_events = on;
    CoreHarness& h = make_started(c);
    const Grant g = h.lease_now();
    ASSERT_TRUE(h.release(g.lease).has_value());
    const auto granted = h.events_of(EventType::kLeaseGranted);
    const auto released = h.events_of(EventType::kLeaseReleased);
    ASSERT_EQ(granted.size(), on ? 1u : 0u);
    ASSERT_EQ(released.size(), on ? 1u : 0u);
    if (on) {
      EXPECT_EQ(granted[0].lease, g.lease);
      EXPECT_EQ(released[0].session, g.session);
    }
  }
}

// ---------------------------------------------------------------- statistics

// Verifies that stats count acquisitions, immediate grants, releases, reuse and sessions.
TEST_F(PoolCoreTest, StatsCountLeaseLifecycle) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  Grant g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease).has_value());
  g = h.lease_now();
  ASSERT_TRUE(h.release(g.lease, ReleaseOutcome::kBroken).has_value());
  const WaiterId w = h.queue();
  h.settle();
  ASSERT_TRUE(h.grant_of(w).has_value());
  ASSERT_TRUE(h.release(h.granted(w).lease).has_value());

  const PoolStats s = h.stats();
  EXPECT_EQ(s.name, "test");
  EXPECT_EQ(s.acquisitions, 3u);
  EXPECT_EQ(s.immediate, 2u);
  EXPECT_EQ(s.releases, 3u);
  EXPECT_EQ(s.broken_releases, 1u);
  EXPECT_EQ(s.reused, 1u) << "only the second lease ran on a session that served before";
  EXPECT_DOUBLE_EQ(s.reuse_rate, 1.0 / 3.0);
  EXPECT_EQ(s.sessions_created, 2u);
  EXPECT_EQ(s.sessions_closed, 1u);
  EXPECT_EQ(s.sessions, 1);
  EXPECT_EQ(s.sessions_by_state[static_cast<int>(SessionState::kIdle)], 1);
  EXPECT_EQ(s.queue_length, 0);
}

// Verifies that the wait summary records every grant's wait, immediate ones as zero.
TEST_F(PoolCoreTest, StatsWaitQuantilesReflectWaits) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  Grant held = h.lease_now();  // waited 0
  for (int k = 1; k <= 9; ++k) {
    const WaiterId w = h.queue();
    h.clock.advance(seconds(k));
    ASSERT_TRUE(h.release(held.lease).has_value());
    ASSERT_TRUE(h.grant_of(w).has_value());
    held = h.granted(w);
  }
  const WaitSummary s = h.stats().wait;
  EXPECT_EQ(s.count, 10u);
  EXPECT_EQ(s.max, seconds(9));
  // p50 of {0,1,...,9} s is the 5th value, 4 s (within the histogram's 1/32).
  const Duration four = seconds(4);
  const Duration nine = seconds(9);
  EXPECT_GE(s.p50, four);
  EXPECT_LE(s.p50, four + four / 32);
  EXPECT_GE(s.p95, nine - nine / 32);
  EXPECT_EQ(s.p99, seconds(9));
}

// Verifies that stats report the queue length, timeouts, cancellations and rejections.
TEST_F(PoolCoreTest, StatsCountQueueOutcomes) {
  PoolConfig c = quiet_config(1, 1);
  c.max_queue = 2;
  CoreHarness& h = make_started(c);
  h.lease_now();
  const WaiterId timed = h.queue({.deadline = h.now() + seconds(1)});
  const WaiterId gone = h.queue();
  EXPECT_EQ(h.stats().queue_length, 2);
  EXPECT_EQ(h.core().queue_length(), 2);
  auto full = h.acquire({});
  ASSERT_FALSE(full.has_value());
  EXPECT_EQ(full.error().code, ErrorCode::kQueueFull);
  ASSERT_TRUE(h.cancel(gone).has_value());
  h.advance(seconds(2));
  ASSERT_TRUE(h.reject_of(timed).has_value());
  const PoolStats s = h.stats();
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_EQ(s.cancellations, 1u);
  EXPECT_GE(s.rejections, 1u);
  EXPECT_EQ(s.queue_length, 0);
}

// ---------------------------------------------------------------- invariants

// Verifies, over random operations, that no session has two leases, the pool never exceeds
// max + overflow, and every queued waiter is answered exactly once (or was cancelled).
TEST_F(PoolCoreTest, RandomOperationsKeepInvariants) {
  for (std::uint64_t seed : {1ULL, 2ULL, 3ULL, 4ULL, 5ULL, 6ULL, 7ULL, 8ULL}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937_64 rng(seed);
    PoolConfig c = quiet_config(1, 3);
    c.overflow = 1;
    c.min_idle = 1;
    c.max_queue = 6;
    c.aging = seconds(1);
    c.idle_timeout = seconds(20);
    c.lease_timeout = seconds(15);
    c.max_uses = 4;
    c.max_lifetime = seconds(90);
    c.lifetime_jitter = 0.3;
    c.validate_after_idle = seconds(10);
    c.early_reject = (seed % 2) == 0;
    CoreHarness& h = make(c, {.seed = seed});
    h.start();

    std::map<LeaseId, SessionId> held;  // leases we believe are live
    std::size_t seen_actions = 0;
    std::size_t seen_events = 0;
    auto sync = [&] {
      for (const Action& a : h.actions_of(ActionType::kGrant, seen_actions)) {
        held[a.grant.lease] = a.grant.session;
      }
      seen_actions = h.mark();
      for (std::size_t i = seen_events; i < h.events().size(); ++i) {
        const Event& e = h.events()[i];
        if (e.type == EventType::kLeaseReclaimed || e.type == EventType::kLeaseLost) {
          held.erase(e.lease);
        }
      }
      seen_events = h.event_mark();
    };

    for (int step = 0; step < 3000; ++step) {
      const int op = static_cast<int>(rng() % 100);
      if (op < 25) {
        const int priority = static_cast<int>(rng() % 10);
        const auto timeout = milliseconds(static_cast<int>(rng() % 20000));
        auto r = h.acquire({.priority = priority, .deadline = h.now() + timeout});
        if (r && r->granted) held[r->grant.lease] = r->grant.session;
      } else if (op < 45 && !held.empty()) {
        auto it = std::next(held.begin(), static_cast<long>(rng() % held.size()));
        const auto outcome = static_cast<ReleaseOutcome>(rng() % 3);
        auto r = h.release(it->first, outcome);
        if (!r) {
          ASSERT_TRUE(r.error().code == ErrorCode::kLeaseReclaimed ||
                      r.error().code == ErrorCode::kSessionLost)
              << to_string(r.error().code);
        }
        held.erase(it);
      } else if (op < 50) {
        std::vector<WaiterId> open;
        for (WaiterId w : h.queued()) {
          if (!h.answered(w) && !h.cancelled().count(w)) open.push_back(w);
        }
        if (!open.empty()) {
          const WaiterId w = open[rng() % open.size()];
          ASSERT_TRUE(h.cancel(w).has_value());
        }
      } else if (op < 70) {
        h.advance(milliseconds(static_cast<int>(rng() % 3000)));
      } else if (op < 82) {
        if (!h.pending_starts().empty()) {
          if (rng() % 5 == 0) {
            h.fail_start(h.pending_starts().front(), "random failure");
          } else {
            h.complete_starts(1);
          }
        }
      } else if (op < 92) {
        if (!h.pending_stops().empty()) h.stop_confirmed(h.pending_stops().front());
      } else if (op < 96) {
        if (!h.pending_checks().empty()) h.check_result(h.pending_checks().front(), rng() % 4 != 0);
      } else {
        const auto all = h.core().sessions(h.now());
        if (!all.empty()) {
          const SessionInfo& s = all[rng() % all.size()];
          if (s.state != SessionState::kStarting && s.state != SessionState::kClosing) {
            h.exited(s.id, "random crash");
          }
        }
      }
      sync();

      ASSERT_LE(h.core().session_count(), c.max + c.overflow) << "step " << step;
      ASSERT_LE(h.count_state(SessionState::kStarting), c.max_starting);
      std::set<SessionId> sessions_with_lease;
      for (const auto& [lease, session] : held) {
        ASSERT_TRUE(sessions_with_lease.insert(session).second)
            << "two leases on session " << session << " at step " << step;
      }
      const PoolStats st = h.stats();
      ASSERT_EQ(st.sessions, h.core().session_count());
      ASSERT_EQ(st.queue_length, h.core().queue_length());
      if (::testing::Test::HasFatalFailure() || ::testing::Test::HasNonfatalFailure()) return;
    }

    h.shutdown();
    h.finish_checks(true);
    for (auto& [lease, session] : held) (void)h.release(lease);
    h.settle();
    EXPECT_EQ(h.core().queue_length(), 0);
    for (WaiterId w : h.queued()) {
      if (h.cancelled().count(w)) {
        EXPECT_EQ(h.answers(w), 0) << "cancelled waiter " << w << " was answered";
      } else {
        EXPECT_EQ(h.answers(w), 1) << "waiter " << w << " answered " << h.answers(w) << " times";
      }
    }
    EXPECT_TRUE(h.core().drained());
    EXPECT_EQ(h.core().session_count(), 0);
  }
}

}  // namespace
}  // namespace poolkeeper::testing
