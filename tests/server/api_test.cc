// The routing layer without sockets: Api::handle() called directly, on a
// pool of real test workers.
#include "server/api.h"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json.hpp>

#include <memory>
#include <string>

#include "drivers/process/process_driver.h"
#include "server/sha256.h"
#include "testing/process_util.h"
#include "testing/wait.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using testing::IoThread;
using testing::wait_until;

const std::string kToken = "api-test-token-0123456789";
const std::string kAdminToken = "api-admin-token-0123456789";

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_.server.auth = AuthMode::kTokens;
    config_.tenants.push_back({.name = "t", .token_sha256 = sha256(kToken), .admin = false, .pools = {}});
    config_.tenants.push_back(
        {.name = "root", .token_sha256 = sha256(kAdminToken), .admin = true, .pools = {}});
    PoolEntry e;
    e.pool.name = "w";
    e.pool.min = 1;
    e.pool.max = 1;
    e.process.command = {POOLKEEPER_TEST_WORKER};
    e.process.stop_grace = 200ms;
    e.process.kill_after = 200ms;
    config_.pools.push_back(e);
    auto driver = drivers::ProcessDriver::create(e.process, "w", &runtime::null_log());
    ASSERT_TRUE(driver.has_value());
    auto runner = runtime::PoolRunner::create(io_.executor(), e.pool, std::move(*driver),
                                              {.log = &runtime::null_log()});
    ASSERT_TRUE(runner.has_value());
    runner_ = *runner;
    runner_->start();
    api_ = std::make_unique<Api>(config_, std::vector<std::shared_ptr<runtime::PoolRunner>>{runner_});
    ASSERT_TRUE(wait_until([&] { return call("GET", "/health").status == 200; }));
  }

  void TearDown() override {
    auto done = runner_->shutdown(5s, asio::use_future);
    ASSERT_EQ(done.wait_for(60s), std::future_status::ready);
  }

  Response call(std::string method, std::string target, std::string body = {},
                const std::string& token = kToken) {
    Request r{.method = std::move(method),
              .target = std::move(target),
              .authorization = token.empty() ? std::string() : "Bearer " + token,
              .body = std::move(body)};
    auto f = asio::co_spawn(io_.executor(), api_->handle(std::move(r)), asio::use_future);
    return f.get();
  }

  // A number from GET /v1/pools/w (top level or sessions_by_state).
  std::int64_t pool_number(const std::string& key) {
    Response r = call("GET", "/v1/pools/w");
    if (r.status != 200) return -1;
    const json::object o = json::parse(r.body).as_object();
    if (const json::value* v = o.if_contains(key)) return v->to_number<std::int64_t>();
    return o.at("sessions_by_state").at(key).to_number<std::int64_t>();
  }

  static std::string code_of(const Response& r) {
    json::error_code ec;
    json::value v = json::parse(r.body, ec);
    if (ec || !v.is_object() || !v.as_object().contains("error")) return {};
    return std::string(v.at("error").at("code").as_string());
  }

  IoThread io_;
  DaemonConfig config_;
  std::shared_ptr<runtime::PoolRunner> runner_;
  std::unique_ptr<Api> api_;
};

// Verifies the error shape and status of routing failures.
TEST_F(ApiTest, RoutingFailuresUseTheErrorShape) {
  Response r = call("GET", "/v2/pools");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(code_of(r), "not_found");
  r = call("PUT", "/v1/pools/w");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(code_of(r), "method_not_allowed");
  r = call("GET", "/v1/pools/%zz");
  EXPECT_EQ(r.status, 400);
  r = call("GET", "/v1/pools/%77");  // "w", percent-encoded
  EXPECT_EQ(r.status, 200);
}

// Verifies authentication: no token, a malformed header, a wrong token, and
// the scheme's case-insensitivity.
TEST_F(ApiTest, Authenticates) {
  EXPECT_EQ(call("GET", "/v1/pools", {}, "").status, 401);
  EXPECT_EQ(call("GET", "/v1/pools", {}, "wrong-token").status, 401);
  Request basic{.method = "GET", .target = "/v1/pools", .authorization = "Basic abc", .body = {}};
  auto f = asio::co_spawn(io_.executor(), api_->handle(std::move(basic)), asio::use_future);
  EXPECT_EQ(f.get().status, 401);
  Request lower{.method = "GET", .target = "/v1/pools", .authorization = "bearer " + kToken, .body = {}};
  auto g = asio::co_spawn(io_.executor(), api_->handle(std::move(lower)), asio::use_future);
  Response ok = g.get();
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.tenant, "t");
  EXPECT_EQ(call("POST", "/v1/pools/w/pause", {}).status, 403);
  EXPECT_EQ(call("POST", "/v1/pools/w/pause", {}, kAdminToken).status, 200);
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", {}).status, 503);  // paused
  EXPECT_EQ(call("POST", "/v1/pools/w/resume", {}, kAdminToken).status, 200);
}

// Verifies body decoding: types, ranges, depth, and the worker's answer.
TEST_F(ApiTest, DecodesBodies) {
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", "{\"timeout_ms\": 1.5}").status, 400);
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", "{\"timeout_ms\": 99999999999999999999}").status, 400);
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", "\"text\"").status, 400);
  std::string deep(100, '[');
  deep += std::string(100, ']');
  Response r = call("POST", "/v1/pools/w/execute", "{\"params\": " + deep + "}");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("deeper"), std::string::npos);
  r = call("POST", "/v1/pools/w/execute", R"({"params": {"value": {"a": [1, 2]}}})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body), json::parse(R"({"ok": true, "result": {"a": [1, 2]}})"));
  // The shutdown flag refuses new work.
  api_->set_shutting_down();
  r = call("POST", "/v1/pools/w/execute", R"({"params": 1})");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(code_of(r), "shutdown");
  EXPECT_GT(r.retry_after_seconds, 0);
}


// Verifies the per-tenant rate limit: a tenant over its burst (refilling far
// slower than the test runs) gets 429 rate_limited with Retry-After, another
// tenant with its own limit does not, nor does /health without a token.
TEST_F(ApiTest, RateLimitsEachTenant) {
  DaemonConfig limited = config_;
  limited.server.rate_limit = 0.001;  // one request every 1000 s
  limited.server.rate_burst = 3;
  limited.tenants[1].rate_limit = 0;  // root: unlimited
  api_ = std::make_unique<Api>(limited, std::vector<std::shared_ptr<runtime::PoolRunner>>{runner_});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(call("GET", "/v1/pools").status, 200) << i;
  Response r = call("GET", "/v1/pools");
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_EQ(code_of(r), "rate_limited");
  EXPECT_GE(r.retry_after_seconds, 900);
  EXPECT_EQ(r.tenant, "t");
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", "{}").status, 429) << "every route counts";
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(call("GET", "/v1/pools", {}, kAdminToken).status, 200) << i;
    EXPECT_EQ(call("GET", "/health", {}, "").status, 200) << i;
  }
}
// Verifies that a lease granted to a waiting acquire whose client goes away
// at that moment goes back to the pool instead of being held for nobody: on
// the io thread, in one step, a release hands the session to the waiter and
// the client's cancellation follows, so the grant crosses the cancellation.
TEST_F(ApiTest, GrantCrossingTheClientsDepartureGoesBackToThePool) {
  Response held = call("POST", "/v1/pools/w/leases", "{}");
  ASSERT_EQ(held.status, 201) << held.body;
  const std::string id(json::parse(held.body).at("lease").as_string());
  const LeaseId lease = std::stoull(id.substr(id.rfind('.') + 1));

  asio::cancellation_signal gone;
  Request r{.method = "POST",
            .target = "/v1/pools/w/leases",
            .authorization = "Bearer " + kToken,
            .body = R"({"timeout_ms": 60000})"};
  auto waiting = asio::co_spawn(io_.executor(), api_->handle(std::move(r)),
                                asio::bind_cancellation_slot(gone.slot(), asio::use_future));
  ASSERT_TRUE(wait_until([&] { return pool_number("queue_length") == 1; }));
  asio::post(io_.io(), [&] {
    runner_->release(lease, std::nullopt, core::ReleaseOutcome::kOk, asio::detached);
    gone.emit(asio::cancellation_type::terminal);
  });
  ASSERT_EQ(waiting.wait_for(60s), std::future_status::ready);
  Response answer = waiting.get();
  EXPECT_EQ(answer.status, 503) << answer.body;
  EXPECT_EQ(code_of(answer), "cancelled");
  // Nothing is left leased: the next acquire gets the session.
  ASSERT_TRUE(wait_until([&] { return pool_number("leased") == 0; }));
  EXPECT_EQ(call("POST", "/v1/pools/w/leases", "{}").status, 201);
}

// Verifies the HTTP status of every error code (docs/api.md).
TEST(ApiStatusTest, MapsEveryErrorCode) {
  EXPECT_EQ(http_status(ErrorCode::kAcquireTimeout), 503);
  EXPECT_EQ(http_status(ErrorCode::kQueueFull), 429);
  EXPECT_EQ(http_status(ErrorCode::kUnknownLease), 404);
  EXPECT_EQ(http_status(ErrorCode::kLeaseAlreadyReleased), 409);
  EXPECT_EQ(http_status(ErrorCode::kSessionLost), 502);
  EXPECT_EQ(http_status(ErrorCode::kExecuteTimeout), 504);
  EXPECT_EQ(http_status(ErrorCode::kInternal), 500);
  // Another owner's lease reads as unknown.
  Response r = error_response(Error(ErrorCode::kNotLeaseOwner, "owned by bob"));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body.find("bob"), std::string::npos);
  EXPECT_NE(r.body.find("unknown_lease"), std::string::npos);
}

}  // namespace
}  // namespace poolkeeper::server
