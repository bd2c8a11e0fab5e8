#include "server/ledger.h"

#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace poolkeeper::server {
namespace {

namespace json = boost::json;
using core::ChargeKind;
using core::kMillisPerDay;
using core::kMillisPerHour;

constexpr std::int64_t kKeptDays = 62;  // in memory: two months for monthly budgets and reports

std::string date_text(std::int64_t day) {
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{day}}};
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02u", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  return buf;
}

// A lease row's outcome: ok, error or broken (as its holder released it),
// reclaimed (at its lease timeout) or lost (its session died).
std::string_view lease_outcome(const core::Event& e) {
  switch (e.type) {
    case core::EventType::kLeaseReclaimed: return "reclaimed";
    case core::EventType::kLeaseLost: return "lost";
    default: return core::to_string(static_cast<core::ReleaseOutcome>(e.value));
  }
}

}  // namespace

Ledger::Ledger(const DaemonConfig& config, store::Store* store, std::function<std::int64_t()> now_ms,
               runtime::Log& log)
    : store_(store), now_ms_(std::move(now_ms)), log_(log), budgets_(config.budget.warning) {
  day_ = core::day_of(now_ms_());
  configure(config);
}

void Ledger::configure(const DaemonConfig& config) {
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    const std::int64_t now = now_ms_();
    budgets_.set_global(config.budget.limits);
    budgets_.set_warning(config.budget.warning);
    for (const PoolEntry& e : config.pools) {
      PoolBooks& p = pools_[e.pool.name];
      std::vector<core::CostCharge> charges;
      if (!(p.meter.model() == e.cost)) p.meter.set_model(e.cost, now, charges);
      std::vector<store::Record> rows;
      record(e.pool.name, charges, rows);
      write(std::move(rows));
      budgets_.set_pool(e.pool.name, e.budget, e.budget_action);
    }
    std::map<std::string, core::BudgetLimits> tenants;
    for (const TenantConfig& t : config.tenants) tenants[t.name] = t.budget;
    budgets_.set_tenants(tenants);
    check_budgets(changes);
  }
  deliver(changes);
}

void Ledger::set_budget_hook(BudgetHook hook) {
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    hook_ = std::move(hook);
    // Pools already over their budget (restored spending) are announced.
    budgets_.reannounce();
    check_budgets(changes);
  }
  deliver(changes);
}

std::expected<void, Error> Ledger::restore() {
  if (store_ == nullptr) return {};
  const std::int64_t today = core::day_of(now_ms_());
  auto rows = store_->daily_costs(today - kKeptDays, today);
  if (!rows) return std::unexpected(rows.error());
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    for (const store::DailyCost& r : *rows) {
      daily_[r.day][{r.pool, r.tenant, r.kind}] += r.micros;
      budgets_.charge(r.pool, r.tenant, r.day, r.micros);
    }
    check_budgets(changes);
  }
  deliver(changes);
  // Today's sessions and leases so far, for the report's averages.
  auto activity = store_->activity(today * kMillisPerDay, (today + 1) * kMillisPerDay);
  if (!activity) return std::unexpected(activity.error());
  std::lock_guard lock(mu_);
  for (const store::PoolActivity& a : *activity) {
    auto it = pools_.find(a.pool);
    if (it == pools_.end()) continue;
    PoolBooks& p = it->second;
    p.day = today;
    p.sessions_created = a.sessions_created;
    p.leases_ended = a.leases;
    p.leases_ok = a.leases_ok;
    p.lease_ms = a.lease_ms;
  }
  return {};
}

std::expected<Reconciliation, Error> Ledger::reconcile(const std::set<std::string>& remote_pools) {
  Reconciliation result;
  if (store_ == nullptr) return result;
  auto open = store_->open_sessions_from_earlier_runs();
  if (!open) return std::unexpected(open.error());
  std::vector<store::Record> rows;
  for (store::OpenSession& s : *open) {
    if (!s.external_id.empty()) {
      (remote_pools.contains(s.pool) ? result.remote : result.unreachable).push_back(std::move(s));
      continue;
    }
    rows.push_back(store::SessionReconciled{.run = s.run,
                                            .pool = s.pool,
                                            .session = s.session,
                                            .at_ms = s.last_charge_ms,
                                            .reason = "reconciled",
                                            .cost_micros = s.charged_micros});
    ++result.closed;
  }
  if (rows.empty()) return result;
  rows.push_back(store::AuditEntry{
      .at_ms = now_ms_(),
      .actor = "daemon",
      .action = "reconcile",
      .pool = {},
      .detail = json::serialize(json::object{{"sessions", result.closed}})});
  if (auto written = store_->write_sync(std::move(rows)); !written) return std::unexpected(written.error());
  return result;
}

std::expected<std::int64_t, Error> Ledger::remote_closed(const store::OpenSession& s, std::int64_t closed_ms,
                                                         bool was_running) {
  if (store_ == nullptr) return 0;
  std::vector<BudgetChange> changes;
  std::int64_t extra = 0;
  std::vector<store::Record> rows;
  {
    std::lock_guard lock(mu_);
    std::vector<core::CostCharge> charges;
    auto it = pools_.find(s.pool);
    if (was_running && it != pools_.end() && closed_ms > s.last_charge_ms) {
      // Only its time alive since the last charge: it was created (and any
      // lease ended) in the run that charged it.
      extra = it->second.meter.charge_unobserved(s.session, s.last_charge_ms, closed_ms, false, charges);
      record(s.pool, charges, rows);
    }
    rows.push_back(store::SessionReconciled{
        .run = s.run,
        .pool = s.pool,
        .session = s.session,
        .at_ms = was_running ? closed_ms : s.last_charge_ms,
        .reason = was_running ? "reconciled: closed at the provider" : "reconciled: gone at the provider",
        .cost_micros = s.charged_micros + extra});
    rows.push_back(store::AuditEntry{
        .at_ms = now_ms_(),
        .actor = "daemon",
        .action = "reconcile_remote",
        .pool = s.pool,
        .detail = json::serialize(json::object{{"run", s.run},
                                               {"session", s.session},
                                               {"external_id", s.external_id},
                                               {"was_running", was_running},
                                               {"charged_micros", extra}})});
    if (!charges.empty()) check_budgets(changes);
  }
  if (auto written = store_->write_sync(std::move(rows)); !written) return std::unexpected(written.error());
  deliver(changes);
  return extra;
}

void Ledger::on_event(const std::string& pool, const core::Event& e) {
  using core::EventType;
  if (e.type != EventType::kSessionStarted && e.type != EventType::kSessionClosed &&
      e.type != EventType::kLeaseGranted && e.type != EventType::kLeaseReleased &&
      e.type != EventType::kLeaseReclaimed && e.type != EventType::kLeaseLost) {
    return;
  }
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return;
    PoolBooks& p = it->second;
    const std::int64_t now = now_ms_();
    const std::int64_t today = core::day_of(now);
    if (p.day != today) {
      p.day = today;
      p.sessions_created = p.leases_ended = p.leases_ok = p.lease_ms = 0;
    }
    std::vector<core::CostCharge> charges;
    std::vector<store::Record> rows;
    std::int64_t closed_cost = 0;
    switch (e.type) {
      case EventType::kSessionStarted:
        p.meter.session_started(e.session, now, charges);
        ++p.sessions_created;
        // The runner puts the driver's external id (a provider's session id) in the detail.
        rows.push_back(store::SessionOpened{.pool = pool, .session = e.session, .external_id = e.detail, .at_ms = now});
        break;
      case EventType::kLeaseGranted:
        p.meter.leased(e.session, e.detail, now, charges);
        p.leases[e.lease] = LeaseInfo{.session = e.session, .tenant = e.detail, .started_ms = now};
        break;
      case EventType::kSessionClosed: {
        // A lease still open ends with its session (lost or reclaimed before).
        for (auto l = p.leases.begin(); l != p.leases.end();) {
          l = l->second.session == e.session ? p.leases.erase(l) : std::next(l);
        }
        std::int64_t cost = p.meter.session_cost(e.session).value_or(0);
        p.meter.session_closed(e.session, now, charges);
        for (const auto& c : charges) cost += c.micros;
        closed_cost = cost;
        break;
      }
      default: {  // a lease ended
        p.meter.released(e.session, now, charges);
        auto l = p.leases.find(e.lease);
        if (l != p.leases.end()) {
          std::int64_t cost = 0;
          for (const auto& c : charges) cost += c.micros;
          ++p.leases_ended;
          if (e.type == EventType::kLeaseReleased && e.value == static_cast<std::int64_t>(core::ReleaseOutcome::kOk)) {
            ++p.leases_ok;
          }
          p.lease_ms += now - l->second.started_ms;
          rows.push_back(store::LeaseEnded{.pool = pool,
                                           .session = e.session,
                                           .lease = e.lease,
                                           .tenant = l->second.tenant,
                                           .started_ms = l->second.started_ms,
                                           .ended_ms = now,
                                           .outcome = std::string(lease_outcome(e)),
                                           .cost_micros = cost});
          p.leases.erase(l);
        }
        break;
      }
    }
    record(pool, charges, rows);
    if (e.type == EventType::kSessionClosed) {
      rows.push_back(store::SessionClosed{.pool = pool,
                                          .session = e.session,
                                          .at_ms = now,
                                          .reason = std::string(to_string(e.reason)),
                                          .uses = e.value,
                                          .cost_micros = closed_cost});
    }
    write(std::move(rows));
    if (!charges.empty()) check_budgets(changes);
  }
  deliver(changes);
}

void Ledger::swept(const std::string& pool, const std::vector<drivers::SweptSession>& sessions) {
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return;
    const core::CostMeter& meter = it->second.meter;
    std::vector<store::Record> rows;
    bool charged = false;
    std::int64_t swept = 0, abandoned = 0;
    for (const drivers::SweptSession& s : sessions) {
      ++(s.abandoned ? abandoned : swept);
      std::vector<core::CostCharge> charges;
      const std::int64_t created = std::min(s.created_ms.value_or(s.deleted_ms), s.deleted_ms);
      const std::int64_t cost = meter.charge_unobserved(s.session, created, s.deleted_ms, true, charges);
      record(pool, charges, rows);
      rows.push_back(store::SessionSwept{.run = s.run,
                                         .pool = pool,
                                         .session = s.session,
                                         .external_id = s.external_id,
                                         .created_ms = created,
                                         .closed_ms = s.deleted_ms,
                                         .cost_micros = cost,
                                         .reason = s.abandoned ? "start failed: deleted" : "swept"});
      charged = charged || !charges.empty();
    }
    for (const auto& [action, n] : {std::pair{"sweep", swept}, std::pair{"abandon_start", abandoned}}) {
      if (n == 0) continue;
      rows.push_back(store::AuditEntry{.at_ms = now_ms_(),
                                       .actor = "daemon",
                                       .action = action,
                                       .pool = pool,
                                       .detail = json::serialize(json::object{{"deleted", n}})});
    }
    write(std::move(rows));
    if (charged) check_budgets(changes);
  }
  deliver(changes);
}

void Ledger::tick() {
  std::vector<BudgetChange> changes;
  {
    std::lock_guard lock(mu_);
    const std::int64_t now = now_ms_();
    std::vector<store::Record> rows;
    for (auto& [name, p] : pools_) {
      std::vector<core::CostCharge> charges;
      p.meter.accrue(now, charges);
      record(name, charges, rows);
    }
    write(std::move(rows));
    const std::int64_t today = core::day_of(now);
    if (today != day_) {
      day_ = today;
      budgets_.forget_before(today - kKeptDays);
      daily_.erase(daily_.begin(), daily_.lower_bound(today - kKeptDays));
    }
    check_budgets(changes);
  }
  deliver(changes);
}

// Under the lock: charges go to the books and become store rows.
void Ledger::record(const std::string& pool, std::vector<core::CostCharge>& charges,
                    std::vector<store::Record>& rows) {
  for (const core::CostCharge& c : charges) {
    daily_[c.day][{pool, c.tenant, std::string(to_string(c.kind))}] += c.micros;
    budgets_.charge(pool, c.tenant, c.day, c.micros);
    rows.push_back(store::Charge{.at_ms = c.at_ms,
                                 .day = c.day,
                                 .pool = pool,
                                 .tenant = c.tenant,
                                 .session = c.session,
                                 .kind = std::string(to_string(c.kind)),
                                 .micros = c.micros});
  }
}

void Ledger::write(std::vector<store::Record> rows) {
  if (store_ == nullptr || rows.empty()) return;
  store_->write(std::move(rows), [&log = log_](std::expected<void, Error> r) {
    if (!r) {
      log.write(runtime::LogLevel::kError, "store write failed", {{"why", r.error().message}});
    }
  });
}

// Under the lock: what spending means now. Notices go to the log and the
// audit log; pools' changes are delivered after the lock.
void Ledger::check_budgets(std::vector<BudgetChange>& changes) {
  core::BudgetDecisions d = budgets_.decide(core::day_of(now_ms_()));
  for (const core::BudgetNotice& n : d.notices) {
    const bool exceeded = n.status.level == core::BudgetLevel::kExceeded;
    log_.write(runtime::LogLevel::kWarn, exceeded ? "budget exceeded" : "budget warning",
               {{"budget", n.budget}, {"why", n.why}});
    write({store::AuditEntry{.at_ms = now_ms_(),
                             .actor = "daemon",
                             .action = exceeded ? "budget_exceeded" : "budget_warning",
                             .pool = {},
                             .detail = json::serialize(json::object{
                                 {"budget", n.budget},
                                 {"spent_micros", n.status.spent},
                                 {"limit_micros", n.status.limit},
                                 {"period", n.status.monthly ? "month" : "day"}})}});
  }
  for (BudgetChange& c : d.pools) changes.push_back(std::move(c));
}

void Ledger::deliver(const std::vector<BudgetChange>& changes) {
  if (changes.empty()) return;
  BudgetHook hook;
  {
    std::lock_guard lock(mu_);
    hook = hook_;
  }
  for (const BudgetChange& c : changes) {
    log_.write(c.exceeded ? runtime::LogLevel::kWarn : runtime::LogLevel::kInfo,
               c.exceeded ? "pool budget spent: no new sessions" : "pool budget restored",
               {{"pool", c.pool}, {"why", c.why}, {"drain", c.drain ? "true" : "false"}});
    if (hook) hook(c);
  }
}

std::optional<std::string> Ledger::tenant_refusal(const std::string& tenant) const {
  std::lock_guard lock(mu_);
  return budgets_.tenant_refusal(tenant, core::day_of(now_ms_()));
}

std::vector<std::pair<std::string, double>> Ledger::budget_usage() const {
  std::lock_guard lock(mu_);
  return budgets_.usage(core::day_of(now_ms_()));
}

std::uint64_t Ledger::mark() const { return store_ == nullptr ? 0 : store_->mark(); }

void Ledger::sync(std::uint64_t since, store::Done done) {
  if (store_ == nullptr) {
    done({});
    return;
  }
  store_->sync(since, std::move(done));
}

json::object Ledger::report(const CostQuery& q) const {
  std::lock_guard lock(mu_);
  const std::int64_t now = now_ms_();
  const std::int64_t today = core::day_of(now);
  const int days = std::clamp(q.days, 1, static_cast<int>(kKeptDays));
  auto counts = [&](const Key& k) {
    return (q.pool.empty() || std::get<0>(k) == q.pool) &&
           (q.tenant.empty() || std::get<1>(k) == q.tenant);
  };

  json::object by_pool, by_tenant, by_kind;
  std::int64_t total_today = 0;
  if (auto it = daily_.find(today); it != daily_.end()) {
    for (const auto& [k, micros] : it->second) {
      if (!counts(k)) continue;
      total_today += micros;
      auto add = [micros](json::object& o, const std::string& key) {
        o[key] = (o.contains(key) ? o[key].as_int64() : 0) + micros;
      };
      add(by_pool, std::get<0>(k));
      add(by_tenant, std::get<1>(k).empty() ? "(pool)" : std::get<1>(k));
      add(by_kind, std::get<2>(k));
    }
  }

  // The last `days` days and their linear trend (least squares).
  json::array history;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (int i = days - 1; i >= 0; --i) {
    const std::int64_t d = today - i;
    std::int64_t micros = 0;
    if (auto it = daily_.find(d); it != daily_.end()) {
      for (const auto& [k, m] : it->second) micros += counts(k) ? m : 0;
    }
    history.push_back(json::object{{"day", date_text(d)}, {"total_micros", micros}});
    const double x = static_cast<double>(days - 1 - i);
    const double y = static_cast<double>(micros);
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double n = days;
  const double denominator = n * sxx - sx * sx;
  const double slope = denominator > 0 ? (n * sxy - sx * sy) / denominator : 0;

  // The rest of today at the present rate: time charges of what is live
  // now, plus one-off fees at today's pace so far.
  std::int64_t hourly = 0;
  std::int64_t fees_today = 0;
  for (const auto& [name, p] : pools_) {
    if (!q.pool.empty() && name != q.pool) continue;
    if (q.tenant.empty()) hourly += p.meter.hourly_rate();
  }
  if (auto it = daily_.find(today); it != daily_.end()) {
    for (const auto& [k, m] : it->second) {
      if (counts(k) && (std::get<2>(k) == "created" || std::get<2>(k) == "use")) fees_today += m;
    }
  }
  const std::int64_t elapsed_ms = std::max<std::int64_t>(now - today * kMillisPerDay, 1);
  const std::int64_t left_ms = (today + 1) * kMillisPerDay - now;
  const std::int64_t rest = static_cast<std::int64_t>(
      (static_cast<double>(hourly) / kMillisPerHour + static_cast<double>(fees_today) / elapsed_ms) *
      static_cast<double>(left_ms));

  json::array budgets;
  for (const core::BudgetLine& line : budgets_.lines(today)) {
    const bool pool_budget = line.budget.starts_with("pool:");
    const bool tenant_budget = line.budget.starts_with("tenant:");
    if (pool_budget && !q.pool.empty() && line.budget != "pool:" + q.pool) continue;
    if (tenant_budget && !q.tenant.empty() && line.budget != "tenant:" + q.tenant) continue;
    budgets.push_back(json::object{{"budget", line.budget},
                                   {"daily_limit_micros", line.limits.daily},
                                   {"daily_spent_micros", line.spent_today},
                                   {"monthly_limit_micros", line.limits.monthly},
                                   {"monthly_spent_micros", line.spent_this_month},
                                   {"level", to_string(line.level)}});
  }

  // Per pool today: averages, and what one new session per request would
  // have cost (a creation, the use, and the lease's time alive and leased).
  json::array pools;
  for (const auto& [name, p] : pools_) {
    if (!q.pool.empty() && name != q.pool) continue;
    std::int64_t spent = 0;
    if (auto it = daily_.find(today); it != daily_.end()) {
      for (const auto& [k, m] : it->second) spent += std::get<0>(k) == name ? m : 0;
    }
    const bool fresh_day = p.day == today;
    const std::int64_t created = fresh_day ? p.sessions_created : 0;
    const std::int64_t leases = fresh_day ? p.leases_ended : 0;
    const std::int64_t successful = fresh_day ? p.leases_ok : 0;
    const std::int64_t lease_ms = fresh_day ? p.lease_ms : 0;
    const core::CostModel& m = p.meter.model();
    const std::int64_t one_each =
        leases * (m.per_session + m.per_use) +
        (m.per_hour_alive + m.per_hour_leased) * lease_ms / kMillisPerHour;
    pools.push_back(json::object{
        {"pool", name},
        {"spent_today_micros", spent},
        {"sessions_created", created},
        {"leases", leases},
        {"cost_per_session_micros", created > 0 ? spent / created : 0},
        {"cost_per_use_micros", leases > 0 ? spent / leases : 0},
        {"successful_uses", successful},
        {"cost_per_successful_use_micros", successful > 0 ? spent / successful : 0},
        {"one_session_per_request_micros", one_each},
        {"saving_micros", leases > 0 ? one_each - spent : 0},
        {"budget_exceeded", budgets_.pool_exceeded(name)},
        {"hourly_rate_micros", p.meter.hourly_rate()}});
  }

  return json::object{{"today", date_text(today)},
                      {"total_micros", total_today},
                      {"total", core::dollars_text(total_today)},
                      {"by_pool", std::move(by_pool)},
                      {"by_tenant", std::move(by_tenant)},
                      {"by_kind", std::move(by_kind)},
                      {"days", std::move(history)},
                      {"trend_micros_per_day", static_cast<std::int64_t>(slope)},
                      {"burn_rate_micros_per_hour", hourly},
                      {"projection",
                       json::object{{"rest_of_day_micros", rest}, {"end_of_day_micros", total_today + rest}}},
                      {"budgets", std::move(budgets)},
                      {"pools", std::move(pools)}};
}

}  // namespace poolkeeper::server
