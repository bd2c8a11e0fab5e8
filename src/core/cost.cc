#include "core/cost.h"

#include <algorithm>
#include <chrono>

namespace poolkeeper::core {

std::string_view to_string(ChargeKind kind) {
  switch (kind) {
    case ChargeKind::kCreated: return "created";
    case ChargeKind::kAlive: return "alive";
    case ChargeKind::kLeased: return "leased";
    case ChargeKind::kUse: return "use";
  }
  return "unknown";
}

std::int64_t day_of(std::int64_t unix_ms) {
  return unix_ms >= 0 ? unix_ms / kMillisPerDay : -((-unix_ms + kMillisPerDay - 1) / kMillisPerDay);
}

std::int64_t month_of_day(std::int64_t day) {
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{day}}};
  return static_cast<std::int64_t>(static_cast<int>(ymd.year())) * 12 +
         static_cast<std::int64_t>(static_cast<unsigned>(ymd.month())) - 1;
}

namespace {

// floor(rate * elapsed / 1 h) for rate, elapsed >= 0, without the product
// (a year at $1000/h overflows 64 bits): whole hours times the rate, plus
// the rest of an hour, whose product stays below 2^63 for rates up to
// kMaxRatePerHour.
std::int64_t time_charge(std::int64_t rate, std::int64_t elapsed_ms) {
  return rate * (elapsed_ms / kMillisPerHour) + rate * (elapsed_ms % kMillisPerHour) / kMillisPerHour;
}

}  // namespace

void CostMeter::charge_span(Span& span, std::int64_t to, SessionId session,
                            const std::string& tenant, ChargeKind kind, std::int64_t at_ms,
                            Live& live, std::vector<CostCharge>& out) {
  if (to <= span.until_ms) return;  // nothing new (or the wall clock stepped back)
  if (span.rate == 0) {
    span.until_ms = to;
    return;
  }
  while (span.until_ms < to) {
    const std::int64_t day = day_of(span.until_ms);
    const std::int64_t step_to = std::min(to, (day + 1) * kMillisPerDay);
    const std::int64_t total = time_charge(span.rate, step_to - span.start_ms);
    const std::int64_t micros = total - span.charged;
    if (micros > 0) {
      out.push_back(CostCharge{.at_ms = at_ms,
                               .day = day,
                               .session = session,
                               .tenant = tenant,
                               .kind = kind,
                               .micros = micros});
      live.total += micros;
    }
    span.charged = total;
    span.until_ms = step_to;
  }
}

void CostMeter::set_model(const CostModel& model, std::int64_t now_ms, std::vector<CostCharge>& out) {
  accrue(now_ms, out);
  model_ = model;
  for (auto& [id, live] : sessions_) {
    const std::int64_t from = std::max(now_ms, live.alive.until_ms);
    live.alive = Span{.start_ms = from, .until_ms = from, .rate = model_.per_hour_alive, .charged = 0};
    if (live.lease) {
      const std::int64_t lease_from = std::max(now_ms, live.lease->until_ms);
      live.lease = Span{.start_ms = lease_from,
                        .until_ms = lease_from,
                        .rate = model_.per_hour_leased,
                        .charged = 0};
    }
  }
}

void CostMeter::session_started(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out) {
  Live& live = sessions_[session];
  live = Live{.alive = Span{.start_ms = at_ms, .until_ms = at_ms, .rate = model_.per_hour_alive, .charged = 0},
              .lease = std::nullopt,
              .tenant = {},
              .total = 0};
  if (model_.per_session > 0) {
    out.push_back(CostCharge{.at_ms = at_ms,
                             .day = day_of(at_ms),
                             .session = session,
                             .tenant = {},
                             .kind = ChargeKind::kCreated,
                             .micros = model_.per_session});
    live.total += model_.per_session;
  }
}

void CostMeter::leased(SessionId session, const std::string& tenant, std::int64_t at_ms,
                       std::vector<CostCharge>& out) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Live& live = it->second;
  if (live.lease) released(session, at_ms, out);
  live.lease = Span{.start_ms = at_ms, .until_ms = at_ms, .rate = model_.per_hour_leased, .charged = 0};
  live.tenant = tenant;
  if (model_.per_use > 0) {
    out.push_back(CostCharge{.at_ms = at_ms,
                             .day = day_of(at_ms),
                             .session = session,
                             .tenant = tenant,
                             .kind = ChargeKind::kUse,
                             .micros = model_.per_use});
    live.total += model_.per_use;
  }
}

void CostMeter::released(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out) {
  auto it = sessions_.find(session);
  if (it == sessions_.end() || !it->second.lease) return;
  Live& live = it->second;
  charge_span(*live.lease, at_ms, session, live.tenant, ChargeKind::kLeased, at_ms, live, out);
  live.lease.reset();
  live.tenant.clear();
}

void CostMeter::session_closed(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  released(session, at_ms, out);
  Live& live = it->second;
  charge_span(live.alive, at_ms, session, {}, ChargeKind::kAlive, at_ms, live, out);
  sessions_.erase(it);
}

std::int64_t CostMeter::charge_unobserved(SessionId session, std::int64_t from_ms, std::int64_t to_ms,
                                          bool created, std::vector<CostCharge>& out) const {
  CostMeter once({.per_session = created ? model_.per_session : 0, .per_hour_alive = model_.per_hour_alive});
  const std::size_t first = out.size();
  once.session_started(session, std::min(from_ms, to_ms), out);
  once.session_closed(session, to_ms, out);
  std::int64_t total = 0;
  for (std::size_t i = first; i < out.size(); ++i) total += out[i].micros;
  return total;
}

void CostMeter::accrue(std::int64_t now_ms, std::vector<CostCharge>& out) {
  for (auto& [id, live] : sessions_) {
    charge_span(live.alive, now_ms, id, {}, ChargeKind::kAlive, now_ms, live, out);
    if (live.lease) {
      charge_span(*live.lease, now_ms, id, live.tenant, ChargeKind::kLeased, now_ms, live, out);
    }
  }
}

std::int64_t CostMeter::hourly_rate() const {
  std::int64_t rate = 0;
  for (const auto& [id, live] : sessions_) rate += live.alive.rate + (live.lease ? live.lease->rate : 0);
  return rate;
}

std::optional<std::int64_t> CostMeter::session_cost(SessionId session) const {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return std::nullopt;
  return it->second.total;
}

}  // namespace poolkeeper::core
