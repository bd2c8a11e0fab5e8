// The daemon's books: what every pool's sessions cost (core::CostMeter per
// pool), spending against the budgets (core::Budgets, which holds the rules),
// and the durable record of both in the store.
//
// The pools report their core events (on their strands); the ledger turns
// them into charges and session and lease rows, and hands the budgets'
// decisions on: notices to the log and the audit log, a pool's change
// through the budget hook (the daemon then stops or restores the pool's
// starts). tick() charges the time that passed and notices a new day
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
#include "core/budget.h"
#include "core/cost.h"
#include "runtime/log.h"
#include "server/config.h"
#include "store/store.h"

namespace poolkeeper::server {

using BudgetChange = core::PoolBudgetChange;

// Sessions an earlier run left open, sorted at start.
struct Reconciliation {
  std::size_t closed = 0;  // closed in the store now: nothing of them outlived that run
  // Paid sessions of remote pools: still open at their provider until the
  // daemon closes them there (then remote_closed()).
  std::vector<store::OpenSession> remote{};
  // Paid sessions of pools no longer configured as remote: left open in the
  // store (and named in the log at every start) until such a pool is back.
  std::vector<store::OpenSession> unreachable{};
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
  // Sorts the sessions an earlier run left open (it was killed or crashed).
  // Those without an external id, whose workers died with that run, are
  // closed in the store at their last charge with what they were charged.
  // Those with one (a provider's session id) are returned: `remote_pools`
  // names the pools whose driver can still reach their provider.
  std::expected<Reconciliation, Error> reconcile(const std::set<std::string>& remote_pools = {});
  // A paid session of an earlier run has been closed at its provider at
  // `closed_ms`: when it was still running there, the time since its last
  // charge is charged now at the pool's price per hour alive (split by day);
  // its row is closed. Committed before it returns.
  std::expected<std::int64_t, Error> remote_closed(const store::OpenSession& session,
                                                   std::int64_t closed_ms, bool was_running);
  // Prices and budgets from a reloaded configuration (new prices apply from now).
  void configure(const DaemonConfig& config);
  void set_budget_hook(BudgetHook hook);

  void on_event(const std::string& pool, const core::Event& e);
  // Sessions deleted at the provider that no row knew of: found by a sweep
  // (their run died before writing one, or never heard the create's answer),
  // or made for a start that failed (`abandoned`). Each is charged the
  // pool's fee and its time alive from when it was created (the provider's
  // word for a swept one, else only the fee; the create's sending for an
  // abandoned one) to its deletion, and gets a closed row ("swept" or
  // "start failed: deleted").
  void swept(const std::string& pool, const std::vector<drivers::SweptSession>& sessions);
  void tick();

  // Why a tenant's acquires are refused now (its budget is spent), if they are.
  std::optional<std::string> tenant_refusal(const std::string& tenant) const;

  // The share spent of each budget that has a limit, in its period worst
  // off: ("global", 0.42), ("pool:NAME", ...), ("tenant:NAME", ...).
  std::vector<std::pair<std::string, double>> budget_usage() const;

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
    std::unordered_map<LeaseId, LeaseInfo> leases;
    // Today's activity, for averages and the saving.
    std::int64_t day = 0;
    std::int64_t sessions_created = 0;
    std::int64_t leases_ended = 0;
    std::int64_t leases_ok = 0;  // released by their holder as fine
    std::int64_t lease_ms = 0;
  };
  using Key = std::tuple<std::string, std::string, std::string>;  // pool, tenant, kind

  void record(const std::string& pool, std::vector<core::CostCharge>& charges,
              std::vector<store::Record>& rows);
  void write(std::vector<store::Record> rows);
  void check_budgets(std::vector<BudgetChange>& changes);
  void deliver(const std::vector<BudgetChange>& changes);

  store::Store* store_;  // null: no store
  std::function<std::int64_t()> now_ms_;
  runtime::Log& log_;

  mutable std::mutex mu_;
  BudgetHook hook_;
  core::Budgets budgets_;
  std::map<std::string, PoolBooks> pools_;
  std::map<std::int64_t, std::map<Key, std::int64_t>> daily_;  // day -> totals
  std::int64_t day_ = 0;
};

}  // namespace poolkeeper::server
