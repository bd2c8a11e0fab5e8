#include <string>

#include "poolkeeper/pool_config.h"

namespace poolkeeper {
namespace {

std::unexpected<Error> bad(std::string key, const std::string& reason) {
  return std::unexpected(Error(ErrorCode::kInvalidConfig, key + ": " + reason));
}

}  // namespace

std::expected<void, Error> validate_config(const PoolConfig& c) {
  using std::to_string;
  if (c.name.empty()) return bad("name", "must not be empty");
  if (c.max <= 0) return bad("max", "must be > 0, got " + to_string(c.max));
  if (c.max > (1 << 24)) return bad("max", "must be <= 16777216, got " + to_string(c.max));
  if (c.min < 0) return bad("min", "must be >= 0, got " + to_string(c.min));
  if (c.max < c.min) {
    return bad("max", "must be >= min (" + to_string(c.min) + "), got " + to_string(c.max));
  }
  if (c.overflow < 0) return bad("overflow", "must be >= 0, got " + to_string(c.overflow));
  if (static_cast<long long>(c.max) + c.overflow > (1 << 24)) {
    return bad("overflow", "max + overflow must be <= 16777216");
  }
  if (c.min_idle < 0 || c.min_idle > c.max) {
    return bad("min_idle", "must be in 0..max (" + to_string(c.max) + "), got " + to_string(c.min_idle));
  }
  if (c.max_starting <= 0) {
    return bad("max_starting", "must be > 0, got " + to_string(c.max_starting));
  }
  if (c.max_queue < 0) return bad("max_queue", "must be >= 0, got " + to_string(c.max_queue));
  if (c.aging.count() < 0) return bad("aging", "must not be negative");
  if (c.handoff_after.count() < 0) return bad("handoff_after", "must not be negative");
  if (c.idle_timeout.count() < 0) return bad("idle_timeout", "must not be negative");
  if (c.lease_timeout.count() < 0) return bad("lease_timeout", "must not be negative");
  if (c.max_lifetime.count() < 0) return bad("max_lifetime", "must not be negative");
  if (!(c.lifetime_jitter >= 0.0 && c.lifetime_jitter < 1.0)) {
    return bad("lifetime_jitter", "must be in [0, 1), got " + to_string(c.lifetime_jitter));
  }
  if (c.max_uses < 0) return bad("max_uses", "must be >= 0, got " + to_string(c.max_uses));
  if (c.max_memory < 0) return bad("max_memory", "must be >= 0, got " + to_string(c.max_memory));
  if (!(c.max_cpu_percent >= 0)) {
    return bad("max_cpu_percent", "must be >= 0, got " + std::to_string(c.max_cpu_percent));
  }
  if (c.cpu_percent_samples < 1) {
    return bad("cpu_percent_samples", "must be >= 1, got " + to_string(c.cpu_percent_samples));
  }
  if (c.max_cpu_time.count() < 0) return bad("max_cpu_time", "must be >= 0");
  if (c.health_error_penalty < 0 || c.health_error_penalty > 100) {
    return bad("health_error_penalty", "must be in 0..100, got " + to_string(c.health_error_penalty));
  }
  if (c.health_success_recovery < 0 || c.health_success_recovery > 100) {
    return bad("health_success_recovery",
               "must be in 0..100, got " + to_string(c.health_success_recovery));
  }
  if (c.health_check_below < 0 || c.health_check_below > 100) {
    return bad("health_check_below", "must be in 0..100, got " + to_string(c.health_check_below));
  }
  if (c.validate_after_idle.count() < 0) return bad("validate_after_idle", "must not be negative");
  if (c.check_interval.count() < 0) return bad("check_interval", "must not be negative");
  if (c.start_backoff_initial.count() <= 0) return bad("start_backoff_initial", "must be > 0");
  if (c.start_backoff_max < c.start_backoff_initial) {
    return bad("start_backoff_max", "must be >= start_backoff_initial");
  }
  if (c.client_session_ttl.count() <= 0) return bad("client_session_ttl", "must be > 0");
  if (c.client_session_cleanup_interval.count() <= 0) {
    return bad("client_session_cleanup_interval", "must be > 0");
  }
  if (c.client_session_cleanup_batch <= 0) {
    return bad("client_session_cleanup_batch",
               "must be > 0, got " + to_string(c.client_session_cleanup_batch));
  }
  if (c.max_client_sessions == 0) return bad("max_client_sessions", "must be > 0");
  const AutoscaleConfig& a = c.autoscale;
  if (!(a.up_at > 0 && a.up_at <= 1)) return bad("autoscale_up_at", "must be in (0, 1]");
  if (!(a.down_at >= 0 && a.down_at < a.up_at)) {
    return bad("autoscale_down_at", "must be >= 0 and below autoscale_up_at");
  }
  if (a.queue_length < 0) return bad("autoscale_queue_length", "must be >= 0");
  if (a.queue_wait.count() < 0) return bad("autoscale_queue_wait", "must not be negative");
  if (a.step_up < 0) return bad("autoscale_step_up", "must be >= 0");
  if (a.step_down < 0) return bad("autoscale_step_down", "must be >= 0");
  if (a.cooldown_up.count() < 0) return bad("autoscale_cooldown_up", "must not be negative");
  if (a.cooldown_down.count() < 0) return bad("autoscale_cooldown_down", "must not be negative");
  if (a.up_window.count() < 0) return bad("autoscale_up_window", "must not be negative");
  if (a.down_window.count() < 0) return bad("autoscale_down_window", "must not be negative");
  if (a.interval.count() <= 0) return bad("autoscale_interval", "must be > 0");
  if (a.trend_window < 2 * a.interval) return bad("autoscale_trend_window", "must be at least two intervals");
  if (a.season.count() < 0 || (a.season.count() > 0 && a.season < 4 * a.interval)) {
    return bad("autoscale_season", "must be 0 (off) or at least four intervals");
  }
  if (!(a.min_confidence >= 0 && a.min_confidence <= 1)) {
    return bad("autoscale_min_confidence", "must be in 0..1");
  }
  return {};
}

}  // namespace poolkeeper
