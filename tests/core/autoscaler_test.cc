// The autoscaler's decisions over synthetic load curves, on simulated time:
// steps, ramps, spikes and noise; how fast it grows, how slowly it shrinks,
// that it never oscillates, honours its cooldowns and bounds, and that its
// trend starts sessions ahead of a learned cold start.
#include "core/autoscaler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

namespace poolkeeper::core {
namespace {

using namespace std::chrono_literals;
using std::chrono::seconds;

struct Step {
  TimePoint at;
  int size;
  int waiting;
};

struct LoadRun {
  std::vector<ScaleDecision> decisions;
  std::vector<TimePoint> decided_at;
  std::vector<Step> steps;  // every second
  int waiting_seconds = 0;  // seconds with someone waiting
  double session_seconds = 0;
};

// A pool of `size` warm sessions (the autoscaler's target) and nothing else:
// sessions a decision adds are live at once but serve only after
// `cold_start`; demand above the ready sessions waits. demand(t) is the load
// at second t.
LoadRun simulate(AutoscaleConfig config, int min, int max, int seconds_total,
             const std::function<double(int)>& demand, Duration cold_start = 0s) {
  config.enabled = true;
  Autoscaler a(config);
  LoadRun run;
  TimePoint now{};
  int size = min;    // the target
  int ready = min;   // sessions started and ready
  std::vector<std::pair<TimePoint, int>> coming;  // (ready at, how many)
  TimePoint waiting_since = TimePoint::max();
  for (int t = 0; t < seconds_total; ++t) {
    for (auto it = coming.begin(); it != coming.end();) {
      if (it->first <= now) {
        ready += it->second;
        it = coming.erase(it);
      } else {
        ++it;
      }
    }
    ready = std::min(ready, size);  // a shrink closes idle sessions at once
    const int d = static_cast<int>(std::lround(demand(t)));
    const int busy = std::min(d, ready);
    const int waiting = d - busy;
    if (waiting > 0 && waiting_since == TimePoint::max()) waiting_since = now;
    if (waiting == 0) waiting_since = TimePoint::max();
    AutoscaleObservation o{.size = size,
                           .live = size,  // starting sessions are live, as in the core
                           .busy = busy,
                           .waiting = waiting,
                           .starting = size - ready,
                           .oldest_wait = waiting > 0 ? now - waiting_since : Duration{0},
                           .cold_start = cold_start,
                           .min = min,
                           .max = max};
    if (auto dec = a.evaluate(o, now)) {
      EXPECT_EQ(dec->from, size);
      if (dec->to > size) coming.emplace_back(now + cold_start, dec->to - size);
      size = dec->to;
      run.decisions.push_back(*dec);
      run.decided_at.push_back(now);
    }
    run.steps.push_back({now, size, waiting});
    run.waiting_seconds += waiting > 0;
    run.session_seconds += size;
    now += 1s;
  }
  return run;
}

// Seconds with someone waiting from `from` on.
int waited_after(const LoadRun& r, TimePoint from) {
  int n = 0;
  for (const Step& s : r.steps) n += s.at >= from && s.waiting > 0;
  return n;
}

// Direction changes (up then down or down then up) over a run.
int reversals(const LoadRun& r) {
  int n = 0;
  for (std::size_t i = 1; i < r.decisions.size(); ++i) {
    const bool up = r.decisions[i].to > r.decisions[i].from;
    const bool was_up = r.decisions[i - 1].to > r.decisions[i - 1].from;
    n += up != was_up;
  }
  return n;
}

AutoscaleConfig reactive() {
  AutoscaleConfig c;
  c.predictive = false;
  return c;
}

// Steady load inside the band moves nothing; a step up is met at the next
// interval with the size that brings utilization to the middle of the band.
TEST(AutoscalerTest, AStepIsMetWithinOneInterval) {
  const LoadRun r = simulate(reactive(), 2, 40, 900, [](int t) { return t < 600 ? 1.0 : 12.0; });
  ASSERT_FALSE(r.decisions.empty());
  EXPECT_GE(r.decided_at.front(), TimePoint{} + 600s) << "no decision while 1 of 2 is busy";
  EXPECT_LE(r.decided_at.front(), TimePoint{} + 601s);
  EXPECT_EQ(r.decisions.front().to, 22);  // ceil(12 / 0.55)
  EXPECT_EQ(r.decisions.front().confidence, 1);
  EXPECT_FALSE(r.decisions.front().predictive);
  EXPECT_NE(r.decisions.front().reason.find("utilization"), std::string::npos) << r.decisions.front().reason;
  EXPECT_EQ(r.decisions.size(), 1u) << "then it holds";
}

// After a spike the pool shrinks only once the whole down window has been
// quiet, one session per cooldown, and never grows back in between.
TEST(AutoscalerTest, ASpikeShrinksSlowlyAndDoesNotOscillate) {
  const LoadRun r = simulate(reactive(), 2, 40, 3000, [](int t) { return t >= 100 && t < 160 ? 15.0 : 1.0; });
  ASSERT_GE(r.decisions.size(), 2u);
  EXPECT_GT(r.decisions[0].to, r.decisions[0].from);
  EXPECT_EQ(reversals(r), 1) << "up once, then only down";
  const TimePoint spike_end = TimePoint{} + 160s;
  for (std::size_t i = 1; i < r.decisions.size(); ++i) {
    EXPECT_LT(r.decisions[i].to, r.decisions[i].from);
    EXPECT_EQ(r.decisions[i].from - r.decisions[i].to, 1) << "step_down";
    EXPECT_GE(r.decided_at[i], spike_end + 300s) << "the down window";
    EXPECT_GE(r.decided_at[i] - r.decided_at[i - 1], 60s) << "the cooldown";
    EXPECT_NE(r.decisions[i].reason.find("for 300 s"), std::string::npos) << r.decisions[i].reason;
  }
  // It ends inside the band: 1 busy of 3 is 0.33 >= 0.30.
  EXPECT_EQ(r.steps.back().size, 3);
}

// Noise that stays inside the band never moves the pool.
TEST(AutoscalerTest, NoiseInsideTheBandMovesNothing) {
  AutoscaleConfig c = reactive();
  const LoadRun r = simulate(c, 5, 40, 3600, [](int t) { return (t * 7919) % 3 == 0 ? 2.0 : 3.0; });
  // 2..3 busy of 5: 0.4..0.6.
  EXPECT_TRUE(r.decisions.empty()) << r.decisions.front().reason;
}

// A load that swings between high and low for an hour: each swing may move
// it, but it never flaps between decisions faster than its cooldowns.
TEST(AutoscalerTest, SwingingLoadHonoursCooldownsEveryTime) {
  AutoscaleConfig c = reactive();
  c.cooldown_up = 10s;
  const LoadRun r = simulate(c, 1, 30, 3600, [](int t) { return (t / 600) % 2 == 0 ? 12.0 : 2.0; });
  for (std::size_t i = 1; i < r.decisions.size(); ++i) {
    const bool up = r.decisions[i].to > r.decisions[i].from;
    const Duration gap = r.decided_at[i] - r.decided_at[i - 1];
    EXPECT_GE(gap, up ? c.cooldown_up : c.cooldown_down) << "decision " << i;
  }
  EXPECT_LE(reversals(r), 2 * 6) << "at most one way and back per swing";
}

TEST(AutoscalerTest, StaysWithinMinAndMaxAndStepsUpWhenAsked) {
  AutoscaleConfig c = reactive();
  c.step_up = 2;
  c.cooldown_up = 5s;
  const LoadRun r = simulate(c, 3, 10, 1500, [](int t) { return t < 300 ? 100.0 : 0.0; });
  for (const Step& s : r.steps) {
    EXPECT_GE(s.size, 3);
    EXPECT_LE(s.size, 10);
  }
  // 3 -> 5 -> 7 -> 9 -> 10, five seconds apart.
  ASSERT_GE(r.decisions.size(), 4u);
  EXPECT_EQ(r.decisions[0].to, 5);
  EXPECT_EQ(r.decisions[1].to, 7);
  EXPECT_EQ(r.decided_at[1] - r.decided_at[0], 5s);
  EXPECT_EQ(r.decisions[3].to, 10);
  EXPECT_EQ(r.steps.back().size, 3) << "back to min once idle";
}

// Waiters grow the pool even when utilization alone would not say so (while
// sessions are still starting they count as live but serve nobody yet).
TEST(AutoscalerTest, TheQueueGrowsThePool) {
  AutoscaleConfig c = reactive();
  Autoscaler a(c);
  // 5 of 10 busy (0.5, inside the band), 5 starting, 2 waiting.
  auto d = a.evaluate({.size = 10, .live = 10, .busy = 5, .waiting = 2, .min = 0, .max = 20}, TimePoint{});
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 13);  // ceil(7 / 0.55)
  EXPECT_EQ(d->reason, "2 waiting");

  c.queue_length = 0;  // only how long the oldest waited
  Autoscaler b(c);
  EXPECT_FALSE(b.evaluate({.size = 10, .live = 10, .busy = 5, .waiting = 1, .oldest_wait = 1s, .max = 20},
                          TimePoint{}));
  d = b.evaluate({.size = 10, .live = 10, .busy = 5, .waiting = 1, .oldest_wait = 2500ms, .max = 20},
                 TimePoint{} + 1s);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 11);
  EXPECT_EQ(d->reason, "the oldest waiter waited 2.5 s");
}

// A steady ramp with a 60 s cold start: the trend starts sessions ahead of
// need, so far fewer seconds pass with someone waiting than when it only
// reacts, and its decisions say they were predicted, with their confidence.
TEST(AutoscalerTest, ATrendStartsSessionsAheadOfAColdStart) {
  auto ramp = [](int t) { return t < 60 ? 1.0 : std::min(40.0, 1.0 + (t - 60) * 0.05); };
  AutoscaleConfig predictive;
  predictive.min_confidence = 0.8;
  const LoadRun ahead = simulate(predictive, 1, 100, 1200, ramp, 60s);
  const LoadRun behind = simulate(reactive(), 1, 100, 1200, ramp, 60s);
  int predicted = 0;
  for (const ScaleDecision& d : ahead.decisions) {
    if (!d.predictive) continue;
    ++predicted;
    EXPECT_GE(d.confidence, 0.8);
    EXPECT_LE(d.confidence, 1.0);
    EXPECT_NE(d.reason.find("rising to"), std::string::npos) << d.reason;
  }
  EXPECT_GT(predicted, 0);
  // Once the trend has a window of the ramp to go on (from 60 s + 2 min),
  // nobody waits with it; without it, every reactive step comes one cold
  // start late.
  const TimePoint settled = TimePoint{} + 200s;
  EXPECT_EQ(waited_after(ahead, settled), 0);
  EXPECT_GE(waited_after(behind, settled), 10);
  EXPECT_LE(ahead.waiting_seconds, behind.waiting_seconds);
}

// Bursts that come back every minute: once two whole minutes agree, the
// pool grows a cold start ahead of each burst instead of after it, and
// shrinks in between.
TEST(AutoscalerTest, ARepeatingPatternIsMetAhead) {
  auto bursts = [](int t) { return t % 60 >= 40 && t % 60 < 50 ? 12.0 : 1.0; };
  AutoscaleConfig seasonal = reactive();
  seasonal.season = 60s;
  seasonal.down_window = 5s;
  seasonal.cooldown_down = 1s;
  seasonal.step_down = 0;
  AutoscaleConfig plain = seasonal;
  plain.season = Duration{0};
  const LoadRun ahead = simulate(seasonal, 2, 30, 600, bursts, 5s);
  const LoadRun behind = simulate(plain, 2, 30, 600, bursts, 5s);
  // From the fourth minute on (two whole seasons seen, then one to compare).
  const TimePoint learned = TimePoint{} + 180s;
  EXPECT_EQ(waited_after(ahead, learned), 0);
  EXPECT_GE(waited_after(behind, learned), 7 * 4) << "each burst waits out the cold start";
  int predicted = 0;
  for (const ScaleDecision& d : ahead.decisions) {
    if (!d.predictive) continue;
    ++predicted;
    EXPECT_NE(d.reason.find("a season ago"), std::string::npos) << d.reason;
    EXPECT_GE(d.confidence, 0.6);
  }
  EXPECT_GE(predicted, 7);
  // And it still shrinks between bursts: well under a pool kept at the peak.
  EXPECT_LT(ahead.session_seconds, 0.6 * 22 * 600);
}

// Load that does not repeat gives the seasons no confidence.
TEST(AutoscalerTest, LoadThatDoesNotRepeatIsNoSeason) {
  AutoscaleConfig c = reactive();
  c.season = 60s;
  Autoscaler a(c);
  std::mt19937 rng(3);
  TimePoint now{};
  for (int i = 0; i < 400; ++i, now += 1s) {
    const int busy = static_cast<int>(rng() % 10);
    (void)a.evaluate({.size = 20, .live = 20, .busy = busy, .min = 0, .max = 40}, now);
  }
  EXPECT_LT(a.season_confidence(), 0.3);
}

// The same bursts with noise on top, as Poisson arrivals make them, still
// read as one pattern.
TEST(AutoscalerTest, NoisyRepeatsAreStillAPattern) {
  AutoscaleConfig c = reactive();
  c.season = 30s;
  Autoscaler a(c);
  std::mt19937 rng(5);
  TimePoint now{};
  for (int t = 0; t < 95; ++t, now += 1s) {
    const int base = t % 30 >= 25 ? 12 : 1;
    const int busy = std::max(0, base + static_cast<int>(rng() % 5) - 2);
    (void)a.evaluate({.size = 20, .live = 20, .busy = busy, .min = 0, .max = 40}, now);
  }
  EXPECT_GT(a.season_confidence(), 0.8);
}

// A trend that explains little (noise around a flat line) predicts nothing.
TEST(AutoscalerTest, NoiseGivesTheTrendNoConfidence) {
  AutoscaleConfig c;
  const LoadRun r = simulate(c, 4, 40, 1200, [](int t) { return 2.0 + ((t * 7919) % 5 == 0 ? 1 : 0); });
  for (const ScaleDecision& d : r.decisions) EXPECT_FALSE(d.predictive) << d.reason;
  Autoscaler a(c);
  TimePoint now{};
  for (int i = 0; i < 100; ++i, now += 1s) {
    (void)a.evaluate({.size = 4, .live = 4, .busy = 2, .min = 0, .max = 10}, now);
  }
  EXPECT_EQ(a.forecast(now + 60s).confidence, 0) << "flat demand: nothing to explain";
  EXPECT_DOUBLE_EQ(a.forecast(now + 60s).demand, 2);
}

TEST(AutoscalerTest, ForecastFollowsALine) {
  Autoscaler a(AutoscaleConfig{.trend_window = 60s});
  TimePoint now{};
  for (int i = 0; i < 60; ++i, now += 1s) {
    // busy rises by 1 every 10 s: 0.1 a second.
    (void)a.evaluate({.size = 100, .live = 100, .busy = i / 10, .min = 0, .max = 100}, now);
  }
  const DemandForecast f = a.forecast(now + 30s);
  EXPECT_NEAR(f.per_second, 0.1, 0.02);
  EXPECT_NEAR(f.demand, 5.5 + 3.5, 1.0);  // about 9 half a minute on
  EXPECT_GT(f.confidence, 0.9);
}

// An operator's scale restarts the cooldowns and the down window.
TEST(AutoscalerTest, AManualScaleRestartsCooldowns) {
  AutoscaleConfig c = reactive();
  c.down_window = 60s;
  Autoscaler a(c);
  TimePoint now{};
  for (int i = 0; i < 120; ++i, now += 1s) {
    (void)a.evaluate({.size = 4, .live = 4, .busy = 2, .min = 1, .max = 20}, now);
  }
  a.scaled(now);  // an operator set 10
  std::optional<ScaleDecision> d;
  TimePoint when{};
  for (int i = 0; i < 200 && !d; ++i, now += 1s) {
    d = a.evaluate({.size = 10, .live = 10, .busy = 1, .min = 1, .max = 20}, now);
    when = now;
  }
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->to, 9);
  EXPECT_GE(when - (TimePoint{} + 120s), 60s);
}

}  // namespace
}  // namespace poolkeeper::core
