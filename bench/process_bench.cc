// Benchmarks of pools of real worker processes (not tests: numbers only).
//
//   BM_RawPipeRoundTrip      one request line to a C++ echo worker and its
//                            answer over plain blocking pipes: the floor.
//   BM_RawPipeRoundTripWithWork/N  the same with N ns of busy work between
//                            round trips: how this machine amplifies work.
//   BM_AsioPipeRoundTrip     the same through a bare Asio event loop.
//   BM_PoolExecute           the same request through PoolRunner::execute on
//                            a held lease (strand, coroutine, timer, parsing).
//   BM_PoolRun               acquire + execute + release per request.
//   BM_PythonWarmRun         a request to a warm Python echo worker (run()).
//   BM_PythonSpawnPerRequest start a fresh Python worker, send the request,
//                            read the answer, stop it: what a pool saves.
//   BM_StartThousandWorkers  1000 C++ echo workers in one pool: time until
//                            all are ready, daemon memory per session.
//
// Every pool benchmark runs its io_context on the benchmark thread, so the
// comparison with the raw pipe is thread for thread. bench/process_report.py
// runs the binary several times and prints medians and ratios.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fstream>
#include <string>

#include "drivers/process/process_driver.h"
#include "drivers/process/spawn.h"
#include "runtime/pool_runner.h"

namespace {

namespace asio = boost::asio;
using namespace poolkeeper;
using namespace std::chrono_literals;

const std::string kRequest =
    R"({"jsonrpc":"2.0","id":1,"method":"execute","params":{"user":"u-1","query":"select 1"}})"
    "\n";
const std::string kParams = R"({"user":"u-1","query":"select 1"})";

std::string python_echo() { return std::string(POOLKEEPER_SOURCE_DIR) + "/examples/workers/python/echo_worker.py"; }

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    if (n <= 0) std::abort();
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Reads one line (blocking) into `buf`, keeping what follows it.
void read_line(int fd, std::string& buf) {
  char chunk[4096];
  for (;;) {
    const std::size_t nl = buf.find('\n');
    if (nl != std::string::npos) {
      buf.erase(0, nl + 1);
      return;
    }
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) std::abort();
    buf.append(chunk, static_cast<std::size_t>(n));
  }
}

void stop_child(drivers::Child& c) {
  ::close(c.stdin_fd);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  ::close(c.stdout_fd);
  ::close(c.stderr_fd);
  ::close(c.pidfd);
}

drivers::Child spawn_worker(std::vector<std::string> argv) {
  drivers::SpawnOptions o;
  o.argv = std::move(argv);
  o.environment = drivers::worker_environment({"PATH", "HOME", "LANG"}, {});
  auto c = drivers::spawn(o);
  if (!c) std::abort();
  return *c;
}

// Runs `body` as a coroutine on `io`, on this thread, to completion.
template <class F>
void run_on(asio::io_context& io, F body) {
  asio::co_spawn(io, std::move(body), asio::detached);
  io.restart();
  io.run();
}

void BM_RawPipeRoundTrip(benchmark::State& state) {
  drivers::Child c = spawn_worker({POOLKEEPER_ECHO_WORKER});
  std::string buf;
  read_line(c.stdout_fd, buf);  // ready
  for (auto _ : state) {
    write_all(c.stdin_fd, kRequest);
    read_line(c.stdout_fd, buf);
  }
  state.SetItemsProcessed(state.iterations());
  stop_child(c);
}
BENCHMARK(BM_RawPipeRoundTrip)->UseRealTime();

// The raw round trip with `ns` of busy work on the caller's side between an
// answer and the next request: what any work at all there costs on this
// machine (the worker's idle CPU is slow to wake once it has gone idle).
void BM_RawPipeRoundTripWithWork(benchmark::State& state) {
  const auto work = std::chrono::nanoseconds(state.range(0));
  drivers::Child c = spawn_worker({POOLKEEPER_ECHO_WORKER});
  std::string buf;
  read_line(c.stdout_fd, buf);  // ready
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < work) {
    }
    write_all(c.stdin_fd, kRequest);
    read_line(c.stdout_fd, buf);
  }
  state.SetItemsProcessed(state.iterations());
  stop_child(c);
}
BENCHMARK(BM_RawPipeRoundTripWithWork)->Arg(1000)->Arg(2000)->Arg(5000)->UseRealTime();

// The same round trip through a bare Asio event loop (a coroutine, a
// non-blocking write, a read after epoll reports the pipe readable): the
// floor for any design that never blocks a thread on one worker.
void BM_AsioPipeRoundTrip(benchmark::State& state) {
  drivers::Child c = spawn_worker({POOLKEEPER_ECHO_WORKER});
  asio::io_context io;
  asio::posix::stream_descriptor out(io, c.stdout_fd);
  out.non_blocking(true);
  std::string buf;
  run_on(io, [&]() -> asio::awaitable<void> {
    char chunk[4096];
    auto next_line = [&]() -> asio::awaitable<void> {
      for (;;) {
        const std::size_t nl = buf.find('\n');
        if (nl != std::string::npos) {
          buf.erase(0, nl + 1);
          co_return;
        }
        boost::system::error_code ec;
        const std::size_t n = out.read_some(asio::buffer(chunk), ec);
        if (!ec) {
          buf.append(chunk, n);
          continue;
        }
        if (ec != asio::error::would_block) std::abort();
        auto readable = out.async_wait(asio::posix::descriptor_base::wait_read, asio::use_awaitable);
        co_await std::move(readable);
      }
    };
    auto ready = next_line();
    co_await std::move(ready);
    for (auto _ : state) {
      write_all(c.stdin_fd, kRequest);
      auto answer = next_line();
      co_await std::move(answer);
    }
  });
  (void)out.release();
  state.SetItemsProcessed(state.iterations());
  stop_child(c);
}
BENCHMARK(BM_AsioPipeRoundTrip)->UseRealTime();

drivers::ProcessConfig echo_config(std::vector<std::string> command) {
  drivers::ProcessConfig c;
  c.command = std::move(command);
  c.stop_grace = 1s;
  c.kill_after = 1s;
  return c;
}

std::shared_ptr<runtime::PoolRunner> make_runner(asio::io_context& io, PoolConfig pool,
                                                 drivers::ProcessConfig process) {
  auto driver = drivers::ProcessDriver::create(std::move(process), pool.name, &runtime::null_log());
  if (!driver) std::abort();
  auto runner = runtime::PoolRunner::create(io.get_executor(), std::move(pool), std::move(*driver),
                                            {.log = &runtime::null_log()});
  if (!runner) std::abort();
  (*runner)->start();
  return *runner;
}

void BM_PoolExecute(benchmark::State& state) {
  asio::io_context io;
  PoolConfig pool;
  pool.name = "bench";
  pool.min = 1;
  pool.max = 1;
  auto runner = make_runner(io, pool, echo_config({POOLKEEPER_ECHO_WORKER}));
  run_on(io, [&]() -> asio::awaitable<void> {
    // Awaitables are made before their co_await (g++ 12 and temporaries).
    runtime::AcquireArgs args{.timeout = 30s};
    auto acquiring = runner->acquire(args);
    auto lease = co_await std::move(acquiring);
    if (!lease) std::abort();
    const std::optional<std::string> owner;
    for (auto _ : state) {
      runtime::ExecuteRequest request{.params = kParams};
      auto executing = runner->execute(lease->lease, owner, std::move(request));
      auto reply = co_await std::move(executing);
      if (!reply) std::abort();
    }
    auto releasing = runner->release(lease->lease, owner, core::ReleaseOutcome::kOk);
    (void)co_await std::move(releasing);
    auto stopping = runner->shutdown(5s);
    co_await std::move(stopping);
  });
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PoolExecute)->UseRealTime();

// Acquire + execute + release per request on a warm one-worker pool running `command`.
void run_warm(benchmark::State& state, std::vector<std::string> command) {
  asio::io_context io;
  PoolConfig pool;
  pool.name = "bench";
  pool.min = 1;
  pool.max = 1;
  auto runner = make_runner(io, pool, echo_config(std::move(command)));
  run_on(io, [&]() -> asio::awaitable<void> {
    runtime::AcquireArgs args{.timeout = 30s};
    auto acquiring = runner->acquire(args);  // waits until the worker is ready
    auto warm = co_await std::move(acquiring);
    if (!warm) std::abort();
    const std::optional<std::string> owner;
    auto releasing = runner->release(warm->lease, owner, core::ReleaseOutcome::kOk);
    (void)co_await std::move(releasing);
    for (auto _ : state) {
      runtime::ExecuteRequest request{.params = kParams};
      auto running = runner->run(runtime::AcquireArgs{}, std::move(request));
      auto reply = co_await std::move(running);
      if (!reply) std::abort();
    }
    auto stopping = runner->shutdown(5s);
    co_await std::move(stopping);
  });
  state.SetItemsProcessed(state.iterations());
}

void BM_PoolRun(benchmark::State& state) { run_warm(state, {POOLKEEPER_ECHO_WORKER}); }
BENCHMARK(BM_PoolRun)->UseRealTime();

void BM_PythonWarmRun(benchmark::State& state) { run_warm(state, {"python3", python_echo()}); }
BENCHMARK(BM_PythonWarmRun)->UseRealTime();

void BM_PythonSpawnPerRequest(benchmark::State& state) {
  for (auto _ : state) {
    drivers::Child c = spawn_worker({"python3", python_echo()});
    std::string buf;
    read_line(c.stdout_fd, buf);  // ready: the interpreter has loaded
    write_all(c.stdin_fd, kRequest);
    read_line(c.stdout_fd, buf);
    stop_child(c);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PythonSpawnPerRequest)->UseRealTime()->MinTime(2.0);

std::int64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  std::int64_t kib = 0;
  while (f >> key) {
    if (key == "VmRSS:") {
      f >> kib;
      break;
    }
  }
  return kib * 1024;
}

void BM_StartThousandWorkers(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    asio::io_context io;
    PoolConfig pool;
    pool.name = "scale";
    pool.min = n;
    pool.max = n;
    pool.max_starting = 64;
    pool.max_queue = n;
    const std::int64_t rss_before = rss_bytes();
    const auto t0 = std::chrono::steady_clock::now();
    auto runner = make_runner(io, pool, echo_config({POOLKEEPER_ECHO_WORKER}));
    double start_s = 0;
    double stop_s = 0;
    std::int64_t rss_after = 0;
    run_on(io, [&]() -> asio::awaitable<void> {
      for (;;) {
        auto snapshotting = runner->snapshot();
        runtime::PoolSnapshot s = co_await std::move(snapshotting);
        if (s.stats.sessions_by_state[static_cast<int>(SessionState::kIdle)] == n) break;
        asio::steady_timer t(io, 1ms);
        co_await t.async_wait(asio::use_awaitable);
      }
      start_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rss_after = rss_bytes();
      const auto t1 = std::chrono::steady_clock::now();
      auto stopping = runner->shutdown(10s);
      co_await std::move(stopping);
      stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    });
    state.counters["start_all_s"] = start_s;
    state.counters["stop_all_s"] = stop_s;
    state.counters["rss_per_session_kib"] =
        static_cast<double>(rss_after - rss_before) / n / 1024.0;
  }
}
BENCHMARK(BM_StartThousandWorkers)->Arg(1000)->Iterations(1)->UseRealTime()->Unit(benchmark::kSecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
