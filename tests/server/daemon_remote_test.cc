// Paid remote sessions end to end: the daemon with pools of driver "remote"
// against the fake provider (its own process on loopback). Leases hand out
// the provider's connect URL; every cent is in the ledger; a budget stops new
// sessions; and however the daemon is killed, the next start closes at the
// provider what the killed run left open, so no paid session is left behind.
#include <signal.h>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "store/sqlite.h"
#include "testing/daemon_process.h"
#include "testing/fake_provider.h"
#include "testing/http_client.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

// The fake's prices, which the pools are configured with too.
constexpr std::int64_t kFee = 10'000;        // micro-dollars a session
constexpr std::int64_t kPerHour = 50'000;    // micro-dollars an hour
// How far the fake's bill (whole seconds, rounded up) and the ledger's (by
// the millisecond, from the create's answer to the delete's) may differ for
// one session.
constexpr std::int64_t kSessionSlack = 30;

class DaemonRemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(fake_.port(), 0) << fake_.log();
    char dir[] = "/tmp/poolkeeper-remote-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    daemon_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string config(const std::string& pool_keys) const {
    const std::string url = fake_.url() + "/v1/sessions";
    return R"(
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "2s"

[store]
path = ")" + dir_ + R"(/books.db"

[pools.paid]
driver = "remote"
endpoint = ")" + url + R"("
list_url = ")" + url + R"("
create_body = '{"platform": "linkedin", "metadata": {"poolkeeper": "{tag}"}}'
api_key_env = "FAKE_KEY"
cost_per_session = 0.01
cost_per_hour_alive = 0.05
)" + pool_keys;
  }

  void start(const std::string& text, std::vector<std::string> env = {}) {
    env.push_back(std::string("FAKE_KEY=") + kFakeProviderKey);
    daemon_ = std::make_unique<DaemonProcess>(text, env);
    const std::uint16_t port = daemon_->port();
    ASSERT_NE(port, 0) << "the daemon did not start";
    client_ = std::make_unique<HttpClient>(port);
    // Up (healthy or not: a provider that fails makes the pool degraded).
    ASSERT_TRUE(wait_until([&] { return client_->request("GET", "/health").status != 0; }, 30s));
  }
  void stop() {
    daemon_->signal(SIGTERM);
    EXPECT_EQ(daemon_->wait_exit(90s), 0);
  }
  void kill() {
    daemon_->signal(SIGKILL);
    daemon_->wait_exit(60s);
  }
  HttpResult call(const std::string& method, const std::string& target, const std::string& body = {}) {
    return client_->request(method, target, body);
  }

  // The provider's ids of the sessions the daemon has now.
  std::set<std::string> daemon_sessions(const std::string& pool) {
    std::set<std::string> ids;
    HttpResult r = call("GET", "/v1/pools/" + pool + "/sessions");
    EXPECT_EQ(r.status, 200) << r.body;
    if (r.status != 200) return ids;
    json::value v = r.json();
    for (const json::value& s : v.at("sessions").as_array()) {
      std::string d(s.at("describe").as_string());
      if (d.starts_with("remote ")) ids.insert(d.substr(7));
    }
    return ids;
  }
  // The sessions open at the provider.
  std::set<std::string> provider_open() {
    std::set<std::string> ids;
    json::value b = fake_.billing();
    for (const json::value& s : b.at("sessions").as_array()) {
      if (s.at("stopped_at").is_null()) ids.insert(std::string(s.at("id").as_string()));
    }
    return ids;
  }
  std::int64_t provider_total() { return fake_.billing().at("total_micros").as_int64(); }
  std::int64_t provider_sessions() {
    return static_cast<std::int64_t>(fake_.billing().at("sessions").as_array().size());
  }
  std::int64_t ledger_total() {
    store::Db db = store::Db::open(dir_ + "/books.db", {});
    return db.query_integer("SELECT coalesce(sum(micros), 0) FROM charges").value_or(-1);
  }
  // Sessions swept (deleted with no record of them) according to the log.
  std::int64_t swept_in_log() {
    std::int64_t n = 0;
    for (const std::string& line : daemon_->log_lines()) {
      if (line.find("swept the provider for untracked sessions") == std::string::npos) continue;
      const json::value v = json::parse(line);
      n += std::stoll(std::string(v.at("deleted").as_string()));
    }
    return n;
  }
  // Every session the provider billed is in the ledger, to the micro-dollar
  // but for rounding: those the daemon knew of, and those a sweep found (a
  // create answered as the daemon died), charged from the provider's
  // created_at.
  void expect_every_cent() {
    const std::int64_t provider = provider_total();
    const std::int64_t ledger = ledger_total();
    const std::int64_t sessions = provider_sessions();
    EXPECT_LE(std::abs(provider - ledger), sessions * kSessionSlack)
        << "provider " << provider << ", ledger " << ledger << ", " << sessions << " sessions";
    EXPECT_GE(ledger, sessions * kFee);
  }

  FakeProvider fake_;
  std::string dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<HttpClient> client_;
};

// The newcomer's walk through examples/remote.toml against the fake: leases
// carry the provider's connect URL, `cost` climbs, the pool's daily budget
// refuses new sessions (live ones are still reused), the daemon is killed,
// restarted, and every cent is there and no session is left open.
TEST_F(DaemonRemoteTest, TheRemoteExampleFromLeaseToBudgetToCrashToRestart) {
  std::ifstream in(std::string(POOLKEEPER_SOURCE_DIR) + "/examples/remote.toml");
  std::stringstream text;
  text << in.rdbuf();
  const std::string url = fake_.url() + "/v1/sessions";
  const std::vector<std::string> env = {
      "PROVIDER_API_KEY=" + std::string(kFakeProviderKey), "POOLKEEPER_SERVER_LISTEN=127.0.0.1:0",
      "POOLKEEPER_POOL_LINKEDIN_ENDPOINT=" + url, "POOLKEEPER_POOL_LINKEDIN_LIST_URL=" + url,
      "POOLKEEPER_POOL_TWITTER_ENDPOINT=" + url, "POOLKEEPER_POOL_TWITTER_LIST_URL=" + url,
      // Three sessions' fees spend it (the example's $1.00 would take a hundred).
      "POOLKEEPER_POOL_LINKEDIN_BUDGET_DAILY=0.025"};
  start(text.str(), env);
  ASSERT_TRUE(wait_until([&] { return provider_open().size() == 1; }, 30s)) << "min = 1";

  // A lease hands out the provider's URL for the session.
  HttpResult first = call("POST", "/v1/pools/linkedin/leases", R"({"timeout_ms": 30000})");
  ASSERT_EQ(first.status, 201) << first.body;
  const std::string connect(first.json().at("connect").as_string());
  const std::string id = *provider_open().begin();
  EXPECT_EQ(connect, "ws://127.0.0.1:" + std::to_string(fake_.port()) + "/devtools/" + id);

  // Two more leases need two more sessions; the third fee crosses the budget.
  HttpResult second = call("POST", "/v1/pools/linkedin/leases", R"({"timeout_ms": 30000})");
  HttpResult third = call("POST", "/v1/pools/linkedin/leases", R"({"timeout_ms": 30000})");
  ASSERT_EQ(second.status, 201) << second.body;
  ASSERT_EQ(third.status, 201) << third.body;
  ASSERT_TRUE(wait_until([&] {
    HttpResult c = call("GET", "/v1/cost");
    return c.status == 200 && c.json().at("total_micros").as_int64() >= 3 * kFee;
  })) << "cost climbs";
  ASSERT_TRUE(wait_until([&] {
    HttpResult p = call("GET", "/v1/pools/linkedin");
    return p.status == 200 && p.json().at("budget_exceeded").as_bool();
  }));
  // No fourth session: the acquire waits for a live one and times out.
  HttpResult fourth = call("POST", "/v1/pools/linkedin/leases", R"({"timeout_ms": 300})");
  EXPECT_EQ(fourth.error_code(), "acquire_timeout") << fourth.body;
  EXPECT_EQ(provider_sessions(), 3);
  // A released session is leased again.
  ASSERT_EQ(call("DELETE", "/v1/leases/" + std::string(first.json().at("lease").as_string())).status, 200);
  HttpResult again = call("POST", "/v1/pools/linkedin/leases", R"({"timeout_ms": 30000})");
  ASSERT_EQ(again.status, 201) << again.body;
  EXPECT_EQ(again.json().at("connect").as_string(), connect);
  EXPECT_EQ(provider_sessions(), 3);

  // The store knows each session by the provider's id.
  {
    store::Db db = store::Db::open(daemon_->dir() + "/poolkeeper-remote.db", {});
    EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE external_id LIKE 'sess_%' AND closed_ms IS NULL"), 3);
  }

  // Killed with three paid sessions open (two leased).
  const std::string kept_dir = daemon_->dir();
  kill();
  EXPECT_EQ(provider_open().size(), 3u) << "still billed";
  // The same config and store again: the restart closes them at the provider.
  const std::string db_path = kept_dir + "/poolkeeper-remote.db";
  std::vector<std::string> env2 = env;
  env2.push_back("POOLKEEPER_STORE_PATH=" + db_path);
  auto earlier = std::move(daemon_);  // keeps its directory (and store) alive
  start(text.str(), env2);
  ASSERT_TRUE(wait_until([&] {
    std::int64_t closed = 0;
    for (const std::string& l : daemon_->log_lines()) {
      closed += l.find("closed a paid session an earlier run left open") != std::string::npos;
    }
    return closed == 3;
  }, 60s));
  EXPECT_TRUE(provider_open().empty()) << "the budget is still spent: no new session";
  HttpResult cost = call("GET", "/v1/cost");
  ASSERT_EQ(cost.status, 200);
  EXPECT_GE(cost.json().at("total_micros").as_int64(), 3 * kFee);
  stop();
  {
    store::Db db = store::Db::open(db_path, {});
    EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL"), 0);
    EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE reason = 'reconciled: closed at the provider'"), 3);
    const std::int64_t ledger = db.query_integer("SELECT sum(micros) FROM charges").value_or(-1);
    const std::int64_t provider = provider_total();
    EXPECT_LE(std::abs(provider - ledger), 3 * kSessionSlack) << "provider " << provider << ", ledger " << ledger;
  }
  earlier.reset();
}

// kill -9 at random moments while clients lease and release on a pool that
// recycles its sessions often (creates and deletes all the time): after each
// restart, the provider has open only sessions the new run knows, the store
// nothing open from earlier runs; at the end nothing is open and the ledger
// matches the provider's bill.
TEST_F(DaemonRemoteTest, KilledAtRandomMomentsLeavesNoPaidSessionOpen) {
  const std::string text = config("min = 2\nmax = 4\nmax_uses = 3\n");
  std::mt19937 rng(20261204);
  std::int64_t swept = 0;  // sessions the sweeps found (the log says)
  for (int round = 0; round < 4; ++round) {
    start(text);
    if (round > 0) {
      ASSERT_TRUE(wait_until([&] { return daemon_->logged("swept the provider for untracked sessions"); }, 60s));
      swept += swept_in_log();
      ASSERT_TRUE(wait_until([&] {
        HttpResult p = call("GET", "/v1/pools/paid");
        return p.status == 200 && p.json().at("sessions_by_state").at("idle").as_int64() == 2 &&
               p.json().at("sessions").as_int64() == 2;
      }, 60s));
      const std::set<std::string> known = daemon_sessions("paid");
      const std::set<std::string> open = provider_open();
      for (const std::string& id : open) EXPECT_TRUE(known.contains(id)) << "round " << round << ": " << id << " leaked";
      store::Db db = store::Db::open(dir_ + "/books.db", {});
      EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL AND run < "
                                 "(SELECT max(id) FROM runs)"),
                0);
    }
    std::atomic<bool> done{false};
    std::atomic<int> cycles{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 3; ++c) {
      clients.emplace_back([&, port = daemon_->port()] {
        HttpClient http(port);
        while (!done.load()) {
          HttpResult l = http.request("POST", "/v1/pools/paid/leases", R"({"timeout_ms": 5000})");
          if (l.status == 0) return;
          if (l.status != 201) continue;
          http.request("DELETE", "/v1/leases/" + std::string(l.json().at("lease").as_string()));
          ++cycles;
        }
      });
    }
    const int kill_after = 5 + static_cast<int>(rng() % 40);
    EXPECT_TRUE(wait_until([&] { return cycles.load() >= kill_after; }, 60s));
    kill();
    done = true;
    for (auto& t : clients) t.join();
  }
  start(text);
  ASSERT_TRUE(wait_until([&] { return daemon_->logged("swept the provider for untracked sessions"); }, 60s));
  swept += swept_in_log();
  stop();
  EXPECT_TRUE(provider_open().empty());
  store::Db db = store::Db::open(dir_ + "/books.db", {});
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL"), 0);
  store::Statement& check = db.prepare("PRAGMA integrity_check");
  ASSERT_TRUE(check.step());
  EXPECT_EQ(check.text(0), "ok");
  check.reset();
  expect_every_cent();
  store::Db after = store::Db::open(dir_ + "/books.db", {});
  EXPECT_EQ(after.query_integer("SELECT count(*) FROM sessions WHERE reason = 'swept'"), swept);
}

// A session made for a start that then failed (it never ran within
// start_timeout) is deleted, and charged though no pool ever held it: the
// ledger still matches the provider's bill.
TEST_F(DaemonRemoteTest, ASessionMadeForAFailedStartIsDeletedAndCharged) {
  fake_.control({{"ready_after_s", 3600}});
  start(config("min = 1\nmax = 1\nstart_timeout = \"300ms\"\npoll_interval = \"50ms\"\n"));
  auto abandoned = [&] {
    store::Db db = store::Db::open(dir_ + "/books.db", {});
    return db.query_integer("SELECT count(*) FROM sessions WHERE reason = 'start failed: deleted'").value_or(0);
  };
  ASSERT_TRUE(wait_until([&] { return abandoned() >= 2; }, 60s));
  fake_.control({{"ready_after_s", 0}});
  ASSERT_TRUE(wait_until([&] { return daemon_sessions("paid").size() == 1; }, 60s));
  stop();
  EXPECT_TRUE(provider_open().empty());
  EXPECT_EQ(abandoned(), provider_sessions() - 1);
  expect_every_cent();
}

// A provider that cannot be reached when the daemon restarts: the sessions
// the killed run left open stay open in the store (never assumed closed) and
// are closed, and charged, once the provider answers again.
TEST_F(DaemonRemoteTest, AProviderDownAtRestartIsRetriedUntilItAnswers) {
  const std::string text = config("min = 2\nmax = 2\n");
  start(text);
  ASSERT_TRUE(wait_until([&] { return provider_open().size() == 2; }, 30s));
  // Both are in the store (a session killed before its row is committed is
  // the sweep's, another test's case).
  ASSERT_TRUE(wait_until([&] {
    store::Db db = store::Db::open(dir_ + "/books.db", {});
    return db.query_integer("SELECT count(*) FROM sessions WHERE external_id != ''") == 2;
  }, 30s));
  const std::set<std::string> left = provider_open();
  kill();
  fake_.control({{"fail_rate", 1}});
  start(text);
  ASSERT_TRUE(wait_until([&] {
    return daemon_->logged("cannot close a paid session an earlier run left open; retrying");
  }, 60s)) << [&] {
    std::string all;
    for (const std::string& l : daemon_->log_lines()) all += l + "\n";
    return all;
  }();
  {
    store::Db db = store::Db::open(dir_ + "/books.db", {});
    EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL AND run = 1"), 2);
  }
  EXPECT_EQ(provider_open(), left);
  fake_.control({{"fail_rate", 0}});
  ASSERT_TRUE(wait_until([&] {
    std::int64_t closed = 0;
    for (const std::string& l : daemon_->log_lines()) {
      closed += l.find("closed a paid session an earlier run left open") != std::string::npos;
    }
    return closed == 2;
  }, 90s));
  for (const std::string& id : provider_open()) EXPECT_FALSE(left.contains(id));
  stop();
  EXPECT_TRUE(provider_open().empty());
  store::Db db = store::Db::open(dir_ + "/books.db", {});
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM sessions WHERE closed_ms IS NULL"), 0);
  expect_every_cent();
}

}  // namespace
}  // namespace poolkeeper::testing
