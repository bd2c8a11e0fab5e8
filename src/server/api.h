// Api: the HTTP API's routing layer, from a request to a response, with no
// sockets (docs/api.md).
//
// It authenticates the caller (a tenant's bearer token, or nobody with
// auth = "none"), checks the route's scope, decodes and bounds the JSON body,
// calls the pools' runners and answers with JSON, or with the one error shape:
//
//   {"error": {"code": "acquire_timeout", "message": "...", "retry_after_ms": 250}}
//
// A tenant sees only its own leases, reservations and client sessions:
// another tenant's lease is 404, as if it did not exist. Operator routes
// (scale, pause, resume, drain, autoscale, emergency stop) need an admin
// tenant. handle() is a coroutine; cancelling it (the client went away) takes
// a waiting acquire out of its pool's queue.
//
// Each tenant's requests are rate limited (server.rate_limit, rate_burst;
// 429 rate_limited with Retry-After above them); /health without a token is not.
//
// Thread-safety: handle() may run concurrently from any executor; the
// runners are thread-safe and the Api's own state is immutable after
// construction, except for the rate limiter, which locks per tenant.
//
//   Api api(config, runners);
//   Request request{.method = "GET", .target = "/v1/pools", .authorization = "Bearer ..."};
//   auto handling = api.handle(std::move(request));  // made first: g++ 12 and temporaries
//   Response r = co_await std::move(handling);
#pragma once

#include <boost/asio/awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "monitor/event_bus.h"
#include "runtime/pool_runner.h"
#include "server/config.h"
#include "server/rate_limiter.h"

namespace poolkeeper::server {

struct Request {
  std::string method{};         // "GET", "POST", ...
  std::string target{};         // path and query: "/v1/pools/python?x=1"
  std::string authorization{};  // the Authorization header, if any
  std::string body{};
  std::string last_event_id{};  // the Last-Event-ID header (an event stream resuming)
  bool websocket = false;       // the request asks to upgrade to WebSocket
};

struct Response {
  int status = 200;
  std::string body{};  // JSON, or Prometheus text for /metrics
  std::string content_type = "application/json";
  int retry_after_seconds = 0;  // a Retry-After header when positive
  std::string tenant{};         // who asked, for the request log (never sent)
  // Run by the server when the answer could not be written to the client:
  // undoes what the request did for it (a granted lease goes back).
  std::function<void()> undelivered{};
  // Set for /v1/events and /v1/ws: the server streams this subscription's
  // events (SSE, or WebSocket when the request upgrades) instead of a body.
  std::shared_ptr<monitor::Subscription> events{};
};

class Alerting;
class Ledger;

class Api {
 public:
  Api(const DaemonConfig& config, std::vector<std::shared_ptr<runtime::PoolRunner>> runners);

  boost::asio::awaitable<Response> handle(Request request);

  // Set while the daemon shuts down: new work is refused with 503.
  void set_shutting_down() { shutting_down_.store(true); }

  std::size_t pool_count() const { return pools_.size(); }

  // The books (cost, budgets, the store): tenants' budgets are enforced, a
  // charged pool's acquires and releases answer once their records are on
  // disk, and GET /v1/cost reads them. Without one (tests), none of that.
  void set_ledger(Ledger* ledger) { ledger_ = ledger; }
  // The live events behind /v1/events and /v1/ws (404 without).
  void set_event_bus(monitor::EventBus* bus) { bus_ = bus; }
  // The alert rules behind /v1/alerts, and the schedulers' liveness that
  // /health reports (without: 404, and every pool is asked).
  void set_alerting(Alerting* alerting) { alerting_ = alerting; }

 private:
  struct Pool {
    std::shared_ptr<runtime::PoolRunner> runner;
    bool charged = false;  // the pool has prices: its leases wait for the store
  };
  struct Caller {
    std::string tenant;  // empty with auth = "none"
    bool admin = false;
    const std::vector<std::string>* pools = nullptr;  // allowed pools; null or empty: all
  };

  boost::asio::awaitable<Response> route(const Request& request, const Caller& caller);
  std::expected<Caller, Response> authenticate(const Request& request) const;
  Pool* find_pool(std::string_view name);
  bool may_use(const Caller& caller, std::string_view pool) const;

  DaemonConfig config_;
  RateLimiter limiter_;
  std::map<std::string, Pool, std::less<>> pools_;
  std::atomic<bool> shutting_down_{false};
  Ledger* ledger_ = nullptr;
  monitor::EventBus* bus_ = nullptr;
  Alerting* alerting_ = nullptr;
  TimePoint started_{};
};

// The HTTP status for an error code (docs/api.md).
int http_status(ErrorCode code);
// The error shape as a response.
Response error_response(const Error& error);
Response error_response(int status, std::string_view code, std::string_view message);

}  // namespace poolkeeper::server
