// The daemon's books end to end: prices charged to the SQLite ledger,
// GET /v1/cost, budgets that stop new sessions or a tenant, and spending
// that survives a restart.
#include <signal.h>
#include <stdlib.h>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "store/sqlite.h"
#include "testing/daemon_process.h"
#include "testing/daemon_tenants.h"
#include "testing/http_client.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;



// Tenants alice, bob (with a tiny daily budget) and root (admin), and the
// given pools and extra sections.
std::string config_with(const std::string& rest) {
  return std::string(R"(
[server]
listen = "127.0.0.1:0"
auth = "tokens"
shutdown_grace = "1s"

[tenants.alice]
token_env = "ALICE_TOKEN"

[tenants.bob]
token_env = "BOB_TOKEN"
budget_daily = 0.000002

[tenants.root]
token_env = "ROOT_TOKEN"
admin = true
)") + rest;
}

std::string pool(const std::string& name, const std::string& keys) {
  return "\n[pools." + name + "]\ncommand = [\"" + std::string(POOLKEEPER_TEST_WORKER) +
         "\"]\nstop_grace = \"200ms\"\nkill_after = \"200ms\"\n" + keys;
}

std::int64_t integer(const json::value& v, std::string_view key) {
  return v.as_object().at(key).to_number<std::int64_t>();
}

class DaemonCostTest : public ::testing::Test {
 protected:
  void start(const std::string& text) {
    daemon_ = std::make_unique<DaemonProcess>(text, token_env());
    port_ = daemon_->port();
    ASSERT_NE(port_, 0) << "the daemon did not start";
    client_ = std::make_unique<HttpClient>(port_);
    ASSERT_TRUE(wait_until([&] { return client_->request("GET", "/health").status == 200; }, 30s));
  }
  void stop() {
    daemon_->signal(SIGTERM);
    EXPECT_EQ(daemon_->wait_exit(60s), 0);
  }
  HttpResult call(const std::string& method, const std::string& target, const std::string& token,
                  const std::string& body = {}) {
    return client_->request(method, target, body, token);
  }
  std::string lease(const std::string& pool, const std::string& token) {
    HttpResult r = call("POST", "/v1/pools/" + pool + "/leases", token, R"({"timeout_ms": 30000})");
    EXPECT_EQ(r.status, 201) << r.body;
    return r.status == 201 ? std::string(r.json().at("lease").as_string()) : std::string();
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::uint16_t port_ = 0;
  std::unique_ptr<HttpClient> client_;
};

// Verifies that creation, use and time are charged, acknowledged leases are
// in the SQLite file when their release answers, GET /v1/cost adds them up
// by pool, tenant and kind, and a tenant sees only its own charges.
TEST_F(DaemonCostTest, ChargesLandInTheLedgerAndTheReport) {
  start(config_with(pool("paid", "min = 1\nmax = 2\ncost_per_session = 0.01\ncost_per_use = 0.002\n"
                                 "cost_per_hour_alive = 0.36\n")));
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = call("GET", "/v1/pools/paid", kRoot);
    return r.status == 200 && r.json().at("sessions_by_state").at("idle").as_int64() == 1;
  }));
  const std::string id = lease("paid", kAlice);
  HttpResult released = call("DELETE", "/v1/leases/" + id, kAlice);
  ASSERT_EQ(released.status, 200) << released.body;
  {
    // The release is acknowledged: its lease row and use charge are on disk.
    store::Db db = store::Db::open(daemon_->dir() + "/poolkeeper.db", {});
    EXPECT_EQ(db.query_integer("SELECT count(*) FROM leases WHERE tenant = 'alice'"), 1);
    EXPECT_EQ(db.query_integer("SELECT sum(micros) FROM charges WHERE kind = 'use'"), 2'000);
    EXPECT_EQ(db.query_integer("SELECT sum(micros) FROM charges WHERE kind = 'created'"), 10'000);
  }
  // $0.36 an hour is 100 micro-dollars a second: time shows up within seconds.
  HttpResult cost;
  ASSERT_TRUE(wait_until([&] {
    cost = call("GET", "/v1/cost?days=3", kRoot);
    if (cost.status != 200) return false;
    const json::value v = cost.json();  // kept: at() returns references into it
    const json::object& kinds = v.at("by_kind").as_object();
    return kinds.contains("alive") && kinds.at("alive").as_int64() >= 100;
  })) << cost.body;
  const json::value report = cost.json();
  EXPECT_GE(integer(report, "total_micros"), 12'000 + 100);
  EXPECT_EQ(report.at("by_kind").at("created").as_int64(), 10'000);
  EXPECT_EQ(report.at("by_kind").at("use").as_int64(), 2'000);
  EXPECT_EQ(report.at("by_tenant").at("alice").as_int64(), 2'000);
  EXPECT_EQ(report.at("days").as_array().size(), 3u);
  EXPECT_EQ(report.at("burn_rate_micros_per_hour").as_int64(), 360'000);
  const json::value& paid = report.at("pools").as_array().at(0);
  EXPECT_EQ(paid.at("pool").as_string(), "paid");
  EXPECT_EQ(paid.at("leases").as_int64(), 1);
  EXPECT_EQ(paid.at("sessions_created").as_int64(), 1);

  HttpResult own = call("GET", "/v1/cost", kAlice);
  ASSERT_EQ(own.status, 200) << own.body;
  EXPECT_EQ(integer(own.json(), "total_micros"), 2'000) << "alice sees her own charges";
  EXPECT_EQ(call("GET", "/v1/cost?days=0", kRoot).status, 400);
  EXPECT_EQ(call("GET", "/v1/cost?pool=nope", kRoot).status, 404);

  // A lease given back broken is a use, not a successful one.
  const std::string broken = lease("paid", kAlice);
  ASSERT_EQ(call("DELETE", "/v1/leases/" + broken, kAlice, R"({"broken": true})").status, 200);
  const json::value after = call("GET", "/v1/cost", kRoot).json();
  const json::value& pool_after = after.at("pools").as_array().at(0);
  EXPECT_EQ(pool_after.at("leases").as_int64(), 2);
  EXPECT_EQ(pool_after.at("successful_uses").as_int64(), 1);
  EXPECT_EQ(pool_after.at("cost_per_successful_use_micros").as_int64(),
            pool_after.at("spent_today_micros").as_int64());
  EXPECT_EQ(pool_after.at("cost_per_use_micros").as_int64(), pool_after.at("spent_today_micros").as_int64() / 2);
  stop();
  store::Db db = store::Db::open(daemon_->dir() + "/poolkeeper.db", {});
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM leases WHERE outcome = 'ok'"), 1);
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM leases WHERE outcome = 'broken'"), 1);
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL"), 0)
      << "every session is closed in the ledger";
  EXPECT_EQ(db.query_integer("SELECT sum(micros) FROM charges"),
            db.query_integer("SELECT sum(micros) FROM daily_costs"));
  EXPECT_EQ(db.query_integer("SELECT sum(cost_micros) FROM sessions"),
            db.query_integer("SELECT sum(micros) FROM charges"))
      << "a session's cost is the sum of its charges";
}

// Verifies the budget stages: past the pool's daily budget no session
// starts (live ones are still leased, and an acquire that needs a new one
// times out), the report says exceeded; a tenant past its own budget is
// refused with budget_exceeded.
TEST_F(DaemonCostTest, SpentBudgetsRefuseNewSessionsAndTenants) {
  start(config_with(pool("capped", "min = 0\nmax = 3\ncost_per_session = 1\nbudget_daily = 1.5\n") +
                    pool("cheap", "min = 1\nmax = 1\ncost_per_use = 0.000001\n")));
  const std::string first = lease("capped", kAlice);   // session 1: $1
  const std::string second = lease("capped", kAlice);  // session 2: $2, over $1.50
  ASSERT_TRUE(wait_until([&] { return daemon_->logged("pool budget spent"); }));
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = call("GET", "/v1/pools/capped", kRoot);
    return r.status == 200 && r.json().at("budget_exceeded").as_bool();
  }));
  HttpResult waited = call("POST", "/v1/pools/capped/leases", kAlice, R"({"timeout_ms": 300})");
  EXPECT_EQ(waited.status, 503) << waited.body;
  EXPECT_EQ(waited.error_code(), "acquire_timeout") << "live sessions may come back; none starts";
  EXPECT_EQ(call("GET", "/v1/pools/capped", kRoot).json().at("sessions").as_int64(), 2);
  ASSERT_EQ(call("DELETE", "/v1/leases/" + first, kAlice).status, 200);
  const std::string again = lease("capped", kAlice);  // reuses the released session
  ASSERT_FALSE(again.empty());
  HttpResult report = call("GET", "/v1/cost?pool=capped", kRoot);
  ASSERT_EQ(report.status, 200);
  bool found = false;
  const json::value budgets = report.json();
  for (const json::value& b : budgets.at("budgets").as_array()) {
    if (b.at("budget").as_string() != "pool:capped") continue;
    found = true;
    EXPECT_EQ(b.at("level").as_string(), "exceeded");
    EXPECT_EQ(b.at("daily_spent_micros").as_int64(), 2'000'000);
    EXPECT_EQ(b.at("daily_limit_micros").as_int64(), 1'500'000);
  }
  EXPECT_TRUE(found) << report.body;

  // bob: two uses at one micro-dollar reach his two-micro-dollar day.
  for (int i = 0; i < 2; ++i) {
    const std::string l = lease("cheap", kBob);
    ASSERT_EQ(call("DELETE", "/v1/leases/" + l, kBob).status, 200);
  }
  HttpResult refused = call("POST", "/v1/pools/cheap/leases", kBob, "{}");
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.error_code(), "budget_exceeded");
  EXPECT_NE(refused.body.find("tenant bob budget: spent $0.000002 of $0.000002 today"),
            std::string::npos)
      << refused.body;
  EXPECT_EQ(call("POST", "/v1/pools/cheap/execute", kBob, R"({"params": 1})").error_code(),
            "budget_exceeded");
  const std::string alices = lease("cheap", kAlice);
  EXPECT_FALSE(alices.empty()) << "alice has no budget of her own";
  stop();
}

// Verifies that spending is read back from the store at start: a restarted
// daemon still knows today's total and keeps the pool's budget spent.
TEST_F(DaemonCostTest, SpendingSurvivesARestart) {
  char dir[] = "/tmp/poolkeeper-cost-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string text =
      config_with(pool("capped", "min = 1\nmax = 2\ncost_per_session = 1\nbudget_daily = 1\n") +
                  "\n[store]\npath = \"" + std::string(dir) + "/books.db\"\n");
  start(text);
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = call("GET", "/v1/pools/capped", kRoot);
    return r.status == 200 && r.json().at("budget_exceeded").as_bool();
  }));
  // The live session is still leased past the budget.
  const std::string id = lease("capped", kAlice);
  ASSERT_EQ(call("DELETE", "/v1/leases/" + id, kAlice).status, 200);
  stop();
  start(text);
  HttpResult cost = call("GET", "/v1/cost", kRoot);
  ASSERT_EQ(cost.status, 200);
  EXPECT_EQ(integer(cost.json(), "total_micros"), 1'000'000) << cost.body;
  // Today's averages count what the earlier run did.
  const json::value report = cost.json();  // kept: at() returns references into it
  const json::value& capped = report.at("pools").as_array().at(0);
  EXPECT_EQ(capped.at("sessions_created").as_int64(), 1) << cost.body;
  EXPECT_EQ(capped.at("leases").as_int64(), 1);
  EXPECT_EQ(capped.at("successful_uses").as_int64(), 1);
  EXPECT_EQ(capped.at("cost_per_session_micros").as_int64(), 1'000'000);
  HttpResult p = call("GET", "/v1/pools/capped", kRoot);
  EXPECT_TRUE(p.json().at("budget_exceeded").as_bool());
  EXPECT_EQ(p.json().at("sessions").as_int64(), 0) << "min is not kept past the budget";

  // A reload that raises the budget restores the pool to its size.
  std::string raised = text;
  raised.replace(raised.find("budget_daily = 1\n"), 17, "budget_daily = 10\n");
  daemon_->rewrite_config(raised);
  daemon_->signal(SIGHUP);
  ASSERT_TRUE(wait_until([&] { return daemon_->logged("pool budget restored"); }));
  EXPECT_TRUE(wait_until([&] {
    HttpResult r = call("GET", "/v1/pools/capped", kRoot);
    return r.status == 200 && !r.json().at("budget_exceeded").as_bool() &&
           r.json().at("sessions_by_state").at("idle").as_int64() == 1;
  }));
  stop();
  std::filesystem::remove_all(dir);
}

// Verifies durability under kill -9: the daemon is killed at random moments
// while four clients lease and release on a priced pool. Each time, the file
// is intact, every release that was acknowledged has its lease row exactly
// once, every acknowledged acquire its use charge, the daily totals equal
// the ledger, and the next start closes what the killed run left open.
TEST_F(DaemonCostTest, KilledAtRandomMomentsLosesNothingAcknowledged) {
  char dir[] = "/tmp/poolkeeper-kill-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string db_path = std::string(dir) + "/books.db";
  const std::string text =
      config_with(pool("paid", "min = 2\nmax = 4\ncost_per_session = 0.01\ncost_per_use = 0.001\n"
                               "cost_per_hour_alive = 0.36\n") +
                  "\n[store]\npath = \"" + db_path + "\"\n");
  std::mt19937 rng(20261204);
  for (int round = 0; round < 4; ++round) {
    start(text);
    std::int64_t run = 0;
    for (const std::string& line : daemon_->log_lines()) {
      if (auto at = line.find("\"run\":\""); line.find("store open") != std::string::npos && at != std::string::npos) {
        run = std::stoll(line.substr(at + 7));
      }
    }
    ASSERT_GT(run, 0);
    if (round > 0) {
      store::Db db = store::Db::open(db_path, {});
      EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL AND run < " +
                                 std::to_string(run)),
                0)
          << "the killed run's sessions are reconciled";
    }
    std::mutex mu;
    std::vector<std::int64_t> released;  // acknowledged releases (lease ids)
    std::int64_t acquired = 0;           // acknowledged acquires
    std::atomic<bool> done{false};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, port = port_] {
        HttpClient http(port);
        while (!done.load()) {
          HttpResult l = http.request("POST", "/v1/pools/paid/leases", R"({"timeout_ms": 5000})", kAlice);
          if (l.status == 0) return;  // the daemon is gone
          if (l.status != 201) continue;
          const std::string id(l.json().at("lease").as_string());
          {
            std::lock_guard lock(mu);
            ++acquired;
          }
          if (http.request("DELETE", "/v1/leases/" + id, {}, kAlice).status == 200) {
            std::lock_guard lock(mu);
            released.push_back(static_cast<std::int64_t>(std::stoull(id.substr(id.find('.') + 1))));
          }
        }
      });
    }
    const std::size_t kill_after = 20 + rng() % 200;
    EXPECT_TRUE(wait_until([&] {
      std::lock_guard lock(mu);
      return released.size() >= kill_after;
    }, 60s));
    daemon_->signal(SIGKILL);
    daemon_->wait_exit(60s);
    done = true;
    for (auto& t : clients) t.join();

    store::Db db = store::Db::open(db_path, {});
    store::Statement& check = db.prepare("PRAGMA integrity_check");
    ASSERT_TRUE(check.step());
    EXPECT_EQ(check.text(0), "ok");
    check.reset();
    std::lock_guard lock(mu);
    for (std::int64_t lease : released) {
      ASSERT_EQ(db.query_integer("SELECT count(*) FROM leases WHERE run = " + std::to_string(run) +
                                 " AND lease = " + std::to_string(lease)),
                1)
          << "round " << round << ": lease " << lease << " was acknowledged";
    }
    EXPECT_GE(db.query_integer("SELECT count(*) FROM charges WHERE kind = 'use' AND run = " +
                               std::to_string(run)),
              acquired);
    EXPECT_EQ(db.query_integer("SELECT sum(micros) FROM charges"),
              db.query_integer("SELECT sum(micros) FROM daily_costs"));
  }
  start(text);
  stop();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace poolkeeper::testing
