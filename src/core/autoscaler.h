// Autoscaler: the size a pool should keep warm, from what it sees (how busy
// its sessions are, who waits and for how long) and what it predicts (the
// trend of demand, ahead by the sessions' cold-start time).
//
// Reactive: demand is leased sessions plus waiters; utilization is demand
// over live sessions. Above `up_at` (or with more waiters than sessions on
// their way, at least `queue_length` of them or one waiting `queue_wait`)
// the pool should grow, below `down_at` with nobody waiting it
// should shrink, in between it stays (a band, so that small changes do not
// move it). Either way the recommended size is the one that brings
// utilization to the middle of the band: ceil(demand / ((up_at + down_at) / 2)).
//
// Predictive: a least-squares line through the demand of the last
// `trend_window`; its R^2 is the confidence. When the confidence reaches
// `min_confidence` and the line says demand will be higher one cold start
// (plus an interval) from now, that demand is what the size must serve.
//
// Seasonal (with `season`): demand is remembered per phase of the season;
// once the last two whole seasons agree (the correlation of their phases at
// least `min_confidence`), the highest demand the last season saw between now
// and one cold start (plus an interval) ahead is what the size must serve.
//
// Stabilization and cooldowns keep it from oscillating: it grows to the lowest
// recommendation of the last `up_window` (0: the latest), no sooner than
// `cooldown_up` after its last growth; it shrinks to the highest
// recommendation of the last `down_window`, no sooner than `cooldown_down`
// after its last change, by at most `step_down`. Always within min..max.
//
// Pure and deterministic: time comes in with every call.
//
// Thread-safety: none (its PoolCore's).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>
#include <string>
#include <utility>

#include "poolkeeper/clock.h"
#include "poolkeeper/pool_config.h"

namespace poolkeeper::core {

struct AutoscaleObservation {
  int size = 0;      // the size the pool keeps now (its target)
  int live = 0;      // live sessions (starting, idle, leased, being checked)
  int busy = 0;      // leased
  int waiting = 0;   // waiters queued
  int starting = 0;  // live sessions not ready yet (they will serve waiters first)
  Duration oldest_wait{0};
  Duration cold_start{0};  // the learned time to start a session (0: not known yet)
  int min = 0;
  int max = 0;
};

struct ScaleDecision {
  int from = 0;
  int to = 0;
  std::string reason;
  double confidence = 1;  // 1 for what was observed; the trend's R^2 when predicted
  bool predictive = false;
};

struct DemandForecast {
  double demand = 0;      // at the asked time
  double per_second = 0;  // the slope
  double confidence = 0;  // R^2 of the fit (0 without enough samples or variation)
};

class Autoscaler {
 public:
  explicit Autoscaler(AutoscaleConfig config = {}) : config_(config) {}

  void configure(const AutoscaleConfig& config) {
    if (config.season != config_.season || config.interval != config_.interval) {
      slots_ = 0;  // the seasons are measured again
      season_confidence_ = 0;
    }
    config_ = config;
  }
  const AutoscaleConfig& config() const { return config_; }

  // Samples demand and decides, at most once per interval (nullopt: keep
  // the size, or not due yet).
  std::optional<ScaleDecision> evaluate(const AutoscaleObservation& o, TimePoint now);
  // The size was changed by someone else (an operator): cooldowns start now
  // and recommendations so far no longer hold.
  void scaled(TimePoint now);
  // When evaluate() next does something.
  TimePoint next_due() const { return next_; }
  // The trend's demand at `at` from the samples so far.
  DemandForecast forecast(TimePoint at) const;
  // How much the last two seasons agree (0 until two whole seasons are seen).
  double season_confidence() const { return season_confidence_; }

 private:
  std::optional<ScaleDecision> decide(const AutoscaleObservation& o, TimePoint now);

  AutoscaleConfig config_;
  TimePoint next_{};
  std::deque<std::pair<TimePoint, double>> demand_;          // samples in trend_window
  std::deque<std::pair<TimePoint, int>> recommendations_;    // in the longer window
  std::optional<TimePoint> since_;  // recommendations kept from then (shrinking needs a whole window)
  std::optional<TimePoint> last_up_;
  std::optional<TimePoint> last_change_;

  // Seasons: the highest demand per slot in this season and the two before
  // (negative: not seen).
  void remember_season(double demand, TimePoint now);
  std::optional<double> season_peak(TimePoint from, TimePoint to) const;
  std::size_t slots_ = 0;
  Duration slot_width_{0};
  std::optional<TimePoint> origin_;
  std::int64_t cycle_ = 0;
  std::vector<double> current_, previous_, before_;
  double season_confidence_ = 0;
};

}  // namespace poolkeeper::core
