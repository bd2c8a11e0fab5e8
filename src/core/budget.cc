#include "core/budget.h"

#include <cstdio>
#include <cstdlib>

#include "core/cost.h"

namespace poolkeeper::core {

std::string_view to_string(BudgetLevel level) {
  switch (level) {
    case BudgetLevel::kOk: return "ok";
    case BudgetLevel::kWarning: return "warning";
    case BudgetLevel::kExceeded: return "exceeded";
  }
  return "ok";
}

std::string dollars_text(std::int64_t micros) {
  char buf[32];
  const long long whole = static_cast<long long>(micros / 1'000'000);
  const long long part = static_cast<long long>(micros % 1'000'000);
  std::snprintf(buf, sizeof buf, "%s%lld.%06lld", micros < 0 ? "-" : "", std::llabs(whole), std::llabs(part));
  return buf;
}


void BudgetBook::set_limits(const std::string& scope, BudgetLimits limits) {
  if (limits == BudgetLimits{}) {
    limits_.erase(scope);
  } else {
    limits_[scope] = limits;
  }
}

void BudgetBook::add(const std::string& scope, std::int64_t day, std::int64_t micros) {
  daily_[{scope, day}] += micros;
  monthly_[{scope, month_of_day(day)}] += micros;
}

std::int64_t BudgetBook::spent_on_day(const std::string& scope, std::int64_t day) const {
  auto it = daily_.find({scope, day});
  return it == daily_.end() ? 0 : it->second;
}

std::int64_t BudgetBook::spent_in_month(const std::string& scope, std::int64_t day) const {
  auto it = monthly_.find({scope, month_of_day(day)});
  return it == monthly_.end() ? 0 : it->second;
}

BudgetStatus BudgetBook::status(const std::string& scope, std::int64_t day) const {
  BudgetStatus worst{.level = BudgetLevel::kOk, .spent = spent_on_day(scope, day), .limit = 0, .monthly = false};
  auto it = limits_.find(scope);
  if (it == limits_.end()) return worst;
  double worst_fraction = -1;
  auto consider = [&](std::int64_t spent, std::int64_t limit, bool monthly) {
    if (limit <= 0) return;
    const double fraction = static_cast<double>(spent) / static_cast<double>(limit);
    if (fraction <= worst_fraction) return;
    worst_fraction = fraction;
    worst.spent = spent;
    worst.limit = limit;
    worst.monthly = monthly;
    if (spent >= limit) {
      worst.level = BudgetLevel::kExceeded;
    } else if (static_cast<double>(spent) >= warning_ * static_cast<double>(limit)) {
      worst.level = BudgetLevel::kWarning;
    } else {
      worst.level = BudgetLevel::kOk;
    }
  };
  consider(spent_on_day(scope, day), it->second.daily, false);
  consider(spent_in_month(scope, day), it->second.monthly, true);
  return worst;
}

void BudgetBook::forget_before(std::int64_t day) {
  std::erase_if(daily_, [day](const auto& e) { return e.first.second < day; });
  const std::int64_t month = month_of_day(day);
  std::erase_if(monthly_, [month](const auto& e) { return e.first.second < month; });
}

// ---------------------------------------------------------------------------
// the rules

void Budgets::set_global(BudgetLimits limits) {
  global_ = limits;
  book_.set_limits("", limits);
}

void Budgets::set_pool(const std::string& pool, BudgetLimits limits, BudgetAction action) {
  Pool& p = pools_[pool];
  if (p.scope.empty()) p.scope = "pool:" + pool;
  p.limits = limits;
  p.action = action;
  book_.set_limits(p.scope, limits);
}

void Budgets::set_tenants(const std::map<std::string, BudgetLimits>& tenants) {
  for (const auto& [name, limits] : tenants_) book_.set_limits("tenant:" + name, {});
  tenants_.clear();
  for (const auto& [name, limits] : tenants) {
    if (limits == BudgetLimits{}) continue;
    tenants_[name] = limits;
    book_.set_limits("tenant:" + name, limits);
  }
}

void Budgets::charge(const std::string& pool, const std::string& tenant, std::int64_t day,
                     std::int64_t micros) {
  book_.add("", day, micros);
  auto it = pools_.find(pool);
  book_.add(it != pools_.end() ? it->second.scope : "pool:" + pool, day, micros);
  if (!tenant.empty()) book_.add("tenant:" + tenant, day, micros);
}

void Budgets::notice(const std::string& scope, const BudgetStatus& s, std::int64_t day, BudgetDecisions& out) {
  if (s.level == BudgetLevel::kOk) return;
  if (!noticed_.emplace(scope, s.level, day).second) return;
  out.notices.push_back({.budget = scope.empty() ? std::string("global") : scope, .status = s,
                         .why = describe(scope, s)});
}

BudgetDecisions Budgets::decide(std::int64_t day) {
  BudgetDecisions out;
  const BudgetStatus global = book_.status("", day);
  notice("", global, day, out);
  for (const auto& [tenant, limits] : tenants_) {
    const std::string scope = "tenant:" + tenant;
    notice(scope, book_.status(scope, day), day, out);
  }
  for (auto& [name, p] : pools_) {
    const BudgetStatus own = book_.status(p.scope, day);
    notice(p.scope, own, day, out);
    // The pool's own budget names the reason when both are spent.
    std::string why;
    if (own.level == BudgetLevel::kExceeded) {
      why = describe(p.scope, own);
    } else if (global.level == BudgetLevel::kExceeded) {
      why = describe("", global);
    }
    const bool exceeded = !why.empty();
    if (exceeded == p.exceeded) continue;
    p.exceeded = exceeded;
    out.pools.push_back({.pool = name,
                         .exceeded = exceeded,
                         .why = exceeded ? std::move(why) : std::string("the budget allows new sessions again"),
                         .drain = exceeded && p.action == BudgetAction::kDrain});
  }
  return out;
}

void Budgets::reannounce() {
  for (auto& [name, p] : pools_) p.exceeded = false;
}

std::optional<std::string> Budgets::tenant_refusal(const std::string& tenant, std::int64_t day) const {
  if (!tenants_.contains(tenant)) return std::nullopt;
  const std::string scope = "tenant:" + tenant;
  const BudgetStatus s = book_.status(scope, day);
  if (s.level != BudgetLevel::kExceeded) return std::nullopt;
  return describe(scope, s);
}

std::vector<std::pair<std::string, double>> Budgets::usage(std::int64_t day) const {
  std::vector<std::pair<std::string, double>> out;
  auto add = [&](const std::string& scope) {
    const BudgetStatus s = book_.status(scope, day);
    if (s.limit <= 0) return;
    out.emplace_back(scope.empty() ? std::string("global") : scope,
                     static_cast<double>(s.spent) / static_cast<double>(s.limit));
  };
  add("");
  for (const auto& [name, p] : pools_) add(p.scope);
  for (const auto& [tenant, limits] : tenants_) add("tenant:" + tenant);
  return out;
}

std::vector<BudgetLine> Budgets::lines(std::int64_t day) const {
  std::vector<BudgetLine> out;
  auto add = [&](const std::string& scope, const BudgetLimits& limits) {
    if (limits == BudgetLimits{}) return;
    out.push_back({.budget = scope.empty() ? std::string("global") : scope,
                   .limits = limits,
                   .spent_today = book_.spent_on_day(scope, day),
                   .spent_this_month = book_.spent_in_month(scope, day),
                   .level = book_.status(scope, day).level});
  };
  add("", global_);
  for (const auto& [name, p] : pools_) add(p.scope, p.limits);
  for (const auto& [tenant, limits] : tenants_) add("tenant:" + tenant, limits);
  return out;
}

bool Budgets::pool_exceeded(const std::string& pool) const {
  auto it = pools_.find(pool);
  return it != pools_.end() && it->second.exceeded;
}

void Budgets::forget_before(std::int64_t day) {
  book_.forget_before(day);
  std::erase_if(noticed_, [day](const auto& n) { return std::get<2>(n) < day; });
}

std::string Budgets::describe(const std::string& scope, const BudgetStatus& s) {
  std::string name = "global budget";
  if (!scope.empty()) {
    const auto colon = scope.find(':');
    name = scope.substr(0, colon) + " " + scope.substr(colon + 1) + " budget";
  }
  return name + ": spent $" + dollars_text(s.spent) + " of $" + dollars_text(s.limit) +
         (s.monthly ? " this month" : " today");
}

}  // namespace poolkeeper::core
