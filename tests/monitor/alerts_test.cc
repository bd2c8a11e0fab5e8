#include "monitor/alerts.h"

#include <gtest/gtest.h>

#include <cmath>

namespace poolkeeper::monitor {
namespace {

using namespace std::chrono_literals;

const TimePoint t0{std::chrono::hours(1)};

AlertRule queue_rule(Duration for_duration) { return {"queue_length", "waiting", 10, for_duration, ""}; }

std::vector<AlertSample> queue(double v, const std::string& pool = "p") { return {{"queue_length", pool, v}}; }

TEST(AlertEngine, PendingThenFiringAfterItsForDurationThenResolvedOnce) {
  AlertEngine engine({queue_rule(30s)});
  EXPECT_TRUE(engine.observe(t0, queue(12)).empty());
  ASSERT_EQ(engine.active().size(), 1u);
  EXPECT_EQ(engine.active()[0].state, AlertState::kPending);
  EXPECT_TRUE(engine.observe(t0 + 29s, queue(15)).empty());
  auto fired = engine.observe(t0 + 30s, queue(14));
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_TRUE(fired[0].firing);
  EXPECT_EQ(fired[0].subject, "p");
  EXPECT_EQ(fired[0].value, 14);
  EXPECT_EQ(fired[0].threshold, 10);
  EXPECT_EQ(fired[0].message, "queue_length of p is 14 (above 10 for 30s)");
  EXPECT_EQ(engine.active()[0].state, AlertState::kFiring);
  // Still above: no second alert (deduplicated).
  for (int i = 1; i <= 10; ++i) EXPECT_TRUE(engine.observe(t0 + 30s + i * 5s, queue(20)).empty());
  // Below, but not for long enough: still firing.
  EXPECT_TRUE(engine.observe(t0 + 100s, queue(3)).empty());
  EXPECT_TRUE(engine.observe(t0 + 110s, queue(11)).empty());  // back above: the count starts again
  EXPECT_TRUE(engine.observe(t0 + 120s, queue(2)).empty());
  EXPECT_TRUE(engine.observe(t0 + 149s, queue(2)).empty());
  auto resolved = engine.observe(t0 + 150s, queue(1));
  ASSERT_EQ(resolved.size(), 1u);
  EXPECT_FALSE(resolved[0].firing);
  EXPECT_EQ(resolved[0].message, "queue_length of p is back to 1 (at or below 10 for 30s)");
  EXPECT_TRUE(engine.active().empty());
}

TEST(AlertEngine, APendingAlertThatDropsBackIsForgottenSilently) {
  AlertEngine engine({queue_rule(1min)});
  EXPECT_TRUE(engine.observe(t0, queue(11)).empty());
  EXPECT_TRUE(engine.observe(t0 + 30s, queue(10)).empty());  // at the threshold is not above
  EXPECT_TRUE(engine.active().empty());
  // A new spell above starts its own count.
  EXPECT_TRUE(engine.observe(t0 + 40s, queue(11)).empty());
  EXPECT_TRUE(engine.observe(t0 + 99s, queue(11)).empty());
  EXPECT_EQ(engine.observe(t0 + 100s, queue(11)).size(), 1u);
}

TEST(AlertEngine, WithoutAForDurationItFiresAndResolvesAtOnce) {
  AlertEngine engine({queue_rule(0s)});
  auto fired = engine.observe(t0, queue(11));
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].message, "queue_length of p is 11 (above 10)");
  auto resolved = engine.observe(t0 + 1s, queue(0));
  ASSERT_EQ(resolved.size(), 1u);
  EXPECT_FALSE(resolved[0].firing);
}

TEST(AlertEngine, SubjectsAreIndependentAndMayHaveTheirOwnThreshold) {
  AlertEngine engine({queue_rule(0s)});
  engine.set_threshold("queue_length", "big", 100);
  auto changes = engine.observe(t0, {{"queue_length", "small", 50}, {"queue_length", "big", 50}});
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].subject, "small");
  EXPECT_EQ(engine.threshold("queue_length", "big"), 100);
  EXPECT_EQ(engine.threshold("queue_length", "small"), 10);
  changes = engine.observe(t0 + 1s, {{"queue_length", "big", 101}});
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].subject, "big");
  EXPECT_EQ(engine.active().size(), 2u);
}

TEST(AlertEngine, NoDataIsNotRecovery) {
  AlertEngine engine({queue_rule(0s)});
  ASSERT_EQ(engine.observe(t0, queue(20)).size(), 1u);
  EXPECT_TRUE(engine.observe(t0 + 1h, {}).empty());
  EXPECT_TRUE(engine.observe(t0 + 2h, {{"queue_length", "p", std::nan("")}}).empty());
  EXPECT_EQ(engine.active().size(), 1u);
  EXPECT_TRUE(engine.observe(t0 + 3h, {{"unknown_rule", "p", 1e9}}).empty());
}

TEST(AlertEngine, BuiltInRulesCarryTheSeedsDefaultsAndFormatTheirUnits) {
  AlertEngine engine(builtin_rules());
  for (const char* name : {"budget_consumed", "start_failure_rate", "unhealthy_sessions", "queue_wait",
                           "queue_length", "utilization", "scheduler_stalled", "client_sessions",
                           "memory_over_limit"}) {
    EXPECT_TRUE(engine.knows(name)) << name;
  }
  EXPECT_EQ(engine.threshold("budget_consumed", ""), 0.8);
  EXPECT_EQ(engine.threshold("start_failure_rate", "p"), 0.05);
  EXPECT_EQ(engine.threshold("unhealthy_sessions", "p"), 0.2);
  EXPECT_EQ(engine.threshold("queue_wait", "p"), 30);
  EXPECT_EQ(engine.threshold("queue_length", "p"), 10);
  EXPECT_EQ(engine.threshold("utilization", "p"), 0.9);
  EXPECT_EQ(engine.threshold("scheduler_stalled", "p"), 300);
  EXPECT_EQ(engine.threshold("client_sessions", "p"), 1000);
  auto changes = engine.observe(t0, {{"budget_consumed", "pool:p", 0.85}, {"queue_wait", "p", 31.5}});
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].message, "budget_consumed of pool:p is 85% (above 80%)");
  EXPECT_EQ(changes[1].message, "queue_wait of p is 31.5 s (above 30 s)");
}

double value_of(const std::vector<AlertSample>& samples, const std::string& rule) {
  for (const AlertSample& x : samples) {
    if (x.rule == rule) return x.value;
  }
  ADD_FAILURE() << "no " << rule;
  return -1;
}

TEST(PoolSampler, MeasuresAPoolFromItsStatistics) {
  PoolSampler sampler("p");
  PoolStats st;
  st.sessions = 5;
  st.sessions_by_state[static_cast<int>(SessionState::kStarting)] = 1;
  st.unhealthy = 1;
  st.utilization = 0.75;
  st.queue_length = 3;
  st.oldest_waiting_since = t0 - 12s;
  st.client_sessions_active = 40;
  const auto samples = sampler.sample(st, t0, 2);
  EXPECT_EQ(value_of(samples, "queue_length"), 3);
  EXPECT_EQ(value_of(samples, "queue_wait"), 12);
  EXPECT_EQ(value_of(samples, "utilization"), 0.75);
  EXPECT_EQ(value_of(samples, "unhealthy_sessions"), 0.25);  // of the 4 not starting
  EXPECT_EQ(value_of(samples, "client_sessions"), 40);
  EXPECT_EQ(value_of(samples, "memory_over_limit"), 2);
  EXPECT_EQ(value_of(samples, "start_failure_rate"), 0);  // nothing moved yet
}

TEST(PoolSampler, StartFailuresCountOverTheLastFiveMinutes) {
  PoolSampler sampler("p");
  PoolStats st;
  auto rate_at = [&](TimePoint at, std::uint64_t created, std::uint64_t failed) {
    st.sessions_created = created;
    st.start_failures = failed;
    return value_of(sampler.sample(st, at, 0), "start_failure_rate");
  };
  EXPECT_EQ(rate_at(t0, 100, 0), 0);
  EXPECT_EQ(rate_at(t0 + 1min, 118, 2), 0.1);  // 2 of 20 starts since
  EXPECT_EQ(rate_at(t0 + 4min, 136, 4), 0.1);  // 4 of 40
  // Six minutes on, the window starts at the minute-one measurement.
  EXPECT_EQ(rate_at(t0 + 6min, 154, 6), 4.0 / 40);
  // Ten minutes without starts: nothing moved within the window.
  EXPECT_EQ(rate_at(t0 + 16min, 154, 6), 0);
}

TEST(AlertScope, SubjectsReachTheirListeners) {
  EXPECT_EQ(scope_of("python").pool, "python");
  EXPECT_EQ(scope_of("pool:python").pool, "python");
  EXPECT_EQ(scope_of("pool:python").audience, "");
  EXPECT_EQ(scope_of("tenant:alice").audience, "tenant:alice");
  EXPECT_EQ(scope_of("tenant:alice").pool, "");
  EXPECT_EQ(scope_of("global").audience, "admin");
}

}  // namespace
}  // namespace poolkeeper::monitor
