// The daemon end to end: `poolkeeper serve` as a child process on port 0 with
// real workers, spoken to over HTTP. Routes, the authorization matrix, bad
// input, a client that goes away while it waits, and SIGTERM.
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/time.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <cstdio>
#include <future>
#include <memory>
#include <string>

#include "testing/daemon_process.h"
#include "testing/daemon_tenants.h"
#include "testing/http_client.h"
#include "testing/process_util.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;


std::string config_text(const std::string& shutdown_grace = "10s") {
  return std::string(R"(
[server]
listen = "127.0.0.1:0"
auth = "tokens"
max_body = "4KiB"
max_header = "2KiB"
max_json_depth = 16
header_timeout = "1s"
shutdown_grace = ")") + shutdown_grace + R"("

[pools.echo]
command = [")" + POOLKEEPER_TEST_WORKER + R"("]
min = 1
max = 2
stop_grace = "200ms"
kill_after = "200ms"
sample_interval = "100ms"

[pools.tiny]
command = [")" + POOLKEEPER_TEST_WORKER + R"("]
min = 1
max = 1
early_reject = false
stop_grace = "200ms"
kill_after = "200ms"

[tenants.alice]
token_env = "ALICE_TOKEN"

[tenants.bob]
token_env = "BOB_TOKEN"
pools = ["echo"]

[tenants.root]
token_env = "ROOT_TOKEN"
admin = true
)";
}


class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new DaemonProcess(config_text(), token_env());
    port_ = daemon_->port();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  void TearDown() override {
    if (!HasFailure() || daemon_ == nullptr) return;
    const auto lines = daemon_->log_lines();
    std::string tail;
    for (std::size_t i = lines.size() > 40 ? lines.size() - 40 : 0; i < lines.size(); ++i) {
      tail += lines[i] + "\n";
    }
    ADD_FAILURE() << "the daemon's last log lines:\n" << tail;
  }

  void SetUp() override {
    ASSERT_NE(port_, 0) << "the daemon did not start";
    // Every test starts with both pools warm and nothing leased.
    HttpClient c(port_);
    ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  }

  static std::string lease(HttpClient& c, const std::string& pool, const std::string& token,
                           const std::string& body = "{}") {
    HttpResult r = c.request("POST", "/v1/pools/" + pool + "/leases", body, token);
    EXPECT_EQ(r.status, 201) << r.body;
    return r.status == 201 ? std::string(r.json().at("lease").as_string()) : std::string();
  }

  static int queue_length(HttpClient& c, const std::string& pool) {
    HttpResult r = c.request("GET", "/v1/pools/" + pool, {}, kRoot);
    return r.status == 200 ? static_cast<int>(r.json().at("queue_length").as_int64()) : -1;
  }

  static DaemonProcess* daemon_;
  static std::uint16_t port_;
};

DaemonProcess* DaemonTest::daemon_ = nullptr;
std::uint16_t DaemonTest::port_ = 0;

// Verifies acquire, execute on the lease, release, and a second release.
TEST_F(DaemonTest, LeaseExecuteRelease) {
  HttpClient c(port_);
  const std::string id = lease(c, "echo", kAlice, R"({"priority": 7, "timeout_ms": 5000})");
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(id.starts_with("echo."));
  HttpResult r = c.request("POST", "/v1/leases/" + id + "/execute", R"({"params": {"value": [1, "two"]}})",
                           kAlice);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json(), json::parse(R"({"ok": true, "result": [1, "two"]})"));
  r = c.request("DELETE", "/v1/leases/" + id, {}, kAlice);
  ASSERT_EQ(r.status, 200) << r.body;
  r = c.request("DELETE", "/v1/leases/" + id, {}, kAlice);
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.error_code(), "lease_already_released");
  r = c.request("POST", "/v1/leases/" + id + "/execute", R"({"params": 1})", kAlice);
  EXPECT_EQ(r.status, 409) << r.body;
}

// Verifies the one-shot execute, its worker error passed through, and the
// client session reaching the worker.
TEST_F(DaemonTest, OneShotExecute) {
  HttpClient c(port_);
  HttpResult r = c.request("POST", "/v1/pools/echo/execute",
                           R"({"client_session": "user-1", "params": {"value": "hi"}})", kBob);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json(), json::parse(R"({"ok": true, "result": "hi"})"));
  r = c.request("POST", "/v1/pools/echo/execute", R"({"params": {"op": "crash"}})", kBob);
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_EQ(r.error_code(), "session_lost");
}

// Verifies who may do what: every route with no token, a wrong token, a
// tenant that may not use the pool or does not own the lease, the owner,
// and an admin.
TEST_F(DaemonTest, AuthorizationMatrix) {
  HttpClient c(port_);
  struct Case {
    std::string method, target, body;
    int none, wrong, other, tenant, admin;  // expected statuses
  };
  const std::string alice_lease = lease(c, "echo", kAlice);
  ASSERT_FALSE(alice_lease.empty());
  // `other` is bob (may not use tiny, does not own alice's lease); `tenant` is alice.
  const std::vector<Case> cases = {
      {"GET", "/v1/pools", "", 401, 401, 200, 200, 200},
      {"GET", "/v1/pools/tiny", "", 401, 401, 404, 200, 200},
      {"GET", "/v1/pools/tiny/sessions", "", 401, 401, 404, 200, 200},
      {"POST", "/v1/leases/" + alice_lease + "/execute", R"({"params": 1})", 401, 401, 404, 200, 404},
      {"POST", "/v1/pools/echo/scale", R"({"target": 1})", 401, 401, 403, 403, 200},
      {"POST", "/v1/pools/echo/autoscale", R"({"enabled": false})", 401, 401, 403, 403, 200},
      {"POST", "/v1/pools/tiny/pause", "", 401, 401, 404, 403, 200},
      {"POST", "/v1/pools/tiny/resume", "", 401, 401, 404, 403, 200},
      {"GET", "/metrics", "", 401, 401, 200, 200, 200},
      {"GET", "/health", "", 200, 200, 200, 200, 200},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.method + " " + k.target);
    EXPECT_EQ(c.request(k.method, k.target, k.body).status, k.none);
    EXPECT_EQ(c.request(k.method, k.target, k.body, "not-a-token-at-all").status, k.wrong);
    EXPECT_EQ(c.request(k.method, k.target, k.body, kBob).status, k.other);
    EXPECT_EQ(c.request(k.method, k.target, k.body, kAlice).status, k.tenant);
    EXPECT_EQ(c.request(k.method, k.target, k.body, kRoot).status, k.admin);
  }
  // Another tenant cannot release it either; its owner can.
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + alice_lease, {}, kBob).status, 404);
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + alice_lease, {}, kAlice).status, 200);
  EXPECT_EQ(c.request("POST", "/v1/pools/echo/scale", R"({"target": 1})", kRoot).status, 200);
}

// Verifies who may do what on the routes that change state, each undone
// after it succeeds: leases, one-shot execute, reservations, client
// sessions (a tenant's own, invisible to others, admins included), drain,
// and emergency stop and resume.
TEST_F(DaemonTest, AuthorizationMatrixOnRoutesThatChangeState) {
  HttpClient c(port_);
  const std::string kWrong = "not-a-token-at-all";
  struct Caller {
    const char* name;
    std::string token;
  };
  const std::vector<Caller> everyone = {
      {"none", ""}, {"wrong", kWrong}, {"bob", kBob}, {"alice", kAlice}, {"root", kRoot}};
  auto as = [&](const Caller& who, const std::string& method, const std::string& target,
                const std::string& body, int status) {
    HttpResult r = c.request(method, target, body, who.token);
    EXPECT_EQ(r.status, status) << method << " " << target << " as " << who.name << ": " << r.body;
    return r;
  };
  const Caller& none = everyone[0];
  const Caller& wrong = everyone[1];
  const Caller& bob = everyone[2];
  const Caller& alice = everyone[3];
  const Caller& root = everyone[4];

  // Leases and one-shot execute on tiny, which bob may not use.
  const int lease_status[] = {401, 401, 404, 201, 201};
  for (std::size_t i = 0; i < everyone.size(); ++i) {
    HttpResult r = as(everyone[i], "POST", "/v1/pools/tiny/leases", R"({"timeout_ms": 5000})",
                      lease_status[i]);
    if (r.status == 201) {
      as(everyone[i], "DELETE", "/v1/leases/" + std::string(r.json().at("lease").as_string()), "",
         200);
    }
  }
  const int execute_status[] = {401, 401, 404, 200, 200};
  for (std::size_t i = 0; i < everyone.size(); ++i) {
    as(everyone[i], "POST", "/v1/pools/tiny/execute", R"({"params": 1})", execute_status[i]);
  }

  // Reservations: alice's, seen and cancelled only by alice.
  as(none, "POST", "/v1/pools/echo/reservations", R"({"ttl_ms": 60000})", 401);
  as(wrong, "POST", "/v1/pools/echo/reservations", R"({"ttl_ms": 60000})", 401);
  as(bob, "POST", "/v1/pools/tiny/reservations", R"({"ttl_ms": 60000})", 404);
  HttpResult made = as(alice, "POST", "/v1/pools/echo/reservations", R"({"ttl_ms": 60000})", 201);
  ASSERT_EQ(made.status, 201);
  const std::string reservation(made.json().at("reservation").as_string());
  as(none, "GET", "/v1/reservations", "", 401);
  as(wrong, "GET", "/v1/reservations", "", 401);
  for (const Caller* who : {&bob, &root}) {
    HttpResult list = as(*who, "GET", "/v1/reservations", "", 200);
    EXPECT_EQ(list.body.find(reservation), std::string::npos) << who->name << " sees alice's";
  }
  HttpResult mine = as(alice, "GET", "/v1/reservations", "", 200);
  EXPECT_NE(mine.body.find(reservation), std::string::npos);
  for (const Caller* who : {&none, &wrong}) as(*who, "DELETE", "/v1/reservations/" + reservation, "", 401);
  for (const Caller* who : {&bob, &root}) as(*who, "DELETE", "/v1/reservations/" + reservation, "", 404);
  as(alice, "DELETE", "/v1/reservations/" + reservation, "", 200);

  // Client sessions: alice's, invisible to bob and to the admin.
  const std::string cs = "/v1/client-sessions/auth-matrix?pool=echo";
  const std::string doc = R"({"document": {"step": 1}})";
  as(none, "PUT", cs, doc, 401);
  as(wrong, "PUT", cs, doc, 401);
  as(bob, "PUT", "/v1/client-sessions/auth-matrix?pool=tiny", doc, 404);
  as(alice, "PUT", cs, doc, 200);
  for (const Caller* who : {&none, &wrong}) {
    as(*who, "GET", cs, "", 401);
    as(*who, "DELETE", cs, "", 401);
  }
  for (const Caller* who : {&bob, &root}) {
    as(*who, "GET", cs, "", 404);
    as(*who, "DELETE", cs, "", 404);
  }
  HttpResult got = as(alice, "GET", cs, "", 200);
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(got.json().at("document"), json::parse(R"({"step": 1})"));
  as(alice, "DELETE", cs, "", 200);
  as(alice, "GET", cs, "", 404);

  // Drain (admin), then resume so the pool comes back.
  const int drain_status[] = {401, 401, 404, 403, 200};
  for (std::size_t i = 0; i < everyone.size(); ++i) {
    as(everyone[i], "POST", "/v1/pools/tiny/drain", "", drain_status[i]);
  }
  as(root, "POST", "/v1/pools/tiny/resume", "", 200);

  // Emergency stop and resume (admin, every pool).
  for (const char* route : {"/v1/emergency-stop", "/v1/emergency-resume"}) {
    const int status[] = {401, 401, 403, 403, 200};
    for (std::size_t i = 0; i < everyone.size(); ++i) as(everyone[i], "POST", route, "", status[i]);
  }
  EXPECT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
}

// Verifies a lease held past its lease timeout: it is reclaimed (its worker
// replaced), execute and release on it then get 409 lease_reclaimed, and the
// pool serves again.
TEST_F(DaemonTest, ReleaseAfterLeaseTimeoutIsReclaimed) {
  HttpClient c(port_);
  const std::string id = lease(c, "tiny", kAlice, R"({"lease_timeout_ms": 200})");
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = c.request("GET", "/v1/pools/tiny", {}, kRoot);
    return r.status == 200 && r.json().at("reclaimed").as_int64() >= 1 &&
           c.request("POST", "/v1/leases/" + id + "/execute", R"({"params": 1})", kAlice)
                   .error_code() == "lease_reclaimed";
  }));
  HttpResult r = c.request("DELETE", "/v1/leases/" + id, {}, kAlice);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(r.error_code(), "lease_reclaimed");
  HttpResult again = c.request("POST", "/v1/pools/tiny/execute", R"({"params": 2, "timeout_ms": 30000})", kAlice);
  EXPECT_EQ(again.status, 200) << again.body;
}

// Verifies the bad-input catalogue: each gets its status and error code and
// the daemon keeps serving.
TEST_F(DaemonTest, BadInputGetsClearErrors) {
  HttpClient c(port_);
  struct Case {
    std::string method, target, body;
    int status;
    std::string code;
  };
  std::string deep;
  for (int i = 0; i < 40; ++i) deep += "[";
  for (int i = 0; i < 40; ++i) deep += "]";
  const std::vector<Case> cases = {
      {"POST", "/v1/pools/echo/leases", "{not json", 400, "invalid_argument"},
      {"POST", "/v1/pools/echo/leases", "[1, 2]", 400, "invalid_argument"},
      {"POST", "/v1/pools/echo/leases", R"({"priority": "high"})", 400, "invalid_argument"},
      {"POST", "/v1/pools/echo/leases", R"({"priority": 12})", 400, "invalid_argument"},
      {"POST", "/v1/pools/echo/leases", R"({"timeout_ms": -1})", 400, "invalid_argument"},
      {"POST", "/v1/pools/echo/execute", R"({"params": )" + deep + "}", 400, "invalid_argument"},
      {"POST", "/v1/pools/nope/leases", "{}", 404, "unknown_pool"},
      {"DELETE", "/v1/leases/echo.12345", "", 404, "unknown_lease"},
      {"DELETE", "/v1/leases/garbage", "", 404, "unknown_lease"},
      {"DELETE", "/v1/leases/nope.1", "", 404, "unknown_lease"},
      {"GET", "/v1/nothing", "", 404, "not_found"},
      {"PATCH", "/v1/pools", "", 405, "method_not_allowed"},
      {"POST", "/v1/pools/echo/scale", R"({})", 400, "invalid_argument"},
      {"GET", "/v1/client-sessions/u1", "", 400, "invalid_argument"},  // two pools: which?
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.method + " " + k.target + " " + k.body.substr(0, 40));
    HttpResult r = c.request(k.method, k.target, k.body, kRoot);
    EXPECT_EQ(r.status, k.status) << r.body;
    EXPECT_EQ(r.error_code(), k.code) << r.body;
  }
  // A body over max_body: 413, without the daemon reading it all.
  HttpResult big = c.request("POST", "/v1/pools/echo/execute",
                             R"({"params": ")" + std::string(10000, 'x') + R"("})", kRoot);
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.error_code(), "body_too_large");
  // Headers over max_header: 431.
  HttpClient h(port_);
  HttpResult huge = h.request("GET", "/v1/pools?pad=" + std::string(4000, 'p'), {}, kRoot);
  EXPECT_EQ(huge.status, 431);
  // Still serving.
  EXPECT_EQ(c.request("GET", "/v1/pools", {}, kRoot).status, 200);
}

// Verifies that an acquire that times out gets 503 with retry_after_ms and
// a Retry-After header.
TEST_F(DaemonTest, AcquireTimeoutIs503WithRetryAfter) {
  HttpClient c(port_);
  const std::string held = lease(c, "tiny", kAlice);
  ASSERT_FALSE(held.empty());
  HttpResult r = c.request("POST", "/v1/pools/tiny/leases", R"({"timeout_ms": 100})", kAlice);
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + held, {}, kAlice).status, 200);
  ASSERT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(r.error_code(), "acquire_timeout");
  EXPECT_GT(r.json().at("error").at("retry_after_ms").as_int64(), 0);
  EXPECT_FALSE(r.headers["Retry-After"].empty());
}

// Verifies that a client that disconnects while it waits leaves the queue.
TEST_F(DaemonTest, ClientGoingAwayCancelsItsWait) {
  HttpClient c(port_);
  const std::string held = lease(c, "tiny", kAlice);
  ASSERT_FALSE(held.empty());
  {
    RawConnection waiter(port_);
    const std::string body = R"({"timeout_ms": 60000})";
    const std::string raw = "POST /v1/pools/tiny/leases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                            kAlice + "\r\nContent-Length: " + std::to_string(body.size()) +
                            "\r\n\r\n" + body;
    ASSERT_TRUE(waiter.send_all(raw));
    ASSERT_TRUE(wait_until([&] { return queue_length(c, "tiny") == 1; }));
  }  // the waiter's connection closes here
  EXPECT_TRUE(wait_until([&] { return queue_length(c, "tiny") == 0; }));
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + held, {}, kAlice).status, 200);
  // The session is free again: nobody got it behind our back.
  const std::string again = lease(c, "tiny", kAlice, R"({"timeout_ms": 5000})");
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + again, {}, kAlice).status, 200);
}

// Verifies that a client that never finishes its headers is disconnected
// after header_timeout.
TEST_F(DaemonTest, SlowHeadersAreCutOff) {
  RawConnection slow(port_);
  const int fd = slow.fd();
  timeval tv{.tv_sec = 20, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string partial = "GET /v1/pools HTTP/1.1\r\nHost: x\r\n";
  ASSERT_TRUE(slow.send_all(partial));
  char buf[256];
  const TimePoint t0 = real_now();
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  EXPECT_LE(n, 0) << "the daemon answered a request it never fully got";
  EXPECT_LT(real_now() - t0, Duration(15s)) << "not cut off";
  // A connection that never sends a byte gets the same time, not idle_timeout.
  RawConnection silent(port_);
  const int sfd = silent.fd();
  ::setsockopt(sfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const TimePoint t1 = real_now();
  EXPECT_LE(::recv(sfd, buf, sizeof buf, 0), 0);
  EXPECT_LT(real_now() - t1, Duration(15s)) << "a silent connection was kept";
}

// Verifies client sessions: a document stored, read back, isolated per
// tenant, and deleted.
TEST_F(DaemonTest, ClientSessionsBelongToTheirTenant) {
  HttpClient c(port_);
  HttpResult r = c.request("PUT", "/v1/client-sessions/conv-1?pool=echo", R"({"document": {"step": 3}})",
                           kAlice);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json().at("id"), "conv-1");
  r = c.request("GET", "/v1/client-sessions/conv-1?pool=echo", {}, kAlice);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json().at("document"), json::parse(R"({"step": 3})"));
  EXPECT_EQ(c.request("GET", "/v1/client-sessions/conv-1?pool=echo", {}, kBob).status, 404);
  EXPECT_EQ(c.request("DELETE", "/v1/client-sessions/conv-1?pool=echo", {}, kAlice).status, 200);
  EXPECT_EQ(c.request("GET", "/v1/client-sessions/conv-1?pool=echo", {}, kAlice).status, 404);
}

// Verifies reservations: made, listed for their owner only, cancelled.
TEST_F(DaemonTest, Reservations) {
  HttpClient c(port_);
  HttpResult r = c.request("POST", "/v1/pools/echo/reservations", R"({"ttl_ms": 60000})", kAlice);
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id(r.json().at("reservation").as_string());
  r = c.request("GET", "/v1/reservations", {}, kAlice);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.json().at("reservations").as_array().size(), 1u);
  r = c.request("GET", "/v1/reservations", {}, kBob);
  EXPECT_EQ(r.json().at("reservations").as_array().size(), 0u);
  EXPECT_EQ(c.request("DELETE", "/v1/reservations/" + id, {}, kBob).status, 404);
  EXPECT_EQ(c.request("DELETE", "/v1/reservations/" + id, {}, kAlice).status, 200);
}

// Verifies the health document, the pool list and the Prometheus metrics.
TEST_F(DaemonTest, HealthPoolsAndMetrics) {
  HttpClient c(port_);
  HttpResult h = c.request("GET", "/health");
  ASSERT_EQ(h.status, 200);
  EXPECT_EQ(h.json().at("status"), "healthy");
  EXPECT_EQ(h.json().at("pools").as_array().size(), 2u);
  HttpResult pools = c.request("GET", "/v1/pools", {}, kBob);
  ASSERT_EQ(pools.status, 200);
  ASSERT_EQ(pools.json().at("pools").as_array().size(), 1u);  // bob may use echo only
  EXPECT_EQ(pools.json().at("pools").at(0).at("name"), "echo");
  HttpResult sessions = c.request("GET", "/v1/pools/echo/sessions", {}, kAlice);
  ASSERT_EQ(sessions.status, 200);
  ASSERT_FALSE(sessions.json().at("sessions").as_array().empty());
  EXPECT_TRUE(sessions.json().at("sessions").at(0).as_object().contains("rss_bytes"));
  HttpResult m = c.request("GET", "/metrics", {}, kAlice);
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.headers["Content-Type"].find("text/plain"), std::string::npos);
  EXPECT_NE(m.body.find("poolkeeper_sessions{pool=\"echo\",state=\"idle\"}"), std::string::npos);
  EXPECT_NE(m.body.find("# TYPE poolkeeper_leases_granted_total counter"), std::string::npos);
}

// The CLI against the shared daemon: exit status and what it printed (both
// streams).
struct CliRun {
  int status = -1;
  std::string output;
};

CliRun run_cli(std::uint16_t port, const std::string& token, const std::string& args) {
  const std::string command = "POOLKEEPER_URL=http://127.0.0.1:" + std::to_string(port) +
                              " POOLKEEPER_TOKEN='" + token + "' " + POOLKEEPER_BINARY + " " + args +
                              " 2>&1";
  CliRun r;
  FILE* f = ::popen(command.c_str(), "r");
  if (f == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.output.append(buf, n);
  const int status = ::pclose(f);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Verifies the CLI's client commands: status as a table and as JSON, exec,
// lease and release, operator commands, and its errors.
TEST_F(DaemonTest, CliTalksToTheDaemon) {
  CliRun r = run_cli(port_, kAlice, "status");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("POOL"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("echo"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tiny:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pid "), std::string::npos) << r.output;
  r = run_cli(port_, kBob, "--json status");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(json::parse(r.output).at("pools").as_array().size(), 1u);  // bob sees echo only
  r = run_cli(port_, kAlice, "exec echo '{\"value\": 42}'");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, "42\n");
  r = run_cli(port_, kAlice, "lease tiny --timeout 5s");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string id = r.output.substr(0, r.output.find('\n'));
  EXPECT_TRUE(id.starts_with("tiny.")) << id;
  r = run_cli(port_, kAlice, "exec --lease " + id + " '{\"value\": \"on lease\"}'");
  EXPECT_EQ(r.output, "\"on lease\"\n");
  EXPECT_EQ(run_cli(port_, kAlice, "release " + id).status, 0);
  r = run_cli(port_, kAlice, "release " + id);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("lease_already_released"), std::string::npos) << r.output;
  r = run_cli(port_, kAlice, "pause tiny");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("forbidden"), std::string::npos) << r.output;
  EXPECT_EQ(run_cli(port_, kRoot, "pause tiny").status, 0);
  EXPECT_NE(run_cli(port_, kRoot, "status tiny").output.find("paused"), std::string::npos);
  EXPECT_EQ(run_cli(port_, kRoot, "resume tiny").status, 0);
  r = run_cli(port_, "wrong-token-0000000000", "status");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("unauthorized"), std::string::npos) << r.output;
  EXPECT_EQ(run_cli(port_, kAlice, "top --iterations 2 --interval 10ms").status, 0);
  EXPECT_EQ(run_cli(port_, kAlice, "exec echo 'not json'").status, 2);
  r = run_cli(port_, kRoot, "cost --days 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("last 2 days"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("POOL"), std::string::npos) << r.output;
  r = run_cli(port_, kRoot, "--json cost echo");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(json::parse(r.output).at("pools").as_array().size(), 1u);
  EXPECT_EQ(run_cli(port_, kRoot, "cost --days 0").status, 2) << "checked before asking";
  r = run_cli(1, kAlice, "status");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("cannot reach the daemon"), std::string::npos) << r.output;
}

// Verifies that the CLI gives up on a daemon that accepts the connection
// but never answers, after --request-timeout (plus a lease's --timeout).
TEST(CliTimeoutTest, SilentDaemonTimesOut) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 16), 0);  // connections complete in the backlog; nothing is read
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::uint16_t port = ntohs(a.sin_port);
  const auto started = std::chrono::steady_clock::now();
  CliRun r = run_cli(port, kAlice, "--request-timeout 300ms status");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no answer within 300 ms"), std::string::npos) << r.output;
  r = run_cli(port, kAlice, "--request-timeout 200ms lease echo --timeout 300ms");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no answer within 500 ms"), std::string::npos) << r.output;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 60s) << "it gave up";
  ::close(fd);
}

// Verifies SIGTERM: waiters are answered 503 shutdown, a lease in flight
// may still finish, every worker is stopped, and the daemon exits 0.
TEST(DaemonShutdownTest, SigtermAnswersWaitersAndExitsClean) {
  // A long grace: the pools must shut down together, not one after another
  // (a lease held on the first pool must not delay the second's waiters).
  DaemonProcess daemon(config_text("300s"), token_env());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  std::vector<pid_t> workers;
  for (const char* pool : {"echo", "tiny"}) {
    HttpResult s = c.request("GET", std::string("/v1/pools/") + pool + "/sessions", {}, kRoot);
    ASSERT_EQ(s.status, 200) << s.body;
    const json::value doc = s.json();
    for (const auto& v : doc.at("sessions").as_array()) {
      const std::string d(v.at("describe").as_string());
      if (d.starts_with("pid ")) workers.push_back(std::stoi(d.substr(4)));
    }
  }
  ASSERT_GE(workers.size(), 2u);
  HttpResult l = c.request("POST", "/v1/pools/tiny/leases", "{}", kAlice);
  ASSERT_EQ(l.status, 201);
  const std::string held(l.json().at("lease").as_string());
  HttpResult e = c.request("POST", "/v1/pools/echo/leases", "{}", kAlice);
  ASSERT_EQ(e.status, 201);
  const std::string held_echo(e.json().at("lease").as_string());
  auto waiting = std::async(std::launch::async, [port] {
    HttpClient w(port);
    return w.request("POST", "/v1/pools/tiny/leases", R"({"timeout_ms": 60000})", kAlice);
  });
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = c.request("GET", "/v1/pools/tiny", {}, kRoot);
    return r.status == 200 && r.json().at("queue_length").as_int64() == 1;
  }));
  daemon.signal(SIGTERM);
  ASSERT_EQ(waiting.wait_for(120s), std::future_status::ready) << "the waiter was not answered";
  HttpResult answered = waiting.get();
  EXPECT_EQ(answered.status, 503) << answered.body;
  EXPECT_EQ(answered.error_code(), "shutdown");
  // New work is refused; the lease in flight still works within the grace.
  HttpClient late(port);
  EXPECT_EQ(late.request("POST", "/v1/pools/echo/leases", "{}", kAlice).error_code(), "shutdown");
  HttpResult run = late.request("POST", "/v1/leases/" + held + "/execute", R"({"params": 7})", kAlice);
  EXPECT_EQ(run.status, 200) << run.body;
  HttpResult rel = late.request("DELETE", "/v1/leases/" + held, {}, kAlice);
  EXPECT_EQ(rel.status, 200) << rel.body;
  EXPECT_EQ(late.request("DELETE", "/v1/leases/" + held_echo, {}, kAlice).status, 200);
  EXPECT_EQ(daemon.wait_exit(60s), 0);
  for (pid_t p : workers) EXPECT_FALSE(process_alive(p)) << "worker " << p << " outlived the daemon";
  EXPECT_TRUE(daemon.logged("\"msg\":\"stopped\""));
}

// Verifies that a second SIGTERM during the grace exits at once (status 1)
// and that the workers still die with the daemon.
TEST(DaemonShutdownTest, SecondSigtermExitsAtOnce) {
  DaemonProcess daemon(config_text("300s"), token_env());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  HttpResult l = c.request("POST", "/v1/pools/tiny/leases", R"({"timeout_ms": 30000})", kAlice);
  ASSERT_EQ(l.status, 201) << l.body;
  HttpResult s = c.request("GET", "/v1/pools/tiny/sessions", {}, kRoot);
  ASSERT_EQ(s.status, 200);
  const std::string describe(s.json().at("sessions").at(0).at("describe").as_string());
  ASSERT_TRUE(describe.starts_with("pid "));
  const pid_t worker = std::stoi(describe.substr(4));
  daemon.signal(SIGTERM);
  ASSERT_TRUE(wait_until([&] { return daemon.logged("\"msg\":\"shutting down\""); }));
  EXPECT_FALSE(daemon.wait_exit(0s).has_value()) << "the lease's grace is 300 s";
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait_exit(60s), 1);
  EXPECT_TRUE(wait_until([&] { return !process_alive(worker); })) << "worker " << worker;
}

// Verifies SIGHUP: new pool sizes apply while a lease is held and a client
// waits (the raised max serves the waiter, the lease still works and is
// released), changes that need a restart are named, and a bad file changes
// nothing.
TEST(DaemonReloadTest, SighupAppliesSizesAndKeepsLeases) {
  DaemonProcess daemon(config_text(), token_env());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  HttpResult l = c.request("POST", "/v1/pools/tiny/leases", "{}", kAlice);
  ASSERT_EQ(l.status, 201) << l.body;
  const std::string held(l.json().at("lease").as_string());
  auto waiting = std::async(std::launch::async, [port] {
    HttpClient w(port);
    return w.request("POST", "/v1/pools/tiny/leases", R"({"timeout_ms": 60000})", kAlice);
  });
  ASSERT_TRUE(wait_until([&] {
    HttpResult r = c.request("GET", "/v1/pools/tiny", {}, kRoot);
    return r.status == 200 && r.json().at("queue_length").as_int64() == 1;
  }));

  std::string text = config_text();
  const std::string tiny = "[pools.tiny]\ncommand = [\"" + std::string(POOLKEEPER_TEST_WORKER) +
                           "\"]\nmin = 1\nmax = 1\n";
  const auto at = text.find(tiny);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, tiny.size(), "[pools.tiny]\ncommand = [\"" +
                                    std::string(POOLKEEPER_TEST_WORKER) + "\"]\nmin = 2\nmax = 3\n");
  const std::string timeout = "header_timeout = \"1s\"";
  ASSERT_NE(text.find(timeout), std::string::npos);
  text.replace(text.find(timeout), timeout.size(), "header_timeout = \"2s\"");
  daemon.rewrite_config(text);
  daemon.signal(SIGHUP);
  ASSERT_TRUE(wait_until([&] { return daemon.logged("\"msg\":\"reloaded\""); }));
  EXPECT_TRUE(daemon.logged("\"sections\":\"server\""));
  ASSERT_EQ(waiting.wait_for(60s), std::future_status::ready);
  HttpResult served = waiting.get();
  ASSERT_EQ(served.status, 201) << "the raised max serves the waiter: " << served.body;
  const std::string second(served.json().at("lease").as_string());
  EXPECT_TRUE(wait_until([&] {
    HttpResult r = c.request("GET", "/v1/pools/tiny", {}, kRoot);
    return r.status == 200 && r.json().at("target").as_int64() == 2 &&
           r.json().at("sessions").as_int64() == 2;
  }));
  HttpResult sizes = c.request("GET", "/v1/pools/tiny", {}, kRoot);
  EXPECT_EQ(sizes.json().at("min").as_int64(), 2);
  EXPECT_EQ(sizes.json().at("max").as_int64(), 3);
  HttpResult run = c.request("POST", "/v1/leases/" + held + "/execute", R"({"params": 1})", kAlice);
  EXPECT_EQ(run.status, 200) << run.body;
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + held, {}, kAlice).status, 200);
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + second, {}, kAlice).status, 200);

  daemon.rewrite_config(text + "\n[pools.tiny.bogus]\n");
  daemon.signal(SIGHUP);
  ASSERT_TRUE(wait_until([&] { return daemon.logged("reload refused"); }));
  HttpResult after = c.request("GET", "/v1/pools/tiny", {}, kRoot);
  ASSERT_EQ(after.status, 200);
  EXPECT_EQ(after.json().at("target").as_int64(), 2);
  EXPECT_EQ(c.request("POST", "/v1/pools/tiny/execute", R"({"params": 2})", kAlice).status, 200);
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.wait_exit(60s), 0);
}

// Verifies that a bad configuration is refused at start with its reason.
TEST(DaemonShutdownTest, BadConfigIsRefusedAtStart) {
  DaemonProcess daemon("[pools.x]\ncommand = [\"true\"]\nmax = 0\n");
  EXPECT_EQ(daemon.wait_exit(30s), 2);
  const auto lines = daemon.log_lines();
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines[0].find("pools.x.max: must be between 1"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace poolkeeper::testing
