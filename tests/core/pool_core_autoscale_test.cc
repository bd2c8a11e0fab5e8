// Autoscaling inside the pool core: decisions move the target and start or
// close sessions through the usual actions, each is an event with the sizes,
// reason and confidence, and operator controls (on/off, manual scale, pause,
// reconfigure) keep working.
#include <gtest/gtest.h>

#include "testing/core_harness.h"

namespace poolkeeper::core {
namespace {

using namespace std::chrono_literals;
using testing::CoreHarness;
using testing::quiet_config;

PoolConfig autoscaled(int min = 1, int max = 10) {
  PoolConfig c = quiet_config(min, max);
  c.autoscale.enabled = true;
  c.autoscale.predictive = false;
  c.autoscale.down_window = 60s;
  c.autoscale.cooldown_down = 30s;
  return c;
}

std::vector<Event> autoscaled_events(const CoreHarness& h) {
  std::vector<Event> out;
  for (const Event& e : h.events()) {
    if (e.type == EventType::kAutoscaled) out.push_back(e);
  }
  return out;
}

TEST(PoolCoreAutoscaleTest, BusySessionsGrowThePoolAndIdleOnesShrinkItLater) {
  CoreHarness h(autoscaled());
  h.start();
  h.settle();
  ASSERT_EQ(h.core().stats().sessions, 1);
  EXPECT_TRUE(h.core().stats().autoscale);
  const Grant a = h.lease_now();
  h.advance(1s);  // 1 of 1 busy: 1.00 > 0.80
  auto events = autoscaled_events(h);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].previous, 1);
  EXPECT_EQ(events[0].value, 2);  // ceil(1 / 0.55)
  EXPECT_EQ(events[0].confidence, 1);
  EXPECT_EQ(events[0].detail, "utilization 1.00 > 0.80");
  EXPECT_EQ(h.core().stats().target, 2);
  EXPECT_EQ(h.core().stats().scale_ups, 1u);
  ASSERT_EQ(h.pending_starts().size(), 1u) << "the new size starts a session";
  h.settle();
  EXPECT_EQ(h.core().stats().sessions, 2);

  // Idle from now: nothing for the down window, then back to min.
  ASSERT_TRUE(h.release(a.lease).has_value());
  h.advance_in_steps(59s, 1s);
  EXPECT_EQ(autoscaled_events(h).size(), 1u);
  h.advance_in_steps(5s, 1s);
  events = autoscaled_events(h);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].previous, 2);
  EXPECT_EQ(events[1].value, 1);
  EXPECT_EQ(h.core().stats().scale_downs, 1u);
  EXPECT_EQ(h.pending_stops().size(), 1u) << "an idle session above the target closes at once";
  h.settle();
  EXPECT_EQ(h.core().stats().sessions, 1);
}

TEST(PoolCoreAutoscaleTest, OffMeansTheTargetStaysWhereItIs) {
  CoreHarness h(autoscaled());
  h.start();
  h.settle();
  h.set_autoscale(false);
  ASSERT_FALSE(h.events().empty());
  EXPECT_EQ(h.events().back().type, EventType::kAutoscaleSet);
  EXPECT_EQ(h.events().back().value, 0);
  EXPECT_FALSE(h.core().stats().autoscale);
  (void)h.lease_now();
  h.advance_in_steps(30s, 1s);
  EXPECT_TRUE(autoscaled_events(h).empty());
  EXPECT_EQ(h.core().stats().target, 1);
  h.set_autoscale(true);
  h.advance(1s);
  EXPECT_EQ(autoscaled_events(h).size(), 1u);
}

TEST(PoolCoreAutoscaleTest, AManualScaleHoldsThroughTheCooldown) {
  CoreHarness h(autoscaled());
  h.start();
  h.settle();
  h.advance_in_steps(90s, 1s);  // idle at min: nothing to do
  ASSERT_TRUE(h.scale(6).has_value());
  h.settle();
  h.advance_in_steps(59s, 1s);
  EXPECT_TRUE(autoscaled_events(h).empty()) << "the operator's size holds for a whole down window";
  EXPECT_EQ(h.core().stats().target, 6);
  h.advance_in_steps(120s, 1s);
  const auto events = autoscaled_events(h);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().previous, 6);
  EXPECT_EQ(events.front().value, 5);  // one step at a time
}

TEST(PoolCoreAutoscaleTest, PausedOrDrainingPoolsAreLeftAlone) {
  CoreHarness h(autoscaled());
  h.start();
  h.settle();
  (void)h.lease_now();
  h.pause();
  h.advance_in_steps(10s, 1s);
  EXPECT_TRUE(autoscaled_events(h).empty());
  h.resume();
  h.advance(1s);
  EXPECT_EQ(autoscaled_events(h).size(), 1u);
}

TEST(PoolCoreAutoscaleTest, AReloadTurnsItOnOrOffAndNeverPastMax) {
  PoolConfig c = quiet_config(0, 3);
  CoreHarness h(c);
  h.start();
  EXPECT_FALSE(h.core().stats().autoscale);
  for (int i = 0; i < 6; ++i) (void)h.acquire_within(60s);
  h.settle();
  PoolConfig on = c;
  on.autoscale.enabled = true;
  ASSERT_TRUE(h.reconfigure(on).has_value());
  EXPECT_TRUE(h.core().stats().autoscale);
  h.advance_in_steps(20s, 1s);
  EXPECT_EQ(h.core().stats().target, 3) << "3 busy, 3 waiting: as far as max";
  for (const Event& e : autoscaled_events(h)) EXPECT_LE(e.value, 3);
  ASSERT_TRUE(h.reconfigure(c).has_value());
  EXPECT_FALSE(h.core().stats().autoscale);
}

// next_due() wakes a shell that sleeps until then for the next decision.
TEST(PoolCoreAutoscaleTest, NextDueIncludesTheNextDecision) {
  CoreHarness h(autoscaled());
  h.start();
  h.settle();
  h.advance(1s);
  EXPECT_LE(h.core().next_due(), h.now() + 1s);
}

}  // namespace
}  // namespace poolkeeper::core
