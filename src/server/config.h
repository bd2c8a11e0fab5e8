// The daemon's configuration: one TOML file (docs/config.md), every key
// overridable by an environment variable.
//
// load_config() reads the file, applies the environment (the seed-001 names
// first, then POOLKEEPER_* variables, so the more specific wins), and checks
// every key. A bad file is refused with the file, the line, the key and the
// reason ("quickstart.toml:12: pools.python.max: must be >= min (2), got 1");
// a bad variable names the variable. Unknown keys are refused too: a typo
// never silently falls back to a default.
//
// Durations are strings with a unit ("250ms", "30s", "5m", "2h", "1d"; "0"
// means off where a key allows it); sizes are integers of bytes or strings
// with a unit ("512KiB", "16MiB", "2GiB", "1MB").
//
// Thread-safety: pure functions; the result is a plain value.
//
//   auto config = poolkeeper::server::load_config("examples/quickstart.toml",
//                                                 poolkeeper::server::process_environment());
//   if (!config) { std::cerr << config.error().message << "\n"; return 2; }
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/budget.h"
#include "core/cost.h"
#include "drivers/process/process_driver.h"
#include "drivers/remote/remote_driver.h"
#include "poolkeeper/clock.h"
#include "poolkeeper/error.h"
#include "poolkeeper/pool_config.h"

namespace poolkeeper::server {

enum class AuthMode : std::uint8_t {
  kTokens,  // every request carries a tenant's bearer token
  kNone,    // no authentication: local development only, loopback only
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8470;  // 0: any free port (tests)
  AuthMode auth = AuthMode::kTokens;
  std::size_t max_body = 1u << 20;            // 413 above
  std::size_t max_header = 16u << 10;         // 431 above
  int max_json_depth = 64;                    // 400 deeper
  Duration header_timeout = std::chrono::seconds(10);   // to receive a request's headers
  Duration idle_timeout = std::chrono::seconds(60);     // a keep-alive connection with nothing to do
  Duration shutdown_grace = std::chrono::seconds(30);   // leases in flight on SIGTERM
  double rate_limit = 0;   // requests per second per tenant (0: off)
  int rate_burst = 100;    // requests a tenant may send at once above the rate
  std::size_t max_connections = 20000;
  // Live events (/v1/events, /v1/ws).
  std::size_t event_ring = 4096;    // events kept for a client resuming with Last-Event-ID
  std::size_t event_queue = 1024;   // events a client may fall behind before it is dropped
  Duration status_interval = std::chrono::seconds(1);  // pool_status snapshots (0: none)
  Duration event_heartbeat = std::chrono::seconds(15);  // a comment or ping on a quiet stream

  bool operator==(const ServerConfig&) const = default;
};

struct StoreConfig {
  bool enabled = true;
  std::string path = "poolkeeper.db";  // SQLite file; relative to the config file's directory
  bool sync_to_disk = true;  // false: commits survive the daemon's crash, not the machine's
  Duration retention = std::chrono::hours(24 * 7);         // detail rows
  Duration daily_retention = std::chrono::hours(24 * 400);  // daily cost totals

  bool operator==(const StoreConfig&) const = default;
};

// The budget over all pools and tenants.
struct BudgetConfig {
  core::BudgetLimits limits;  // micro-dollars; 0: none
  double warning = 0.8;       // the fraction that raises a warning

  bool operator==(const BudgetConfig&) const = default;
};

// A built-in alert rule's settings (docs/alerts.md); what is unset keeps the default.
struct AlertRuleSettings {
  std::optional<double> threshold{};
  std::optional<Duration> for_duration{};
  bool enabled = true;

  bool operator==(const AlertRuleSettings&) const = default;
};

struct AlertsConfig {
  Duration interval = std::chrono::seconds(5);      // how often the rules are checked
  Duration stall_after = std::chrono::seconds(10);  // a pool's scheduler silent this long: /health degraded
  std::vector<std::string> webhooks{};              // http(s) URLs that get each change as a POST
  Duration webhook_timeout = std::chrono::seconds(5);
  int webhook_attempts = 6;        // tries per delivery, with backoff (1 s, 2 s, 4 s, ... at most 60 s)
  std::size_t outbox = 1000;       // deliveries waiting per webhook; the oldest is dropped past it
  std::size_t history = 500;       // changes GET /v1/alerts shows
  std::map<std::string, AlertRuleSettings> rules{};  // by rule name

  bool operator==(const AlertsConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";  // debug, info, warn, error

  bool operator==(const LogConfig&) const = default;
};

struct TenantConfig {
  std::string name;
  std::array<std::uint8_t, 32> token_sha256{};  // never the token itself
  bool admin = false;                           // scale, pause, drain, emergency stop
  std::vector<std::string> pools;               // pools it may use; empty: all
  double rate_limit = -1;                       // requests a second; negative: the server's
  int rate_burst = 0;                           // 0: the server's
  core::BudgetLimits budget{};                  // what its leases may cost (micro-dollars)

  bool operator==(const TenantConfig&) const = default;
};

using BudgetAction = core::BudgetAction;

struct PoolEntry {
  PoolConfig pool;
  std::string driver = "process";  // "process" or "remote"
  drivers::ProcessConfig process;   // driver = "process"
  drivers::RemoteConfig remote;     // driver = "remote"
  core::CostModel cost{};      // micro-dollars
  core::BudgetLimits budget{};  // micro-dollars; 0: none
  BudgetAction budget_action = BudgetAction::kRefuse;
  std::map<std::string, double> alert_thresholds{};  // this pool's own, by rule name
};

struct DaemonConfig {
  std::string source;  // the file it came from
  ServerConfig server;
  StoreConfig store;
  BudgetConfig budget;
  AlertsConfig alerts;
  LogConfig log;
  std::vector<TenantConfig> tenants;
  std::vector<PoolEntry> pools;
};

// Environment variables by name.
using Environment = std::map<std::string, std::string, std::less<>>;

// This process's environment.
Environment process_environment();

// Reads and checks a configuration file.
std::expected<DaemonConfig, Error> load_config(const std::string& path, const Environment& env);

// The same from text; `source` names it in errors, and relative paths
// (store.path, pools.*.working_dir) are resolved against `base_dir`.
std::expected<DaemonConfig, Error> parse_config(std::string_view text, std::string_view source,
                                                const Environment& env,
                                                std::string_view base_dir = {});

// "250ms", "30s", "5m", "2h", "1d", "0"; the error says what is wrong.
std::expected<Duration, std::string> parse_duration(std::string_view text);
// "1048576", "512KiB", "16MiB", "2GiB", "1KB", "1MB", "1GB".
std::expected<std::int64_t, std::string> parse_size(std::string_view text);

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback(std::string_view host);

}  // namespace poolkeeper::server
