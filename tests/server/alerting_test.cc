// Alerting against a pool whose scheduler stops answering: its io_context is
// not running, so the snapshot the monitor asks for never comes. /health's
// view (stalled()) names it, scheduler_stalled fires and reaches the event
// stream; once the scheduler runs again both clear.
#include "server/alerting.h"

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json.hpp>

#include <thread>

#include "drivers/process/process_driver.h"
#include "testing/process_util.h"
#include "testing/wait.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using testing::IoThread;
using testing::wait_until;

TEST(AlertingTest, ASilentSchedulerIsStalledAndFiresUntilItAnswersAgain) {
  PoolEntry e;
  e.pool.name = "p";
  e.pool.min = 0;
  e.pool.max = 1;
  e.process.command = {POOLKEEPER_TEST_WORKER};
  DaemonConfig config;
  config.pools.push_back(e);
  config.alerts.interval = 100ms;
  config.alerts.stall_after = 1s;
  config.alerts.rules["scheduler_stalled"] = AlertRuleSettings{.threshold = 0.5, .for_duration = 0s};

  asio::io_context pool_io;  // the pool's scheduler: not running yet
  auto driver = drivers::ProcessDriver::create(e.process, "p", &runtime::null_log());
  ASSERT_TRUE(driver.has_value());
  auto runner = runtime::PoolRunner::create(pool_io.get_executor(), e.pool, std::move(*driver),
                                            {.log = &runtime::null_log()});
  ASSERT_TRUE(runner.has_value());

  monitor::EventBus bus({});
  auto filter = monitor::parse_filter("", "alert_*");
  ASSERT_TRUE(filter);
  auto alerts = bus.subscribe(*filter);
  IoThread control_io;
  auto control = asio::make_strand(control_io.executor());
  Alerting alerting(control, config, {*runner}, {.log = &runtime::null_log(), .bus = &bus});
  asio::post(control, [&] { alerting.start(); });

  auto scheduler_alert = [&]() -> std::string {
    const json::object report = alerting.report();
    for (const json::value& a : report.at("active").as_array()) {
      if (a.at("rule") == "scheduler_stalled" && a.at("subject") == "p") return std::string(a.at("state").as_string());
    }
    return "";
  };
  ASSERT_TRUE(wait_until([&] { return alerting.stalled(real_clock().now()) == std::vector<std::string>{"p"}; }, 30s));
  ASSERT_TRUE(wait_until([&] { return scheduler_alert() == "firing"; }, 30s));
  // The report changes before the event is published: wait for it too.
  std::vector<monitor::LiveEvent> seen;
  ASSERT_TRUE(wait_until([&] {
    for (const monitor::LiveEvent& e : alerts->take()) seen.push_back(e);
    return !seen.empty();
  }, 30s));
  EXPECT_EQ(seen[0].type, "alert_firing");
  EXPECT_EQ(json::parse(seen[0].json).at("rule"), "scheduler_stalled");

  // The scheduler runs again: it answers, is no longer stalled, the alert resolves.
  auto work = asio::make_work_guard(pool_io);
  std::thread pool_thread([&] { pool_io.run(); });
  EXPECT_TRUE(wait_until([&] { return alerting.stalled(real_clock().now()).empty(); }, 30s));
  EXPECT_TRUE(wait_until([&] { return scheduler_alert().empty(); }, 30s));
  EXPECT_TRUE(wait_until([&] {
    for (const monitor::LiveEvent& e : alerts->take()) seen.push_back(e);
    return seen.back().type == "alert_resolved";
  }, 30s));

  asio::post(control, [&] { alerting.stop(); });
  control_io.stop();
  auto stopped = (*runner)->shutdown(1s, asio::use_future);
  EXPECT_EQ(stopped.wait_for(60s), std::future_status::ready);
  work.reset();
  pool_thread.join();
}

}  // namespace
}  // namespace poolkeeper::server
