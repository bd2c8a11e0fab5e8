#include "server/views.h"

#include <boost/json.hpp>

#include <chrono>
#include <cmath>

namespace poolkeeper::server {
namespace {

namespace json = boost::json;

std::int64_t ms(Duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

}  // namespace

json::object stats_json(const PoolStats& st) {
  json::object o;
  json::object by_state;
  for (int i = 0; i < kSessionStateCount; ++i) {
    by_state[std::string(to_string(static_cast<SessionState>(i)))] = st.sessions_by_state[i];
  }
  o["sessions"] = st.sessions;
  o["sessions_by_state"] = std::move(by_state);
  o["target"] = st.target;
  o["min"] = st.min;
  o["max"] = st.max;
  o["queue_length"] = st.queue_length;
  o["unhealthy"] = st.unhealthy;
  o["utilization"] = std::round(st.utilization * 1000) / 1000;
  o["paused"] = st.paused;
  o["draining"] = st.draining;
  o["emergency_stopped"] = st.emergency_stopped;
  o["budget_exceeded"] = st.budget_exceeded;
  o["autoscale"] = st.autoscale;
  o["scale_ups"] = st.scale_ups;
  o["scale_downs"] = st.scale_downs;
  o["acquisitions"] = st.acquisitions;
  o["immediate"] = st.immediate;
  o["releases"] = st.releases;
  o["broken_releases"] = st.broken_releases;
  o["timeouts"] = st.timeouts;
  o["cancellations"] = st.cancellations;
  o["rejections"] = st.rejections;
  o["reclaimed"] = st.reclaimed;
  o["sessions_created"] = st.sessions_created;
  o["start_failures"] = st.start_failures;
  o["sessions_closed"] = st.sessions_closed;
  o["checks"] = st.checks;
  o["check_failures"] = st.check_failures;
  o["reuse_rate"] = st.reuse_rate;
  o["affinity_hits"] = st.affinity_hits;
  o["affinity_misses"] = st.affinity_misses;
  o["wait_ms"] = json::object{{"count", st.wait.count},
                              {"p50", ms(st.wait.p50)},
                              {"p95", ms(st.wait.p95)},
                              {"p99", ms(st.wait.p99)},
                              {"max", ms(st.wait.max)}};
  o["client_sessions_active"] = st.client_sessions_active;
  o["client_sessions_expired"] = st.client_sessions_expired;
  o["reservations"] = st.reservations;
  return o;
}

}  // namespace poolkeeper::server
