// PoolCore: client sessions (affinity, documents, TTL expiry in batches).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/pool_core.h"
#include "testing/core_harness.h"

namespace poolkeeper::testing {
namespace {

class PoolCoreTest : public CoreHarnessTest {
 protected:
  static PoolConfig expiring_config(int batch = 100) {
    PoolConfig c = quiet_config(1, 2);
    c.client_session_ttl = minutes(10);
    c.client_session_cleanup_interval = minutes(1);
    c.client_session_cleanup_batch = batch;
    return c;
  }
  static bool known(CoreHarness& h, std::string_view id) {
    return h.core().get_client_session(id, h.now()).has_value();
  }
};

// Verifies that a client session gets the session it used last when that one is idle,
// whichever order sessions became idle in.
TEST_F(PoolCoreTest, AffinityHitReturnsSessionUsedLast) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant x = h.lease_now({.client_session = "u1"});
  const Grant y = h.lease_now({.client_session = "u2"});
  ASSERT_NE(x.session, y.session);

  ASSERT_TRUE(h.release(x.lease).has_value());
  ASSERT_TRUE(h.release(y.lease).has_value());
  Grant g1 = h.lease_now({.client_session = "u1"});
  Grant g2 = h.lease_now({.client_session = "u2"});
  EXPECT_EQ(g1.session, x.session);
  EXPECT_EQ(g2.session, y.session);

  ASSERT_TRUE(h.release(g2.lease).has_value());
  ASSERT_TRUE(h.release(g1.lease).has_value());
  g1 = h.lease_now({.client_session = "u1"});
  g2 = h.lease_now({.client_session = "u2"});
  EXPECT_EQ(g1.session, x.session);
  EXPECT_EQ(g2.session, y.session);
  EXPECT_EQ(h.stats().affinity_hits, 4u);
}

// Verifies that when the last-used session is busy, the client session gets another one
// and the miss is counted.
TEST_F(PoolCoreTest, AffinityMissWhenLastSessionIsLeased) {
  CoreHarness& h = make_started(quiet_config(2, 2));
  const Grant x = h.lease_now({.client_session = "u1"});
  ASSERT_TRUE(h.release(x.lease).has_value());
  const Grant a = h.lease_now();
  const Grant b = h.lease_now();
  ASSERT_TRUE(h.release(a.session == x.session ? b.lease : a.lease).has_value());
  const PoolStats before = h.stats();
  const Grant g = h.lease_now({.client_session = "u1"});
  EXPECT_NE(g.session, x.session);
  EXPECT_EQ(h.stats().affinity_misses, before.affinity_misses + 1);
  EXPECT_EQ(h.stats().affinity_hits, before.affinity_hits);
  EXPECT_EQ(h.client_session("u1").last_session, g.session);
}

// Verifies that a client session remembers its last session and counts its leases in flight.
TEST_F(PoolCoreTest, ClientSessionRecordsLastSessionAndActiveLeases) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  const Grant g = h.lease_now({.client_session = "conv-7"});
  auto info = h.core().get_client_session("conv-7", h.now());
  ASSERT_TRUE(info.has_value()) << info.error().message;
  EXPECT_EQ(info->id, "conv-7");
  EXPECT_EQ(info->last_session, g.session);
  EXPECT_EQ(info->active_leases, 1);
  ASSERT_TRUE(h.release(g.lease).has_value());
  info = h.core().get_client_session("conv-7", h.now());
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->active_leases, 0);
  EXPECT_EQ(info->last_session, g.session);
  EXPECT_EQ(h.stats().client_sessions_active, 1);
}

// Verifies that put/get/delete keep the count and report unknown ids precisely.
TEST_F(PoolCoreTest, CountsClientSessions) {
  CoreHarness& h = make_started(quiet_config(1, 1));
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(h.core().put_client_session(id, "{}", h.now()).has_value());
  }
  EXPECT_EQ(h.stats().client_sessions_active, 3);
  ASSERT_TRUE(h.core().delete_client_session("b").has_value());
  EXPECT_EQ(h.stats().client_sessions_active, 2);
  auto get = h.core().get_client_session("b", h.now());
  ASSERT_FALSE(get.has_value());
  EXPECT_EQ(get.error().code, ErrorCode::kUnknownClientSession);
  auto del = h.core().delete_client_session("b");
  ASSERT_FALSE(del.has_value());
  EXPECT_EQ(del.error().code, ErrorCode::kUnknownClientSession);
  EXPECT_TRUE(known(h, "a"));
  EXPECT_TRUE(known(h, "c"));
}

// Verifies that documents up to the cap are stored and larger ones refused, keeping the old one.
TEST_F(PoolCoreTest, RefusesClientSessionDocumentAboveSizeCap) {
  PoolConfig c = quiet_config(1, 1);
  c.max_client_session_document = 16;
  CoreHarness& h = make_started(c);
  const std::string fits(16, 'x');
  auto put = h.core().put_client_session("u", fits, h.now());
  ASSERT_TRUE(put.has_value()) << put.error().message;
  EXPECT_EQ(put->document, fits);
  auto big = h.core().put_client_session("u", std::string(17, 'y'), h.now());
  ASSERT_FALSE(big.has_value());
  EXPECT_EQ(big.error().code, ErrorCode::kDocumentTooLarge);
  EXPECT_EQ(h.client_session("u").document, fits);
  auto fresh_big = h.core().put_client_session("v", std::string(17, 'y'), h.now());
  ASSERT_FALSE(fresh_big.has_value());
  EXPECT_EQ(fresh_big.error().code, ErrorCode::kDocumentTooLarge);
  EXPECT_FALSE(known(h, "v"));
}

// Verifies that the client-session table refuses new ids beyond max_client_sessions.
TEST_F(PoolCoreTest, RefusesClientSessionsBeyondMax) {
  PoolConfig c = quiet_config(1, 1);
  c.max_client_sessions = 2;
  CoreHarness& h = make_started(c);
  ASSERT_TRUE(h.core().put_client_session("a", "", h.now()).has_value());
  ASSERT_TRUE(h.core().put_client_session("b", "", h.now()).has_value());
  auto third = h.core().put_client_session("c", "", h.now());
  ASSERT_FALSE(third.has_value());
  EXPECT_EQ(third.error().code, ErrorCode::kTooManyClientSessions);
  EXPECT_TRUE(h.core().put_client_session("a", "updated", h.now()).has_value());
  EXPECT_EQ(h.stats().client_sessions_active, 2);
}

// Verifies that expired client sessions go in batches of at most client_session_cleanup_batch,
// one cleanup per interval, oldest first, with runs and expiries counted.
TEST_F(PoolCoreTest, ExpiresClientSessionsInBoundedBatches) {
  CoreHarness& h = make_started(expiring_config(/*batch=*/2));
  const TimePoint t0 = h.now();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(h.core().put_client_session("c" + std::to_string(i), "", h.now()).has_value());
    h.clock.advance(seconds(1));
  }
  std::vector<std::uint64_t> batches;
  std::vector<TimePoint> run_times;
  bool checked_first_batch = false;
  while (h.now() < t0 + minutes(16)) {
    const PoolStats before = h.stats();
    const std::size_t events = h.event_mark();
    h.advance(seconds(10));
    const PoolStats after = h.stats();
    const std::uint64_t expired = after.client_sessions_expired - before.client_sessions_expired;
    ASSERT_LE(after.cleanup_runs - before.cleanup_runs, 1u);
    if (after.cleanup_runs > before.cleanup_runs) {
      if (!run_times.empty()) {
        EXPECT_GE(h.now() - run_times.back(), minutes(1)) << "cleanup ran more than once per interval";
      }
      run_times.push_back(h.now());
    }
    if (h.now() < t0 + minutes(10)) {
      ASSERT_EQ(expired, 0u) << "expired before its TTL";
    }
    ASSERT_LE(expired, 2u) << "more than one batch";
    if (expired > 0) {
      batches.push_back(expired);
      const auto ev = h.events_of(EventType::kClientSessionsExpired, events);
      ASSERT_EQ(ev.size(), 1u);
      EXPECT_EQ(ev[0].value, static_cast<std::int64_t>(expired));
      if (!checked_first_batch) {
        checked_first_batch = true;
        EXPECT_EQ(after.client_sessions_active, 4);
        // The table still holds the four newest (get() already hides expired ones, so ask
        // delete(), which answers from the table): the two oldest went first.
        EXPECT_EQ(h.core().delete_client_session("c0").error().code,
                  ErrorCode::kUnknownClientSession) << "oldest first";
        EXPECT_EQ(h.core().delete_client_session("c1").error().code,
                  ErrorCode::kUnknownClientSession) << "oldest first";
        EXPECT_TRUE(h.core().delete_client_session("c5").has_value());
      }
    }
  }
  EXPECT_EQ(batches, (std::vector<std::uint64_t>{2, 2, 1}));
  const PoolStats s = h.stats();
  EXPECT_EQ(s.client_sessions_expired, 5u);
  EXPECT_EQ(s.client_sessions_active, 0);
  EXPECT_GE(s.cleanup_runs, 14u);
  EXPECT_LE(s.cleanup_runs, 17u);
}

// Verifies that a client session inactive for its TTL reads as unknown even before the
// cleanup removes it, and still counts as active until then.
TEST_F(PoolCoreTest, InactiveClientSessionReadsAsUnknownBeforeCleanup) {
  PoolConfig c = expiring_config();
  c.client_session_cleanup_interval = hours(1);
  CoreHarness& h = make_started(c);
  ASSERT_TRUE(h.core().put_client_session("a", "", h.now()).has_value());
  h.advance(minutes(9));
  EXPECT_TRUE(known(h, "a"));
  h.advance(minutes(2));
  EXPECT_FALSE(known(h, "a"));
  EXPECT_EQ(h.stats().client_sessions_expired, 0u);
}

// Verifies that writing a client session counts as activity and moves its expiry.
TEST_F(PoolCoreTest, PutRefreshesClientSessionActivity) {
  CoreHarness& h = make_started(expiring_config());
  const TimePoint t0 = h.now();
  ASSERT_TRUE(h.core().put_client_session("a", "1", h.now()).has_value());
  EXPECT_EQ(h.client_session("a").expires_at, t0 + minutes(10));
  h.advance_in_steps(minutes(9), minutes(1));
  auto again = h.core().put_client_session("a", "2", h.now());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->expires_at, t0 + minutes(19));
  h.advance_in_steps(minutes(6), minutes(1));  // t0 + 15 min
  EXPECT_TRUE(known(h, "a"));
  h.advance_in_steps(minutes(6), minutes(1));  // t0 + 21 min
  EXPECT_FALSE(known(h, "a"));
}

// Verifies that a client session with a lease in flight never expires, and expiring others
// goes on around it.
TEST_F(PoolCoreTest, NeverExpiresClientSessionWithLeaseInFlight) {
  CoreHarness& h = make_started(expiring_config(/*batch=*/1));
  const Grant g = h.lease_now({.client_session = "busy"});
  h.clock.advance(seconds(1));
  ASSERT_TRUE(h.core().put_client_session("idle1", "", h.now()).has_value());
  ASSERT_TRUE(h.core().put_client_session("idle2", "", h.now()).has_value());
  h.advance_in_steps(minutes(30), minutes(1));
  auto busy = h.core().get_client_session("busy", h.now());
  ASSERT_TRUE(busy.has_value()) << "expired with a lease in flight";
  EXPECT_EQ(busy->active_leases, 1);
  EXPECT_FALSE(known(h, "idle1")) << "a busy client session blocked the cleanup";
  EXPECT_FALSE(known(h, "idle2"));
  EXPECT_EQ(h.stats().client_sessions_expired, 2u);
  // The lease itself is untouched.
  EXPECT_EQ(h.core().lease_of(g.session), g.lease);
  ASSERT_TRUE(h.release(g.lease).has_value());
  h.advance_in_steps(minutes(12), minutes(1));
  EXPECT_FALSE(known(h, "busy"));
  EXPECT_EQ(h.stats().client_sessions_expired, 3u);
}

// Verifies that an acquire with a new client session creates it and counts as activity.
TEST_F(PoolCoreTest, AcquireCreatesAndTouchesClientSession) {
  CoreHarness& h = make_started(expiring_config());
  EXPECT_FALSE(known(h, "new"));
  const Grant g = h.lease_now({.client_session = "new"});
  EXPECT_TRUE(known(h, "new"));
  ASSERT_TRUE(h.release(g.lease).has_value());
  h.advance_in_steps(minutes(8), minutes(1));
  ASSERT_TRUE(h.release(h.lease_now({.client_session = "new"}).lease).has_value());
  h.advance_in_steps(minutes(8), minutes(1));
  EXPECT_TRUE(known(h, "new")) << "the second acquire moved its expiry";
}

}  // namespace
}  // namespace poolkeeper::testing
