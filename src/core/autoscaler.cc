#include "core/autoscaler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace poolkeeper::core {
namespace {

double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

std::string fixed(double v, int digits = 2) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

DemandForecast Autoscaler::forecast(TimePoint at) const {
  DemandForecast f;
  const std::size_t n = demand_.size();
  if (n == 0) return f;
  // Least squares over (t in seconds since the first sample, demand).
  const TimePoint t0 = demand_.front().first;
  double sx = 0, sy = 0;
  for (const auto& [t, y] : demand_) {
    sx += seconds(t - t0);
    sy += y;
  }
  const double mx = sx / static_cast<double>(n), my = sy / static_cast<double>(n);
  double sxx = 0, sxy = 0, syy = 0;
  for (const auto& [t, y] : demand_) {
    const double dx = seconds(t - t0) - mx, dy = y - my;
    sxx += dx * dx;
    sxy += dx * dy;
    syy += dy * dy;
  }
  f.demand = my;
  if (n < 4 || sxx <= 0) return f;
  f.per_second = sxy / sxx;
  f.demand = my + f.per_second * (seconds(at - t0) - mx);
  // A flat demand has nothing to explain: no confidence in a trend.
  f.confidence = syy > 0 ? (sxy * sxy) / (sxx * syy) : 0;
  return f;
}

void Autoscaler::scaled(TimePoint now) {
  last_change_ = now;
  last_up_ = now;
  recommendations_.clear();
  since_.reset();
}

std::optional<ScaleDecision> Autoscaler::evaluate(const AutoscaleObservation& o, TimePoint now) {
  if (now < next_) return std::nullopt;
  next_ = now + config_.interval;
  const double demand = o.busy + o.waiting;
  demand_.emplace_back(now, demand);
  while (!demand_.empty() && demand_.front().first < now - config_.trend_window) demand_.pop_front();
  if (config_.season.count() > 0) remember_season(demand, now);
  return decide(o, now);
}

namespace {

// How alike two seasons are: the correlation of their slots (both seen),
// 0 when negative, when they share under nine tenths of their slots, or when
// either is flat. Noise at a low level hardly moves it; a pattern that
// repeats (bursts at the same phase) brings it near 1.
double similarity(const std::vector<double>& a, const std::vector<double>& b) {
  double sa = 0, sb = 0;
  std::size_t both = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] < 0 || b[i] < 0) continue;
    ++both;
    sa += a[i];
    sb += b[i];
  }
  if (both < 2 || both * 10 < a.size() * 9) return 0;
  const double ma = sa / static_cast<double>(both), mb = sb / static_cast<double>(both);
  double saa = 0, sbb = 0, sab = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] < 0 || b[i] < 0) continue;
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
    sab += (a[i] - ma) * (b[i] - mb);
  }
  if (saa <= 0 || sbb <= 0) return 0;
  return std::max(0.0, sab / std::sqrt(saa * sbb));
}

}  // namespace

void Autoscaler::remember_season(double demand, TimePoint now) {
  if (slots_ == 0 || !origin_) {
    slots_ = static_cast<std::size_t>(std::clamp<std::int64_t>(config_.season / config_.interval, 1, 1440));
    slot_width_ = config_.season / static_cast<std::int64_t>(slots_);
    origin_ = now;
    cycle_ = 0;
    current_.assign(slots_, -1);
    previous_.assign(slots_, -1);
    before_.assign(slots_, -1);
  }
  const std::int64_t elapsed = (now - *origin_) / slot_width_;
  const std::int64_t cycle = elapsed / static_cast<std::int64_t>(slots_);
  while (cycle_ < cycle) {  // a new season (or several, after a gap)
    before_ = std::move(previous_);
    previous_ = std::move(current_);
    current_.assign(slots_, -1);
    ++cycle_;
    season_confidence_ = similarity(previous_, before_);
  }
  double& slot = current_[static_cast<std::size_t>(elapsed % static_cast<std::int64_t>(slots_))];
  slot = std::max(slot, demand);
}

std::optional<double> Autoscaler::season_peak(TimePoint from, TimePoint to) const {
  if (slots_ == 0 || !origin_) return std::nullopt;
  std::optional<double> peak;
  for (TimePoint t = from; t <= to; t += slot_width_) {
    const std::int64_t elapsed = (t - *origin_) / slot_width_;
    // A season ago: this season's slot when `t` is already in the next one.
    const bool next_season = elapsed / static_cast<std::int64_t>(slots_) > cycle_;
    const double v = (next_season ? current_ : previous_)[static_cast<std::size_t>(
        elapsed % static_cast<std::int64_t>(slots_))];
    if (v >= 0) peak = std::max(peak.value_or(0), v);
  }
  return peak;
}

std::optional<ScaleDecision> Autoscaler::decide(const AutoscaleObservation& o, TimePoint now) {
  const int lo = o.min, hi = std::max(o.min, o.max);
  const int size = std::clamp(o.size, lo, hi);
  const double mid = (config_.up_at + config_.down_at) / 2;
  const double demand = o.busy + o.waiting;
  const double utilization = o.live > 0 ? demand / o.live : (demand > 0 ? 1e9 : 0);
  auto sized_for = [&](double d) { return static_cast<int>(std::ceil(std::max(0.0, d) / mid - 1e-9)); };

  // What the load says now.
  int rec = size;
  std::string why;
  // Waiters the sessions on their way will not serve.
  const int unserved = std::max(0, o.waiting - o.starting);
  const bool queue_long = config_.queue_length > 0 && unserved > 0 && unserved >= config_.queue_length;
  const bool queue_slow = config_.queue_wait.count() > 0 && unserved > 0 && o.oldest_wait >= config_.queue_wait;
  if (utilization > config_.up_at || queue_long || queue_slow) {
    rec = std::max(size + 1, sized_for(demand));
    if (utilization > config_.up_at) {
      why = "utilization " + fixed(std::min(utilization, 99.0)) + " > " + fixed(config_.up_at);
    } else if (queue_long) {
      why = std::to_string(unserved) + " waiting";
    } else {
      why = "the oldest waiter waited " + fixed(seconds(o.oldest_wait), 1) + " s";
    }
  } else if (utilization < config_.down_at && o.waiting == 0) {
    rec = std::min(size, sized_for(demand));
    why = "utilization " + fixed(utilization) + " < " + fixed(config_.down_at);
  }

  // What the trend says one cold start from now.
  double confidence = 1;
  bool predicted = false;
  if (config_.predictive) {
    const Duration horizon = o.cold_start + config_.interval;
    const DemandForecast f = forecast(now + horizon);
    if (f.confidence >= config_.min_confidence && f.per_second > 0 && f.demand > demand) {
      const int ahead = sized_for(f.demand);
      if (ahead > rec) {
        rec = ahead;
        confidence = f.confidence;
        predicted = true;
        why = "demand " + fixed(demand, 1) + " rising to " + fixed(f.demand, 1) + " in " +
              fixed(seconds(horizon), 1) + " s";
      }
    }
  }
  if (config_.season.count() > 0 && season_confidence_ >= config_.min_confidence) {
    const Duration horizon = o.cold_start + config_.interval;
    const std::optional<double> seen = season_peak(now, now + horizon);
    if (seen && sized_for(*seen) > rec) {
      rec = sized_for(*seen);
      confidence = season_confidence_;
      predicted = true;
      why = "demand " + fixed(*seen, 1) + " within " + fixed(seconds(horizon), 1) + " s a season ago";
    }
  }
  rec = std::clamp(rec, lo, hi);

  // Stabilization windows.
  recommendations_.emplace_back(now, rec);
  if (!since_) since_ = now;
  const Duration keep = std::max(config_.up_window, config_.down_window);
  while (!recommendations_.empty() && recommendations_.front().first < now - keep) {
    recommendations_.pop_front();
  }
  int up_to = rec, down_to = rec;
  for (const auto& [t, r] : recommendations_) {
    if (t >= now - config_.up_window) up_to = std::min(up_to, r);
    if (t >= now - config_.down_window) down_to = std::max(down_to, r);
  }

  ScaleDecision d;
  d.from = size;
  d.confidence = confidence;
  d.predictive = predicted;
  if (up_to > size) {
    if (last_up_ && now - *last_up_ < config_.cooldown_up) return std::nullopt;
    d.to = config_.step_up > 0 ? std::min(up_to, size + config_.step_up) : up_to;
    d.reason = why;
    last_up_ = last_change_ = now;
  } else if (down_to < size) {
    if (last_change_ && now - *last_change_ < config_.cooldown_down) return std::nullopt;
    if (now - *since_ < config_.down_window) return std::nullopt;  // not seen a whole window yet
    d.to = config_.step_down > 0 ? std::max(down_to, size - config_.step_down) : down_to;
    d.reason = why.empty() ? "load fell" : why;
    if (config_.down_window.count() > 0) {
      d.reason += " for " + fixed(seconds(config_.down_window), 0) + " s";
    }
    last_change_ = now;
  } else if (size != o.size) {
    // Outside min..max (a reconfigure moved them): back inside.
    d.to = size;
    d.reason = "within min and max";
  } else {
    return std::nullopt;
  }
  return d;
}

}  // namespace poolkeeper::core
