// The daemon's configuration: what a good file gives, how a bad one is
// refused (file, line, key, reason), and the environment's overrides.
#include "server/config.h"

#include <gtest/gtest.h>

#include <string>

#include "server/sha256.h"

namespace poolkeeper::server {
namespace {

using namespace std::chrono_literals;

constexpr const char* kMinimal = R"(
[server]
listen = "127.0.0.1:0"
auth = "none"

[pools.py]
command = ["python3", "worker.py"]
)";

std::expected<DaemonConfig, Error> parse(const std::string& text, Environment env = {}) {
  return parse_config(text, "test.toml", env, "/etc/pk");
}

// The error message of a config that must be refused.
std::string refusal(const std::string& text, Environment env = {}) {
  auto c = parse(text, std::move(env));
  EXPECT_FALSE(c.has_value()) << "accepted:\n" << text;
  if (c) return {};
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidConfig);
  return c.error().message;
}

// Verifies that a minimal file gives the documented defaults, with the
// worker started in the config file's directory.
TEST(ConfigTest, MinimalFileGivesDefaults) {
  auto c = parse(kMinimal);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->server.host, "127.0.0.1");
  EXPECT_EQ(c->server.port, 0);
  EXPECT_EQ(c->server.auth, AuthMode::kNone);
  EXPECT_EQ(c->server.max_body, 1u << 20);
  EXPECT_EQ(c->server.header_timeout, 10s);
  EXPECT_EQ(c->store.path, "/etc/pk/poolkeeper.db");
  ASSERT_EQ(c->pools.size(), 1u);
  const PoolEntry& p = c->pools[0];
  EXPECT_EQ(p.pool.name, "py");
  EXPECT_EQ(p.driver, "process");
  EXPECT_EQ(p.pool.max, PoolConfig{}.max);
  EXPECT_TRUE(p.pool.lease_events);
  EXPECT_EQ(p.process.command, (std::vector<std::string>{"python3", "worker.py"}));
  EXPECT_EQ(p.process.working_dir, "/etc/pk");
  EXPECT_TRUE(c->tenants.empty());
}

// Verifies that every kind of value is read: durations, sizes, enums,
// numbers, arrays and variable tables.
TEST(ConfigTest, ReadsEveryKindOfValue) {
  auto c = parse(std::string(kMinimal) + R"(
min = 2
max = 6
start = "eager"
idle_timeout = "90s"
lease_timeout = "2h"
max_lifetime = "1d"
handoff_after = "250ms"
check_interval = 0
max_memory = "512MiB"
max_cpu_percent = 150.5
lifetime_jitter = 0
early_reject = false
working_dir = "work"
env = { MODEL = "small", DEBUG = "1" }
limit_address_space = 1073741824
max_line = "2MB"
)");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  const PoolEntry& p = c->pools[0];
  EXPECT_EQ(p.pool.min, 2);
  EXPECT_EQ(p.pool.max, 6);
  EXPECT_EQ(p.pool.start, StartMode::kEager);
  EXPECT_EQ(p.pool.idle_timeout, 90s);
  EXPECT_EQ(p.pool.lease_timeout, 2h);
  EXPECT_EQ(p.pool.max_lifetime, 24h);
  EXPECT_EQ(p.pool.handoff_after, 250ms);
  EXPECT_EQ(p.pool.check_interval, 0s);
  EXPECT_EQ(p.pool.max_memory, 512 << 20);
  EXPECT_DOUBLE_EQ(p.pool.max_cpu_percent, 150.5);
  EXPECT_DOUBLE_EQ(p.pool.lifetime_jitter, 0);
  EXPECT_FALSE(p.pool.early_reject);
  EXPECT_EQ(p.process.working_dir, "/etc/pk/work");
  EXPECT_EQ(p.process.env, (std::vector<std::string>{"DEBUG=1", "MODEL=small"}));
  EXPECT_EQ(p.process.limit_address_space, 1073741824);
  EXPECT_EQ(p.process.max_line, 2000000u);
}

// Verifies that errors name the file, the line, the key and the reason.
TEST(ConfigTest, RefusesBadFilesWithFileLineKeyAndReason) {
  EXPECT_EQ(refusal(std::string(kMinimal) + "mxa = 3\n"), "test.toml:8: pools.py.mxa: unknown key");
  EXPECT_EQ(refusal(std::string(kMinimal) + "max = \"many\"\n"),
            "test.toml:8: pools.py.max: must be an integer, got a string");
  EXPECT_EQ(refusal(std::string(kMinimal) + "idle_timeout = \"5 minutes\"\n"),
            "test.toml:8: pools.py.idle_timeout: \"5 minutes\" is not a duration (a number and a "
            "unit: ms, s, m, h or d, as \"30s\")");
  EXPECT_EQ(refusal(std::string(kMinimal) + "min = 5\nmax = 2\n"),
            "test.toml:9: pools.py.max: must be >= min (5), got 2");
  EXPECT_EQ(refusal(std::string(kMinimal) + "start = \"soon\"\n"),
            "test.toml:8: pools.py.start: must be one of \"lazy\", \"eager\", got \"soon\"");
  EXPECT_NE(refusal("[server\nlisten = 1\n").find("test.toml:1: "), std::string::npos);
  EXPECT_EQ(refusal("[servr]\n"),
            "test.toml:1: servr: unknown section (expected server, store, budget, alerts, log, tenants, pools)");
}

// Verifies the checks that span keys: a pool needs a command and a known
// driver, there must be a pool, and listen must be HOST:PORT.
TEST(ConfigTest, RefusesIncompleteFiles) {
  EXPECT_NE(refusal("[server]\nauth = \"none\"\n").find("at least one pool"), std::string::npos);
  EXPECT_NE(refusal("[server]\nauth = \"none\"\n[pools.py]\nmax = 2\n").find("pools.py.command: is required"),
            std::string::npos);
  EXPECT_NE(refusal(std::string(kMinimal) + "driver = \"browser\"\n").find("unknown driver \"browser\""),
            std::string::npos);
  EXPECT_NE(refusal("[server]\nlisten = \"8470\"\nauth = \"none\"\n[pools.py]\ncommand = [\"x\"]\n")
                .find("server.listen: must be HOST:PORT"),
            std::string::npos);
  EXPECT_NE(refusal("[server]\nauth = \"none\"\n[pools.\"a b\"]\ncommand = [\"x\"]\n")
                .find("a pool name is"),
            std::string::npos);
}

// Verifies that auth = "none" is refused unless the daemon listens on
// loopback, and that tokens need at least one tenant.
TEST(ConfigTest, NoAuthOnlyOnLoopback) {
  EXPECT_NE(refusal("[server]\nlisten = \"0.0.0.0:8470\"\nauth = \"none\"\n[pools.py]\ncommand = [\"x\"]\n")
                .find("local development only"),
            std::string::npos);
  EXPECT_TRUE(parse("[server]\nlisten = \"[::1]:8470\"\nauth = \"none\"\n[pools.py]\ncommand = [\"x\"]\n")
                  .has_value());
  EXPECT_NE(refusal("[server]\nlisten = \"127.evil.example:1\"\nauth = \"none\"\n[pools.py]\ncommand = [\"x\"]\n")
                .find("local development only"),
            std::string::npos);
  EXPECT_TRUE(is_loopback("127.0.0.2"));
  EXPECT_FALSE(is_loopback("10.0.0.1"));
  EXPECT_FALSE(is_loopback("::2"));
  EXPECT_TRUE(parse("[server]\nlisten = \"localhost:1\"\nauth = \"none\"\n[pools.py]\ncommand = [\"x\"]\n")
                  .has_value());
  EXPECT_NE(refusal("[pools.py]\ncommand = [\"x\"]\n").find("needs at least one [tenants.NAME]"),
            std::string::npos);
}

// Verifies tenants: a token's hash from the file or a token from the
// environment (hashed at once), the admin scope and the pools it may use.
TEST(ConfigTest, ReadsTenants) {
  const std::string text = R"(
[pools.py]
command = ["x"]
[pools.other]
command = ["y"]
[tenants.alice]
token_sha256 = "965b04f03a8200d4bff70f6df635c1d4d3e9c9a1d164d415efc95b9304bfbaf2"
admin = true
[tenants.bob]
token_env = "BOB_TOKEN"
pools = ["py"]
)";
  auto c = parse(text, {{"BOB_TOKEN", "bob-secret-token-123"}});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  ASSERT_EQ(c->tenants.size(), 2u);
  EXPECT_EQ(c->tenants[0].name, "alice");
  EXPECT_EQ(c->tenants[0].token_sha256, sha256("alice-token-0123456789"));
  EXPECT_TRUE(c->tenants[0].admin);
  EXPECT_EQ(c->tenants[1].token_sha256, sha256("bob-secret-token-123"));
  EXPECT_FALSE(c->tenants[1].admin);
  EXPECT_EQ(c->tenants[1].pools, (std::vector<std::string>{"py"}));

  EXPECT_NE(refusal(text).find("tenants.bob.token_env: the variable BOB_TOKEN must hold a token"),
            std::string::npos);
  EXPECT_NE(refusal(text, {{"BOB_TOKEN", "short"}}).find("at least 16 characters"), std::string::npos);
  EXPECT_NE(refusal("[pools.py]\ncommand = [\"x\"]\n[tenants.a]\ntoken_sha256 = \"abc\"\n")
                .find("must be 64 hex digits"),
            std::string::npos);
  EXPECT_NE(refusal("[pools.py]\ncommand = [\"x\"]\n[tenants.a]\nadmin = true\n")
                .find("needs exactly one of token_sha256"),
            std::string::npos);
  EXPECT_NE(refusal("[pools.py]\ncommand = [\"x\"]\n[tenants.a]\ntoken_env = \"T\"\npools = [\"nope\"]\n",
                    {{"T", "0123456789abcdef"}})
                .find("no pool named \"nope\""),
            std::string::npos);
  EXPECT_NE(refusal("[pools.py]\ncommand = [\"x\"]\n[tenants.a]\ntoken_env = \"T\"\n[tenants.b]\n"
                    "token_env = \"T\"\n",
                    {{"T", "0123456789abcdef"}})
                .find("has the same token as tenants.a"),
            std::string::npos);
}

// Verifies that POOLKEEPER_* variables override any key (typed as TOML
// values where they parse as one), and that a variable naming no key is
// refused rather than ignored.
TEST(ConfigTest, EnvironmentOverridesKeys) {
  auto c = parse(kMinimal, {{"POOLKEEPER_POOL_PY_MAX", "3"},
                            {"POOLKEEPER_POOL_PY_IDLE_TIMEOUT", "2m"},
                            {"POOLKEEPER_POOL_PY_COMMAND", R"(["python3", "other.py"])"},
                            {"POOLKEEPER_SERVER_LISTEN", "127.0.0.1:9000"},
                            {"POOLKEEPER_STORE_PATH", "/var/lib/pk.db"},
                            {"POOLKEEPER_URL", "http://elsewhere"}});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->pools[0].pool.max, 3);
  EXPECT_EQ(c->pools[0].pool.idle_timeout, 2min);
  EXPECT_EQ(c->pools[0].process.command, (std::vector<std::string>{"python3", "other.py"}));
  EXPECT_EQ(c->server.port, 9000);
  EXPECT_EQ(c->store.path, "/var/lib/pk.db");

  EXPECT_EQ(refusal(kMinimal, {{"POOLKEEPER_POOL_PY_MAX", "lots"}}),
            "environment variable POOLKEEPER_POOL_PY_MAX (pools.py.max): must be an integer, got "
            "a string");
  EXPECT_EQ(refusal(kMinimal, {{"POOLKEEPER_POOL_PY_MXA", "3"}}),
            "environment variable POOLKEEPER_POOL_PY_MXA: pools.py has no key MXA");
  EXPECT_EQ(refusal(kMinimal, {{"POOLKEEPER_POOL_NOPE_MAX", "3"}}),
            "environment variable POOLKEEPER_POOL_NOPE_MAX: names no pool in the configuration");
  // Other POOLKEEPER_* variables (the CLI's, tokens) are not settings.
  EXPECT_TRUE(parse(kMinimal, {{"POOLKEEPER_TOKEN_ALICE", "x"}, {"POOLKEEPER_TOKEN", "y"}}).has_value());
  // A name that is a prefix of another: the split that names a key wins.
  auto two = parse(std::string(kMinimal) + "[pools.py_min]\ncommand = [\"y\"]\n",
                   {{"POOLKEEPER_POOL_PY_MIN_IDLE", "1"}, {"POOLKEEPER_POOL_PY_WORKING_DIR", "123"}});
  ASSERT_TRUE(two.has_value()) << two.error().message;
  EXPECT_EQ(two->pools[0].pool.min_idle, 1);                      // "py" (name order)
  EXPECT_EQ(two->pools[0].process.working_dir, "/etc/pk/123");  // text, not a number
  EXPECT_NE(refusal(std::string(kMinimal) + "[pools.PY]\ncommand = [\"y\"]\n").find("only in case"),
            std::string::npos);
  EXPECT_EQ(refusal(kMinimal, {{"POOLKEEPER_POOL_PY_MAX", "0"}}),
            "environment variable POOLKEEPER_POOL_PY_MAX (pools.py.max): must be between 1 and "
            "2147483647, got 0");
}

// Verifies prices and budgets: dollars become exact micro-dollars, the
// budget section and tenant budgets, the store's keys, and the refusals.
TEST(ConfigTest, ReadsCostsAndBudgets) {
  auto c = parse(std::string(kMinimal) + R"(
cost_per_session = 0.01
cost_per_hour_alive = 0.05
cost_per_hour_leased = 1
cost_per_use = 0.000001
budget_daily = 12.5
budget_action = "drain"

[budget]
daily = 100
monthly = 2000.25
warning = 0.9

[store]
retention = "3d"
daily_retention = "365d"
)",
                 {{"POOLKEEPER_BUDGET_MONTHLY", "3000"}});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  const PoolEntry& p = c->pools[0];
  EXPECT_EQ(p.cost.per_session, 10'000);
  EXPECT_EQ(p.cost.per_hour_alive, 50'000);
  EXPECT_EQ(p.cost.per_hour_leased, 1'000'000);
  EXPECT_EQ(p.cost.per_use, 1);
  EXPECT_EQ(p.budget.daily, 12'500'000);
  EXPECT_EQ(p.budget.monthly, 0);
  EXPECT_EQ(p.budget_action, BudgetAction::kDrain);
  EXPECT_EQ(c->budget.limits.daily, 100'000'000);
  EXPECT_EQ(c->budget.limits.monthly, 3'000'000'000) << "the environment wins";
  EXPECT_DOUBLE_EQ(c->budget.warning, 0.9);
  EXPECT_EQ(c->store.retention, 72h);
  EXPECT_EQ(c->store.daily_retention, 365 * 24h);
  EXPECT_TRUE(c->store.enabled);

  auto d = parse(kMinimal);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->pools[0].cost.free());
  EXPECT_EQ(d->budget.limits, core::BudgetLimits{});
  EXPECT_EQ(d->store.retention, 7 * 24h);

  EXPECT_EQ(refusal(std::string(kMinimal) + "cost_per_use = -1\n"),
            "test.toml:8: pools.py.cost_per_use: must be between 0 and 1000000 dollars, got -1");
  EXPECT_EQ(refusal(std::string(kMinimal) + "budget_daily = \"5\"\n"),
            "test.toml:8: pools.py.budget_daily: must be an amount in dollars such as 0.05, got a string");
  EXPECT_EQ(refusal(std::string(kMinimal) + "[budget]\ndayly = 1\n"), "test.toml:9: budget.dayly: unknown key");
  EXPECT_EQ(refusal(std::string(kMinimal) + "[store]\ndaily_retention = \"7d\"\n"),
            "test.toml:9: store.daily_retention: must be at least 31d (a monthly budget reads the "
            "month's days)");
  auto t = parse(R"(
[tenants.alice]
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
budget_daily = 3

[pools.py]
command = ["x"]
)");
  ASSERT_TRUE(t.has_value()) << t.error().message;
  EXPECT_EQ(t->tenants[0].budget.daily, 3'000'000);
}

// Verifies the seed-001 names: they apply to every pool, and a POOLKEEPER_*
// variable for one pool wins over them.
TEST(ConfigTest, AcceptsSessionCleanupAliases) {
  const std::string two = std::string(kMinimal) + "[pools.b]\ncommand = [\"y\"]\n";
  auto c = parse(two, {{"SESSION_TIMEOUT_MINUTES", "45"},
                       {"SESSION_CLEANUP_INTERVAL_MINUTES", "2"},
                       {"SESSION_MAX_MEMORY_MB", "256"},
                       {"SESSION_CLEANUP_BATCH_SIZE", "50"},
                       {"POOLKEEPER_POOL_B_CLIENT_SESSION_TTL", "10m"}});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  ASSERT_EQ(c->pools.size(), 2u);
  EXPECT_EQ(c->pools[0].pool.name, "b");  // pools are kept in name order
  EXPECT_EQ(c->pools[0].pool.client_session_ttl, 10min);
  EXPECT_EQ(c->pools[1].pool.client_session_ttl, 45min);
  for (const PoolEntry& p : c->pools) {
    EXPECT_EQ(p.pool.client_session_cleanup_interval, 2min);
    EXPECT_EQ(p.pool.max_memory, 256 << 20);
    EXPECT_EQ(p.pool.client_session_cleanup_batch, 50);
  }
  EXPECT_EQ(refusal(kMinimal, {{"SESSION_TIMEOUT_MINUTES", "soon"}}),
            "environment variable SESSION_TIMEOUT_MINUTES: must be a whole number, got \"soon\"");
}

// Verifies durations and sizes on their own.
TEST(ConfigTest, ParsesDurationsAndSizes) {
  EXPECT_EQ(parse_duration("250ms"), Duration(250ms));
  EXPECT_EQ(parse_duration("0"), Duration(0));
  EXPECT_EQ(parse_duration("3d"), Duration(72h));
  EXPECT_FALSE(parse_duration("").has_value());
  EXPECT_FALSE(parse_duration("5").has_value());
  EXPECT_FALSE(parse_duration("-5s").has_value());
  EXPECT_FALSE(parse_duration("1.5s").has_value());
  EXPECT_FALSE(parse_duration("99999999999999s").has_value());
  EXPECT_FALSE(parse_duration("999999999999d").has_value());  // would overflow
  EXPECT_FALSE(parse_size("999999999999999GiB").has_value());
  EXPECT_EQ(parse_size("4096"), 4096);
  EXPECT_EQ(parse_size("16MiB"), 16 << 20);
  EXPECT_EQ(parse_size("2GB"), 2000000000);
  EXPECT_FALSE(parse_size("16 potatoes").has_value());
  EXPECT_FALSE(parse_size("MiB").has_value());
}

constexpr const char* kRemote = R"(
[server]
listen = "127.0.0.1:0"
auth = "none"

[pools.browsers]
driver = "remote"
endpoint = "https://api.example.com/v1/sessions"
api_key_env = "PROVIDER_KEY"
)";

// Verifies that a remote pool reads its driver's keys (and the two it shares
// with the process driver), and that each driver's keys are refused on a
// pool of the other kind, with the line.
TEST(ConfigTest, ReadsRemotePoolsAndKeepsDriverKeysApart) {
  const Environment env{{"PROVIDER_KEY", "k"}};
  auto c = parse(std::string(kRemote) +
                     "create_body = '{\"platform\": \"{pool}\", \"metadata\": {\"t\": \"{tag}\"}}'\n"
                     "list_url = \"https://api.example.com/v1/sessions\"\nitem_tag_path = \"metadata.t\"\n"
                     "running_status = [\"RUNNING\"]\nstart_timeout = \"90s\"\ncheck_timeout = \"3s\"\n"
                     "retries = 2\nca_file = \"ca.pem\"\nmin = 1\ncost_per_session = 0.01\n",
                 env);
  ASSERT_TRUE(c.has_value()) << c.error().message;
  const PoolEntry& p = c->pools.at(0);
  EXPECT_EQ(p.driver, "remote");
  EXPECT_EQ(p.remote.endpoint, "https://api.example.com/v1/sessions");
  EXPECT_EQ(p.remote.item_tag_path, "metadata.t");
  EXPECT_EQ(p.remote.running_status, (std::vector<std::string>{"RUNNING"}));
  EXPECT_EQ(p.remote.start_timeout, 90s);
  EXPECT_EQ(p.remote.check_timeout, 3s);
  EXPECT_EQ(p.remote.retries, 2);
  EXPECT_EQ(p.remote.ca_file, "/etc/pk/ca.pem");
  EXPECT_EQ(p.remote.session_url, "{endpoint}/{id}");
  EXPECT_EQ(p.cost.per_session, 10'000);

  EXPECT_EQ(refusal(std::string(kRemote) + "command = [\"x\"]\n", env),
            "test.toml:10: pools.browsers.command: is only for driver = \"process\" (this pool's driver is "
            "\"remote\")");
  EXPECT_EQ(refusal(std::string(kMinimal) + "endpoint = \"http://x/\"\n"),
            "test.toml:8: pools.py.endpoint: is only for driver = \"remote\" (this pool's driver is "
            "\"process\")");
  EXPECT_EQ(refusal(kRemote), "test.toml:9: pools.browsers.api_key_env: the variable PROVIDER_KEY is not set");
  EXPECT_EQ(refusal(std::string(kRemote) + "session_url = \"{endpoint}/x\"\n", env),
            "test.toml:10: pools.browsers.session_url: must contain {id}");
  EXPECT_EQ(refusal(std::string(kRemote) + "list_url = \"http://x/\"\n", env),
            "test.toml:10: pools.browsers.list_url: needs create_body to carry {tag}: sweeps find this "
            "pool's sessions by it");
  EXPECT_NE(refusal("[server]\nauth = \"none\"\n[pools.b]\ndriver = \"remote\"\n").find("pools.b.endpoint: is required"),
            std::string::npos);
  // Overridden from the environment like any key.
  Environment with_url = env;
  with_url["POOLKEEPER_POOL_BROWSERS_ENDPOINT"] = "http://127.0.0.1:9/v1/s";
  EXPECT_EQ(parse(kRemote, with_url)->pools.at(0).remote.endpoint, "http://127.0.0.1:9/v1/s");
}

// Verifies that the shipped remote example loads (with its key's variable set).
TEST(ConfigTest, RemoteExampleLoads) {
  const std::string path = std::string(POOLKEEPER_SOURCE_DIR) + "/examples/remote.toml";
  auto c = load_config(path, {{"PROVIDER_API_KEY", "k"}});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  ASSERT_EQ(c->pools.size(), 2u);
  for (const PoolEntry& p : c->pools) {
    EXPECT_EQ(p.driver, "remote");
    EXPECT_GT(p.budget.daily, 0);
    EXPECT_FALSE(p.remote.list_url.empty());
  }
  EXPECT_EQ(c->budget.limits.daily, 2'000'000);
  EXPECT_EQ(c->store.path, std::string(POOLKEEPER_SOURCE_DIR) + "/examples/poolkeeper-remote.db");
}

// Verifies that the shipped quickstart loads, from any directory.
TEST(ConfigTest, QuickstartLoads) {
  const std::string path = std::string(POOLKEEPER_SOURCE_DIR) + "/examples/quickstart.toml";
  auto c = load_config(path, {});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_TRUE(is_loopback(c->server.host));
  ASSERT_EQ(c->pools.size(), 1u);
  EXPECT_EQ(c->pools[0].process.working_dir, std::string(POOLKEEPER_SOURCE_DIR) + "/examples");
  EXPECT_EQ(load_config("/nonexistent/poolkeeper.toml", {}).error().message,
            "/nonexistent/poolkeeper.toml: cannot be read");
}

TEST(ConfigTest, ReadsAlertsAndEventSettings) {
  auto c = parse(std::string(R"(
[server]
auth = "none"
event_ring = 100
event_queue = 10
status_interval = "250ms"

[alerts]
interval = "2s"
webhooks = ["http://127.0.0.1:9000/hook", "https://hooks.example.com/x"]
webhook_attempts = 3

[alerts.rules.queue_length]
threshold = 20
for = "1m"

[alerts.rules.utilization]
enabled = false

[pools.py]
command = ["python3", "worker.py"]
alert_thresholds = { queue_length = 50, unhealthy_sessions = 0.5 }
)"));
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->server.event_ring, 100u);
  EXPECT_EQ(c->server.event_queue, 10u);
  EXPECT_EQ(c->server.status_interval, 250ms);
  EXPECT_EQ(c->alerts.interval, 2s);
  EXPECT_EQ(c->alerts.webhooks.size(), 2u);
  EXPECT_EQ(c->alerts.webhook_attempts, 3);
  EXPECT_EQ(c->alerts.rules.at("queue_length").threshold, 20);
  EXPECT_EQ(c->alerts.rules.at("queue_length").for_duration, std::chrono::minutes(1));
  EXPECT_FALSE(c->alerts.rules.at("utilization").enabled);
  EXPECT_EQ(c->pools[0].alert_thresholds.at("queue_length"), 50);
  EXPECT_EQ(c->pools[0].alert_thresholds.at("unhealthy_sessions"), 0.5);

  const std::string pool = "\n[pools.py]\ncommand = [\"w\"]\n";
  const std::string open = "[server]\nauth = \"none\"\n";
  EXPECT_NE(refusal(open + "[alerts.rules.queue_lenght]\nthreshold = 3\n" + pool).find("\"queue_lenght\" is not a rule"),
            std::string::npos);
  EXPECT_NE(refusal(open + "[alerts]\nwebhooks = [\"ftp://x\"]\n" + pool).find("alerts.webhooks"), std::string::npos);
  EXPECT_NE(refusal(open + "[alerts.rules.queue_length]\nthreshold = \"high\"\n" + pool).find("must be a number"),
            std::string::npos);
  EXPECT_NE(refusal(open + pool + "alert_thresholds = { nope = 1 }\n").find("\"nope\" is not a rule"), std::string::npos);
  EXPECT_NE(refusal("[server]\nauth = \"none\"\nevent_heartbeat = \"10ms\"\n" + pool).find("at least 1s"), std::string::npos);
  EXPECT_NE(refusal(open + "[alerts]\ninterval = \"1ms\"\n" + pool).find("at least 100ms"), std::string::npos);
}

}  // namespace
}  // namespace poolkeeper::server
