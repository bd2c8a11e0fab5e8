#include "monitor/alerts.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace poolkeeper::monitor {
namespace {

using std::chrono::minutes;
using std::chrono::seconds;

std::string duration_text(Duration d) {
  const auto s = std::chrono::duration_cast<seconds>(d).count();
  if (s == 0) return "now";
  if (s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

}  // namespace

std::vector<AlertRule> builtin_rules() {
  return {
      {"budget_consumed", "share of a budget spent (the day's or the month's, whichever is worse)", 0.8, {}, "%"},
      {"start_failure_rate", "share of session starts that failed over the last 5 minutes", 0.05, {}, "%"},
      {"unhealthy_sessions", "share of a pool's sessions whose health score is below its health_check_below", 0.2, minutes(1), "%"},
      {"queue_wait", "how long the oldest waiting acquire has waited", 30, {}, "s"},
      {"queue_length", "acquires waiting for a session", 10, seconds(30), ""},
      {"utilization", "share of a pool's ready sessions that are leased", 0.9, minutes(1), "%"},
      {"scheduler_stalled", "how long a pool's scheduler has not answered", 300, {}, "s"},
      {"client_sessions", "client sessions alive in a pool", 1000, {}, ""},
      {"memory_over_limit", "sessions measured over their memory limit in the last interval", 0, {}, ""},
  };
}

std::string format_value(double value, const std::string& unit) {
  char buf[64];
  if (unit == "%") {
    std::snprintf(buf, sizeof buf, "%.4g%%", value * 100);
  } else if (unit.empty()) {
    std::snprintf(buf, sizeof buf, "%.6g", value);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g %s", value, unit.c_str());
  }
  return buf;
}

AlertEngine::AlertEngine(std::vector<AlertRule> rules) : rules_(std::move(rules)) {}

const AlertRule* AlertEngine::rule(const std::string& name) const {
  auto it = std::find_if(rules_.begin(), rules_.end(), [&](const AlertRule& r) { return r.name == name; });
  return it == rules_.end() ? nullptr : &*it;
}

bool AlertEngine::knows(const std::string& name) const { return rule(name) != nullptr; }

void AlertEngine::set_threshold(const std::string& name, const std::string& subject, double threshold) {
  thresholds_[{name, subject}] = threshold;
}

double AlertEngine::threshold(const std::string& name, const std::string& subject) const {
  if (auto it = thresholds_.find({name, subject}); it != thresholds_.end()) return it->second;
  const AlertRule* r = rule(name);
  return r == nullptr ? 0 : r->threshold;
}

std::string AlertEngine::message(const AlertRule& r, const std::string& subject, double value, double threshold,
                                 bool firing) const {
  const std::string of = subject.empty() ? "" : " of " + subject;
  const std::string held = r.for_duration.count() > 0 ? " for " + duration_text(r.for_duration) : "";
  if (firing) {
    return r.name + of + " is " + format_value(value, r.unit) + " (above " + format_value(threshold, r.unit) +
           held + ")";
  }
  return r.name + of + " is back to " + format_value(value, r.unit) + " (at or below " +
         format_value(threshold, r.unit) + held + ")";
}

std::vector<AlertChange> AlertEngine::observe(TimePoint now, const std::vector<AlertSample>& samples) {
  std::vector<AlertChange> changes;
  for (const AlertSample& s : samples) {
    const AlertRule* r = rule(s.rule);
    if (r == nullptr || std::isnan(s.value)) continue;
    const double limit = threshold(s.rule, s.subject);
    const bool above = s.value > limit;
    const auto key = std::make_pair(s.rule, s.subject);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      if (!above) continue;
      it = entries_.emplace(key, Entry{.state = AlertState::kPending, .value = s.value, .since = now}).first;
    }
    Entry& e = it->second;
    e.value = s.value;
    if (e.state == AlertState::kPending) {
      if (!above) {
        entries_.erase(it);  // it never fired: nothing to resolve
        continue;
      }
      if (now - e.since >= r->for_duration) {
        e.state = AlertState::kFiring;
        e.since = now;
        e.below.reset();
        changes.push_back({s.rule, s.subject, true, s.value, limit, now, message(*r, s.subject, s.value, limit, true)});
      }
      continue;
    }
    // Firing: resolved once at or below for as long as it took to fire.
    if (above) {
      e.below.reset();
      continue;
    }
    if (!e.below) e.below = now;
    if (now - *e.below >= r->for_duration) {
      changes.push_back({s.rule, s.subject, false, s.value, limit, now, message(*r, s.subject, s.value, limit, false)});
      entries_.erase(it);
    }
  }
  return changes;
}

std::vector<ActiveAlert> AlertEngine::active() const {
  std::vector<ActiveAlert> out;
  for (const auto& [key, e] : entries_) {
    out.push_back({key.first, key.second, e.state, e.value, threshold(key.first, key.second), e.since});
  }
  return out;
}

AlertScope scope_of(const std::string& subject) {
  if (subject.starts_with("pool:")) return {subject.substr(5), ""};
  if (subject.starts_with("tenant:")) return {"", subject};
  if (subject == "global") return {"", "admin"};
  return {subject, ""};
}

std::vector<AlertSample> PoolSampler::sample(const PoolStats& st, TimePoint now, std::uint64_t over_memory) {
  constexpr Duration kFailureWindow = std::chrono::minutes(5);
  auto seconds_of = [](Duration d) { return std::chrono::duration<double>(d).count(); };
  std::vector<AlertSample> out;
  out.push_back({"queue_length", pool_, static_cast<double>(st.queue_length)});
  out.push_back({"queue_wait", pool_,
                 st.oldest_waiting_since == TimePoint::max()
                     ? 0.0
                     : seconds_of(std::max<Duration>(now - st.oldest_waiting_since, Duration{0}))});
  out.push_back({"utilization", pool_, st.utilization});
  const int live = st.sessions - st.sessions_by_state[static_cast<int>(SessionState::kStarting)] -
                   st.sessions_by_state[static_cast<int>(SessionState::kClosing)];
  out.push_back({"unhealthy_sessions", pool_, live <= 0 ? 0.0 : static_cast<double>(st.unhealthy) / live});
  // The oldest measurement kept is the newest one at least five minutes old.
  starts_.push_back({now, st.sessions_created, st.start_failures});
  while (starts_.size() > 1 && starts_[1].at <= now - kFailureWindow) starts_.pop_front();
  const double created = static_cast<double>(st.sessions_created - starts_.front().created);
  const double failed = static_cast<double>(st.start_failures - starts_.front().failed);
  out.push_back({"start_failure_rate", pool_, created + failed == 0 ? 0.0 : failed / (created + failed)});
  out.push_back({"client_sessions", pool_, static_cast<double>(st.client_sessions_active)});
  out.push_back({"memory_over_limit", pool_, static_cast<double>(over_memory)});
  return out;
}

}  // namespace poolkeeper::monitor
