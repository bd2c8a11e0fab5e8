// Budgets: spending per budget per day and month against its limits, and the
// rules of what spending does.
//
// - A charge counts against the global budget, its pool's and (when a tenant
//   held the lease) its tenant's.
// - A budget warns at a fraction of its limit (0.8) and is spent at the
//   limit; the worse of its day and its month counts. Each level of each
//   budget is announced once a day.
// - A pool is over budget while its own or the global budget is spent: it
//   then starts no session and keeps no idle spare (PoolCore), and drains
//   when its action says so.
// - A tenant whose budget is spent is refused new leases.
//
// Pure: days are UTC days (day_of()) handed in on every call.
//
// Thread-safety: plain values; one owner.
//
//   Budgets b;
//   b.set_pool("browsers", {.daily = 10'000'000}, BudgetAction::kRefuse);
//   b.charge("browsers", "team-a", today, 250'000);
//   for (const PoolBudgetChange& c : b.decide(today).pools) ...;
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace poolkeeper::core {

// A spending limit over one scope (global, a pool, a tenant) per day and per
// month; 0 means none.
struct BudgetLimits {
  std::int64_t daily = 0;
  std::int64_t monthly = 0;
  bool operator==(const BudgetLimits&) const = default;
};

enum class BudgetLevel : std::uint8_t {
  kOk,
  kWarning,   // at or above the warning fraction (80 %)
  kExceeded,  // at or above the limit
};
std::string_view to_string(BudgetLevel level);

struct BudgetStatus {
  BudgetLevel level = BudgetLevel::kOk;
  std::int64_t spent = 0;   // in the period that is worst off
  std::int64_t limit = 0;   // that period's limit (0: no limit)
  bool monthly = false;     // whether that period is the month
};

// Spending per scope per day and month, against limits. Scopes are names:
// "" for everything, "pool:NAME", "tenant:NAME".
class BudgetBook {
 public:
  explicit BudgetBook(double warning_fraction = 0.8) : warning_(warning_fraction) {}

  void set_limits(const std::string& scope, BudgetLimits limits);
  void set_warning(double fraction) { warning_ = fraction; }
  // Spending of one scope on a day (a charge, or a daily total read back at start).
  void add(const std::string& scope, std::int64_t day, std::int64_t micros);

  BudgetStatus status(const std::string& scope, std::int64_t day) const;
  std::int64_t spent_on_day(const std::string& scope, std::int64_t day) const;
  std::int64_t spent_in_month(const std::string& scope, std::int64_t day) const;
  // Forgets days before `day` (their months' totals stay while the month runs).
  void forget_before(std::int64_t day);

 private:
  double warning_;
  std::map<std::string, BudgetLimits> limits_;
  std::map<std::pair<std::string, std::int64_t>, std::int64_t> daily_;    // (scope, day)
  std::map<std::pair<std::string, std::int64_t>, std::int64_t> monthly_;  // (scope, month)
};

// What a pool does past its budget.
enum class BudgetAction : std::uint8_t {
  kRefuse,  // no new sessions; live ones are reused; idle spares are not kept
  kDrain,   // and the pool drains
};

// A budget reached its warning level or its limit.
struct BudgetNotice {
  std::string budget;  // "global", "pool:NAME", "tenant:NAME"
  BudgetStatus status;
  std::string why;     // "pool p budget: spent $8.000000 of $10.000000 today"
};

// A pool's budget state changed: its starts stop, or may resume.
struct PoolBudgetChange {
  std::string pool;
  bool exceeded = false;
  std::string why;     // which budget and what was spent of what; or that it allows again
  bool drain = false;  // exceeded, and the pool's action is drain
};

struct BudgetDecisions {
  std::vector<BudgetNotice> notices;
  std::vector<PoolBudgetChange> pools;
};

// One budget that has a limit, for reports.
struct BudgetLine {
  std::string budget;  // "global", "pool:NAME", "tenant:NAME"
  BudgetLimits limits;
  std::int64_t spent_today = 0;
  std::int64_t spent_this_month = 0;
  BudgetLevel level = BudgetLevel::kOk;
};

class Budgets {
 public:
  explicit Budgets(double warning_fraction = 0.8) : book_(warning_fraction) {}

  void set_warning(double fraction) { book_.set_warning(fraction); }
  void set_global(BudgetLimits limits);
  // A pool's budget (all zero: none) and action; a new pool starts within
  // budget until decide() says otherwise.
  void set_pool(const std::string& pool, BudgetLimits limits, BudgetAction action);
  // Every tenant's budget; tenants not named have none.
  void set_tenants(const std::map<std::string, BudgetLimits>& tenants);

  // A charge of a pool's (tenant empty: the pool's own cost, not a lease's).
  void charge(const std::string& pool, const std::string& tenant, std::int64_t day, std::int64_t micros);

  // What spending means on `day`: budgets newly at a level (once per budget,
  // level and day), and pools whose state changed since the last decide().
  BudgetDecisions decide(std::int64_t day);
  // The next decide() announces every pool that is over budget again (a new
  // listener learns the state).
  void reannounce();

  // Why a tenant's new leases are refused (its budget is spent), if they are.
  std::optional<std::string> tenant_refusal(const std::string& tenant, std::int64_t day) const;
  // The share spent of each budget with a limit, in its period worst off:
  // ("global", 0.42), ("pool:NAME", ...), ("tenant:NAME", ...).
  std::vector<std::pair<std::string, double>> usage(std::int64_t day) const;
  // The budgets with a limit: global, then pools, then tenants (by name).
  std::vector<BudgetLine> lines(std::int64_t day) const;
  bool pool_exceeded(const std::string& pool) const;

  // Forgets spending before `day` (months still running stay).
  void forget_before(std::int64_t day);

  // "pool p budget: spent $8.000000 of $10.000000 today".
  static std::string describe(const std::string& scope, const BudgetStatus& s);

 private:
  struct Pool {
    std::string scope;  // "pool:NAME"
    BudgetLimits limits;
    BudgetAction action = BudgetAction::kRefuse;
    bool exceeded = false;
  };

  void notice(const std::string& scope, const BudgetStatus& s, std::int64_t day, BudgetDecisions& out);

  BudgetBook book_;
  BudgetLimits global_;
  std::map<std::string, Pool> pools_;
  std::map<std::string, BudgetLimits> tenants_;
  std::set<std::tuple<std::string, BudgetLevel, std::int64_t>> noticed_;  // (scope, level, day)
};

// Micro-dollars as dollars with six decimals: 1'250'000 -> "1.250000".
std::string dollars_text(std::int64_t micros);

}  // namespace poolkeeper::core
