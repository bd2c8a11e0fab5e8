// The daemon's books: what every pool's sessions cost (core::CostMeter per
// pool), spending against the budgets (core::BudgetBook: global, per pool,
// per tenant), and the durable record of both in the store.
//
// The pools report their core events (on their strands); the ledger turns
// them into charges, session and lease rows, and budget decisions, which it
// hands back through the budget hook (the daemon then stops or restores the
// pool's starts). tick() charges the time that passed and notices a new day
// or month.
//
// A response that acknowledges a charge (an acquire, a release) waits on
// sync(mark) so that what it acknowledges is on disk; without a store sync
// answers at once.
//
// Thread-safety: every method may be called from any thread (one mutex).
//
//   Ledger ledger(config, store.get(), wall_ms, log);
//   ledger.set_budget_hook([&](const BudgetChange& c) { ... });
//   runner_options.on_event = [&](const core::Event& e) { ledger.on_event("py", e); };
#pragma once

#include <boost/json/object.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/actions.h"
#include "core/cost.h"
#include "runtime/log.h"
#include "server/config.h"
#include "store/store.h"

namespace poolkeeper::server {

struct BudgetChange {
  std::string pool;
  bool exceeded = false;
  std::string why;     // which budget, what was spent of what
  bool drain = false;  // the pool's budget_action is drain
};

struct CostQuery {
  int days = 7;  // days of history, today included (1..62)
  std::string pool{};    // only this pool
  std::string tenant{};  // only this tenant's charges
};

class Ledger {
 public:
  using BudgetHook = std::function<void(const BudgetChange&)>;

  Ledger(const DaemonConfig& config, store::Store* store, std::function<std::int64_t()> now_ms,
         runtime::Log& log);

  // Spending of the last two months from the store's daily totals, so that
  // budgets hold across restarts.
  std::expected<void, Error> restore();
  // Closes in the store the sessions an earlier run left open (it was killed
  // or crashed): at their last charge, with what they were charged. Their
  // workers died with that run. Returns how many.
  std::expected<std::size_t, Error> reconcile();
  // Prices and budgets from a reloaded configuration (new prices apply from now).
  void configure(const DaemonConfig& config);
  void set_budget_hook(BudgetHook hook);

  void on_event(const std::string& pool, const core::Event& e);
  void tick();

  // Why a tenant's acquires are refused now (its budget is spent), if they are.
  std::optional<std::string> tenant_refusal(const std::string& tenant) const;

  std::uint64_t mark() const;
  void sync(std::uint64_t since, store::Done done);

  boost::json::object report(const CostQuery& q) const;

 private:
  struct LeaseInfo {
    SessionId session = 0;
    std::string tenant;
    std::int64_t started_ms = 0;
  };
  struct PoolBooks {
    core::CostMeter meter;
    core::BudgetLimits budget;
    BudgetAction action = BudgetAction::kRefuse;
    std::unordered_map<LeaseId, LeaseInfo> leases;
    bool exceeded = false;
    // Today's activity, for averages and the saving.
    std::int64_t day = 0;
    std::int64_t sessions_created = 0;
    std::int64_t leases_ended = 0;
    std::int64_t lease_ms = 0;
  };
  using Key = std::tuple<std::string, std::string, std::string>;  // pool, tenant, kind

  void record(const std::string& pool, std::vector<core::CostCharge>& charges,
              std::vector<store::Record>& rows);
  void write(std::vector<store::Record> rows);
  void check_budgets(std::vector<BudgetChange>& changes);
  void warn_once(const std::string& scope, const core::BudgetStatus& s, std::int64_t day);
  void deliver(const std::vector<BudgetChange>& changes);
  static std::string scope_name(const std::string& scope);
  std::string describe(const std::string& scope, const core::BudgetStatus& s) const;

  store::Store* store_;  // null: no store
  std::function<std::int64_t()> now_ms_;
  runtime::Log& log_;

  mutable std::mutex mu_;
  BudgetHook hook_;
  core::BudgetBook book_;
  std::map<std::string, PoolBooks> pools_;
  std::map<std::string, core::BudgetLimits> tenants_;
  core::BudgetLimits global_;
  std::map<std::int64_t, std::map<Key, std::int64_t>> daily_;  // day -> totals
  std::set<std::pair<std::string, std::int64_t>> warned_;     // (scope, day)
  std::int64_t day_ = 0;
};

}  // namespace poolkeeper::server
