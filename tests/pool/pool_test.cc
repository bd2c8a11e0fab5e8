// Tests of poolkeeper::Pool<T> with the real clock and real worker threads:
// leases, factory failures, limits, the wait queue, client sessions,
// reservations and operator controls. Multi-threaded stress and shutdown
// tests are in pool_threads_test.cc.
//
// These tests never sleep for a fixed time: they wait on conditions (stats,
// factory counters) with a generous deadline, so a loaded machine only makes
// them slower. Time limits in configs are short (tens of ms) only where the
// test waits for them to fire; nothing asserts an upper bound tighter than
// testing::kLongWait.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "poolkeeper/pool.h"
#include "testing/counting_factory.h"
#include "testing/wait.h"
#include "testing/widget_pool_test.h"

namespace poolkeeper {
namespace {

using namespace std::chrono_literals;
using testing::counting_factory;
using testing::CreateFailure;
using testing::describe;
using testing::elapsed_since;
using testing::error_code;
using testing::FactoryCounters;
using testing::kLongWait;
using testing::real_now;
using testing::wait_until;
using testing::Widget;

constexpr int kIdle = static_cast<int>(SessionState::kIdle);
constexpr int kLeased = static_cast<int>(SessionState::kLeased);

// A small pool whose failures are quick to retry and whose acquires time out
// rather than being refused by prediction (early_reject is timing-dependent).
PoolConfig test_config(int min, int max) {
  PoolConfig config;
  config.name = "test";
  config.min = min;
  config.max = max;
  config.early_reject = false;
  config.start_backoff_initial = 1ms;
  config.start_backoff_max = 20ms;
  return config;
}

AcquireOptions with_timeout(Duration timeout) {
  AcquireOptions options;
  options.timeout = timeout;
  return options;
}

AcquireOptions with_priority(int priority, Duration timeout = 30s) {
  AcquireOptions options;
  options.timeout = timeout;
  options.priority = priority;
  return options;
}

AcquireOptions with_client_session(std::string_view client_session) {
  AcquireOptions options;
  options.timeout = kLongWait;
  options.client_session = client_session;
  return options;
}

AcquireOptions with_owner(std::string_view owner, Duration timeout = kLongWait) {
  AcquireOptions options;
  options.timeout = timeout;
  options.owner = owner;
  return options;
}

class PoolTest : public testing::WidgetPoolTest {
 protected:
  static int idle(const Pool<Widget>& pool) { return pool.stats().sessions_by_state[kIdle]; }
  static int leased(const Pool<Widget>& pool) { return pool.stats().sessions_by_state[kLeased]; }

  // Waits until the pool holds exactly `n` sessions, all idle.
  static bool wait_idle(const Pool<Widget>& pool, int n) {
    return wait_until([&] {
      const PoolStats s = pool.stats();
      return s.sessions == n && s.sessions_by_state[kIdle] == n;
    });
  }
  static bool wait_queue_length(const Pool<Widget>& pool, int n) {
    return wait_until([&] { return pool.stats().queue_length == n; });
  }
  bool wait_destroyed(int n) {
    return wait_until([&] { return counters_->destroyed.load() == n; });
  }

  // With nothing free: an acquire with `timeout` fails with kAcquireTimeout,
  // no sooner than `timeout` after the call began.
  static void expect_times_out_no_earlier(Pool<Widget>& pool, Duration timeout) {
    const TimePoint start = real_now();
    auto late = pool.acquire(with_timeout(timeout));
    const Duration waited = elapsed_since(start);
    ASSERT_FALSE(late);
    EXPECT_EQ(late.error().code, ErrorCode::kAcquireTimeout);
    EXPECT_GE(waited, timeout);
    EXPECT_LT(waited, kLongWait);
  }

  // `rounds` times: acquire, wait until the lease is reclaimed, and expect
  // that no observation of the reclaim came less than `lease_timeout` after
  // the acquire call began (whatever the scheduling, so this cannot fail on
  // a correct pool). With `age_first`, the pool's last clock reading is left
  // to age 15 ms before each acquire (its ticks refresh it every 10 ms).
  static void expect_reclaims_never_early(Pool<Widget>& pool, Duration lease_timeout, int rounds,
                                          bool age_first) {
    for (int round = 0; round < rounds; ++round) {
      SCOPED_TRACE("round " + std::to_string(round));
      ASSERT_TRUE(wait_idle(pool, 1));
      const std::uint64_t reclaimed_before = pool.stats().reclaimed;
      if (age_first) {
        const TimePoint idle_at = real_now();
        ASSERT_TRUE(wait_until([&] { return elapsed_since(idle_at) > 15ms; }));
      }
      const TimePoint start = real_now();
      auto lease = pool.acquire(with_timeout(kLongWait));
      ASSERT_TRUE(lease) << describe(lease);
      Duration early_reclaim{-1};
      ASSERT_TRUE(wait_until([&] {
        const bool reclaimed = pool.stats().reclaimed > reclaimed_before;
        const Duration since_acquire = elapsed_since(start);  // read after stats
        if (reclaimed && since_acquire < lease_timeout) early_reclaim = since_acquire;
        return reclaimed;
      }));
      EXPECT_EQ(early_reclaim, Duration{-1})
          << "reclaimed at most "
          << std::chrono::duration_cast<std::chrono::microseconds>(early_reclaim).count()
          << " us after the acquire started, lease_timeout is "
          << std::chrono::duration_cast<std::chrono::milliseconds>(lease_timeout).count() << " ms";
      EXPECT_EQ(error_code(lease->release()), ErrorCode::kLeaseReclaimed);
    }
  }

};

// ---------------------------------------------------------------- creation

// Verifies that a bad config is refused with kInvalidConfig naming the key.
TEST_F(PoolTest, CreateRejectsInvalidConfig) {
  PoolConfig config = test_config(3, 2);
  auto pool = Pool<Widget>::create(config, counting_factory(counters_));
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().code, ErrorCode::kInvalidConfig);
  EXPECT_THAT(pool.error().message, ::testing::HasSubstr("max"));
  EXPECT_EQ(counters_->create_calls.load(), 0);
}

// Verifies that a factory without create is refused.
TEST_F(PoolTest, CreateRequiresFactoryCreate) {
  auto pool = Pool<Widget>::create(test_config(0, 1), Factory<Widget>{});
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().code, ErrorCode::kInvalidConfig);
}

// Verifies that `min` objects are created at start and kept idle.
TEST_F(PoolTest, StartsMinObjects) {
  auto pool = make_pool(test_config(3, 4));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 3)) << "sessions: " << pool->stats().sessions;
  EXPECT_EQ(counters_->created.load(), 3);
  EXPECT_EQ(pool->stats().sessions_created, 3u);
}

// ------------------------------------------------------------------ leases

// Verifies acquire, release and that the released object is reused.
TEST_F(PoolTest, AcquiresReleasesAndReusesObject) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);

  auto first = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(first) << describe(first);
  ASSERT_TRUE(*first);
  const int id = (*first)->id;
  EXPECT_NE(id, 0);
  EXPECT_NE(first->id(), 0u);
  EXPECT_NE(first->session(), 0u);
  EXPECT_EQ(leased(*pool), 1);
  auto released = first->release();
  EXPECT_TRUE(released) << describe(released);
  EXPECT_FALSE(*first);

  auto second = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(second) << describe(second);
  EXPECT_EQ((*second)->id, id);
  EXPECT_NE(second->id(), first->id()) << "lease ids are never reused";
  second->release();

  const PoolStats stats = pool->stats();
  EXPECT_EQ(stats.acquisitions, 2u);
  EXPECT_EQ(stats.releases, 2u);
  EXPECT_GE(stats.reused, 1u);
  EXPECT_EQ(counters_->created.load(), 1);
  EXPECT_EQ(counters_->destroyed.load(), 0);
  EXPECT_EQ(counters_->resets.load(), 2);
}

// Verifies that a lease is released when it goes out of scope, and once only
// when it was moved.
TEST_F(PoolTest, ReleasesLeaseAtScopeExit) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  {
    auto lease = pool->acquire(with_timeout(kLongWait));
    ASSERT_TRUE(lease) << describe(lease);
    Lease<Widget> moved = std::move(*lease);
    EXPECT_FALSE(*lease);
    EXPECT_TRUE(moved);
    EXPECT_EQ(leased(*pool), 1);
  }
  const PoolStats stats = pool->stats();
  EXPECT_EQ(stats.releases, 1u);
  EXPECT_EQ(stats.sessions_by_state[kLeased], 0);
  // Released synchronously: a zero-timeout acquire gets it at once.
  auto again = pool->acquire(with_timeout(0ns));
  EXPECT_TRUE(again) << describe(again);
}

// Verifies that move-assigning over a lease releases the old one.
TEST_F(PoolTest, MoveAssignmentReleasesPreviousLease) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  auto a = pool->acquire(with_timeout(kLongWait));
  auto b = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(a) << describe(a);
  ASSERT_TRUE(b) << describe(b);
  *a = std::move(*b);
  EXPECT_EQ(pool->stats().releases, 1u);
  EXPECT_EQ(leased(*pool), 1);
  a->release();
  EXPECT_EQ(pool->stats().releases, 2u);
}

// Verifies that a lease marked broken destroys its object and a new one
// replaces it.
TEST_F(PoolTest, MarkBrokenDestroysAndReplacesObject) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 1));

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  const int broken_id = (*lease)->id;
  lease->mark_broken();
  auto released = lease->release();
  EXPECT_TRUE(released) << describe(released);

  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_TRUE(counters_->was_destroyed(broken_id));
  ASSERT_TRUE(wait_until([&] { return counters_->created.load() == 2; }));
  ASSERT_TRUE(wait_idle(*pool, 1));

  auto next = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(next) << describe(next);
  EXPECT_NE((*next)->id, broken_id);
  EXPECT_EQ(pool->stats().broken_releases, 1u);
  EXPECT_TRUE(wait_until([&] { return counters_->live.load() == 1; }));
}

// Verifies that a reset returning false counts as broken: the object is
// destroyed, not reused.
TEST_F(PoolTest, FailedResetDestroysObject) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  counters_->reset_failures_left = 1;

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  const int id = (*lease)->id;
  lease->release();
  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_TRUE(counters_->was_destroyed(id));

  auto next = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(next) << describe(next);
  EXPECT_NE((*next)->id, id);
}

// Verifies that leases ending in errors send the object to a health check
// (validate) once its score is low, and that a passed check returns it.
TEST_F(PoolTest, ErrorsLeadToValidation) {
  PoolConfig config = test_config(1, 1);
  config.health_error_penalty = 60;  // one error: 100 -> 40, below 50
  config.health_check_below = 50;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  const int id = (*lease)->id;
  lease->mark_error();
  lease->release();

  ASSERT_TRUE(wait_until([&] { return counters_->validations.load() >= 1; }));
  auto next = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(next) << describe(next);
  EXPECT_EQ((*next)->id, id) << "a healthy object is kept";
  EXPECT_EQ(counters_->destroyed.load(), 0);
  EXPECT_GE(pool->stats().checks, 1u);
}

// Verifies that an object failing its health check is replaced.
TEST_F(PoolTest, FailedValidationReplacesObject) {
  PoolConfig config = test_config(1, 1);
  config.health_error_penalty = 60;
  config.health_check_below = 50;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  counters_->validate_result = false;

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  const int id = (*lease)->id;
  lease->mark_error();
  lease->release();

  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_TRUE(counters_->was_destroyed(id));
  counters_->validate_result = true;
  auto next = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(next) << describe(next);
  EXPECT_NE((*next)->id, id);
  EXPECT_GE(pool->stats().check_failures, 1u);
}

// Verifies validate_after_idle: an object idle longer than that is
// validated before it is handed out, and replaced if it fails.
TEST_F(PoolTest, ValidatesObjectIdleLongerThanValidateAfterIdle) {
  PoolConfig config = test_config(1, 1);
  config.validate_after_idle = 20ms;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 1));
  int id = 0;
  {
    auto lease = pool->acquire(with_timeout(kLongWait));
    ASSERT_TRUE(lease) << describe(lease);
    id = (*lease)->id;
  }
  // Idle since the release above; let more than 20 ms pass.
  const TimePoint released = real_now();
  ASSERT_TRUE(wait_until([&] { return elapsed_since(released) > 40ms; }));
  const int validations = counters_->validations.load();
  counters_->validate_result = false;
  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  EXPECT_GT(counters_->validations.load(), validations);
  EXPECT_NE((*lease)->id, id) << "the object failing validation is replaced";
  EXPECT_TRUE(counters_->was_destroyed(id));
}

// Verifies check_interval: idle objects are checked periodically.
TEST_F(PoolTest, ChecksIdleObjectsPeriodically) {
  PoolConfig config = test_config(2, 2);
  config.check_interval = 10ms;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_until([&] { return counters_->validations.load() >= 4; }));
  EXPECT_GE(pool->stats().checks, 4u);
  EXPECT_EQ(counters_->destroyed.load(), 0);
}

// -------------------------------------------------------- factory failures

// Verifies that creates that throw or return an error are retried until one
// succeeds, and that the waiter gets the object.
TEST_F(PoolTest, RetriesFailingFactoryUntilItSucceeds) {
  counters_->failure_mode = static_cast<int>(CreateFailure::kAlternate);
  counters_->fail_next_creates(6);  // 3 throw, 3 return an error
  auto pool = make_pool(test_config(1, 2));
  ASSERT_NE(pool, nullptr);

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  EXPECT_EQ(counters_->create_failures.load(), 6);
  EXPECT_GE(counters_->created.load(), 1);
  EXPECT_EQ(pool->stats().start_failures, 6u);
}

// Verifies that while every create fails, an acquire times out naming the
// last failure, and that the pool recovers once creates succeed again.
TEST_F(PoolTest, TimesOutWhileFactoryFailsAndRecoversAfterwards) {
  counters_->failure_mode = static_cast<int>(CreateFailure::kReturnError);
  counters_->fail_all_creates = true;
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_until([&] { return counters_->create_failures.load() >= 2; }));

  auto failed = pool->acquire(with_timeout(50ms));
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, ErrorCode::kAcquireTimeout);
  EXPECT_THAT(failed.error().message, ::testing::HasSubstr("db down"));

  counters_->fail_all_creates = false;
  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  EXPECT_GE(pool->stats().start_failures, 2u);
}

// Verifies recovery from a factory that only throws.
TEST_F(PoolTest, RecoversFromThrowingFactory) {
  counters_->failure_mode = static_cast<int>(CreateFailure::kThrow);
  counters_->fail_all_creates = true;
  auto pool = make_pool(test_config(0, 1));
  ASSERT_NE(pool, nullptr);

  std::optional<std::expected<Lease<Widget>, Error>> result;
  std::jthread waiter([&] { result.emplace(pool->acquire(with_timeout(kLongWait))); });
  ASSERT_TRUE(wait_until([&] { return counters_->create_failures.load() >= 3; }));
  counters_->fail_all_creates = false;
  waiter.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(*result) << describe(*result);
}

// ------------------------------------------------------------ the queue

// Verifies that an acquire times out with kAcquireTimeout when everything is
// leased, not before its timeout.
TEST_F(PoolTest, AcquireTimesOutWhenAllLeased) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  expect_times_out_no_earlier(*pool, 50ms);
  EXPECT_EQ(pool->stats().timeouts, 1u);
  EXPECT_EQ(pool->stats().queue_length, 0);
}

// The real clock, except that its cheap reading lags 20 ms behind, as
// CLOCK_MONOTONIC_COARSE does when a timer tick comes late on a busy host.
class LaggingCoarseClock final : public Clock {
 public:
  TimePoint now() const override { return real_clock().now(); }
  WallTime wall_now() const override { return real_clock().wall_now(); }
  TimePoint coarse_now() const override { return real_clock().now() - 20ms; }
};

// Verifies that an acquire's timeout starts from a precise reading: a lagging
// coarse clock does not make it time out early.
TEST_F(PoolTest, AcquireTimeoutIsNeverEarlyWhenTheCoarseClockLags) {
  LaggingCoarseClock clock;
  auto pool = make_pool(test_config(1, 1), 7, &clock);
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // Let the pool's last clock reading age (ticks refresh it every 10 ms).
    const TimePoint mark = real_now();
    ASSERT_TRUE(wait_until([&] { return elapsed_since(mark) > 15ms; }));
    expect_times_out_no_earlier(*pool, 50ms);
  }
}

// Verifies that a lease's timeout starts from a precise reading: a lagging
// coarse clock does not make the pool reclaim it early.
TEST_F(PoolTest, LeaseTimeoutIsNeverEarlyWhenTheCoarseClockLags) {
  constexpr Duration kLeaseTimeout = 50ms;
  LaggingCoarseClock clock;
  PoolConfig config = test_config(1, 1);
  config.lease_timeout = kLeaseTimeout;
  auto pool = make_pool(config, 7, &clock);
  ASSERT_NE(pool, nullptr);
  expect_reclaims_never_early(*pool, kLeaseTimeout, 5, /*age_first=*/true);
}

// Verifies that a zero timeout is refused at once when nothing is free.
TEST_F(PoolTest, ZeroTimeoutFailsAtOnceWhenAllLeased) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);
  auto late = pool->acquire(with_timeout(0ns));
  EXPECT_EQ(error_code(late), ErrorCode::kAcquireTimeout);
}

// Verifies that waiters beyond max_queue are refused with kQueueFull.
TEST_F(PoolTest, RefusesWaitersBeyondMaxQueue) {
  PoolConfig config = test_config(1, 1);
  config.max_queue = 1;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  std::optional<ErrorCode> waiter_error = ErrorCode::kInvalidArgument;
  std::jthread waiter([&] { waiter_error = error_code(pool->acquire(with_timeout(30s))); });
  ASSERT_TRUE(wait_queue_length(*pool, 1));

  auto refused = pool->acquire(with_timeout(30s));
  EXPECT_EQ(error_code(refused), ErrorCode::kQueueFull);
  held->release();
  waiter.join();
  EXPECT_EQ(waiter_error, std::nullopt) << "the queued waiter gets the object";
}

// Records the order in which waiters got the one object.
class GrantOrder {
 public:
  // Acquires with `options`; records `name` (or name:error) while holding.
  void acquire(Pool<Widget>& pool, std::string name, const AcquireOptions& options) {
    auto lease = pool.acquire(options);
    std::lock_guard lock(mutex_);
    if (lease) {
      order_.push_back(std::move(name));
    } else {
      order_.push_back(name + ":" + std::string(to_string(lease.error().code)));
    }
  }
  std::vector<std::string> order() const {
    std::lock_guard lock(mutex_);
    return order_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> order_;
};

// Verifies that a higher-priority waiter is served before a lower-priority
// one that queued earlier.
TEST_F(PoolTest, ServesHigherPriorityFirst) {
  PoolConfig config = test_config(1, 1);
  config.aging = Duration{0};  // strict priority
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  GrantOrder grants;
  std::jthread low([&] { grants.acquire(*pool, "low", with_priority(kLowPriority)); });
  ASSERT_TRUE(wait_queue_length(*pool, 1));
  std::jthread normal([&] { grants.acquire(*pool, "normal", with_priority(kNormalPriority)); });
  ASSERT_TRUE(wait_queue_length(*pool, 2));
  std::jthread high([&] { grants.acquire(*pool, "high", with_priority(kHighPriority)); });
  ASSERT_TRUE(wait_queue_length(*pool, 3));

  held->release();
  low.join();
  normal.join();
  high.join();
  EXPECT_THAT(grants.order(), ::testing::ElementsAre("high", "normal", "low"));
}

// Verifies first-come first-served among waiters of the same priority.
TEST_F(PoolTest, ServesEqualPriorityInArrivalOrder) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  GrantOrder grants;
  std::vector<std::jthread> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back(
        [&, i] { grants.acquire(*pool, "w" + std::to_string(i), with_priority(kNormalPriority)); });
    ASSERT_TRUE(wait_queue_length(*pool, i + 1));
  }
  held->release();
  for (auto& w : waiters) w.join();
  EXPECT_THAT(grants.order(), ::testing::ElementsAre("w0", "w1", "w2", "w3"));
}

// Verifies aging: a low-priority waiter that has waited longer than
// (critical - low) * aging is served before a critical one arriving later.
TEST_F(PoolTest, AgingServesLongWaitingLowPriorityFirst) {
  PoolConfig config = test_config(1, 1);
  config.aging = 1ms;  // a priority-0 waiter outranks newcomers after 9 ms
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  GrantOrder grants;
  std::jthread low([&] { grants.acquire(*pool, "low", with_priority(kLowestPriority)); });
  ASSERT_TRUE(wait_queue_length(*pool, 1));
  // The low waiter was queued before this point; let 30 ms (> 9 ms) pass.
  const TimePoint queued_by = real_now();
  ASSERT_TRUE(wait_until([&] { return elapsed_since(queued_by) > 30ms; }));
  std::jthread critical(
      [&] { grants.acquire(*pool, "critical", with_priority(kCriticalPriority)); });
  ASSERT_TRUE(wait_queue_length(*pool, 2));

  held->release();
  low.join();
  critical.join();
  EXPECT_THAT(grants.order(), ::testing::ElementsAre("low", "critical"));
}

// ------------------------------------------------------------------ limits

// Verifies that an overflow object is made for waiting demand beyond max and
// closed when released.
TEST_F(PoolTest, OverflowObjectClosesOnRelease) {
  PoolConfig config = test_config(0, 1);
  config.overflow = 1;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  auto first = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(first) << describe(first);
  auto second = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(second) << describe(second);
  EXPECT_EQ(pool->stats().overflow_created, 1u);
  EXPECT_EQ(counters_->created.load(), 2);

  second->release();
  ASSERT_TRUE(wait_destroyed(1));
  first->release();
  EXPECT_TRUE(wait_idle(*pool, 1));
}

// Verifies that a lease held past its lease timeout is reclaimed, its object
// kept alive until the holder releases it (kLeaseReclaimed), then destroyed.
TEST_F(PoolTest, ReclaimsLeaseAfterLeaseTimeout) {
  PoolConfig config = test_config(0, 1);
  config.lease_timeout = 30ms;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);

  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  ASSERT_TRUE((*lease)->hold());
  ASSERT_TRUE(wait_until([&] { return pool->stats().reclaimed == 1; }));
  // The holder may still be using it: it must still be alive.
  (*lease)->scratch += 1;
  EXPECT_EQ(counters_->destroyed.load(), 0);
  (*lease)->unhold();

  auto released = lease->release();
  EXPECT_EQ(error_code(released), ErrorCode::kLeaseReclaimed);
  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_EQ(counters_->destroyed_while_in_use.load(), 0);
  EXPECT_TRUE(wait_until([&] { return counters_->live.load() == 0; }));
}

// Verifies that a lease is never reclaimed before its lease timeout has
// passed since it was granted.
TEST_F(PoolTest, NeverReclaimsLeaseBeforeLeaseTimeout) {
  constexpr Duration kLeaseTimeout = 100ms;
  PoolConfig config = test_config(1, 1);
  config.lease_timeout = kLeaseTimeout;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  expect_reclaims_never_early(*pool, kLeaseTimeout, 3, /*age_first=*/false);
}

// Verifies that AcquireOptions::lease_timeout overrides the pool's (off).
TEST_F(PoolTest, PerAcquireLeaseTimeout) {
  auto pool = make_pool(test_config(0, 1));
  ASSERT_NE(pool, nullptr);
  AcquireOptions options = with_timeout(kLongWait);
  options.lease_timeout = 30ms;
  auto lease = pool->acquire(options);
  ASSERT_TRUE(lease) << describe(lease);
  ASSERT_TRUE(wait_until([&] { return pool->stats().reclaimed == 1; }));
  EXPECT_EQ(error_code(lease->release()), ErrorCode::kLeaseReclaimed);
  ASSERT_TRUE(wait_destroyed(1));
}

// Verifies that an object is recycled after max_uses leases.
TEST_F(PoolTest, RecyclesObjectAfterMaxUses) {
  PoolConfig config = test_config(1, 1);
  config.max_uses = 3;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);

  int first_id = 0;
  for (int i = 0; i < 3; ++i) {
    auto lease = pool->acquire(with_timeout(kLongWait));
    ASSERT_TRUE(lease) << describe(lease);
    if (i == 0) first_id = (*lease)->id;
    EXPECT_EQ((*lease)->id, first_id) << "use " << i + 1;
  }
  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_TRUE(counters_->was_destroyed(first_id));
  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
  EXPECT_NE((*lease)->id, first_id);
}

// Verifies that idle objects above min close after idle_timeout.
TEST_F(PoolTest, ClosesIdleObjectsAfterIdleTimeout) {
  PoolConfig config = test_config(1, 3);
  config.idle_timeout = 30ms;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  {
    auto a = pool->acquire(with_timeout(kLongWait));
    auto b = pool->acquire(with_timeout(kLongWait));
    auto c = pool->acquire(with_timeout(kLongWait));
    ASSERT_TRUE(a && b && c);
  }
  ASSERT_TRUE(wait_destroyed(2));
  EXPECT_TRUE(wait_idle(*pool, 1)) << "min is kept";
}

// Verifies that objects are recycled after max_lifetime.
TEST_F(PoolTest, RecyclesObjectsAfterMaxLifetime) {
  PoolConfig config = test_config(1, 1);
  config.max_lifetime = 30ms;
  config.lifetime_jitter = 0;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_until(
      [&] { return counters_->destroyed.load() >= 1 && counters_->created.load() >= 2; }));
  auto lease = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(lease) << describe(lease);
}

// ---------------------------------------------------------- client sessions

// Verifies that an acquire with a client session gets the object that client
// session used last when it is free, whatever the idle order.
TEST_F(PoolTest, ClientSessionGetsItsLastObject) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 2));

  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto alice = pool->acquire(with_client_session("alice"));
    auto other = pool->acquire(with_timeout(kLongWait));
    ASSERT_TRUE(alice) << describe(alice);
    ASSERT_TRUE(other) << describe(other);
    const int alice_id = (*alice)->id;
    const SessionId alice_session = alice->session();
    // Alternate which object was idle most recently.
    if (round % 2 == 0) {
      alice->release();
      other->release();
    } else {
      other->release();
      alice->release();
    }
    auto again = pool->acquire(with_client_session("alice"));
    ASSERT_TRUE(again) << describe(again);
    EXPECT_EQ((*again)->id, alice_id);
    EXPECT_EQ(again->session(), alice_session);
    EXPECT_EQ(pool->client_session("alice")->active_leases, 1);
  }
  EXPECT_GE(pool->stats().affinity_hits, 4u);

  auto view = pool->client_session("alice");
  ASSERT_TRUE(view) << describe(view);
  EXPECT_EQ(view->id, "alice");
  EXPECT_NE(view->last_session, 0u);
  EXPECT_EQ(view->active_leases, 0);
}

// Verifies client-session documents and their errors.
TEST_F(PoolTest, ClientSessionDocuments) {
  PoolConfig config = test_config(0, 1);
  config.max_client_session_document = 16;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);

  EXPECT_EQ(error_code(pool->client_session("nobody")), ErrorCode::kUnknownClientSession);
  auto put = pool->put_client_session("carol", "{\"cart\":1}");
  ASSERT_TRUE(put) << describe(put);
  auto view = pool->client_session("carol");
  ASSERT_TRUE(view) << describe(view);
  EXPECT_EQ(view->document, "{\"cart\":1}");
  EXPECT_EQ(pool->stats().client_sessions_active, 1);

  EXPECT_EQ(error_code(pool->put_client_session("carol", std::string(17, 'x'))),
            ErrorCode::kDocumentTooLarge);
  EXPECT_EQ(pool->client_session("carol")->document, "{\"cart\":1}") << "unchanged";

  EXPECT_TRUE(pool->delete_client_session("carol"));
  EXPECT_EQ(error_code(pool->client_session("carol")), ErrorCode::kUnknownClientSession);
  EXPECT_EQ(error_code(pool->delete_client_session("carol")), ErrorCode::kUnknownClientSession);
}

// Verifies that the client-session table is bounded.
TEST_F(PoolTest, RefusesClientSessionsBeyondMax) {
  PoolConfig config = test_config(0, 1);
  config.max_client_sessions = 2;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  EXPECT_TRUE(pool->put_client_session("a", ""));
  EXPECT_TRUE(pool->put_client_session("b", ""));
  EXPECT_EQ(error_code(pool->put_client_session("c", "")), ErrorCode::kTooManyClientSessions);
}

// Verifies that inactive client sessions expire, and that one with a lease
// in flight does not.
TEST_F(PoolTest, ExpiresInactiveClientSessionsButNotLeasedOnes) {
  PoolConfig config = test_config(1, 1);
  config.client_session_ttl = 20ms;
  config.client_session_cleanup_interval = 10ms;
  auto pool = make_pool(config);
  ASSERT_NE(pool, nullptr);
  auto lease = pool->acquire(with_client_session("busy"));
  ASSERT_TRUE(lease) << describe(lease);
  ASSERT_TRUE(pool->put_client_session("quiet", "x"));
  auto busy = pool->client_session("busy");
  ASSERT_TRUE(busy) << describe(busy);
  EXPECT_EQ(busy->active_leases, 1);

  ASSERT_TRUE(wait_until([&] {
    return error_code(pool->client_session("quiet")) == ErrorCode::kUnknownClientSession;
  }));
  // A lookup may see the expiry before the cleanup that counts it has run.
  EXPECT_TRUE(wait_until([&] { return pool->stats().client_sessions_expired >= 1; }));
  const TimePoint since = real_now();
  ASSERT_TRUE(wait_until([&] { return elapsed_since(since) > 60ms; }));  // > ttl + interval
  EXPECT_TRUE(pool->client_session("busy")) << "a client session with a lease never expires";
}

// Verifies that a SharedCap bounds the objects of all pools sharing it.
TEST_F(PoolTest, SharedCapBoundsObjectsAcrossPools) {
  auto cap = std::make_shared<SharedCap>(2);
  PoolOptions options;
  options.seed = 7;
  options.shared_cap = cap;
  auto first = Pool<Widget>::create(test_config(2, 2), counting_factory(counters_), options);
  auto second = Pool<Widget>::create(test_config(0, 2), counting_factory(counters_), options);
  ASSERT_TRUE(first) << describe(first);
  ASSERT_TRUE(second) << describe(second);
  ASSERT_TRUE(wait_idle(**first, 2));
  EXPECT_EQ(cap->used(), 2);

  EXPECT_EQ(error_code((*second)->acquire(with_timeout(30ms))), ErrorCode::kAcquireTimeout);
  EXPECT_EQ(counters_->created.load(), 2);

  first->reset();  // frees its two units
  auto lease = (*second)->acquire(with_timeout(kLongWait));
  EXPECT_TRUE(lease) << describe(lease);
  EXPECT_LE(cap->used(), 2);
}

// ------------------------------------------------------------ reservations

// Verifies that a reserved object goes only to its owner, that the owner's
// acquires use it, and that cancelling returns it to everyone.
TEST_F(PoolTest, ReservationIsLeasedOnlyByItsOwner) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 2));

  auto reservation = pool->reserve("bob", 1h);
  ASSERT_TRUE(reservation) << describe(reservation);
  EXPECT_EQ(pool->stats().reservations, 1);
  SessionId reserved = 0;
  for (const SessionInfo& s : pool->sessions()) {
    if (s.reserved) {
      EXPECT_EQ(s.reserved_for, "bob");
      reserved = s.id;
    }
  }
  ASSERT_NE(reserved, 0u);

  // Everyone else gets the other object, then nothing.
  auto other = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(other) << describe(other);
  EXPECT_NE(other->session(), reserved);
  EXPECT_EQ(error_code(pool->acquire(with_timeout(30ms))), ErrorCode::kAcquireTimeout);

  // Bob gets the reserved object, twice: it returns to the reservation.
  for (int i = 0; i < 2; ++i) {
    auto bobs = pool->acquire(with_owner("bob"));
    ASSERT_TRUE(bobs) << describe(bobs);
    EXPECT_EQ(bobs->session(), reserved);
  }

  EXPECT_EQ(error_code(pool->cancel_reservation(*reservation, "mallory")),
            ErrorCode::kNotReservationOwner);
  EXPECT_EQ(error_code(pool->cancel_reservation(*reservation + 1000, "bob")),
            ErrorCode::kUnknownReservation);
  auto cancelled = pool->cancel_reservation(*reservation, "bob");
  ASSERT_TRUE(cancelled) << describe(cancelled);
  EXPECT_EQ(pool->stats().reservations, 0);

  auto freed = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(freed) << describe(freed);
  EXPECT_EQ(freed->session(), reserved);
}

// Verifies that an expired reservation returns its object to the pool.
TEST_F(PoolTest, ReservationExpires) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 1));
  auto reservation = pool->reserve("bob", 30ms);
  ASSERT_TRUE(reservation) << describe(reservation);
  ASSERT_TRUE(wait_until([&] { return pool->stats().reservations == 0; }));
  auto lease = pool->acquire(with_timeout(0ns));
  EXPECT_TRUE(lease) << describe(lease);
}

// ---------------------------------------------------------- operator controls

// Verifies that pause refuses new acquires and current waiters with
// kPoolPaused, keeps leases, and that resume ends it.
TEST_F(PoolTest, PauseRefusesAcquiresAndWaiters) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  std::optional<ErrorCode> waiter_error;
  std::jthread waiter([&] { waiter_error = error_code(pool->acquire(with_timeout(30s))); });
  ASSERT_TRUE(wait_queue_length(*pool, 1));
  pool->pause();
  waiter.join();
  EXPECT_EQ(waiter_error, ErrorCode::kPoolPaused);
  EXPECT_TRUE(pool->stats().paused);
  EXPECT_EQ(error_code(pool->acquire(with_timeout(kLongWait))), ErrorCode::kPoolPaused);

  EXPECT_TRUE(held->release());
  EXPECT_EQ(error_code(pool->acquire(with_timeout(kLongWait))), ErrorCode::kPoolPaused);
  EXPECT_EQ(counters_->destroyed.load(), 0) << "pause keeps warm objects";

  pool->resume();
  EXPECT_FALSE(pool->stats().paused);
  auto lease = pool->acquire(with_timeout(kLongWait));
  EXPECT_TRUE(lease) << describe(lease);
}

// Verifies that drain refuses acquires with kPoolDraining, closes idle
// objects at once and leased ones on release, and that resume ends it.
TEST_F(PoolTest, DrainClosesObjectsAndRefusesAcquires) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 2));
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  pool->drain();
  EXPECT_TRUE(pool->stats().draining);
  EXPECT_EQ(error_code(pool->acquire(with_timeout(kLongWait))), ErrorCode::kPoolDraining);
  ASSERT_TRUE(wait_destroyed(1));
  EXPECT_FALSE(counters_->was_destroyed((*held)->id));

  EXPECT_TRUE(held->release());
  ASSERT_TRUE(wait_destroyed(2));
  ASSERT_TRUE(wait_until([&] { return pool->stats().sessions == 0; }));

  pool->resume();
  auto lease = pool->acquire(with_timeout(kLongWait));
  EXPECT_TRUE(lease) << describe(lease);
}

// Verifies that emergency stop refuses everything below critical priority,
// waiters included, and that emergency_resume ends it.
TEST_F(PoolTest, EmergencyStopServesOnlyCritical) {
  auto pool = make_pool(test_config(1, 1));
  ASSERT_NE(pool, nullptr);
  auto held = pool->acquire(with_timeout(kLongWait));
  ASSERT_TRUE(held) << describe(held);

  std::optional<ErrorCode> waiter_error;
  std::jthread waiter(
      [&] { waiter_error = error_code(pool->acquire(with_priority(kHighPriority))); });
  ASSERT_TRUE(wait_queue_length(*pool, 1));
  pool->emergency_stop();
  waiter.join();
  EXPECT_EQ(waiter_error, ErrorCode::kEmergencyStop);
  EXPECT_TRUE(pool->stats().emergency_stopped);
  held->release();

  EXPECT_EQ(error_code(pool->acquire(with_priority(kHighPriority, kLongWait))),
            ErrorCode::kEmergencyStop);
  {
    auto critical = pool->acquire(with_priority(kCriticalPriority, kLongWait));
    EXPECT_TRUE(critical) << describe(critical);
  }

  pool->emergency_resume();
  EXPECT_FALSE(pool->stats().emergency_stopped);
  auto lease = pool->acquire(with_timeout(kLongWait));
  EXPECT_TRUE(lease) << describe(lease);
}

// Verifies scale: out-of-range targets are refused, in-range ones warm or
// shrink the pool.
TEST_F(PoolTest, ScaleWarmsAndShrinks) {
  auto pool = make_pool(test_config(0, 3));
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(error_code(pool->scale(4)), ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_code(pool->scale(-1)), ErrorCode::kInvalidArgument);

  ASSERT_TRUE(pool->scale(3));
  EXPECT_EQ(pool->stats().target, 3);
  ASSERT_TRUE(wait_idle(*pool, 3));

  ASSERT_TRUE(pool->scale(1));
  ASSERT_TRUE(wait_destroyed(2));
  ASSERT_TRUE(wait_idle(*pool, 1));
}

// Verifies that after shutdown every acquire is refused with kShutdown, idle
// objects are destroyed, and shutdown is idempotent.
TEST_F(PoolTest, ShutdownRefusesAcquires) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 2));
  pool->shutdown(1s);
  EXPECT_EQ(error_code(pool->acquire(with_timeout(kLongWait))), ErrorCode::kShutdown);
  ASSERT_TRUE(wait_destroyed(2));
  pool->shutdown(1s);
  EXPECT_EQ(error_code(pool->acquire(with_priority(kCriticalPriority))), ErrorCode::kShutdown);
}

// Verifies that destroying a pool with no lease out destroys every object
// before the destructor returns.
TEST_F(PoolTest, DestructorDestroysIdleObjects) {
  auto pool = make_pool(test_config(3, 3));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 3));
  pool.reset();
  EXPECT_EQ(counters_->destroyed.load(), 3);
  EXPECT_EQ(counters_->live.load(), 0);
}

// Verifies stats and sessions() agree on a small steady state.
TEST_F(PoolTest, StatsAndSessionsDescribeThePool) {
  auto pool = make_pool(test_config(2, 2));
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(wait_idle(*pool, 2));
  AcquireOptions options = with_client_session("dave");
  options.owner = "worker-1";
  auto lease = pool->acquire(options);
  ASSERT_TRUE(lease) << describe(lease);

  const PoolStats stats = pool->stats();
  EXPECT_EQ(stats.name, "test");
  EXPECT_EQ(stats.sessions, 2);
  EXPECT_EQ(stats.sessions_by_state[kLeased], 1);
  EXPECT_EQ(stats.sessions_by_state[kIdle], 1);
  EXPECT_EQ(stats.acquisitions, 1u);
  EXPECT_EQ(stats.immediate, 1u);
  const std::vector<SessionInfo> sessions = pool->sessions();
  ASSERT_EQ(sessions.size(), 2u);
  int leased_count = 0;
  for (const SessionInfo& s : sessions) {
    if (s.state != SessionState::kLeased) continue;
    ++leased_count;
    EXPECT_EQ(s.id, lease->session());
    EXPECT_EQ(s.lease_owner, "worker-1");
    EXPECT_EQ(s.client_session, "dave");
    EXPECT_EQ(s.uses, 1);
  }
  EXPECT_EQ(leased_count, 1);
}

}  // namespace
}  // namespace poolkeeper
