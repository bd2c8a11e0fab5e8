// A test fixture for pools of real worker processes run by a PoolRunner.
//
// Each test gets an io_context on its own thread. TearDown shuts every runner
// down and then checks that nothing leaked: no child process, no zombie, and
// the same number of open descriptors as before the test.
//
// Thread-safety: the test thread blocks on futures; the runners live on the
// io thread.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "drivers/process/process_driver.h"
#include "runtime/pool_runner.h"
#include "testing/process_util.h"
#include "drivers/process/proc_stats.h"
#include "testing/wait.h"

namespace poolkeeper::testing {

namespace asio = boost::asio;
namespace json = boost::json;
using drivers::ProcessConfig;
using drivers::ProcessDriver;
using runtime::AcquireArgs;
using runtime::ExecuteReply;
using runtime::ExecuteRequest;
using runtime::LeaseGrant;
using runtime::PoolRunner;
using runtime::PoolSnapshot;
using namespace std::chrono_literals;

inline constexpr const char* kTestWorker = POOLKEEPER_TEST_WORKER;
inline constexpr const char* kEchoWorker = POOLKEEPER_ECHO_WORKER;
inline constexpr const char* kSourceDir = POOLKEEPER_SOURCE_DIR;

class ProcessPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    io_ = std::make_unique<IoThread>();
    // The io_context opens its reactor's descriptors on first use: count after that.
    asio::steady_timer warm(io_->io());
    warm.expires_after(0s);
    warm.wait();
    fds_before_ = open_fds();
  }

  void TearDown() override {
    for (auto& r : runners_) {
      auto done = r->shutdown(std::chrono::seconds(5), asio::use_future);
      EXPECT_EQ(done.wait_for(60s), std::future_status::ready) << "shutdown did not finish";
    }
    runners_.clear();
    drivers_.clear();
    EXPECT_TRUE(wait_until([] { return children().empty(); }))
        << children().size() << " child processes left";
    EXPECT_EQ(zombie_children(), 0);
    EXPECT_TRUE(wait_until([&] { return open_fds() == fds_before_; }))
        << "open descriptors: " << open_fds() << ", before the test: " << fds_before_;
    io_->stop();
  }

  // A worker config for the test worker with short stop steps.
  static ProcessConfig test_worker(std::vector<std::string> args = {}) {
    ProcessConfig c;
    c.command = {kTestWorker};
    c.command.insert(c.command.end(), args.begin(), args.end());
    c.stop_grace = 200ms;
    c.kill_after = 200ms;
    c.start_timeout = 20s;
    c.check_timeout = 5s;
    c.sample_interval = 0s;
    return c;
  }

  static PoolConfig pool_config(int min, int max) {
    PoolConfig c;
    c.name = "test";
    c.min = min;
    c.max = max;
    c.idle_timeout = 0s;
    c.start_backoff_initial = 50ms;
    c.start_backoff_max = 2s;
    return c;
  }

  std::shared_ptr<PoolRunner> start(PoolConfig pool, ProcessConfig process,
                                    runtime::RunnerOptions options = {}) {
    if (options.log == nullptr) options.log = &runtime::null_log();
    auto driver = ProcessDriver::create(std::move(process), pool.name, options.log);
    EXPECT_TRUE(driver.has_value()) << (driver ? "" : driver.error().message);
    if (!driver) return nullptr;
    drivers_.push_back(driver->get());
    auto runner = PoolRunner::create(io_->executor(), std::move(pool), std::move(*driver),
                                     std::move(options));
    EXPECT_TRUE(runner.has_value()) << (runner ? "" : runner.error().message);
    if (!runner) return nullptr;
    (*runner)->start();
    runners_.push_back(*runner);
    return *runner;
  }

  template <class T>
  static T get(std::future<T> f, std::chrono::seconds limit = 60s) {
    if (f.wait_for(limit) != std::future_status::ready) {
      ADD_FAILURE() << "no answer within " << limit.count() << " s";
      std::abort();  // the operation may still complete into this frame
    }
    return f.get();
  }

  PoolSnapshot snapshot(PoolRunner& r) { return get(r.snapshot(asio::use_future)); }

  int count_state(PoolRunner& r, SessionState s) {
    return snapshot(r).stats.sessions_by_state[static_cast<int>(s)];
  }

  // True once the pool has exactly `n` idle sessions and nothing else.
  bool settles_at(PoolRunner& r, int n, Duration timeout = kLongWait * 3) {
    return wait_until(
        [&] {
          PoolSnapshot s = snapshot(r);
          return s.stats.sessions == n &&
                 s.stats.sessions_by_state[static_cast<int>(SessionState::kIdle)] == n;
        },
        timeout);
  }

  std::expected<LeaseGrant, Error> acquire(PoolRunner& r, AcquireArgs args = {}) {
    return get(r.acquire(std::move(args), asio::use_future));
  }

  std::expected<ExecuteReply, Error> execute(PoolRunner& r, LeaseId lease, json::value params,
                                             Duration timeout = Duration{0}) {
    return get(r.execute(lease, std::nullopt,
                         ExecuteRequest{.params = json::serialize(params), .timeout = timeout},
                         asio::use_future));
  }

  std::expected<void, Error> release(PoolRunner& r, LeaseId lease,
                                     core::ReleaseOutcome outcome = core::ReleaseOutcome::kOk) {
    return get(r.release(lease, std::nullopt, outcome, asio::use_future));
  }

  // The pid of the worker a lease holds (asks the worker).
  pid_t pid_of(PoolRunner& r, LeaseId lease) {
    auto reply = execute(r, lease, {{"op", "pid"}});
    EXPECT_TRUE(reply.has_value() && reply->ok);
    if (!reply || !reply->ok) return -1;
    return static_cast<pid_t>(json::parse(reply->json).at("pid").to_number<int>());
  }

  // Pids of the pool's sessions, from the driver's description ("pid 123").
  std::vector<pid_t> pids(PoolRunner& r) {
    std::vector<pid_t> out;
    for (const auto& s : snapshot(r).sessions) {
      if (s.describe.starts_with("pid ")) out.push_back(std::stoi(s.describe.substr(4)));
    }
    return out;
  }

  std::unique_ptr<IoThread> io_;
  std::vector<std::shared_ptr<PoolRunner>> runners_;
  std::vector<ProcessDriver*> drivers_;  // owned by their runners
  int fds_before_ = 0;
};

}  // namespace poolkeeper::testing
