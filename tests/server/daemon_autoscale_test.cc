// Autoscaling through the daemon: a pool that grows while its sessions are
// held and shrinks after, seen in GET /v1/pools/{pool} and the log, and the
// autoscale switch of the API.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <string>
#include <vector>

#include "testing/daemon_process.h"
#include "testing/http_client.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

using namespace std::chrono_literals;

std::string config_text() {
  return R"(
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "1s"

[store]
enabled = false

[pools.auto]
command = [")" + std::string(POOLKEEPER_TEST_WORKER) + R"("]
min = 1
max = 6
stop_grace = "200ms"
kill_after = "200ms"
autoscale = true
autoscale_predictive = false
autoscale_interval = "200ms"
autoscale_down_window = "2s"
autoscale_cooldown_down = "500ms"
)";
}

TEST(DaemonAutoscaleTest, APoolGrowsWhileBusyAndShrinksAfter) {
  DaemonProcess daemon(config_text());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  auto pool = [&] { return c.request("GET", "/v1/pools/auto").json(); };
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  EXPECT_TRUE(pool().at("autoscale").as_bool());

  std::vector<std::string> leases;
  for (int i = 0; i < 3; ++i) {
    HttpResult r = c.request("POST", "/v1/pools/auto/leases", R"({"timeout_ms": 30000})");
    ASSERT_EQ(r.status, 201) << r.body;
    leases.emplace_back(r.json().at("lease").as_string());
  }
  // 3 busy: grown to ceil(3 / 0.55) = 6, and started.
  ASSERT_TRUE(wait_until([&] {
    const auto p = pool();
    return p.at("target").as_int64() == 6 && p.at("sessions_by_state").at("idle").as_int64() == 3;
  }, 30s)) << pool();
  EXPECT_GE(pool().at("scale_ups").as_int64(), 1);
  EXPECT_TRUE(daemon.logged("\"msg\":\"autoscaled\""));

  for (const std::string& l : leases) ASSERT_EQ(c.request("DELETE", "/v1/leases/" + l).status, 200);
  // Idle: back to min, a session at a time once the down window has passed.
  ASSERT_TRUE(wait_until([&] {
    const auto p = pool();
    return p.at("target").as_int64() == 1 && p.at("sessions").as_int64() == 1;
  }, 60s)) << pool();
  EXPECT_GE(pool().at("scale_downs").as_int64(), 1);

  // Off and on again: the answer and the pool say so (that an autoscaler
  // switched off decides nothing is the core's test, on a manual clock).
  HttpResult off = c.request("POST", "/v1/pools/auto/autoscale", R"({"enabled": false})");
  ASSERT_EQ(off.status, 200) << off.body;
  EXPECT_FALSE(off.json().at("autoscale").as_bool());
  EXPECT_FALSE(pool().at("autoscale").as_bool());
  HttpResult on = c.request("POST", "/v1/pools/auto/autoscale", R"({"enabled": true})");
  ASSERT_EQ(on.status, 200) << on.body;
  EXPECT_TRUE(pool().at("autoscale").as_bool());
  EXPECT_TRUE(daemon.logged("\"msg\":\"autoscaled\",\"pool\":\"auto\",\"from\":\"6\""));
}

}  // namespace
}  // namespace poolkeeper::testing
