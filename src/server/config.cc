#include "server/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <cmath>
#include <sstream>
#include <utility>

#include "drivers/remote/rest_client.h"
#include "monitor/alerts.h"
#include "server/sha256.h"

extern char** environ;  // NOLINT: POSIX

namespace poolkeeper::server {
namespace {

namespace fs = std::filesystem;
using Check = std::function<std::optional<std::string>(const toml::node&)>;

// One key of a table and how to read it.
struct Field {
  std::string key;
  Check read;
};

// ---------------------------------------------------------------------------
// typed readers: each returns why a value is wrong, or nothing

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date or time";
  }
}

Check integer(int& out, std::int64_t min, std::int64_t max = std::numeric_limits<int>::max()) {
  return [&out, min, max](const toml::node& n) -> std::optional<std::string> {
    const auto v = n.value_exact<std::int64_t>();
    if (!v) return "must be an integer, got " + type_name(n);
    if (*v < min || *v > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
             std::to_string(*v);
    }
    out = static_cast<int>(*v);
    return std::nullopt;
  };
}

Check integer64(std::int64_t& out, std::int64_t min) {
  return [&out, min](const toml::node& n) -> std::optional<std::string> {
    const auto v = n.value_exact<std::int64_t>();
    if (!v) return "must be an integer, got " + type_name(n);
    if (*v < min) return "must be at least " + std::to_string(min) + ", got " + std::to_string(*v);
    out = *v;
    return std::nullopt;
  };
}

template <class Int>
Check size(Int& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    std::int64_t bytes = 0;
    if (const auto i = n.value_exact<std::int64_t>()) {
      bytes = *i;
    } else if (const auto s = n.value_exact<std::string>()) {
      auto parsed = parse_size(*s);
      if (!parsed) return parsed.error();
      bytes = *parsed;
    } else {
      return "must be a size (bytes, or a string such as \"16MiB\"), got " + type_name(n);
    }
    if (bytes < 0) return "must not be negative";
    out = static_cast<Int>(bytes);
    return std::nullopt;
  };
}

Check duration(Duration& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    if (const auto i = n.value_exact<std::int64_t>(); i && *i == 0) {
      out = Duration{0};
      return std::nullopt;
    }
    const auto s = n.value_exact<std::string>();
    if (!s) return "must be a duration string such as \"30s\" or \"5m\", got " + type_name(n);
    auto d = parse_duration(*s);
    if (!d) return d.error();
    out = *d;
    return std::nullopt;
  };
}

Check boolean(bool& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const auto v = n.value_exact<bool>();
    if (!v) return "must be true or false, got " + type_name(n);
    out = *v;
    return std::nullopt;
  };
}

// A number; its range is the validator's (core or driver) unless given.
Check real(double& out, double min = -std::numeric_limits<double>::infinity(),
           double max = std::numeric_limits<double>::infinity()) {
  return [&out, min, max](const toml::node& n) -> std::optional<std::string> {
    std::optional<double> v = n.value_exact<double>();
    if (!v) {
      if (const auto i = n.value_exact<std::int64_t>()) v = static_cast<double>(*i);
    }
    if (!v) return "must be a number, got " + type_name(n);
    if (!(*v >= min && *v <= max)) {
      std::ostringstream os;
      os << "must be between " << min << " and " << max << ", got " << *v;
      return os.str();
    }
    out = *v;
    return std::nullopt;
  };
}

// Dollars (a number, at most $1,000,000) kept as integer micro-dollars.
Check money(std::int64_t& micros) {
  return [&micros](const toml::node& n) -> std::optional<std::string> {
    std::optional<double> v = n.value_exact<double>();
    if (!v) {
      if (const auto i = n.value_exact<std::int64_t>()) v = static_cast<double>(*i);
    }
    if (!v) return "must be an amount in dollars such as 0.05, got " + type_name(n);
    if (!(*v >= 0 && *v <= 1e6)) {
      std::ostringstream os;
      os << "must be between 0 and 1000000 dollars, got " << *v;
      return os.str();
    }
    micros = std::llround(*v * 1e6);
    return std::nullopt;
  };
}

Check string(std::string& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const auto v = n.value_exact<std::string>();
    if (!v) return "must be a string, got " + type_name(n);
    out = *v;
    return std::nullopt;
  };
}

Check strings(std::vector<std::string>& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const toml::array* a = n.as_array();
    if (a == nullptr) return "must be an array of strings, got " + type_name(n);
    std::vector<std::string> v;
    for (const toml::node& e : *a) {
      const auto s = e.value_exact<std::string>();
      if (!s) return "must be an array of strings; an element is " + type_name(e);
      v.push_back(*s);
    }
    out = std::move(v);
    return std::nullopt;
  };
}

// http(s) URLs.
Check urls(std::vector<std::string>& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    std::vector<std::string> v;
    if (auto why = strings(v)(n)) return why;
    for (const std::string& u : v) {
      if (auto parsed = drivers::parse_url(u); !parsed) return "\"" + u + "\": " + parsed.error();
    }
    out = std::move(v);
    return std::nullopt;
  };
}

std::string rule_names() {
  std::string all;
  for (const monitor::AlertRule& r : monitor::builtin_rules()) all += (all.empty() ? "" : ", ") + r.name;
  return all;
}

bool known_rule(std::string_view name) {
  const auto rules = monitor::builtin_rules();
  return std::any_of(rules.begin(), rules.end(), [&](const monitor::AlertRule& r) { return r.name == name; });
}

// [alerts.rules.NAME] tables: threshold, for, enabled.
Check alert_rules(std::map<std::string, AlertRuleSettings>& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const toml::table* t = n.as_table();
    if (t == nullptr) return "must be a table of rules, got " + type_name(n);
    std::map<std::string, AlertRuleSettings> v;
    for (const auto& [name, node] : *t) {
      const std::string rule(name.str());
      if (!known_rule(rule)) return "\"" + rule + "\" is not a rule (the rules: " + rule_names() + ")";
      const toml::table* r = node.as_table();
      if (r == nullptr) return rule + ": must be a table (threshold, for, enabled)";
      AlertRuleSettings settings;
      for (const auto& [key, value] : *r) {
        const std::string k(key.str());
        if (k == "threshold") {
          const auto x = value.value<double>();
          if (!x || !std::isfinite(*x)) return rule + ".threshold: must be a number, got " + type_name(value);
          settings.threshold = *x;
        } else if (k == "for") {
          Duration d{};
          if (auto why = duration(d)(value)) return rule + ".for: " + *why;
          settings.for_duration = d;
        } else if (k == "enabled") {
          const auto b = value.value_exact<bool>();
          if (!b) return rule + ".enabled: must be true or false, got " + type_name(value);
          settings.enabled = *b;
        } else {
          return rule + "." + k + ": unknown key (threshold, for, enabled)";
        }
      }
      v[rule] = settings;
    }
    out = std::move(v);
    return std::nullopt;
  };
}

// A pool's own thresholds: { queue_length = 50, utilization = 0.95 }.
Check alert_thresholds(std::map<std::string, double>& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const toml::table* t = n.as_table();
    if (t == nullptr) return "must be a table of rule = threshold, got " + type_name(n);
    std::map<std::string, double> v;
    for (const auto& [name, node] : *t) {
      const std::string rule(name.str());
      if (!known_rule(rule)) return "\"" + rule + "\" is not a rule (the rules: " + rule_names() + ")";
      const auto x = node.value<double>();
      if (!x || !std::isfinite(*x)) return rule + ": must be a number, got " + type_name(node);
      v[rule] = *x;
    }
    out = std::move(v);
    return std::nullopt;
  };
}

// A table of NAME = "value" (environment variables for a worker).
Check variables(std::vector<std::string>& out) {
  return [&out](const toml::node& n) -> std::optional<std::string> {
    const toml::table* t = n.as_table();
    if (t == nullptr) return "must be a table of NAME = \"value\", got " + type_name(n);
    std::vector<std::string> v;
    for (const auto& [k, value] : *t) {
      const auto s = value.value_exact<std::string>();
      if (!s) return "\"" + std::string(k.str()) + "\" must be a string";
      if (k.str().empty() || k.str().find('=') != std::string_view::npos) {
        return "\"" + std::string(k.str()) + "\" is not a variable name";
      }
      v.push_back(std::string(k.str()) + "=" + *s);
    }
    out = std::move(v);
    return std::nullopt;
  };
}

template <class Enum>
Check choice(Enum& out, std::vector<std::pair<std::string, Enum>> options) {
  return [&out, options = std::move(options)](const toml::node& n) -> std::optional<std::string> {
    const auto s = n.value_exact<std::string>();
    std::string names;
    for (const auto& [name, value] : options) names += (names.empty() ? "\"" : ", \"") + name + "\"";
    if (!s) return "must be one of " + names + ", got " + type_name(n);
    for (const auto& [name, value] : options) {
      if (*s == name) {
        out = value;
        return std::nullopt;
      }
    }
    return "must be one of " + names + ", got \"" + *s + "\"";
  };
}

// ---------------------------------------------------------------------------
// the schema

std::vector<Field> server_fields(ServerConfig& s, std::string& listen) {
  return {
      {"listen", string(listen)},
      {"auth", choice(s.auth, {{"tokens", AuthMode::kTokens}, {"none", AuthMode::kNone}})},
      {"max_body", size(s.max_body)},
      {"max_header", size(s.max_header)},
      {"max_json_depth", integer(s.max_json_depth, 1, 1000)},
      {"header_timeout", duration(s.header_timeout)},
      {"idle_timeout", duration(s.idle_timeout)},
      {"shutdown_grace", duration(s.shutdown_grace)},
      {"rate_limit", real(s.rate_limit, 0, 1e9)},
      {"rate_burst", integer(s.rate_burst, 1)},
      {"max_connections", size(s.max_connections)},
      {"event_ring", size(s.event_ring)},
      {"event_queue", size(s.event_queue)},
      {"status_interval", duration(s.status_interval)},
      {"event_heartbeat", duration(s.event_heartbeat)},
  };
}

std::vector<Field> pool_fields(PoolEntry& e) {
  PoolConfig& p = e.pool;
  drivers::ProcessConfig& c = e.process;
  drivers::RemoteConfig& r = e.remote;
  return {
      {"driver", string(e.driver)},
      // sizing and queue
      {"min", integer(p.min, 0)},
      {"max", integer(p.max, 1)},
      {"overflow", integer(p.overflow, 0)},
      {"start", choice(p.start, {{"lazy", StartMode::kLazy}, {"eager", StartMode::kEager}})},
      {"min_idle", integer(p.min_idle, 0)},
      {"max_starting", integer(p.max_starting, 1)},
      {"max_queue", integer(p.max_queue, 0)},
      {"aging", duration(p.aging)},
      {"early_reject", boolean(p.early_reject)},
      {"handoff_after", duration(p.handoff_after)},
      // limits
      {"idle_timeout", duration(p.idle_timeout)},
      {"lease_timeout", duration(p.lease_timeout)},
      {"max_lifetime", duration(p.max_lifetime)},
      {"lifetime_jitter", real(p.lifetime_jitter)},
      {"max_uses", integer64(p.max_uses, 0)},
      {"max_memory", size(p.max_memory)},
      {"max_cpu_percent", real(p.max_cpu_percent)},
      {"cpu_percent_samples", integer(p.cpu_percent_samples, 1)},
      {"max_cpu_time", duration(p.max_cpu_time)},
      // health
      {"health_error_penalty", integer(p.health_error_penalty, 0, 100)},
      {"health_success_recovery", integer(p.health_success_recovery, 0, 100)},
      {"health_check_below", integer(p.health_check_below, 0, 100)},
      {"validate_after_idle", duration(p.validate_after_idle)},
      {"check_interval", duration(p.check_interval)},
      {"start_backoff_initial", duration(p.start_backoff_initial)},
      {"start_backoff_max", duration(p.start_backoff_max)},
      // autoscaling
      {"autoscale", boolean(p.autoscale.enabled)},
      {"autoscale_up_at", real(p.autoscale.up_at)},
      {"autoscale_down_at", real(p.autoscale.down_at)},
      {"autoscale_queue_length", integer(p.autoscale.queue_length, 0)},
      {"autoscale_queue_wait", duration(p.autoscale.queue_wait)},
      {"autoscale_step_up", integer(p.autoscale.step_up, 0)},
      {"autoscale_step_down", integer(p.autoscale.step_down, 0)},
      {"autoscale_cooldown_up", duration(p.autoscale.cooldown_up)},
      {"autoscale_cooldown_down", duration(p.autoscale.cooldown_down)},
      {"autoscale_up_window", duration(p.autoscale.up_window)},
      {"autoscale_down_window", duration(p.autoscale.down_window)},
      {"autoscale_interval", duration(p.autoscale.interval)},
      {"autoscale_predictive", boolean(p.autoscale.predictive)},
      {"autoscale_trend_window", duration(p.autoscale.trend_window)},
      {"autoscale_min_confidence", real(p.autoscale.min_confidence)},
      {"autoscale_season", duration(p.autoscale.season)},
      // cost and budget
      {"cost_per_session", money(e.cost.per_session)},
      {"cost_per_hour_alive", money(e.cost.per_hour_alive)},
      {"cost_per_hour_leased", money(e.cost.per_hour_leased)},
      {"cost_per_use", money(e.cost.per_use)},
      {"budget_daily", money(e.budget.daily)},
      {"budget_monthly", money(e.budget.monthly)},
      {"budget_action", choice(e.budget_action, {{"refuse", BudgetAction::kRefuse},
                                                 {"drain", BudgetAction::kDrain}})},
      // alerts
      {"alert_thresholds", alert_thresholds(e.alert_thresholds)},
      // client sessions
      {"client_session_ttl", duration(p.client_session_ttl)},
      {"client_session_cleanup_interval", duration(p.client_session_cleanup_interval)},
      {"client_session_cleanup_batch", integer(p.client_session_cleanup_batch, 1)},
      {"max_client_sessions", size(p.max_client_sessions)},
      {"max_client_session_document", size(p.max_client_session_document)},
      // the process driver
      {"command", strings(c.command)},
      {"working_dir", string(c.working_dir)},
      {"env_allow", strings(c.env_allow)},
      {"env", variables(c.env)},
      {"limit_address_space", size(c.limit_address_space)},
      {"limit_cpu_seconds", integer64(c.limit_cpu_seconds, 0)},
      {"limit_open_files", integer64(c.limit_open_files, 0)},
      {"limit_processes", integer64(c.limit_processes, 0)},
      {"sample_interval", duration(c.sample_interval)},
      {"start_timeout", duration(c.start_timeout)},
      {"check_timeout", duration(c.check_timeout)},
      {"execute_timeout", duration(c.execute_timeout)},
      {"reset_timeout", duration(c.reset_timeout)},
      {"reset_on_release", boolean(c.reset_on_release)},
      {"max_line", size(c.max_line)},
      {"stderr_line_max", size(c.stderr_line_max)},
      {"stderr_lines_per_second", integer(c.stderr_lines_per_second, 1)},
      {"stop_grace", duration(c.stop_grace)},
      {"kill_after", duration(c.kill_after)},
      {"kill_with_daemon", boolean(c.kill_with_daemon)},
      // the remote driver (start_timeout and check_timeout are shared)
      {"endpoint", string(r.endpoint)},
      {"session_url", string(r.session_url)},
      {"create_body", string(r.create_body)},
      {"delete_method", string(r.delete_method)},
      {"api_key_env", string(r.api_key_env)},
      {"auth_header", string(r.auth_header)},
      {"auth_scheme", string(r.auth_scheme)},
      {"id_path", string(r.id_path)},
      {"connect_path", string(r.connect_path)},
      {"status_path", string(r.status_path)},
      {"running_status", strings(r.running_status)},
      {"pending_status", strings(r.pending_status)},
      {"list_url", string(r.list_url)},
      {"list_path", string(r.list_path)},
      {"item_id_path", string(r.item_id_path)},
      {"item_status_path", string(r.item_status_path)},
      {"item_tag_path", string(r.item_tag_path)},
      {"item_created_path", string(r.item_created_path)},
      {"ca_file", string(r.ca_file)},
      {"request_timeout", duration(r.request_timeout)},
      {"poll_interval", duration(r.poll_interval)},
      {"retries", integer(r.retries, 0, 20)},
      {"retry_backoff", duration(r.retry_backoff)},
      {"retry_backoff_max", duration(r.retry_backoff_max)},
      {"max_answer", size(r.max_answer)},
  };
}

// Keys that only one driver reads: a pool of the other kind may not set them.
const std::vector<std::string>& process_only_keys() {
  static const std::vector<std::string> keys = {
      "command", "working_dir", "env_allow", "env", "limit_address_space", "limit_cpu_seconds",
      "limit_open_files", "limit_processes", "sample_interval", "execute_timeout", "reset_timeout",
      "reset_on_release", "max_line", "stderr_line_max", "stderr_lines_per_second", "stop_grace",
      "kill_after", "kill_with_daemon"};
  return keys;
}
const std::vector<std::string>& remote_only_keys() {
  static const std::vector<std::string> keys = {
      "endpoint", "session_url", "create_body", "delete_method", "api_key_env", "auth_header",
      "auth_scheme", "id_path", "connect_path", "status_path", "running_status", "pending_status",
      "list_url", "list_path", "item_id_path", "item_status_path", "item_tag_path",
      "item_created_path", "ca_file",
      "request_timeout", "poll_interval", "retries", "retry_backoff", "retry_backoff_max",
      "max_answer"};
  return keys;
}

struct TenantFields {
  std::string token_sha256;
  std::string token_env;
};

std::vector<Field> tenant_fields(TenantConfig& t, TenantFields& f) {
  return {
      {"token_sha256", string(f.token_sha256)},
      {"token_env", string(f.token_env)},
      {"admin", boolean(t.admin)},
      {"pools", strings(t.pools)},
      {"rate_limit", real(t.rate_limit, 0, 1e9)},
      {"rate_burst", integer(t.rate_burst, 1)},
      {"budget_daily", money(t.budget.daily)},
      {"budget_monthly", money(t.budget.monthly)},
  };
}

std::vector<Field> store_fields(StoreConfig& s) {
  return {
      {"enabled", boolean(s.enabled)},
      {"path", string(s.path)},
      {"sync_to_disk", boolean(s.sync_to_disk)},
      {"retention", duration(s.retention)},
      {"daily_retention", duration(s.daily_retention)},
  };
}

std::vector<Field> budget_fields(BudgetConfig& b) {
  return {
      {"daily", money(b.limits.daily)},
      {"monthly", money(b.limits.monthly)},
      {"warning", real(b.warning, 0.01, 1)},
  };
}

std::vector<Field> alerts_fields(AlertsConfig& a) {
  return {
      {"interval", duration(a.interval)},
      {"stall_after", duration(a.stall_after)},
      {"webhooks", urls(a.webhooks)},
      {"webhook_timeout", duration(a.webhook_timeout)},
      {"webhook_attempts", integer(a.webhook_attempts, 1, 100)},
      {"outbox", size(a.outbox)},
      {"history", size(a.history)},
      {"rules", alert_rules(a.rules)},
  };
}

const std::vector<std::string>& section_keys(std::string_view section) {
  static const auto keys = [] {
    std::map<std::string, std::vector<std::string>, std::less<>> m;
    ServerConfig s;
    std::string listen;
    for (auto& f : server_fields(s, listen)) m["server"].push_back(f.key);
    StoreConfig st;
    for (auto& f : store_fields(st)) m["store"].push_back(f.key);
    BudgetConfig b;
    for (auto& f : budget_fields(b)) m["budget"].push_back(f.key);
    m["log"] = {"level"};
    AlertsConfig a;
    for (auto& f : alerts_fields(a)) m["alerts"].push_back(f.key);
    PoolEntry e;
    for (auto& f : pool_fields(e)) m["pool"].push_back(f.key);
    TenantConfig t;
    TenantFields tf;
    for (auto& f : tenant_fields(t, tf)) m["tenant"].push_back(f.key);
    return m;
  }();
  return keys.find(section)->second;
}

// ---------------------------------------------------------------------------
// loading

// Pool and tenant names go into URLs, lease ids ("NAME.ID") and variable
// names: 1 to 64 letters, digits, '_' or '-'.
bool valid_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 &&
         std::all_of(name.begin(), name.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '_' || c == '-'; });
}

// Keys whose value is text: an environment value for them is never read as
// a number, a boolean or a date.
const std::set<std::string, std::less<>> kStringKeys = {
    "listen",      "auth",  "path",         "level",     "driver",
    "working_dir", "start", "token_sha256", "token_env", "budget_action"};

std::string upper_name(std::string_view s) {
  std::string out;
  for (unsigned char c : s) out += std::isalnum(c) ? static_cast<char>(std::toupper(c)) : '_';
  return out;
}

// An environment value as a TOML value (in a table, under "v"): `4`, `true`,
// `["a","b"]`, `"x"`; any other text is a string (`5m`, `python3`).
toml::table env_value(const std::string& text) {
  try {
    toml::table t = toml::parse("v = " + text);
    if (t.size() == 1 && t.contains("v")) return t;
  } catch (const toml::parse_error&) {
  }
  toml::table t;
  t.insert("v", text);
  return t;
}

class Loader {
 public:
  Loader(std::string source, const Environment& env, std::string base_dir)
      : source_(std::move(source)), env_(env), base_dir_(std::move(base_dir)) {}

  std::expected<DaemonConfig, Error> load(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, source_);
    } catch (const toml::parse_error& e) {
      return fail(source_ + ":" + std::to_string(e.source().begin.line) + ": " +
                  std::string(e.description()));
    }
    if (auto bad = apply_environment(root); !bad) return std::unexpected(bad.error());
    DaemonConfig config;
    config.source = source_;
    for (const auto& [key, node] : root) {
      const std::string k(key.str());
      if (k != "server" && k != "store" && k != "budget" && k != "alerts" && k != "log" && k != "tenants" &&
          k != "pools") {
        return fail(where(k, &node) +
                    "unknown section (expected server, store, budget, alerts, log, tenants, pools)");
      }
    }
    if (auto ok = load_server(root, config); !ok) return std::unexpected(ok.error());
    if (auto ok = load_simple(root, config); !ok) return std::unexpected(ok.error());
    if (auto ok = load_pools(root, config); !ok) return std::unexpected(ok.error());
    if (auto ok = load_tenants(root, config); !ok) return std::unexpected(ok.error());
    return config;
  }

 private:
  static std::unexpected<Error> fail(std::string message) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig, std::move(message)));
  }

  // "file:line: key: " or "environment variable X: " for a key's origin.
  std::string where(const std::string& path, const toml::node* node) const {
    if (auto it = overridden_.find(path); it != overridden_.end()) {
      return "environment variable " + it->second + " (" + path + "): ";
    }
    std::string s = source_;
    if (node != nullptr && node->source().begin.line > 0) {
      s += ":" + std::to_string(node->source().begin.line);
    }
    return s + ": " + path + ": ";
  }

  // Reads `table` (at `path`) into `fields`; unknown keys are refused.
  std::expected<void, Error> read(const toml::table& table, const std::string& path,
                                  const std::vector<Field>& fields) {
    for (const auto& [key, node] : table) {
      const std::string k(key.str());
      auto f = std::find_if(fields.begin(), fields.end(), [&](const Field& x) { return x.key == k; });
      if (f == fields.end()) return fail(where(path + "." + k, &node) + "unknown key");
      if (auto why = f->read(node)) return fail(where(path + "." + k, &node) + *why);
    }
    return {};
  }

  // Two names that make the same variable name (POOLKEEPER_POOL_<NAME>_...)
  // would make an override ambiguous.
  std::optional<std::string> same_variable_names(const toml::table& group, const std::string& kind) const {
    std::map<std::string, std::string> seen;
    for (const auto& [key, node] : group) {
      const std::string name(key.str());
      auto [it, fresh] = seen.emplace(upper_name(name), name);
      if (!fresh) {
        return where(kind + "." + name, &node) + "differs from " + kind + "." + it->second +
               " only in case or '-' against '_' (their environment variables would be the same)";
      }
    }
    return std::nullopt;
  }

  // An error from a validator ("max: must be ...") placed at its key.
  std::unexpected<Error> misplaced(const toml::table& table, const std::string& path,
                                   const std::string& message) {
    const std::string key = message.substr(0, message.find(':'));
    const toml::node* node = table.get(key);
    if (node == nullptr) node = &table;
    const std::string rest = message.find(": ") == std::string::npos
                                 ? message
                                 : message.substr(message.find(": ") + 2);
    return fail(where(path + "." + key, node) + rest);
  }

  const toml::table* section(const toml::table& root, const char* name, std::optional<Error>& bad) {
    const toml::node* n = root.get(name);
    if (n == nullptr) return nullptr;
    if (!n->is_table()) bad = fail(where(name, n) + "must be a table").error();
    return n->as_table();
  }

  std::expected<void, Error> load_server(const toml::table& root, DaemonConfig& config) {
    std::optional<Error> bad;
    const toml::table* t = section(root, "server", bad);
    if (bad) return std::unexpected(*bad);
    std::string listen = config.server.host + ":" + std::to_string(config.server.port);
    if (t != nullptr) {
      if (auto ok = read(*t, "server", server_fields(config.server, listen)); !ok) return ok;
    }
    const toml::node* at = t != nullptr ? t->get("listen") : nullptr;
    const std::size_t colon = listen.rfind(':');
    std::string host = colon == std::string::npos ? std::string() : listen.substr(0, colon);
    const std::string port = colon == std::string::npos ? std::string() : listen.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int port_number = -1;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), port_number);
    if (host.empty() || ec != std::errc() || end != port.data() + port.size() || port_number < 0 ||
        port_number > 65535) {
      return fail(where("server.listen", at) + "must be HOST:PORT (\"127.0.0.1:8470\"), got \"" +
                  listen + "\"");
    }
    config.server.host = host;
    config.server.port = static_cast<std::uint16_t>(port_number);
    if (config.server.auth == AuthMode::kNone && !is_loopback(host)) {
      return fail(where("server.auth", t != nullptr ? t->get("auth") : nullptr) +
                  "\"none\" is for local development only: listen on a loopback address "
                  "(127.0.0.1, ::1 or localhost), not \"" + host + "\"");
    }
    if (config.server.max_body < 1024) {
      return fail(where("server.max_body", t != nullptr ? t->get("max_body") : nullptr) +
                  "must be at least 1KiB");
    }
    if (config.server.max_header < 1024) {
      return fail(where("server.max_header", t != nullptr ? t->get("max_header") : nullptr) +
                  "must be at least 1KiB");
    }
    if (config.server.event_ring < 1 || config.server.event_queue < 1) {
      const bool ring = config.server.event_ring < 1;
      return fail(where(ring ? "server.event_ring" : "server.event_queue",
                        t != nullptr ? t->get(ring ? "event_ring" : "event_queue") : nullptr) +
                  "must be at least 1");
    }
    if (config.server.event_heartbeat < std::chrono::seconds(1)) {
      return fail(where("server.event_heartbeat", t != nullptr ? t->get("event_heartbeat") : nullptr) +
                  "must be at least 1s");
    }
    return {};
  }

  std::expected<void, Error> load_simple(const toml::table& root, DaemonConfig& config) {
    std::optional<Error> bad;
    if (const toml::table* t = section(root, "store", bad)) {
      if (auto ok = read(*t, "store", store_fields(config.store)); !ok) return ok;
      if (config.store.path.empty()) return fail(where("store.path", t->get("path")) + "must not be empty");
      if (config.store.retention < std::chrono::hours(1)) {
        return fail(where("store.retention", t->get("retention")) + "must be at least 1h");
      }
      if (config.store.daily_retention < std::chrono::hours(24 * 31)) {
        return fail(where("store.daily_retention", t->get("daily_retention")) +
                    "must be at least 31d (a monthly budget reads the month's days)");
      }
    }
    if (bad) return std::unexpected(*bad);
    config.store.path = resolve(config.store.path);
    if (const toml::table* t = section(root, "budget", bad)) {
      if (auto ok = read(*t, "budget", budget_fields(config.budget)); !ok) return ok;
    }
    if (bad) return std::unexpected(*bad);
    if (const toml::table* t = section(root, "alerts", bad)) {
      if (auto ok = read(*t, "alerts", alerts_fields(config.alerts)); !ok) return ok;
      if (config.alerts.interval < std::chrono::milliseconds(100)) {
        return fail(where("alerts.interval", t->get("interval")) + "must be at least 100ms");
      }
      if (config.alerts.stall_after < std::chrono::seconds(1)) {
        return fail(where("alerts.stall_after", t->get("stall_after")) + "must be at least 1s");
      }
      if (config.alerts.outbox < 1 || config.alerts.history < 1) {
        const bool outbox = config.alerts.outbox < 1;
        return fail(where(outbox ? "alerts.outbox" : "alerts.history", t->get(outbox ? "outbox" : "history")) +
                    "must be at least 1");
      }
    }
    if (bad) return std::unexpected(*bad);
    if (const toml::table* t = section(root, "log", bad)) {
      if (auto ok = read(*t, "log",
                         {{"level", choice(config.log.level, std::vector<std::pair<std::string, std::string>>{
                                                                  {"debug", "debug"},
                                                                  {"info", "info"},
                                                                  {"warn", "warn"},
                                                                  {"error", "error"}})}});
          !ok) {
        return ok;
      }
    }
    if (bad) return std::unexpected(*bad);
    return {};
  }

  std::expected<void, Error> load_pools(const toml::table& root, DaemonConfig& config) {
    std::optional<Error> bad;
    const toml::table* pools = section(root, "pools", bad);
    if (bad) return std::unexpected(*bad);
    if (pools == nullptr || pools->empty()) {
      return fail(source_ + ": pools: at least one pool is needed ([pools.NAME] with a command)");
    }
    if (auto bad_names = same_variable_names(*pools, "pools")) return fail(*bad_names);
    for (const auto& [key, node] : *pools) {
      const std::string name(key.str());
      const std::string path = "pools." + name;
      if (!valid_name(name)) {
        return fail(where(path, &node) + "a pool name is 1 to 64 letters, digits, '_' or '-'");
      }
      const toml::table* t = node.as_table();
      if (t == nullptr) return fail(where(path, &node) + "must be a table");
      PoolEntry e;
      e.pool.name = name;
      e.pool.lease_events = true;  // the daemon reports leases
      if (auto ok = read(*t, path, pool_fields(e)); !ok) return std::unexpected(ok.error());
      if (e.driver != "process" && e.driver != "remote") {
        return fail(where(path + ".driver", t->get("driver")) + "unknown driver \"" + e.driver +
                    "\" (available: \"process\", \"remote\")");
      }
      const bool remote = e.driver == "remote";
      for (const std::string& k : remote ? process_only_keys() : remote_only_keys()) {
        if (const toml::node* n = t->get(k)) {
          return fail(where(path + "." + k, n) + "is only for driver = \"" +
                      (remote ? "process" : "remote") + "\" (this pool's driver is \"" + e.driver + "\")");
        }
      }
      if (remote) {
        // The shared keys were read into the process settings.
        if (t->contains("start_timeout")) e.remote.start_timeout = e.process.start_timeout;
        if (t->contains("check_timeout")) e.remote.check_timeout = e.process.check_timeout;
        if (!e.remote.ca_file.empty()) e.remote.ca_file = resolve(e.remote.ca_file);
        if (!e.remote.api_key_env.empty() && !env_.contains(e.remote.api_key_env)) {
          return fail(where(path + ".api_key_env", t->get("api_key_env")) + "the variable " +
                      e.remote.api_key_env + " is not set");
        }
        e.process = {};
      } else if (e.process.command.empty()) {
        return fail(where(path + ".command", t) + "is required: the worker's argv, such as "
                    "[\"python3\", \"worker.py\"]");
      }
      if (!remote) e.process.working_dir = resolve(e.process.working_dir);
      if (auto ok = validate_config(e.pool); !ok) return misplaced(*t, path, ok.error().message);
      if (auto ok = remote ? drivers::validate_remote_config(e.remote)
                           : drivers::validate_process_config(e.process);
          !ok) {
        return misplaced(*t, path, ok.error().message);
      }
      config.pools.push_back(std::move(e));
    }
    return {};
  }

  std::expected<void, Error> load_tenants(const toml::table& root, DaemonConfig& config) {
    std::optional<Error> bad;
    const toml::table* tenants = section(root, "tenants", bad);
    if (bad) return std::unexpected(*bad);
    if (tenants != nullptr) {
      if (auto bad_names = same_variable_names(*tenants, "tenants")) return fail(*bad_names);
      for (const auto& [key, node] : *tenants) {
        const std::string name(key.str());
        const std::string path = "tenants." + name;
        if (!valid_name(name)) {
          return fail(where(path, &node) + "a tenant name is 1 to 64 letters, digits, '_' or '-'");
        }
        const toml::table* t = node.as_table();
        if (t == nullptr) return fail(where(path, &node) + "must be a table");
        TenantConfig tenant;
        tenant.name = name;
        TenantFields f;
        if (auto ok = read(*t, path, tenant_fields(tenant, f)); !ok) return std::unexpected(ok.error());
        if (f.token_sha256.empty() == f.token_env.empty()) {
          return fail(where(path, &node) + "needs exactly one of token_sha256 (the token's SHA-256 "
                      "in hex) and token_env (a variable holding the token)");
        }
        if (!f.token_sha256.empty()) {
          auto digest = digest_from_hex(f.token_sha256);
          if (!digest) {
            return fail(where(path + ".token_sha256", t->get("token_sha256")) +
                        "must be 64 hex digits (sha256sum of the token)");
          }
          tenant.token_sha256 = *digest;
        } else {
          auto it = env_.find(f.token_env);
          if (it == env_.end() || it->second.size() < 16) {
            return fail(where(path + ".token_env", t->get("token_env")) + "the variable " +
                        f.token_env + " must hold a token of at least 16 characters");
          }
          tenant.token_sha256 = sha256(it->second);
        }
        for (const std::string& p : tenant.pools) {
          if (std::none_of(config.pools.begin(), config.pools.end(),
                           [&](const PoolEntry& e) { return e.pool.name == p; })) {
            return fail(where(path + ".pools", t->get("pools")) + "no pool named \"" + p + "\"");
          }
        }
        config.tenants.push_back(std::move(tenant));
      }
    }
    if (config.server.auth == AuthMode::kTokens && config.tenants.empty()) {
      return fail(source_ + ": tenants: auth = \"tokens\" needs at least one [tenants.NAME] "
                  "(or auth = \"none\" on loopback for local development)");
    }
    for (std::size_t i = 0; i < config.tenants.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        if (equal_in_constant_time(config.tenants[i].token_sha256, config.tenants[j].token_sha256)) {
          return fail(source_ + ": tenants." + config.tenants[i].name + ": has the same token as tenants." +
                      config.tenants[j].name);
        }
      }
    }
    return {};
  }

  std::string resolve(const std::string& path) const {
    if (base_dir_.empty()) return path;
    if (path.empty()) return base_dir_;
    if (fs::path(path).is_absolute()) return path;
    return (fs::path(base_dir_) / path).lexically_normal().string();
  }

  // The seed-001 names, then POOLKEEPER_<SECTION>_<KEY> and
  // POOLKEEPER_POOL_<NAME>_<KEY> / POOLKEEPER_TENANT_<NAME>_<KEY>.
  std::expected<void, Error> apply_environment(toml::table& root) {
    toml::table* pools = root["pools"].as_table();
    struct Alias {
      const char* variable;
      const char* key;
    };
    const Alias aliases[] = {
        {"SESSION_TIMEOUT_MINUTES", "client_session_ttl"},
        {"SESSION_CLEANUP_INTERVAL_MINUTES", "client_session_cleanup_interval"},
        {"SESSION_MAX_MEMORY_MB", "max_memory"},
        {"SESSION_CLEANUP_BATCH_SIZE", "client_session_cleanup_batch"},
    };
    for (const Alias& a : aliases) {
      auto it = env_.find(a.variable);
      if (it == env_.end() || pools == nullptr) continue;
      std::int64_t v = 0;
      const std::string& text = it->second;
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || end != text.data() + text.size() || v < 0 ||
          v > std::numeric_limits<std::int64_t>::max() / 1048576) {
        return fail("environment variable " + std::string(a.variable) +
                    ": must be a whole number, got \"" + text + "\"");
      }
      for (auto& [name, node] : *pools) {
        toml::table* t = node.as_table();
        if (t == nullptr) continue;
        const std::string path = "pools." + std::string(name.str()) + "." + a.key;
        if (std::string_view(a.key) == "max_memory") {
          t->insert_or_assign(a.key, v * 1048576);
        } else if (std::string_view(a.key) == "client_session_cleanup_batch") {
          t->insert_or_assign(a.key, v);
        } else {
          t->insert_or_assign(a.key, std::to_string(v) + "m");
        }
        overridden_[path] = a.variable;
      }
    }
    for (const auto& [variable, value] : env_) {
      if (!variable.starts_with("POOLKEEPER_")) continue;
      const std::string rest = variable.substr(11);
      std::string key, path;
      toml::table* target = nullptr;
      // POOLKEEPER_POOL_<NAME>_<KEY>: every split of the rest into a name in
      // the file and a known key is tried; exactly one must fit.
      auto named = [&](std::string_view prefix, const char* table_name,
                       const char* kind) -> std::optional<std::string> {
        const std::string tail = rest.substr(prefix.size());
        toml::table* group = root[table_name].as_table();
        int fits = 0;
        std::string near, near_key;  // the longest name that matched, for the message
        std::size_t near_length = 0;
        if (group != nullptr) {
          for (auto& [name, node] : *group) {
            const std::string up = upper_name(name.str()) + "_";
            if (!tail.starts_with(up) || !node.is_table()) continue;
            if (up.size() > near_length) {
              near_length = up.size();
              near = std::string(table_name) + "." + std::string(name.str());
              near_key = tail.substr(up.size());
            }
            for (const std::string& k : section_keys(kind)) {
              if (upper_name(k) != tail.substr(up.size())) continue;
              ++fits;
              target = node.as_table();
              key = k;
              path = std::string(table_name) + "." + std::string(name.str());
            }
          }
        }
        if (fits == 1) return std::nullopt;
        if (fits > 1) return "matches more than one " + std::string(kind) + " and key";
        if (!near.empty()) return near + " has no key " + near_key;
        return "names no " + std::string(kind) + " in the configuration";
      };
      std::optional<std::string> problem;
      if (rest.starts_with("POOL_")) {
        problem = named("POOL_", "pools", "pool");
      } else if (rest.starts_with("TENANT_")) {
        problem = named("TENANT_", "tenants", "tenant");
      } else if (rest.starts_with("SERVER_") || rest.starts_with("STORE_") ||
                 rest.starts_with("BUDGET_") || rest.starts_with("ALERTS_") || rest.starts_with("LOG_")) {
        std::string section_name = rest.substr(0, rest.find('_'));
        for (char& c : section_name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const std::string key_upper = rest.substr(rest.find('_') + 1);
        if (!root.contains(section_name)) root.insert(section_name, toml::table{});
        target = root[section_name].as_table();
        if (target == nullptr) return fail("environment variable " + variable + ": [" + section_name + "] is not a table");
        path = section_name;
        const auto& keys = section_keys(section_name);
        auto k = std::find_if(keys.begin(), keys.end(),
                              [&](const std::string& x) { return upper_name(x) == key_upper; });
        if (k == keys.end()) {
          problem = path + " has no key " + key_upper;
        } else {
          key = *k;
        }
      } else {
        // Not a setting: the CLI's POOLKEEPER_URL and _TOKEN, tokens named by
        // token_env, the user's own.
        continue;
      }
      if (problem) return fail("environment variable " + variable + ": " + *problem);
      if (kStringKeys.contains(key)) {
        target->insert_or_assign(key, value);  // as written: "123" or "true" is still text here
        overridden_[path + "." + key] = variable;
        continue;
      }
      const toml::table holder = env_value(value);
      holder.get("v")->visit([&](const auto& v) { target->insert_or_assign(key, v); });
      overridden_[path + "." + key] = variable;
    }
    return {};
  }

  std::string source_;
  const Environment& env_;
  std::string base_dir_;
  std::map<std::string, std::string> overridden_;  // key path -> the variable that set it
};

}  // namespace

Environment process_environment() {
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    const std::size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

std::expected<DaemonConfig, Error> parse_config(std::string_view text, std::string_view source,
                                                const Environment& env,
                                                std::string_view base_dir) {
  return Loader(std::string(source), env, std::string(base_dir)).load(text);
}

std::expected<DaemonConfig, Error> load_config(const std::string& path, const Environment& env) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig, path + ": cannot be read"));
  }
  std::stringstream ss;
  ss << f.rdbuf();
  std::error_code ec;
  const fs::path absolute = fs::absolute(path, ec);
  const std::string base = ec ? std::string() : absolute.parent_path().lexically_normal().string();
  return parse_config(ss.str(), path, env, base);
}

std::expected<Duration, std::string> parse_duration(std::string_view text) {
  const std::string bad = "\"" + std::string(text) +
                          "\" is not a duration (a number and a unit: ms, s, m, h or d, as \"30s\")";
  if (text == "0") return Duration{0};
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 12) return std::unexpected(bad);
  std::int64_t n = 0;
  std::from_chars(text.data(), text.data() + digits, n);
  const std::string_view unit = text.substr(digits);
  const std::pair<std::string_view, std::int64_t> units[] = {
      {"ms", 1'000'000}, {"s", 1'000'000'000}, {"m", 60'000'000'000}, {"h", 3'600'000'000'000},
      {"d", 86'400'000'000'000}};
  for (const auto& [name, ns] : units) {
    if (unit != name) continue;
    if (n > std::numeric_limits<std::int64_t>::max() / ns) {
      return std::unexpected("\"" + std::string(text) + "\" is too long a duration");
    }
    return Duration(n * ns);
  }
  return std::unexpected(bad);
}

std::expected<std::int64_t, std::string> parse_size(std::string_view text) {
  const std::string bad = "\"" + std::string(text) +
                          "\" is not a size (bytes, or a number and a unit: KiB, MiB, GiB, KB, MB, GB)";
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 15) return std::unexpected(bad);
  std::int64_t n = 0;
  std::from_chars(text.data(), text.data() + digits, n);
  std::string_view unit = text.substr(digits);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  const std::pair<std::string_view, std::int64_t> units[] = {
      {"", 1},          {"B", 1},         {"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
      {"KB", 1000},     {"MB", 1000000},  {"GB", 1000000000}};
  for (const auto& [name, factor] : units) {
    if (unit != name) continue;
    if (n > std::numeric_limits<std::int64_t>::max() / factor) {
      return std::unexpected("\"" + std::string(text) + "\" is too large a size");
    }
    return n * factor;
  }
  return std::unexpected(bad);
}

bool is_loopback(std::string_view host) {
  if (host == "localhost") return true;
  std::string h(host);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  in6_addr a6{};
  if (::inet_pton(AF_INET6, h.c_str(), &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  in_addr a4{};
  if (::inet_pton(AF_INET, h.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return false;  // another name: it may resolve anywhere
}

}  // namespace poolkeeper::server
