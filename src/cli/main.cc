// poolkeeper: the daemon and its command line.
//
//   poolkeeper serve --config examples/quickstart.toml
//   poolkeeper check-config examples/quickstart.toml
//   poolkeeper status                      # pools and sessions as a table
//   poolkeeper exec python '{"op": "get"}' --client-session alice
//
// Client commands talk to the daemon at --url (or $POOLKEEPER_URL, default
// http://127.0.0.1:8470) with the token in $POOLKEEPER_TOKEN (never a flag:
// flags show up in `ps`). --json prints the API's JSON instead of text.
// Exit status: 0 done, 1 the daemon refused or could not be reached, 2 bad
// usage or configuration.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/http_client.h"
#include "runtime/log.h"
#include "runtime/text.h"
#include "server/config.h"
#include "server/daemon.h"

namespace {

namespace json = boost::json;
using namespace poolkeeper;

struct Globals {
  std::string url;
  bool json = false;
  std::unique_ptr<cli::HttpClient> client;  // one kept-alive connection per run
};

std::string env_or(const char* name, std::string fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : std::move(fallback);
}

std::string quote_path(std::string_view s) { return runtime::percent_encode(s); }

// Calls the API; prints the error and returns nullopt when it fails.
std::optional<json::value> call(const Globals& g, const std::string& method, const std::string& target,
                                const std::string& body = {}) {
  auto r = g.client->call(method, target, body);
  if (!r) {
    std::cerr << "poolkeeper: " << r.error() << "\n";
    return std::nullopt;
  }
  json::error_code ec;
  json::value v = json::parse(r->body, ec);
  if (r->status >= 300) {
    if (!ec && v.is_object() && v.as_object().contains("error")) {
      const auto& e = v.at("error");
      std::cerr << "poolkeeper: " << json::value_to<std::string>(e.at("code")) << ": "
                << json::value_to<std::string>(e.at("message"));
      if (e.as_object().contains("retry_after_ms")) {
        std::cerr << " (retry after " << e.at("retry_after_ms").as_int64() << " ms)";
      }
      std::cerr << "\n";
    } else {
      std::cerr << "poolkeeper: HTTP " << r->status << "\n";
    }
    if (r->status == 503 && !ec && v.is_object() && v.as_object().contains("status")) return v;  // /health
    return std::nullopt;
  }
  if (ec) {
    std::cerr << "poolkeeper: the daemon answered something that is not JSON\n";
    return std::nullopt;
  }
  return v;
}

std::int64_t num(const json::value& v, std::string_view key) {
  const json::value* x = v.as_object().if_contains(key);
  if (x == nullptr) return 0;
  if (x->is_int64()) return x->get_int64();
  if (x->is_uint64()) return static_cast<std::int64_t>(x->get_uint64());
  if (x->is_double()) return static_cast<std::int64_t>(x->get_double());
  return 0;
}

std::string text(const json::value& v, std::string_view key) {
  const json::value* x = v.as_object().if_contains(key);
  return x != nullptr && x->is_string() ? std::string(x->get_string()) : std::string();
}

std::string human_ms(std::int64_t ms) {
  if (ms < 1000) return std::to_string(ms) + " ms";
  if (ms < 120000) return std::to_string(ms / 1000) + " s";
  if (ms < 7200000) return std::to_string(ms / 60000) + " m";
  return std::to_string(ms / 3600000) + " h";
}

std::string human_bytes(std::int64_t b) {
  if (b < 0) return "-";
  if (b < (1 << 20)) return std::to_string(b >> 10) + " KiB";
  return std::to_string(b >> 20) + " MiB";
}

// Columns padded to their widest cell.
void print_table(std::ostream& out, const std::vector<std::vector<std::string>>& rows, int indent = 0) {
  std::vector<std::size_t> width;
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  }
  for (const auto& r : rows) {
    std::string line(static_cast<std::size_t>(indent), ' ');
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    out << line << "\n";
  }
}

// The status table: every pool, then each pool's sessions.
bool status(const Globals& g, const std::string& only, std::ostream& out) {
  auto pools = call(g, "GET", "/v1/pools");
  if (!pools) return false;
  if (g.json) {
    json::object o{{"pools", pools->at("pools")}};
    json::array sessions;
    for (const auto& p : pools->at("pools").as_array()) {
      const std::string name = text(p, "name");
      if (!only.empty() && name != only) continue;
      auto s = call(g, "GET", "/v1/pools/" + quote_path(name) + "/sessions");
      if (!s) return false;
      sessions.push_back(*s);
    }
    o["sessions"] = std::move(sessions);
    out << json::serialize(o) << "\n";
    return true;
  }
  std::vector<std::vector<std::string>> rows = {
      {"POOL", "SESSIONS", "TARGET", "IDLE", "LEASED", "STARTING", "QUEUE", "LEASES", "WAIT P99", "REUSE", "STATE"}};
  for (const auto& p : pools->at("pools").as_array()) {
    const std::string name = text(p, "name");
    if (!only.empty() && name != only) continue;
    const auto& by = p.at("sessions_by_state");
    std::string state = "running";
    if (p.at("emergency_stopped").as_bool()) state = "emergency-stopped";
    else if (p.at("draining").as_bool()) state = "draining";
    else if (p.at("paused").as_bool()) state = "paused";
    std::ostringstream reuse;
    reuse << std::fixed << std::setprecision(2) << p.at("reuse_rate").to_number<double>();
    // The warm size, and "auto" while the autoscaler moves it.
    const json::value* autoscale = p.as_object().if_contains("autoscale");
    const std::string target =
        std::to_string(num(p, "target")) + (autoscale != nullptr && autoscale->is_bool() && autoscale->get_bool() ? " auto" : "");
    rows.push_back({name, std::to_string(num(p, "sessions")), target, std::to_string(num(by, "idle")),
                    std::to_string(num(by, "leased")), std::to_string(num(by, "starting")),
                    std::to_string(num(p, "queue_length")), std::to_string(num(p, "acquisitions")),
                    human_ms(num(p.at("wait_ms"), "p99")), reuse.str(), state});
  }
  if (rows.size() == 1 && !only.empty()) {
    std::cerr << "poolkeeper: no pool named \"" << only << "\"\n";
    return false;
  }
  print_table(out, rows);
  for (std::size_t i = 1; i < rows.size(); ++i) {
    auto s = call(g, "GET", "/v1/pools/" + quote_path(rows[i][0]) + "/sessions");
    if (!s) return false;
    std::vector<std::vector<std::string>> srows = {
        {"SESSION", "STATE", "USES", "HEALTH", "AGE", "IDLE", "RSS", "CPU%", "PROCESS"}};
    for (const auto& v : s->at("sessions").as_array()) {
      const json::value& cpu = v.at("cpu_percent");
      std::ostringstream c;
      if (cpu.is_number()) {
        c << std::fixed << std::setprecision(1) << cpu.to_number<double>();
      } else {
        c << "-";
      }
      srows.push_back({std::to_string(num(v, "id")), text(v, "state"), std::to_string(num(v, "uses")),
                       std::to_string(num(v, "health")), human_ms(num(v, "age_ms")),
                       text(v, "state") == "idle" ? human_ms(num(v, "idle_ms")) : "-",
                       human_bytes(num(v, "rss_bytes")), c.str(), text(v, "describe")});
    }
    out << "\n" << rows[i][0] << ":\n";
    print_table(out, srows, 2);
  }
  return true;
}

int check_config(const std::string& path) {
  auto config = server::load_config(path, server::process_environment());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  std::cout << path << ": ok (" << config->pools.size() << " pool"
            << (config->pools.size() == 1 ? "" : "s") << ", " << config->tenants.size() << " tenant"
            << (config->tenants.size() == 1 ? "" : "s") << ", listen " << config->server.host << ":"
            << config->server.port
            << (config->server.auth == server::AuthMode::kNone ? ", no authentication" : "") << ")\n";
  return 0;
}

int serve(const std::string& path) {
  auto config = server::load_config(path, server::process_environment());
  if (!config) {
    std::cerr << "poolkeeper: " << config.error().message << "\n";
    return 2;
  }
  return server::run_daemon(*config, runtime::stderr_log());
}

// Milliseconds from a duration flag ("30s"); exits 2 when malformed.
std::int64_t flag_ms(const std::string& flag, const std::string& value) {
  auto d = server::parse_duration(value);
  if (!d) {
    std::cerr << "poolkeeper: --" << flag << ": " << d.error() << "\n";
    std::exit(2);
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(*d).count();
}

// Micro-dollars as dollars: "$12.345678" (a whole dollar amount keeps two decimals).
std::string money(std::int64_t micros) {
  const bool negative = micros < 0;
  const std::uint64_t m = negative ? static_cast<std::uint64_t>(-(micros + 1)) + 1 : static_cast<std::uint64_t>(micros);
  std::string frac = std::to_string(m % 1'000'000);
  frac = std::string(6 - frac.size(), '0') + frac;
  while (frac.size() > 2 && frac.back() == '0') frac.pop_back();
  return std::string(negative ? "-$" : "$") + std::to_string(m / 1'000'000) + "." + frac;
}

// The cost report (GET /v1/cost) as text.
void print_cost(const json::value& v, std::ostream& out) {
  out << "today " << text(v, "today") << ": " << money(num(v, "total_micros")) << " spent, "
      << money(num(v.at("projection"), "end_of_day_micros")) << " projected by midnight (burning "
      << money(num(v, "burn_rate_micros_per_hour")) << "/h)\n";
  for (const char* part : {"by_pool", "by_tenant", "by_kind"}) {
    const json::object& o = v.at(part).as_object();
    if (o.empty()) continue;
    out << "  " << std::string(part).substr(3) << ":";
    for (const auto& [k, m] : o) out << " " << std::string(k) << " " << money(m.to_number<std::int64_t>());
    out << "\n";
  }
  out << "\nlast " << v.at("days").as_array().size() << " days (trend "
      << money(num(v, "trend_micros_per_day")) << "/day):\n";
  std::vector<std::vector<std::string>> days;
  for (const json::value& d : v.at("days").as_array()) {
    days.push_back({text(d, "day"), money(num(d, "total_micros"))});
  }
  print_table(out, days, 2);
  const json::array& budgets = v.at("budgets").as_array();
  if (!budgets.empty()) {
    out << "\n";
    std::vector<std::vector<std::string>> rows{{"BUDGET", "TODAY", "DAILY", "MONTH", "MONTHLY", "LEVEL"}};
    for (const json::value& b : budgets) {
      auto limit = [&](std::string_view key) {
        const std::int64_t l = num(b, key);
        return l > 0 ? money(l) : std::string("-");
      };
      rows.push_back({text(b, "budget"), money(num(b, "daily_spent_micros")), limit("daily_limit_micros"),
                      money(num(b, "monthly_spent_micros")), limit("monthly_limit_micros"), text(b, "level")});
    }
    print_table(out, rows);
  }
  out << "\n";
  std::vector<std::vector<std::string>> rows{
      {"POOL", "TODAY", "SESSIONS", "LEASES", "OK", "PER SESSION", "PER USE", "PER OK USE", "SAVED", "BUDGET"}};
  for (const json::value& p : v.at("pools").as_array()) {
    rows.push_back({text(p, "pool"), money(num(p, "spent_today_micros")),
                    std::to_string(num(p, "sessions_created")), std::to_string(num(p, "leases")),
                    std::to_string(num(p, "successful_uses")), money(num(p, "cost_per_session_micros")),
                    money(num(p, "cost_per_use_micros")), money(num(p, "cost_per_successful_use_micros")),
                    money(num(p, "saving_micros")),
                    p.at("budget_exceeded").as_bool() ? "spent" : "ok"});
  }
  print_table(out, rows);
}

// The alerts (GET /v1/alerts) as text: what is active, then what changed.
void print_alerts(const json::value& v, std::size_t last, std::ostream& out) {
  auto number = [](const json::value& x) {
    if (x.is_null()) return std::string("-");
    std::ostringstream s;
    s << x.to_number<double>();
    return s.str();
  };
  const json::array& active = v.at("active").as_array();
  if (active.empty()) {
    out << "no active alerts\n";
  } else {
    std::vector<std::vector<std::string>> rows{{"STATE", "RULE", "SUBJECT", "VALUE", "THRESHOLD", "SINCE"}};
    for (const json::value& a : active) {
      rows.push_back({text(a, "state"), text(a, "rule"), text(a, "subject"), number(a.at("value")),
                      number(a.at("threshold")), text(a, "since")});
    }
    print_table(out, rows);
  }
  const json::array& history = v.at("history").as_array();
  if (!history.empty()) {
    out << "\nrecent changes:\n";
    std::vector<std::vector<std::string>> rows{{"AT", "STATE", "MESSAGE"}};
    for (std::size_t i = 0; i < history.size() && i < last; ++i) {
      rows.push_back({text(history[i], "at"), text(history[i], "state"), text(history[i], "message")});
    }
    print_table(out, rows, 2);
  }
  const json::value& w = v.at("webhooks");
  if (num(w, "urls") > 0) {
    out << "\nwebhooks: " << num(w, "urls") << " url(s), " << num(w, "delivered") << " delivered, "
        << num(w, "failed") << " failed, " << num(w, "dropped") << " dropped\n";
  }
}

int print_or_fail(const Globals& g, const std::optional<json::value>& v, const std::string& plain) {
  if (!v) return 1;
  std::cout << (g.json ? json::serialize(*v) : plain) << "\n";
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"poolkeeper: pools of warm sessions, served over HTTP"};
  app.require_subcommand(1);
  Globals g;
  g.url = env_or("POOLKEEPER_URL", "http://127.0.0.1:8470");
  app.add_option("--url", g.url, "The daemon (default $POOLKEEPER_URL or http://127.0.0.1:8470)");
  app.add_flag("--json", g.json, "Print the API's JSON");
  std::string request_timeout = "30s";
  app.add_option("--request-timeout", request_timeout,
                 "Give up on the daemon after this long (\"30s\"; added to a lease's or exec's "
                 "--timeout; 0: never)");
  app.footer("Client commands send the token in $POOLKEEPER_TOKEN.");

  std::string config_path;
  auto* serve_cmd = app.add_subcommand("serve", "Run the daemon");
  serve_cmd->add_option("-c,--config", config_path, "The configuration file (TOML)")
      ->required()
      ->check(CLI::ExistingFile);
  auto* check_cmd =
      app.add_subcommand("check-config", "Check a configuration file without starting anything");
  check_cmd->add_option("file", config_path, "The configuration file (TOML)")->required();

  std::string pool, lease_id, params = "null", client_session, timeout = "30s", interval = "1s";
  int priority = 5;
  int target = 0;
  int iterations = 0;
  bool broken = false;

  auto* status_cmd = app.add_subcommand("status", "Pools and their sessions as a table");
  status_cmd->add_option("pool", pool, "Only this pool");
  auto* top_cmd = app.add_subcommand("top", "A live view of the pools (Ctrl-C to leave)");
  top_cmd->add_option("pool", pool, "Only this pool");
  top_cmd->add_option("--interval", interval, "Time between refreshes (\"1s\")");
  top_cmd->add_option("--iterations", iterations, "Stop after this many refreshes (0: never)");

  auto* lease_cmd = app.add_subcommand("lease", "Lease a session and print the lease id");
  lease_cmd->add_option("pool", pool, "The pool")->required();
  lease_cmd->add_option("--timeout", timeout, "How long to wait (\"30s\")");
  lease_cmd->add_option("--priority", priority, "0 (lowest) to 9 (critical)");
  lease_cmd->add_option("--client-session", client_session, "Prefer this client session's worker");

  auto* release_cmd = app.add_subcommand("release", "Release a lease");
  release_cmd->add_option("lease", lease_id, "The lease id")->required();
  release_cmd->add_flag("--broken", broken, "Retire the session instead of reusing it");

  auto* exec_cmd = app.add_subcommand("exec", "Run one request on a pool (or on a held --lease)");
  exec_cmd->add_option("pool", pool, "The pool (not with --lease)");
  exec_cmd->add_option("params", params, "The request's params, as JSON");
  exec_cmd->add_option("--lease", lease_id, "Run on this held lease instead");
  exec_cmd->add_option("--client-session", client_session, "The client session (affinity)");
  exec_cmd->add_option("--timeout", timeout, "How long to wait for a session (\"30s\")");
  exec_cmd->add_option("--priority", priority, "0 (lowest) to 9 (critical)");

  auto* scale_cmd = app.add_subcommand("scale", "Keep N sessions in a pool (admin)");
  scale_cmd->add_option("pool", pool, "The pool")->required();
  scale_cmd->add_option("target", target, "Sessions to keep")->required()->check(CLI::NonNegativeNumber);
  auto* pause_cmd = app.add_subcommand("pause", "Refuse new acquires on a pool (admin)");
  pause_cmd->add_option("pool", pool, "The pool")->required();
  auto* resume_cmd = app.add_subcommand("resume", "Accept acquires again (admin)");
  resume_cmd->add_option("pool", pool, "The pool")->required();
  auto* drain_cmd = app.add_subcommand("drain", "Stop a pool's sessions as their leases end (admin)");
  drain_cmd->add_option("pool", pool, "The pool")->required();
  int days = 7;
  std::string tenant;
  auto* cost_cmd = app.add_subcommand("cost", "What the pools cost: today, the last days, budgets, savings");
  cost_cmd->add_option("pool", pool, "Only this pool");
  cost_cmd->add_option("--days", days, "Days of history (1..62)")->check(CLI::Range(1, 62));
  cost_cmd->add_option("--tenant", tenant, "Only this tenant's charges (admin)");
  std::size_t last = 20;
  auto* alerts_cmd = app.add_subcommand("alerts", "Active alerts and recent changes");
  alerts_cmd->add_option("--last", last, "Changes to show (default 20)");
  auto* estop_cmd = app.add_subcommand("emergency-stop", "Refuse all but critical requests everywhere (admin)");
  auto* eresume_cmd = app.add_subcommand("emergency-resume", "End the emergency stop (admin)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is 0; any usage error is 2 (CLI11's own codes are 100 and up).
    return app.exit(e) == 0 ? 0 : 2;
  }
  g.client = std::make_unique<cli::HttpClient>(g.url, env_or("POOLKEEPER_TOKEN", ""));
  if (const std::int64_t limit = flag_ms("request-timeout", request_timeout); limit > 0) {
    // A lease or exec may wait its --timeout at the daemon before any answer.
    const bool waits = *lease_cmd || (*exec_cmd && lease_id.empty());
    g.client->set_timeout(std::chrono::milliseconds(limit + (waits ? flag_ms("timeout", timeout) : 0)));
  }

  if (*serve_cmd) return serve(config_path);
  if (*check_cmd) return check_config(config_path);
  if (*status_cmd) return status(g, pool, std::cout) ? 0 : 1;
  if (*top_cmd) {
    const std::int64_t every = flag_ms("interval", interval);
    for (int i = 0; iterations == 0 || i < iterations; ++i) {
      std::ostringstream frame;
      const bool ok = status(g, pool, frame);
      if (::isatty(1)) std::cout << "\x1b[H\x1b[2J";  // clear the screen
      std::cout << frame.str() << std::flush;
      if (!ok) return 1;
      if (iterations != 0 && i + 1 == iterations) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(every));
    }
    return 0;
  }
  if (*lease_cmd) {
    json::object body{{"timeout_ms", flag_ms("timeout", timeout)}, {"priority", priority}};
    if (!client_session.empty()) body["client_session"] = client_session;
    auto v = call(g, "POST", "/v1/pools/" + quote_path(pool) + "/leases", json::serialize(body));
    // The lease id; then, for sessions reached by URL (remote), that URL.
    std::string out = v ? text(*v, "lease") : "";
    if (v && !text(*v, "connect").empty()) out += "\n" + text(*v, "connect");
    return print_or_fail(g, v, out);
  }
  if (*release_cmd) {
    auto v = call(g, "DELETE", "/v1/leases/" + quote_path(lease_id),
                  json::serialize(json::object{{"broken", broken}}));
    return print_or_fail(g, v, "released " + lease_id);
  }
  if (*exec_cmd) {
    json::error_code ec;
    // With --lease the one positional argument is the params.
    if (!lease_id.empty() && !pool.empty() && params == "null") std::swap(pool, params);
    json::value p = json::parse(params, ec);
    if (ec) {
      std::cerr << "poolkeeper: params: not valid JSON: " << ec.message() << "\n";
      return 2;
    }
    json::object body{{"params", p}};
    std::string target_path;
    if (!lease_id.empty()) {
      target_path = "/v1/leases/" + quote_path(lease_id) + "/execute";
    } else if (!pool.empty()) {
      body["timeout_ms"] = flag_ms("timeout", timeout);
      body["priority"] = priority;
      if (!client_session.empty()) body["client_session"] = client_session;
      target_path = "/v1/pools/" + quote_path(pool) + "/execute";
    } else {
      std::cerr << "poolkeeper: exec: name a pool or --lease\n";
      return 2;
    }
    auto v = call(g, "POST", target_path, json::serialize(body));
    if (!v) return 1;
    if (g.json) {
      std::cout << json::serialize(*v) << "\n";
    } else if (v->at("ok").as_bool()) {
      std::cout << json::serialize(v->at("result")) << "\n";
    } else {
      std::cerr << "poolkeeper: the worker answered an error: " << json::serialize(v->at("error")) << "\n";
      return 1;
    }
    return 0;
  }
  if (*scale_cmd) {
    auto v = call(g, "POST", "/v1/pools/" + quote_path(pool) + "/scale",
                  json::serialize(json::object{{"target", target}}));
    return print_or_fail(g, v, "pool " + pool + " scaled to " + std::to_string(target));
  }
  for (auto [cmd, verb] : {std::pair{pause_cmd, "pause"}, {resume_cmd, "resume"}, {drain_cmd, "drain"}}) {
    if (*cmd) {
      auto v = call(g, "POST", "/v1/pools/" + quote_path(pool) + "/" + verb);
      return print_or_fail(g, v, std::string(verb) + ": pool " + pool);
    }
  }
  if (*cost_cmd) {
    std::string target_path = "/v1/cost?days=" + std::to_string(days);
    if (!pool.empty()) target_path += "&pool=" + quote_path(pool);
    if (!tenant.empty()) target_path += "&tenant=" + quote_path(tenant);
    auto v = call(g, "GET", target_path);
    if (!v) return 1;
    if (g.json) {
      std::cout << json::serialize(*v) << "\n";
    } else {
      print_cost(*v, std::cout);
    }
    return 0;
  }
  if (*alerts_cmd) {
    auto v = call(g, "GET", "/v1/alerts");
    if (!v) return 1;
    if (g.json) {
      std::cout << json::serialize(*v) << "\n";
    } else {
      print_alerts(*v, last, std::cout);
    }
    return 0;
  }
  if (*estop_cmd || *eresume_cmd) {
    const bool stop = static_cast<bool>(*estop_cmd);
    auto v = call(g, "POST", stop ? "/v1/emergency-stop" : "/v1/emergency-resume");
    return print_or_fail(g, v, stop ? "emergency stop: every pool refuses all but critical requests"
                                    : "emergency stop ended");
  }
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // The daemon answered something unexpected (a field missing or mistyped).
    std::cerr << "poolkeeper: unexpected answer: " << e.what() << "\n";
    return 1;
  }
}
