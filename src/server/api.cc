#include "server/api.h"

#include <boost/asio/detached.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <sstream>

#include "runtime/text.h"
#include "monitor/alerts.h"
#include "server/alerting.h"
#include "server/ledger.h"
#include "server/request.h"
#include "server/sha256.h"
#include "server/views.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using runtime::PoolSnapshot;

std::int64_t ms(Duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

std::string json_text(const json::value& v) { return json::serialize(v); }

Response json_response(int status, const json::value& v) {
  return Response{.status = status, .body = json_text(v) + "\n"};
}

// A request its decoding refused (server/request.h).
Response bad_request(const DecodeError& error) {
  return error_response(error.status, "invalid_argument", error.message);
}

// A monotonic time point as wall-clock text (null when never).
json::value wall_json(TimePoint t) {
  if (t == TimePoint::max()) return nullptr;
  const TimePoint now = real_clock().now();
  return json::value(runtime::utc_text(real_clock().wall_now() + (t - now)));
}

std::string lease_text(std::string_view pool, LeaseId lease) {
  return runtime::pool_scoped_id(pool, lease);
}

json::object session_json(const runtime::SessionView& s) {
  json::object o;
  o["id"] = s.info.id;
  o["state"] = std::string(to_string(s.info.state));
  o["uses"] = s.info.uses;
  o["health"] = s.info.health;
  o["age_ms"] = ms(s.info.age);
  o["idle_ms"] = ms(s.info.idle);
  o["reserved"] = s.info.reserved;
  o["rss_bytes"] = s.usage.rss_bytes;
  o["cpu_percent"] = s.usage.cpu_percent < 0 ? json::value(nullptr)
                                             : json::value(std::round(s.usage.cpu_percent * 10) / 10);
  o["describe"] = s.describe;
  return o;
}

// The worker's answer (compact JSON from the driver) in the response body,
// as it is: no second parse.
Response reply_response(const runtime::ExecuteReply& r) {
  std::string body = r.ok ? R"({"ok":true,"result":)" : R"({"ok":false,"error":)";
  body += r.json.empty() ? std::string("null") : r.json;
  body += "}\n";
  return Response{.status = 200, .body = std::move(body)};
}

}  // namespace

int http_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kInvalidConfig:
      return 400;
    case ErrorCode::kUnknownLease:
    case ErrorCode::kNotLeaseOwner:
    case ErrorCode::kUnknownWaiter:
    case ErrorCode::kUnknownReservation:
    case ErrorCode::kNotReservationOwner:
    case ErrorCode::kUnknownClientSession:
      return 404;
    case ErrorCode::kLeaseAlreadyReleased:
    case ErrorCode::kLeaseReclaimed:
      return 409;
    case ErrorCode::kDocumentTooLarge:
      return 413;
    case ErrorCode::kQueueFull:
    case ErrorCode::kTooManyClientSessions:
      return 429;
    case ErrorCode::kInternal:
      return 500;
    case ErrorCode::kNotSupported:
      return 501;
    case ErrorCode::kSessionStartFailed:
    case ErrorCode::kSessionLost:
    case ErrorCode::kProtocolError:
      return 502;
    case ErrorCode::kExecuteTimeout:
      return 504;
    case ErrorCode::kAcquireTimeout:
    case ErrorCode::kDeadlineUnreachable:
    case ErrorCode::kPoolPaused:
    case ErrorCode::kPoolDraining:
    case ErrorCode::kEmergencyStop:
    case ErrorCode::kShutdown:
    case ErrorCode::kCancelled:
    case ErrorCode::kNoCapacity:
    case ErrorCode::kStoreUnavailable:
    case ErrorCode::kBudgetExceeded:
      return 503;
  }
  return 500;
}

namespace {

// The error shape; 429 and 503 say when to try again.
Response error_with_retry(int status, std::string_view code, std::string_view message,
                          std::int64_t retry_after_ms) {
  json::object e{{"code", code}, {"message", message}};
  Response r;
  r.status = status;
  if (status == 429 || status == 503) {
    const std::int64_t after = retry_after_ms > 0 ? retry_after_ms : 1000;
    e["retry_after_ms"] = after;
    r.retry_after_seconds = static_cast<int>((after + 999) / 1000);
  }
  r.body = json_text(json::object{{"error", std::move(e)}}) + "\n";
  return r;
}

}  // namespace

Response error_response(int status, std::string_view code, std::string_view message) {
  return error_with_retry(status, code, message, 0);
}

Response error_response(const Error& error) {
  // Another tenant's lease or reservation does not exist for this caller.
  if (error.code == ErrorCode::kNotLeaseOwner) {
    return error_response(404, to_string(ErrorCode::kUnknownLease), "no such lease");
  }
  if (error.code == ErrorCode::kNotReservationOwner) {
    return error_response(404, to_string(ErrorCode::kUnknownReservation), "no such reservation");
  }
  return error_with_retry(http_status(error.code), to_string(error.code), error.message,
                          error.retry_after.count());
}

namespace {

// Each tenant's bucket: its own rate and burst, else the server's. With
// auth = "none" every caller is the same nobody ("").
std::map<std::string, RateLimiter::Limit, std::less<>> rate_limits(const DaemonConfig& config) {
  std::map<std::string, RateLimiter::Limit, std::less<>> limits;
  const ServerConfig& s = config.server;
  if (s.auth == AuthMode::kNone) {
    limits[""] = {.rate = s.rate_limit, .burst = s.rate_burst};
    return limits;
  }
  for (const TenantConfig& t : config.tenants) {
    limits[t.name] = {.rate = t.rate_limit >= 0 ? t.rate_limit : s.rate_limit,
                      .burst = t.rate_burst > 0 ? t.rate_burst : s.rate_burst};
  }
  return limits;
}

}  // namespace

namespace {

// Waits until what the ledger wrote since `since` is on disk (ledger->sync).
asio::awaitable<std::expected<void, Error>> synced(Ledger* ledger, std::uint64_t since) {
  if (ledger == nullptr) co_return std::expected<void, Error>{};
  const auto executor = co_await asio::this_coro::executor;
  auto waiting = asio::async_initiate<const asio::use_awaitable_t<>&, void(std::expected<void, Error>)>(
      [ledger, since, executor](auto handler) {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        ledger->sync(since, [h, executor](std::expected<void, Error> r) {
          asio::post(executor, [h, r = std::move(r)]() mutable { (*h)(std::move(r)); });
        });
      },
      asio::use_awaitable);
  co_return co_await std::move(waiting);
}

}  // namespace

Api::Api(const DaemonConfig& config, std::vector<std::shared_ptr<runtime::PoolRunner>> runners)
    : config_(config), limiter_(rate_limits(config)), started_(real_clock().now()) {
  for (auto& r : runners) {
    Pool p;
    p.runner = std::move(r);
    const std::string name = p.runner->name();
    for (const PoolEntry& e : config.pools) {
      if (e.pool.name == name) p.charged = !e.cost.free();
    }
    pools_.emplace(name, std::move(p));
  }
}

Api::Pool* Api::find_pool(std::string_view name) {
  auto it = pools_.find(name);
  return it == pools_.end() ? nullptr : &it->second;
}

bool Api::may_use(const Caller& caller, std::string_view pool) const {
  if (caller.pools == nullptr || caller.pools->empty()) return true;
  return std::find(caller.pools->begin(), caller.pools->end(), pool) != caller.pools->end();
}

std::expected<Api::Caller, Response> Api::authenticate(const Request& request) const {
  if (config_.server.auth == AuthMode::kNone) return Caller{.tenant = {}, .admin = true, .pools = nullptr};
  auto unauthorized = [](std::string_view why) {
    Response r = error_response(401, "unauthorized", why);
    return std::unexpected(std::move(r));
  };
  std::string_view h = request.authorization;
  if (h.empty()) return unauthorized("a bearer token is needed (Authorization: Bearer TOKEN)");
  constexpr std::string_view kBearer = "Bearer ";
  if (h.size() <= kBearer.size() || !std::equal(kBearer.begin(), kBearer.end(), h.begin(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
      })) {
    return unauthorized("the Authorization header must be \"Bearer TOKEN\"");
  }
  const Sha256Digest digest = sha256(h.substr(kBearer.size()));
  const TenantConfig* match = nullptr;
  for (const TenantConfig& t : config_.tenants) {
    // Every tenant is compared, so the time taken does not say which matched.
    if (equal_in_constant_time(digest, t.token_sha256)) match = &t;
  }
  if (match == nullptr) return unauthorized("the token is not valid");
  return Caller{.tenant = match->name, .admin = match->admin, .pools = &match->pools};
}

asio::awaitable<Response> Api::handle(Request request) {
  try {
    auto caller = authenticate(request);
    const bool health = request.target == "/health" || request.target.starts_with("/health?");
    if (!caller && !health) co_return caller.error();
    const Caller who = caller ? *caller : Caller{};
    if (caller) {
      if (const Duration wait = limiter_.admit(who.tenant, real_clock().now()); wait.count() > 0) {
        Response r = error_with_retry(429, "rate_limited",
                                      "too many requests: over this tenant's rate limit",
                                      std::max<std::int64_t>(1, ms(wait)));
        r.tenant = who.tenant;
        co_return r;
      }
    }
    auto routing = route(request, who);
    Response r = co_await std::move(routing);
    r.tenant = who.tenant;
    co_return r;
  } catch (...) {
    // What was thrown is never sent: it may name internals.
    co_return error_response(500, "internal", "unexpected error");
  }
}

asio::awaitable<Response> Api::route(const Request& req, const Caller& caller) {
  auto target = parse_target(req.target);
  if (!target) co_return bad_request(target.error());
  const std::vector<std::string>& p = target->path;
  const std::string& m = req.method;
  auto not_found = [&] { return error_response(404, "not_found", "no route " + m + " " + req.target); };
  auto method_not_allowed = [&] {
    return error_response(405, "method_not_allowed", "method " + m + " is not allowed on " + req.target);
  };
  auto admin_only = [&]() -> std::optional<Response> {
    if (caller.admin) return std::nullopt;
    return error_response(403, "forbidden", "this route needs an admin tenant");
  };
  auto refuse_when_stopping = [&]() -> std::optional<Response> {
    if (!shutting_down_.load()) return std::nullopt;
    return error_response(Error(ErrorCode::kShutdown, "the daemon is shutting down"));
  };
  // The pool a route names, if the caller may use it.
  auto pool_named = [&](const std::string& name) -> std::expected<Pool*, Response> {
    Pool* pool = find_pool(name);
    if (pool == nullptr || !may_use(caller, name)) {
      return std::unexpected(error_response(404, "unknown_pool", "no pool named \"" + name + "\""));
    }
    return pool;
  };
  const int depth = config_.server.max_json_depth;
  const std::optional<std::string> owner =
      config_.server.auth == AuthMode::kNone ? std::nullopt : std::optional<std::string>(caller.tenant);
  // Client sessions and reservations live in a per-tenant namespace.
  auto scoped = [&](std::string_view id) {
    return caller.tenant.empty() ? std::string(id) : caller.tenant + "/" + std::string(id);
  };
  auto unscoped = [&](std::string_view id) {
    return caller.tenant.empty() ? std::string(id) : std::string(id.substr(caller.tenant.size() + 1));
  };

  // GET /health
  if (p.size() == 1 && p[0] == "health") {
    if (m != "GET") co_return method_not_allowed();
    json::array pools;
    bool degraded = shutting_down_.load();
    // A pool whose scheduler has stopped answering is not asked (the answer
    // would never come): it is reported stalled, and so is the daemon.
    const std::vector<std::string> stalled =
        alerting_ != nullptr ? alerting_->stalled(real_clock().now()) : std::vector<std::string>{};
    auto is_stalled = [&](std::string_view name) {
      return std::find(stalled.begin(), stalled.end(), name) != stalled.end();
    };
    degraded = degraded || !stalled.empty();
    for (auto& [name, pool] : pools_) {
      if (is_stalled(name)) {
        pools.push_back(json::object{{"name", name}, {"status", "stalled"}});
        continue;
      }
      auto snapshotting = pool.runner->snapshot(asio::use_awaitable);
      PoolSnapshot s = co_await std::move(snapshotting);
      const bool low = s.stats.degraded;  // the core's rule
      degraded = degraded || low;
      pools.push_back(json::object{
          {"name", name},
          {"status", low ? "degraded" : "healthy"},
          {"sessions", s.stats.sessions},
          {"idle", s.stats.sessions_by_state[static_cast<int>(SessionState::kIdle)]},
          {"leased", s.stats.sessions_by_state[static_cast<int>(SessionState::kLeased)]},
          {"starting", s.stats.sessions_by_state[static_cast<int>(SessionState::kStarting)]},
          {"min", s.stats.min},
          {"queue_length", s.stats.queue_length},
          {"client_sessions_active", s.stats.client_sessions_active}});
    }
    json::object o{{"status", degraded ? "degraded" : "healthy"},
                   {"uptime_s", ms(real_clock().now() - started_) / 1000},
                   {"pools", std::move(pools)}};
    if (alerting_ != nullptr) o["monitor"] = is_stalled("alerting") ? "stalled" : "running";
    co_return json_response(degraded ? 503 : 200, o);
  }

  // GET /metrics
  if (p.size() == 1 && p[0] == "metrics") {
    if (m != "GET") co_return method_not_allowed();
    std::ostringstream out;
    std::vector<std::pair<std::string, PoolSnapshot>> snaps;
    for (auto& [name, pool] : pools_) {
      if (!may_use(caller, name)) continue;
      auto snapshotting = pool.runner->snapshot(asio::use_awaitable);
      PoolSnapshot s = co_await std::move(snapshotting);
      snaps.emplace_back(name, std::move(s));
    }
    auto family = [&](const char* name, const char* type, const char* help) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
    };
    family("poolkeeper_sessions", "gauge", "Sessions by state.");
    for (auto& [name, s] : snaps) {
      for (int i = 0; i < kSessionStateCount; ++i) {
        out << "poolkeeper_sessions{pool=\"" << name << "\",state=\""
            << to_string(static_cast<SessionState>(i)) << "\"} " << s.stats.sessions_by_state[i] << "\n";
      }
    }
    auto gauge_or_counter = [&](const char* metric, const char* type, const char* help, auto value) {
      family(metric, type, help);
      for (auto& [name, s] : snaps) out << metric << "{pool=\"" << name << "\"} " << value(s.stats) << "\n";
    };
    gauge_or_counter("poolkeeper_queue_length", "gauge", "Acquires waiting.",
                     [](const PoolStats& st) { return st.queue_length; });
    gauge_or_counter("poolkeeper_pool_target_sessions", "gauge", "The size the pool maintains.",
                     [](const PoolStats& st) { return st.target; });
    gauge_or_counter("poolkeeper_pool_paused", "gauge", "1 when the pool is paused.",
                     [](const PoolStats& st) { return st.paused ? 1 : 0; });
    gauge_or_counter("poolkeeper_leases_granted_total", "counter", "Leases granted.",
                     [](const PoolStats& st) { return st.acquisitions; });
    family("poolkeeper_releases_total", "counter", "Leases released, by outcome.");
    for (auto& [name, s] : snaps) {
      out << "poolkeeper_releases_total{pool=\"" << name << "\",outcome=\"ok\"} "
          << s.stats.releases - s.stats.broken_releases << "\n";
      out << "poolkeeper_releases_total{pool=\"" << name << "\",outcome=\"broken\"} "
          << s.stats.broken_releases << "\n";
    }
    gauge_or_counter("poolkeeper_acquire_timeouts_total", "counter", "Acquires whose deadline passed.",
                     [](const PoolStats& st) { return st.timeouts; });
    gauge_or_counter("poolkeeper_acquire_rejections_total", "counter",
                     "Acquires refused (queue full, paused, early rejection).",
                     [](const PoolStats& st) { return st.rejections; });
    gauge_or_counter("poolkeeper_leases_reclaimed_total", "counter", "Leases taken back after their timeout.",
                     [](const PoolStats& st) { return st.reclaimed; });
    gauge_or_counter("poolkeeper_sessions_created_total", "counter", "Sessions started.",
                     [](const PoolStats& st) { return st.sessions_created; });
    gauge_or_counter("poolkeeper_session_start_failures_total", "counter", "Session starts that failed.",
                     [](const PoolStats& st) { return st.start_failures; });
    gauge_or_counter("poolkeeper_sessions_closed_total", "counter", "Sessions stopped.",
                     [](const PoolStats& st) { return st.sessions_closed; });
    gauge_or_counter("poolkeeper_health_check_failures_total", "counter", "Health checks failed.",
                     [](const PoolStats& st) { return st.check_failures; });
    gauge_or_counter("poolkeeper_client_sessions", "gauge", "Client sessions alive.",
                     [](const PoolStats& st) { return st.client_sessions_active; });
    gauge_or_counter("poolkeeper_client_sessions_expired_total", "counter", "Client sessions expired.",
                     [](const PoolStats& st) { return st.client_sessions_expired; });
    family("poolkeeper_acquire_wait_seconds", "summary", "Time from acquire to grant.");
    for (auto& [name, s] : snaps) {
      const WaitSummary& w = s.stats.wait;
      const std::pair<const char*, Duration> qs[] = {{"0.5", w.p50}, {"0.95", w.p95}, {"0.99", w.p99}};
      for (const auto& [q, d] : qs) {
        out << "poolkeeper_acquire_wait_seconds{pool=\"" << name << "\",quantile=\"" << q << "\"} "
            << std::chrono::duration<double>(d).count() << "\n";
      }
      out << "poolkeeper_acquire_wait_seconds_count{pool=\"" << name << "\"} " << w.count << "\n";
    }
    family("poolkeeper_session_memory_bytes", "gauge", "Resident memory of a session's processes.");
    for (auto& [name, s] : snaps) {
      for (const auto& v : s.sessions) {
        if (v.usage.rss_bytes >= 0) {
          out << "poolkeeper_session_memory_bytes{pool=\"" << name << "\",session=\"" << v.info.id
              << "\"} " << v.usage.rss_bytes << "\n";
        }
      }
    }
    family("poolkeeper_session_cpu_percent", "gauge", "CPU use of a session's processes (100 = one core).");
    for (auto& [name, s] : snaps) {
      for (const auto& v : s.sessions) {
        if (v.usage.cpu_percent >= 0) {
          out << "poolkeeper_session_cpu_percent{pool=\"" << name << "\",session=\"" << v.info.id
              << "\"} " << v.usage.cpu_percent << "\n";
        }
      }
    }
    if (bus_ != nullptr) {
      family("poolkeeper_event_subscribers", "gauge", "Clients on /v1/events and /v1/ws.");
      out << "poolkeeper_event_subscribers " << bus_->subscribers() << "\n";
      family("poolkeeper_event_subscribers_dropped_total", "counter",
             "Event clients dropped for falling too far behind.");
      out << "poolkeeper_event_subscribers_dropped_total " << bus_->dropped() << "\n";
    }
    co_return Response{.status = 200, .body = out.str(), .content_type = "text/plain; version=0.0.4"};
  }

  if (p.size() < 2 || p[0] != "v1") co_return not_found();

  // GET /v1/alerts
  if (p.size() == 2 && p[1] == "alerts") {
    if (m != "GET") co_return method_not_allowed();
    if (alerting_ == nullptr) co_return not_found();
    json::object report = alerting_->report();
    // A caller sees the alerts it would hear on the event stream (the
    // pools it may use, its own budget's; the global budget's if admin).
    if (!caller.admin) {
      monitor::EventFilter listener{.pools = {}, .types = {}, .admin = false, .tenant = caller.tenant};
      if (caller.pools != nullptr) listener.pools = *caller.pools;
      auto hidden = [&](const json::value& v) {
        const monitor::AlertScope scope = monitor::scope_of(std::string(v.at("subject").as_string()));
        return !listener.matches(scope.pool, "alert_firing", scope.audience);
      };
      for (const char* list : {"active", "history"}) {
        json::array& a = report[list].as_array();
        json::array kept;
        for (json::value& v : a) {
          if (!hidden(v)) kept.push_back(std::move(v));
        }
        a = std::move(kept);
      }
    }
    co_return json_response(200, report);
  }

  // GET /v1/events (Server-Sent Events) and /v1/ws (WebSocket)
  if (p.size() == 2 && (p[1] == "events" || p[1] == "ws")) {
    if (m != "GET") co_return method_not_allowed();
    if (bus_ == nullptr) co_return not_found();
    const bool ws = p[1] == "ws";
    if (ws && !req.websocket) {
      co_return error_response(426, "upgrade_required", "/v1/ws speaks WebSocket: send an Upgrade request");
    }
    auto query = [&](const char* key) -> std::string_view {
      auto it = target->query.find(key);
      return it == target->query.end() ? std::string_view() : std::string_view(it->second);
    };
    auto filter = monitor::parse_filter(query("pool"), query("type"));
    if (!filter) co_return error_response(400, "invalid_argument", filter.error());
    for (const std::string& name : filter->pools) {
      if (auto pool = pool_named(name); !pool) co_return pool.error();
    }
    // A tenant held to some pools hears only theirs (and the daemon's own);
    // a tenant's budget alerts go to that tenant (and admins) only.
    if (filter->pools.empty() && caller.pools != nullptr && !caller.pools->empty()) {
      filter->pools = *caller.pools;
    }
    filter->admin = caller.admin;
    filter->tenant = caller.tenant;
    std::optional<std::uint64_t> last;
    const std::string_view last_text = !req.last_event_id.empty() ? std::string_view(req.last_event_id)
                                                                   : query("last_event_id");
    if (!last_text.empty()) {
      std::uint64_t v = 0;
      const auto [end, ec] = std::from_chars(last_text.data(), last_text.data() + last_text.size(), v);
      if (ec != std::errc() || end != last_text.data() + last_text.size()) {
        co_return error_response(400, "invalid_argument",
                                 "Last-Event-ID must be an event id (a whole number), got \"" +
                                     runtime::excerpt(last_text, 40) + "\"");
      }
      last = v;
    }
    if (auto stopping = refuse_when_stopping()) co_return *stopping;
    Response r{.status = ws ? 101 : 200, .content_type = "text/event-stream"};
    r.events = bus_->subscribe(std::move(*filter), last);
    co_return r;
  }

  // /v1/pools...
  if (p[1] == "pools") {
    if (p.size() == 2) {
      if (m != "GET") co_return method_not_allowed();
      json::array list;
      for (auto& [name, pool] : pools_) {
        if (!may_use(caller, name)) continue;
        auto snapshotting = pool.runner->snapshot(asio::use_awaitable);
        PoolSnapshot s = co_await std::move(snapshotting);
        json::object o = stats_json(s.stats);
        o["name"] = name;
        list.push_back(std::move(o));
      }
      co_return json_response(200, json::object{{"pools", std::move(list)}});
    }
    auto pool = pool_named(p[2]);
    if (!pool) co_return pool.error();
    Pool& pl = **pool;
    runtime::PoolRunner& runner = *pl.runner;
    const std::string& name = p[2];

    if (p.size() == 3) {
      if (m != "GET") co_return method_not_allowed();
      auto snapshotting = runner.snapshot(asio::use_awaitable);
      PoolSnapshot s = co_await std::move(snapshotting);
      json::object o = stats_json(s.stats);
      o["name"] = name;
      o["driver"] = runner.driver().describe();
      co_return json_response(200, o);
    }
    if (p.size() != 4) co_return not_found();
    const std::string& action = p[3];

    if (action == "sessions") {
      if (m != "GET") co_return method_not_allowed();
      auto snapshotting = runner.snapshot(asio::use_awaitable);
      PoolSnapshot s = co_await std::move(snapshotting);
      json::array list;
      for (const auto& v : s.sessions) list.push_back(session_json(v));
      co_return json_response(200, json::object{{"pool", name}, {"sessions", std::move(list)}});
    }

    // GET /v1/pools/{pool}/queue: the waiting acquires, in serving order.
    if (action == "queue") {
      if (m != "GET") co_return method_not_allowed();
      std::function<std::vector<core::QueuedView>(core::PoolCore&, TimePoint, core::Output&)> view =
          [](core::PoolCore& core, TimePoint now, core::Output&) { return core.queue_view(now); };
      auto viewing = runner.with_core(std::move(view), asio::use_awaitable);
      const std::vector<core::QueuedView> queued = co_await std::move(viewing);
      json::array list;
      for (const core::QueuedView& q : queued) {
        json::object o{{"position", q.position},
                       {"priority", q.priority},
                       {"waited_ms", ms(q.waited)},
                       {"deadline_in_ms", q.deadline_in == Duration::max() ? json::value(nullptr)
                                                                           : json::value(ms(q.deadline_in))},
                       {"estimated_wait_ms", ms(q.estimated_wait)}};
        // Another tenant's acquires are shown, not whose they are.
        if (!owner || q.owner == *owner) o["owner"] = owner ? std::string_view(caller.tenant) : std::string_view(q.owner);
        list.push_back(std::move(o));
      }
      co_return json_response(200, json::object{{"pool", name}, {"length", queued.size()}, {"waiters", std::move(list)}});
    }

    if (m != "POST") co_return method_not_allowed();
    auto body = parse_body(req.body, depth);
    if (!body) co_return bad_request(body.error());

    if (action == "leases") {
      if (auto r = refuse_when_stopping()) co_return *r;
      auto decoded = decode_acquire(*body);
      if (!decoded) co_return bad_request(decoded.error());
      runtime::AcquireArgs args{
          .priority = decoded->priority,
          .client_session =
              decoded->client_session.empty() ? std::string() : scoped(decoded->client_session),
          .owner = owner ? *owner : decoded->owner,
          .lease_timeout = decoded->lease_timeout};
      if (decoded->timeout) args.timeout = *decoded->timeout;  // else the runtime's default
      if (ledger_ != nullptr && !caller.tenant.empty()) {
        if (auto why = ledger_->tenant_refusal(caller.tenant)) {
          co_return error_response(Error(ErrorCode::kBudgetExceeded, *why));
        }
      }
      const std::uint64_t mark = ledger_ != nullptr && pl.charged ? ledger_->mark() : 0;
      auto acquiring = runner.acquire(std::move(args), asio::use_awaitable);
      auto grant = co_await std::move(acquiring);
      if (!grant) co_return error_response(grant.error());
      // A lease that never reaches its client would be held until its lease
      // timeout (or for ever): it goes back to the pool instead. That is the
      // case when the client went away as the grant crossed its cancellation,
      // and when the answer cannot be written.
      auto give_back = [held_by = pl.runner, lease = grant->lease] {
        held_by->release(lease, std::nullopt, core::ReleaseOutcome::kOk, asio::detached);
      };
      if (pl.charged && ledger_ != nullptr) {
        // The use is charged: it is on disk before the lease is handed out.
        auto syncing = synced(ledger_, mark);
        auto durable = co_await std::move(syncing);
        if (!durable) {
          give_back();
          co_return error_response(durable.error());
        }
      }
      const asio::cancellation_state cancellation = co_await asio::this_coro::cancellation_state;
      if (cancellation.cancelled() != asio::cancellation_type::none) {
        give_back();
        co_return error_response(Error(ErrorCode::kCancelled, "the caller went away"));
      }
      json::object o{{"lease", lease_text(name, grant->lease)},
                     {"pool", name},
                     {"session", grant->session},
                     {"expires_at", wall_json(grant->expires_at)},
                     {"connect", grant->connect},
                     {"queue_position", grant->queue_position},
                     {"estimated_wait_ms", ms(grant->estimated_wait)}};
      Response granted = json_response(201, o);
      granted.undelivered = std::move(give_back);
      co_return granted;
    }

    if (action == "execute") {
      if (auto r = refuse_when_stopping()) co_return *r;
      auto decoded = decode_one_shot_execute(*body);
      if (!decoded) co_return bad_request(decoded.error());
      runtime::AcquireArgs args{
          .priority = decoded->priority,
          .client_session =
              decoded->client_session.empty() ? std::string() : scoped(decoded->client_session),
          .owner = owner ? *owner : std::string()};
      if (decoded->timeout) args.timeout = *decoded->timeout;  // else the runtime's default
      runtime::ExecuteRequest request{.params = std::move(decoded->params),
                                      .timeout = decoded->execute_timeout};
      if (ledger_ != nullptr && !caller.tenant.empty()) {
        if (auto why = ledger_->tenant_refusal(caller.tenant)) {
          co_return error_response(Error(ErrorCode::kBudgetExceeded, *why));
        }
      }
      const std::uint64_t mark = ledger_ != nullptr && pl.charged ? ledger_->mark() : 0;
      auto running = runner.run(std::move(args), std::move(request), asio::use_awaitable);
      auto reply = co_await std::move(running);
      if (!reply) co_return error_response(reply.error());
      if (pl.charged && ledger_ != nullptr) {
        auto syncing = synced(ledger_, mark);
        auto durable = co_await std::move(syncing);
        if (!durable) co_return error_response(durable.error());
      }
      co_return reply_response(*reply);
    }

    if (action == "reservations") {
      if (auto r = refuse_when_stopping()) co_return *r;
      auto decoded = decode_reservation(*body);
      if (!decoded) co_return bad_request(decoded.error());
      const std::string who = owner ? *owner : decoded->owner;
      const TimePoint expires = real_clock().now() + decoded->ttl;
      auto reserving = runner.with_core<std::expected<core::ReservationInfo, Error>>(
          [who, expires](core::PoolCore& c, TimePoint now, core::Output& out) {
            return c.reserve(who, expires, now, out);
          },
          asio::use_awaitable);
      auto info = co_await std::move(reserving);
      if (!info) co_return error_response(info.error());
      co_return json_response(201, json::object{{"reservation", lease_text(name, info->id)},
                                                {"pool", name},
                                                {"session", info->session},
                                                {"owner", owner ? std::string() : info->owner},
                                                {"expires_at", wall_json(info->expires_at)}});
    }

    // Operator controls.
    if (auto r = admin_only()) co_return *r;
    std::function<std::expected<void, Error>(core::PoolCore&, TimePoint, core::Output&)> control;
    if (action == "scale") {
      auto decoded = decode_scale(*body);
      if (!decoded) co_return bad_request(decoded.error());
      const int t = decoded->target;
      control = [t](core::PoolCore& c, TimePoint now, core::Output& out) { return c.scale(t, now, out); };
    } else if (action == "pause") {
      control = [](core::PoolCore& c, TimePoint now, core::Output& out) -> std::expected<void, Error> {
        c.pause(now, out);
        return {};
      };
    } else if (action == "resume") {
      control = [](core::PoolCore& c, TimePoint now, core::Output& out) -> std::expected<void, Error> {
        c.resume(now, out);
        return {};
      };
    } else if (action == "drain") {
      control = [](core::PoolCore& c, TimePoint now, core::Output& out) -> std::expected<void, Error> {
        c.drain(now, out);
        return {};
      };
    } else if (action == "autoscale") {
      auto decoded = decode_autoscale(*body);
      if (!decoded) co_return bad_request(decoded.error());
      control = [on = decoded->enabled](core::PoolCore& c, TimePoint now,
                                        core::Output& out) -> std::expected<void, Error> {
        c.set_autoscale(on, now, out);
        return {};
      };
    } else {
      co_return not_found();
    }
    auto controlling = runner.with_core<std::expected<void, Error>>(std::move(control), asio::use_awaitable);
    auto done = co_await std::move(controlling);
    if (!done) co_return error_response(done.error());
    auto snapshotting = runner.snapshot(asio::use_awaitable);
    PoolSnapshot s = co_await std::move(snapshotting);
    json::object o = stats_json(s.stats);
    o["name"] = name;
    co_return json_response(200, o);
  }

  // /v1/leases/{lease}[/execute]
  if (p[1] == "leases" && (p.size() == 3 || (p.size() == 4 && p[3] == "execute"))) {
    auto id = split_id(p[2]);
    Pool* pool = id ? find_pool(id->first) : nullptr;
    if (pool == nullptr || !may_use(caller, id->first)) {
      co_return error_response(Error(ErrorCode::kUnknownLease, "no such lease"));
    }
    auto body = parse_body(req.body, depth);
    if (!body) co_return bad_request(body.error());
    if (p.size() == 3) {
      if (m != "DELETE") co_return method_not_allowed();
      auto decoded = decode_release(*body);
      if (!decoded) co_return bad_request(decoded.error());
      const std::uint64_t mark = ledger_ != nullptr && pool->charged ? ledger_->mark() : 0;
      auto releasing = pool->runner->release(
          id->second, owner,
          decoded->broken ? core::ReleaseOutcome::kBroken : core::ReleaseOutcome::kOk,
          asio::use_awaitable);
      auto released = co_await std::move(releasing);
      if (!released) co_return error_response(released.error());
      if (pool->charged && ledger_ != nullptr) {
        // The lease's charges are on disk before the release is acknowledged.
        auto syncing = synced(ledger_, mark);
        auto durable = co_await std::move(syncing);
        if (!durable) {
          Error e = durable.error();
          e.message = "the lease was released, but its record is not on disk: " + e.message;
          co_return error_response(e);
        }
      }
      co_return json_response(200, json::object{{"lease", p[2]}, {"released", true}});
    }
    if (m != "POST") co_return method_not_allowed();
    auto decoded = decode_lease_execute(*body);
    if (!decoded) co_return bad_request(decoded.error());
    runtime::ExecuteRequest request{.params = std::move(decoded->params),
                                    .timeout = decoded->timeout};
    auto executing = pool->runner->execute(id->second, owner, std::move(request), asio::use_awaitable);
    auto reply = co_await std::move(executing);
    if (!reply) co_return error_response(reply.error());
    co_return reply_response(*reply);
  }

  // GET /v1/cost[?days=N&pool=P&tenant=T]: an admin sees all; a tenant its own.
  if (p[1] == "cost" && p.size() == 2) {
    if (m != "GET") co_return method_not_allowed();
    if (ledger_ == nullptr) co_return error_response(404, "not_found", "no cost ledger in this daemon");
    CostQuery q;
    if (auto d = target->query.find("days"); d != target->query.end()) {
      int days = 0;
      const auto [end, ec] = std::from_chars(d->second.data(), d->second.data() + d->second.size(), days);
      if (ec != std::errc() || end != d->second.data() + d->second.size() || days < 1 || days > 62) {
        co_return error_response(400, "invalid_argument", "days: must be an integer in 1..62");
      }
      q.days = days;
    }
    if (auto it = target->query.find("pool"); it != target->query.end()) {
      auto pool = pool_named(it->second);
      if (!pool) co_return pool.error();
      q.pool = it->second;
    }
    if (auto it = target->query.find("tenant"); it != target->query.end()) q.tenant = it->second;
    if (!caller.admin && !caller.tenant.empty()) q.tenant = caller.tenant;
    co_return json_response(200, ledger_->report(q));
  }

  // /v1/reservations[/{id}]
  if (p[1] == "reservations" && (p.size() == 2 || p.size() == 3)) {
    if (p.size() == 2) {
      if (m != "GET") co_return method_not_allowed();
      json::array list;
      for (auto& [name, pool] : pools_) {
        if (!may_use(caller, name)) continue;
        auto listing = pool.runner->with_core<std::vector<core::ReservationInfo>>(
            [](core::PoolCore& c, TimePoint, core::Output&) { return c.reservations(); },
            asio::use_awaitable);
        std::vector<core::ReservationInfo> rs = co_await std::move(listing);
        for (const auto& r : rs) {
          if (owner && r.owner != *owner) continue;
          list.push_back(json::object{{"reservation", lease_text(name, r.id)},
                                      {"pool", name},
                                      {"session", r.session},
                                      {"owner", owner ? std::string() : r.owner},
                                      {"expires_at", wall_json(r.expires_at)}});
        }
      }
      co_return json_response(200, json::object{{"reservations", std::move(list)}});
    }
    if (m != "DELETE") co_return method_not_allowed();
    auto id = split_id(p[2]);
    Pool* pool = id ? find_pool(id->first) : nullptr;
    if (pool == nullptr || !may_use(caller, id->first)) {
      co_return error_response(Error(ErrorCode::kUnknownReservation, "no such reservation"));
    }
    auto body = parse_body(req.body, depth);
    if (!body) co_return bad_request(body.error());
    auto decoded = decode_cancel_reservation(*body);
    if (!decoded) co_return bad_request(decoded.error());
    const std::string who = owner ? *owner : decoded->owner;
    const core::ReservationId rid = id->second;
    auto cancelling = pool->runner->with_core<std::expected<void, Error>>(
        [rid, who](core::PoolCore& c, TimePoint now, core::Output& out) {
          return c.cancel_reservation(rid, who, now, out);
        },
        asio::use_awaitable);
    auto cancelled = co_await std::move(cancelling);
    if (!cancelled) co_return error_response(cancelled.error());
    co_return json_response(200, json::object{{"reservation", p[2]}, {"cancelled", true}});
  }

  // /v1/client-sessions/{id}?pool=NAME
  if (p[1] == "client-sessions" && p.size() == 3) {
    if (auto valid = check_client_session_id(p[2]); !valid) co_return bad_request(valid.error());
    std::optional<std::string_view> only_pool;
    if (pools_.size() == 1) only_pool = pools_.begin()->first;
    auto chosen = client_session_pool(*target, only_pool);
    if (!chosen) co_return bad_request(chosen.error());
    const std::string& pool_name = *chosen;
    auto pool = pool_named(pool_name);
    if (!pool) co_return pool.error();
    const std::string key = scoped(p[2]);
    auto info_json = [&](const core::ClientSessionInfo& info) {
      json::error_code ec;
      json::value doc = info.document.empty() ? json::value(nullptr) : json::parse(info.document, ec);
      if (ec) doc = json::value(info.document);
      return json::object{{"id", unscoped(info.id)},
                          {"pool", pool_name},
                          {"document", std::move(doc)},
                          {"last_session", info.last_session},
                          {"active_leases", info.active_leases},
                          {"expires_at", wall_json(info.expires_at)}};
    };
    if (m == "GET") {
      auto getting = (*pool)->runner->with_core<std::expected<core::ClientSessionInfo, Error>>(
          [key](core::PoolCore& c, TimePoint now, core::Output&) { return c.get_client_session(key, now); },
          asio::use_awaitable);
      auto info = co_await std::move(getting);
      if (!info) co_return error_response(info.error());
      co_return json_response(200, info_json(*info));
    }
    if (m == "PUT") {
      if (auto r = refuse_when_stopping()) co_return *r;
      auto body = parse_body(req.body, depth);
      if (!body) co_return bad_request(body.error());
      auto decoded = decode_client_session(*body);
      if (!decoded) co_return bad_request(decoded.error());
      std::string text = std::move(decoded->document);
      auto putting = (*pool)->runner->with_core<std::expected<core::ClientSessionInfo, Error>>(
          [key, text = std::move(text)](core::PoolCore& c, TimePoint now, core::Output&) {
            return c.put_client_session(key, text, now);
          },
          asio::use_awaitable);
      auto info = co_await std::move(putting);
      if (!info) co_return error_response(info.error());
      co_return json_response(200, info_json(*info));
    }
    if (m == "DELETE") {
      auto deleting = (*pool)->runner->with_core<std::expected<void, Error>>(
          [key](core::PoolCore& c, TimePoint, core::Output&) { return c.delete_client_session(key); },
          asio::use_awaitable);
      auto done = co_await std::move(deleting);
      if (!done) co_return error_response(done.error());
      co_return json_response(200, json::object{{"id", p[2]}, {"deleted", true}});
    }
    co_return method_not_allowed();
  }

  // /v1/emergency-stop, /v1/emergency-resume
  if (p.size() == 2 && (p[1] == "emergency-stop" || p[1] == "emergency-resume")) {
    if (m != "POST") co_return method_not_allowed();
    if (auto r = admin_only()) co_return *r;
    const bool stop = p[1] == "emergency-stop";
    json::array names;
    for (auto& [name, pool] : pools_) {
      auto controlling = pool.runner->with_core<bool>(
          [stop](core::PoolCore& c, TimePoint now, core::Output& out) {
            if (stop) {
              c.emergency_stop(now, out);
            } else {
              c.emergency_resume(now, out);
            }
            return true;
          },
          asio::use_awaitable);
      (void)co_await std::move(controlling);
      names.push_back(json::value(name));
    }
    co_return json_response(200, json::object{{"emergency_stopped", stop}, {"pools", std::move(names)}});
  }

  co_return not_found();
}

}  // namespace poolkeeper::server
