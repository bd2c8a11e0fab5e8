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
  return decide(o, now);
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
