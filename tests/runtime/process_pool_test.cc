// PoolRunner with the process driver: real worker processes, started,
// handed out, used, broken in every way the protocol allows, and stopped.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "testing/process_pool_fixture.h"

namespace poolkeeper::testing {
namespace {

// Verifies that a warm pool hands out workers that answer execute with the
// worker's result unchanged, and that client sessions reach the worker.
TEST_F(ProcessPoolTest, ExecutesOnWarmWorkers) {
  auto r = start(pool_config(2, 4), test_worker());
  ASSERT_TRUE(settles_at(*r, 2));
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value()) << lease.error().message;
  auto reply = execute(*r, lease->lease, {{"op", "echo"}, {"value", {{"a", 1}, {"b", "ü"}}}});
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  EXPECT_TRUE(reply->ok);
  EXPECT_EQ(json::parse(reply->json), json::parse(R"({"a":1,"b":"ü"})"));

  auto error = execute(*r, lease->lease, {{"op", "no such op"}});
  ASSERT_TRUE(error.has_value());
  EXPECT_FALSE(error->ok) << "the worker's error comes back as the worker's error";
  EXPECT_EQ(json::parse(error->json).at("code").to_number<int>(), -32602);
  ASSERT_TRUE(release(*r, lease->lease).has_value());

  auto sticky = get(r->run({.client_session = "user-1"},
                           {.params = R"({"want_client_session":true})"}, asio::use_future));
  ASSERT_TRUE(sticky.has_value()) << sticky.error().message;
  EXPECT_EQ(sticky->json, R"("user-1")");
  EXPECT_EQ(release(*r, lease->lease).error().code, ErrorCode::kLeaseAlreadyReleased);
  EXPECT_EQ(execute(*r, lease->lease, 1).error().code, ErrorCode::kLeaseAlreadyReleased);
}

// Verifies that a lease's events reach on_event before its caller hears of
// the grant or the release (a caller may wait for what on_event recorded to
// be stored): for a grant at once, a grant to a waiter, and a release.
TEST_F(ProcessPoolTest, EventsComeBeforeTheAnswers) {
  struct Seen {
    std::mutex mu;
    std::set<LeaseId> granted;
    std::set<LeaseId> released;
  };
  auto seen = std::make_shared<Seen>();
  runtime::RunnerOptions options;
  options.on_event = [seen](const core::Event& e) {
    std::lock_guard lock(seen->mu);
    if (e.type == core::EventType::kLeaseGranted) seen->granted.insert(e.lease);
    if (e.type == core::EventType::kLeaseReleased) seen->released.insert(e.lease);
  };
  PoolConfig c = pool_config(1, 1);
  c.lease_events = true;
  auto r = start(c, test_worker(), options);
  ASSERT_TRUE(settles_at(*r, 1));
  auto known = [&](const std::set<LeaseId> Seen::*which, LeaseId lease) {
    std::lock_guard lock(seen->mu);
    return ((*seen).*which).contains(lease);
  };
  for (int round = 0; round < 50; ++round) {
    auto first = acquire(*r);
    ASSERT_TRUE(first.has_value()) << first.error().message;
    EXPECT_TRUE(known(&Seen::granted, first->lease)) << "granted at once, round " << round;
    // The next acquire waits for the release, and is granted from the queue.
    auto waiting = r->acquire({}, asio::use_future);
    ASSERT_TRUE(wait_until([&] { return snapshot(*r).stats.queue_length == 1; }));
    ASSERT_TRUE(release(*r, first->lease).has_value());
    EXPECT_TRUE(known(&Seen::released, first->lease)) << "released, round " << round;
    auto second = get(std::move(waiting));
    ASSERT_TRUE(second.has_value()) << second.error().message;
    EXPECT_TRUE(known(&Seen::granted, second->lease)) << "granted to a waiter, round " << round;
    ASSERT_TRUE(release(*r, second->lease).has_value());
  }
}

// Verifies that a payload far larger than a pipe's buffer goes through both
// ways intact (non-blocking writes while the worker writes back).
TEST_F(ProcessPoolTest, CarriesLargePayloads) {
  ProcessConfig w = test_worker();
  w.max_line = 64u << 20;
  auto r = start(pool_config(1, 1), w);
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  std::string big(8u << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + i % 26);
  auto reply = execute(*r, lease->lease, {{"op", "echo"}, {"value", big}});
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  EXPECT_EQ(json::parse(reply->json).as_string(), big);
  ASSERT_TRUE(release(*r, lease->lease).has_value());
}

// Verifies that a worker killed with SIGKILL mid-request fails that request
// with session_lost at once (not by timeout) and the pool is back at min.
TEST_F(ProcessPoolTest, WorkerKilledMidRequestFailsFastAndIsReplaced) {
  auto r = start(pool_config(2, 4), test_worker());
  ASSERT_TRUE(settles_at(*r, 2));
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  const pid_t pid = pid_of(*r, lease->lease);
  ASSERT_GT(pid, 0);
  auto pending = r->execute(lease->lease, std::nullopt,
                            {.params = R"({"op":"sleep","ms":60000})", .timeout = 120s},
                            asio::use_future);
  const TimePoint killed_at = real_now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto reply = get(std::move(pending));
  const Duration took = elapsed_since(killed_at);
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code, ErrorCode::kSessionLost) << reply.error().message;
  EXPECT_NE(reply.error().message.find("signal 9"), std::string::npos) << reply.error().message;
  RecordProperty("error_after_kill_ms",
                 static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  // The lease ends when the runner has seen the exit; a release just before
  // that is accepted (the dead session is not reused either way).
  if (auto released = release(*r, lease->lease); !released) {
    EXPECT_EQ(released.error().code, ErrorCode::kSessionLost);
  }
  ASSERT_TRUE(settles_at(*r, 2));
  EXPECT_FALSE(process_alive(pid));
  for (pid_t p : pids(*r)) EXPECT_NE(p, pid);
}

// Verifies that a stopped (SIGSTOP) worker fails its periodic health check,
// is killed and replaced.
TEST_F(ProcessPoolTest, FrozenWorkerFailsHealthCheckAndIsReplaced) {
  PoolConfig c = pool_config(1, 2);
  c.check_interval = 100ms;
  ProcessConfig w = test_worker();
  w.check_timeout = 2s;  // a healthy worker on a loaded machine still answers in time
  auto r = start(c, w);
  ASSERT_TRUE(settles_at(*r, 1));
  const std::vector<pid_t> before = pids(*r);
  ASSERT_EQ(before.size(), 1u);
  ASSERT_EQ(::kill(before[0], SIGSTOP), 0);
  ASSERT_TRUE(wait_until([&] { return !process_alive(before[0]); }, kLongWait * 3));
  ASSERT_TRUE(wait_until([&] {
    auto now = pids(*r);
    return now.size() == 1 && now[0] != before[0] && count_state(*r, SessionState::kIdle) == 1;
  }, kLongWait * 3));
  EXPECT_GE(snapshot(*r).stats.check_failures, 1u);
}

struct BadOutput {
  const char* name;
  const char* params;
  std::size_t max_line;
};

class BadOutputTest : public ProcessPoolTest, public ::testing::WithParamInterface<BadOutput> {};

// Verifies that each kind of broken worker output fails the request with
// protocol_error, replaces the worker, and keeps the daemon's memory bounded.
TEST_P(BadOutputTest, ReplacesWorkerThatBreaksTheProtocol) {
  ProcessConfig w = test_worker();
  w.max_line = GetParam().max_line;
  auto r = start(pool_config(1, 2), w);
  ASSERT_TRUE(settles_at(*r, 1));
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  const pid_t pid = pid_of(*r, lease->lease);
  const std::int64_t rss_before = drivers::tree_usage(::getpid()).rss_bytes;
  auto reply = get(r->execute(lease->lease, std::nullopt,
                              {.params = GetParam().params, .timeout = 120s}, asio::use_future));
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code, ErrorCode::kProtocolError) << reply.error().message;
  ASSERT_TRUE(settles_at(*r, 1));
  EXPECT_FALSE(process_alive(pid));
  const std::int64_t rss_after = drivers::tree_usage(::getpid()).rss_bytes;
  EXPECT_LT(rss_after - rss_before, std::int64_t{48} << 20) << "the daemon buffered the output";
  // The replacement works.
  auto again = get(r->run({}, {.params = R"({"op":"echo","value":7})"}, asio::use_future));
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(again->json, "7");
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, BadOutputTest,
    ::testing::Values(BadOutput{"garbage", R"({"op":"garbage"})", 1u << 20},
                      BadOutput{"invalid_utf8", R"({"op":"invalid_utf8"})", 1u << 20},
                      BadOutput{"unknown_id", R"({"op":"unknown_id"})", 1u << 20},
                      BadOutput{"long_line", R"({"op":"long_line","bytes":200000})", 64u << 10},
                      BadOutput{"no_newline_100MiB", R"({"op":"no_newline","mb":100})", 1u << 20}),
    [](const auto& info) { return std::string(info.param.name); });

// Verifies that a worker that closes its stdout fails its request with session_lost.
TEST_F(ProcessPoolTest, WorkerClosingStdoutIsReplaced) {
  auto r = start(pool_config(1, 1), test_worker());
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  const pid_t pid = pid_of(*r, lease->lease);
  auto reply = execute(*r, lease->lease, {{"op", "close_stdout"}}, 120s);
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code, ErrorCode::kSessionLost) << reply.error().message;
  ASSERT_TRUE(settles_at(*r, 1));
  EXPECT_FALSE(process_alive(pid));
}

// Verifies that an execute without an answer in time fails with
// execute_timeout and the busy worker is replaced.
TEST_F(ProcessPoolTest, ExecuteTimeoutReplacesWorker) {
  auto r = start(pool_config(1, 1), test_worker());
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  const pid_t pid = pid_of(*r, lease->lease);
  auto reply = execute(*r, lease->lease, {{"op", "sleep"}, {"ms", 60000}}, 200ms);
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code, ErrorCode::kExecuteTimeout);
  ASSERT_TRUE(settles_at(*r, 1));
  EXPECT_FALSE(process_alive(pid));
}

// Verifies that a worker that exits at start is retried with exponential
// backoff (no storm), and a waiter's timeout names the start failure.
TEST_F(ProcessPoolTest, WorkerExitingAtStartBacksOff) {
  const std::string count_file =
      ::testing::TempDir() + "/spawns-" + std::to_string(::getpid()) + ".txt";
  std::remove(count_file.c_str());
  auto count = [&] {
    std::ifstream f(count_file);
    std::string line;
    int n = 0;
    while (std::getline(f, line)) ++n;
    return n;
  };
  PoolConfig c = pool_config(1, 1);
  c.start_backoff_initial = 100ms;
  c.start_backoff_max = 10s;
  const TimePoint begun = real_now();
  auto r = start(c, test_worker({"--count-file", count_file, "--stderr-at-start",
                                 "cannot load model", "--exit-at-start", "3"}));
  ASSERT_TRUE(wait_until([&] { return snapshot(*r).stats.start_failures >= 1; }, kLongWait));
  auto waited = acquire(*r, {.timeout = 300ms});
  ASSERT_FALSE(waited.has_value());
  EXPECT_EQ(waited.error().code, ErrorCode::kAcquireTimeout);
  EXPECT_NE(waited.error().message.find("exited with code 3"), std::string::npos)
      << waited.error().message;
  EXPECT_NE(waited.error().message.find("cannot load model"), std::string::npos)
      << waited.error().message;
  ASSERT_TRUE(wait_until([&] { return count() >= 5; }, kLongWait * 3));
  // Between spawn k and k+1 the pool waits at least half of 100 ms * 2^(k-1).
  EXPECT_GE(elapsed_since(begun), 50ms + 100ms + 200ms + 400ms);
  const PoolSnapshot s = snapshot(*r);
  EXPECT_GE(s.stats.start_failures, 4u);
  EXPECT_LE(static_cast<int>(drivers_[0]->spawns()), count() + 1);
  std::remove(count_file.c_str());
}

// Verifies that stopping a worker that ignores SIGTERM and end of input ends
// in SIGKILL, and its own child process goes with it.
TEST_F(ProcessPoolTest, StopEscalatesToSigkillAndTakesTheGroup) {
  auto r = start(pool_config(1, 1), test_worker({"--ignore-sigterm"}));
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  const pid_t pid = pid_of(*r, lease->lease);
  auto child = execute(*r, lease->lease, {{"op", "spawn_child"}});
  ASSERT_TRUE(child.has_value() && child->ok);
  const pid_t grandchild = json::parse(child->json).at("child").to_number<int>();
  ASSERT_TRUE(process_alive(grandchild));
  ASSERT_TRUE(release(*r, lease->lease).has_value());
  auto done = r->shutdown(10s, asio::use_future);
  ASSERT_EQ(done.wait_for(60s), std::future_status::ready);
  EXPECT_FALSE(process_alive(pid));
  EXPECT_TRUE(wait_until([&] { return !process_alive(grandchild); }))
      << "the worker's child outlived it";
}

// Verifies that a waiter whose caller went away (cancellation) leaves the queue.
TEST_F(ProcessPoolTest, CancelledAcquireLeavesTheQueue) {
  auto r = start(pool_config(1, 1), test_worker());
  auto held = acquire(*r);
  ASSERT_TRUE(held.has_value());
  asio::cancellation_signal signal;
  auto waiting = r->acquire({.timeout = 60s},
                            asio::bind_cancellation_slot(signal.slot(), asio::use_future));
  ASSERT_TRUE(wait_until([&] { return snapshot(*r).stats.queue_length == 1; }));
  signal.emit(asio::cancellation_type::terminal);
  auto result = get(std::move(waiting));
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(snapshot(*r).stats.queue_length, 0);
  ASSERT_TRUE(release(*r, held->lease).has_value());
  auto next = acquire(*r, {.timeout = 10s});
  ASSERT_TRUE(next.has_value()) << "the session went to nobody";
  ASSERT_TRUE(release(*r, next->lease).has_value());
}

// Verifies that cancelling a one-shot run at any moment either cancels it
// before a lease is taken or lets it finish, and never leaves a lease out.
TEST_F(ProcessPoolTest, CancelledRunNeverLeaksALease) {
  auto r = start(pool_config(1, 1), test_worker());
  ASSERT_TRUE(settles_at(*r, 1));
  int finished = 0;
  int cancelled = 0;
  for (int i = 0; i < 150; ++i) {
    asio::cancellation_signal signal;
    // Every third request is slow, and cancelled once its lease is taken: it
    // must still run and give the lease back.
    const bool slow = i % 3 == 1;
    const std::string params = slow ? std::string(R"({"op":"sleep","ms":50})")
                                    : R"({"op":"echo","value":)" + std::to_string(i) + "}";
    auto running = r->run({.timeout = 30s}, {.params = params},
                          asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    if (slow) {
      ASSERT_TRUE(wait_until([&] { return count_state(*r, SessionState::kLeased) == 1; }));
    }
    signal.emit(asio::cancellation_type::terminal);
    auto reply = get(std::move(running));
    // The emit reaches the coroutine through its strand; the signal must live
    // until that hop ran (a snapshot queues behind it).
    (void)snapshot(*r);
    if (slow) {
      ASSERT_TRUE(reply.has_value()) << reply.error().message;
    }
    if (reply.has_value()) {
      EXPECT_EQ(reply->json, slow ? std::string(R"("slept")") : std::to_string(i));
      ++finished;
    } else {
      EXPECT_EQ(reply.error().code, ErrorCode::kCancelled) << reply.error().message;
      ++cancelled;
    }
  }
  EXPECT_GE(finished, 50) << "every run cancelled after its lease was taken finishes";
  RecordProperty("cancelled_before_lease", cancelled);
  ASSERT_TRUE(settles_at(*r, 1));
}

// Verifies that a release waits for an execute in flight on its lease.
TEST_F(ProcessPoolTest, ReleaseWaitsForExecuteInFlight) {
  auto r = start(pool_config(1, 1), test_worker());
  auto lease = acquire(*r);
  ASSERT_TRUE(lease.has_value());
  auto work = r->execute(lease->lease, std::nullopt, {.params = R"({"op":"sleep","ms":300})"},
                         asio::use_future);
  auto released = r->release(lease->lease, std::nullopt, core::ReleaseOutcome::kOk,
                             asio::use_future);
  auto reply = get(std::move(work));
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  EXPECT_EQ(reply->json, R"("slept")");
  ASSERT_TRUE(get(std::move(released)).has_value());
  ASSERT_TRUE(settles_at(*r, 1));
}

// Verifies that shutdown answers waiters and stops every worker.
TEST_F(ProcessPoolTest, ShutdownAnswersWaitersAndStopsWorkers) {
  auto r = start(pool_config(2, 2), test_worker());
  ASSERT_TRUE(settles_at(*r, 2));
  const std::vector<pid_t> workers = pids(*r);
  auto a = acquire(*r);
  auto b = acquire(*r);
  ASSERT_TRUE(a && b);
  auto waiting = r->acquire({.timeout = 60s}, asio::use_future);
  ASSERT_TRUE(wait_until([&] { return snapshot(*r).stats.queue_length == 1; }));
  auto done = r->shutdown(100ms, asio::use_future);
  auto answer = get(std::move(waiting));
  ASSERT_FALSE(answer.has_value());
  EXPECT_EQ(answer.error().code, ErrorCode::kShutdown);
  ASSERT_EQ(done.wait_for(60s), std::future_status::ready);
  for (pid_t p : workers) EXPECT_FALSE(process_alive(p));
  EXPECT_EQ(acquire(*r).error().code, ErrorCode::kShutdown);
}

// Verifies that destroying the io_context while a request waits for its
// answer (a daemon torn down without a shutdown) frees the session and kills
// its worker: no process, zombie or descriptor is left.
TEST_F(ProcessPoolTest, DestroyedIoContextWithRequestInFlightLeavesNothing) {
  const std::string mark =
      ::testing::TempDir() + "/in-flight-" + std::to_string(::getpid()) + ".mark";
  std::filesystem::remove(mark);
  pid_t pid = -1;
  {
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    std::thread thread([&] { io.run(); });
    auto driver = ProcessDriver::create(test_worker(), "dropped", &runtime::null_log());
    ASSERT_TRUE(driver.has_value());
    auto runner = PoolRunner::create(io.get_executor(), pool_config(1, 1), std::move(*driver),
                                     {.log = &runtime::null_log()});
    ASSERT_TRUE(runner.has_value());
    (*runner)->start();
    auto lease = get((*runner)->acquire({.timeout = 60s}, asio::use_future));
    ASSERT_TRUE(lease.has_value());
    pid = pid_of(**runner, lease->lease);
    json::value params = {{"op", "sleep"}, {"ms", 600000}, {"mark", mark}};
    (*runner)->execute(lease->lease, std::nullopt, {.params = json::serialize(params)},
                       [](std::expected<ExecuteReply, Error>) {});
    ASSERT_TRUE(wait_until([&] { return std::filesystem::exists(mark); }));
    io.stop();
    thread.join();
    runner->reset();
  }  // ~io_context: the waiting request's coroutine goes, then the session
  std::filesystem::remove(mark);
  EXPECT_FALSE(process_alive(pid));
}

}  // namespace
}  // namespace poolkeeper::testing
