// autoscale_replay: a bursty load replayed against pools of real worker
// processes, the same load three times: the pool fixed at max, fixed at min,
// and autoscaled between them. Not a test; numbers only.
//
//   autoscale_replay [--seconds 180] [--learn 60] [--period 30] [--burst 5]
//                    [--seed 1] [--cold-start-ms 1000] [--hold-ms 300] [--json]
//
// The load is open-loop (arrivals do not wait for each other): Poisson
// arrivals at a base rate with bursts of a higher rate (every --period
// seconds, --burst seconds long), each request holding its session for
// --hold-ms and then releasing it. Workers are the C++ echo worker behind a
// shell that sleeps --cold-start-ms first, so a new session takes that long.
// For each pool it reports, over the run after its first --learn seconds
// (the autoscaler's seasons need two periods of history), the acquire wait
// (p50, p99, max; an acquire gives up after 10 s: a timeout),
// session-seconds (the integral of live sessions, sampled every 100 ms), and
// for the autoscaled one its decisions (over the whole run).
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "drivers/process/process_driver.h"
#include "runtime/pool_runner.h"

namespace {

namespace asio = boost::asio;
using namespace poolkeeper;
using namespace std::chrono_literals;

struct Options {
  int seconds = 180;
  int learn = 60;
  unsigned seed = 1;
  int cold_start_ms = 1000;
  double base_rate = 5;    // arrivals a second
  double burst_rate = 40;
  int period = 30;         // a burst every this many seconds...
  int burst = 5;           // ...this long
  int hold_ms = 300;
  int min = 2;
  int max = 16;
  bool json = false;
};

struct Result {
  std::string name;
  std::vector<double> waits_ms;
  int timeouts = 0;
  double session_seconds = 0;
  std::uint64_t scale_ups = 0;
  std::uint64_t scale_downs = 0;
  int peak_sessions = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Arrival times (seconds from the start) of the load, the same for every pool.
std::vector<double> arrivals(const Options& o) {
  std::mt19937_64 rng(o.seed);
  std::vector<double> out;
  double t = 0;
  while (t < o.seconds) {
    const bool bursting = static_cast<int>(t) % o.period >= o.period - o.burst;
    const double rate = bursting ? o.burst_rate : o.base_rate;
    t += std::exponential_distribution<double>(rate)(rng);
    if (t < o.seconds) out.push_back(t);
  }
  return out;
}

Result replay(const std::string& name, PoolConfig pool, const Options& o, const std::vector<double>& load) {
  asio::io_context io;
  drivers::ProcessConfig process;
  process.command = {"/bin/sh", "-c",
                     "sleep " + std::to_string(o.cold_start_ms / 1000.0) + "; exec " POOLKEEPER_ECHO_WORKER};
  process.stop_grace = 100ms;
  process.kill_after = 500ms;
  process.sample_interval = Duration{0};
  auto driver = drivers::ProcessDriver::create(process, pool.name, &runtime::null_log());
  if (!driver) {
    std::fprintf(stderr, "driver: %s\n", driver.error().message.c_str());
    std::exit(1);
  }
  auto runner = runtime::PoolRunner::create(io.get_executor(), pool, std::move(*driver),
                                            {.seed = 7, .log = &runtime::null_log()});
  if (!runner) {
    std::fprintf(stderr, "pool: %s\n", runner.error().message.c_str());
    std::exit(1);
  }
  auto r = *runner;
  r->start();
  Result result;
  result.name = name;

  // Let the pool reach its starting size before the clock starts.
  bool warm = false;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    for (;;) {
      auto snapshotting = r->snapshot(asio::use_awaitable);
      runtime::PoolSnapshot s = co_await std::move(snapshotting);
      if (s.stats.sessions_by_state[static_cast<int>(SessionState::kIdle)] >= s.stats.target) break;
      asio::steady_timer t(io, 50ms);
      co_await t.async_wait(asio::use_awaitable);
    }
    warm = true;
  }, asio::detached);
  while (!warm) io.run_one();

  const auto start = std::chrono::steady_clock::now();
  int done = 0;
  for (double at : load) {
    asio::co_spawn(io, [&, at]() -> asio::awaitable<void> {
      asio::steady_timer t(io, start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                           std::chrono::duration<double>(at)));
      co_await t.async_wait(asio::use_awaitable);
      const auto asked = std::chrono::steady_clock::now();
      auto acquiring = r->acquire({.timeout = 10s}, asio::use_awaitable);
      auto lease = co_await std::move(acquiring);
      const bool measured = at >= o.learn;
      if (!lease) {
        result.timeouts += measured;
      } else {
        if (measured) {
          result.waits_ms.push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - asked).count());
        }
        asio::steady_timer hold(io, std::chrono::milliseconds(o.hold_ms));
        co_await hold.async_wait(asio::use_awaitable);
        auto releasing = r->release(lease->lease, {}, core::ReleaseOutcome::kOk, asio::use_awaitable);
        (void)co_await std::move(releasing);
      }
      ++done;
    }, asio::detached);
  }
  // Session-seconds: live sessions sampled every 100 ms until the last request is done.
  bool sampling = true;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    asio::steady_timer t(io);
    while (sampling) {
      auto snapshotting = r->snapshot(asio::use_awaitable);
      runtime::PoolSnapshot s = co_await std::move(snapshotting);
      const int live = s.stats.sessions - s.stats.sessions_by_state[static_cast<int>(SessionState::kClosing)];
      const bool measured = std::chrono::steady_clock::now() - start >= std::chrono::seconds(o.learn) &&
                            std::chrono::steady_clock::now() - start < std::chrono::seconds(o.seconds);
      if (measured) result.session_seconds += 0.1 * live;
      result.peak_sessions = std::max(result.peak_sessions, live);
      result.scale_ups = s.stats.scale_ups;
      result.scale_downs = s.stats.scale_downs;
      t.expires_after(100ms);
      co_await t.async_wait(asio::use_awaitable);
    }
  }, asio::detached);
  while (done < static_cast<int>(load.size())) io.run_one();
  sampling = false;
  bool stopped = false;
  r->shutdown(5s, [&] { stopped = true; });
  while (!stopped) io.run_one();
  io.run();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--seconds") o.seconds = next();
    else if (a == "--learn") o.learn = next();
    else if (a == "--seed") o.seed = static_cast<unsigned>(next());
    else if (a == "--cold-start-ms") o.cold_start_ms = next();
    else if (a == "--hold-ms") o.hold_ms = next();
    else if (a == "--period") o.period = next();
    else if (a == "--burst") o.burst = next();
    else if (a == "--json") o.json = true;
    else {
      std::fprintf(stderr, "usage: autoscale_replay [--seconds N] [--learn N] [--seed N] [--cold-start-ms N] "
                           "[--hold-ms N] [--period S] [--burst S] [--json]\n");
      return 2;
    }
  }
  const std::vector<double> load = arrivals(o);

  PoolConfig base;
  base.name = "replay";
  base.max_starting = 16;
  base.early_reject = false;
  base.idle_timeout = 5min;

  PoolConfig fixed_max = base;
  fixed_max.min = fixed_max.max = o.max;
  PoolConfig fixed_min = base;
  fixed_min.min = fixed_min.max = o.min;
  PoolConfig autoscaled = base;
  autoscaled.min = o.min;
  autoscaled.max = o.max;
  autoscaled.idle_timeout = 2s;  // sessions started for waiters beyond the target
  autoscaled.autoscale.enabled = true;
  autoscaled.autoscale.down_window = 5s;
  autoscaled.autoscale.cooldown_down = 1s;
  autoscaled.autoscale.step_down = 0;
  autoscaled.autoscale.season = std::chrono::seconds(o.period);

  std::vector<Result> results;
  results.push_back(replay("fixed at max", fixed_max, o, load));
  results.push_back(replay("fixed at min", fixed_min, o, load));
  results.push_back(replay("autoscaled", autoscaled, o, load));

  if (o.json) {
    std::printf("[");
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::printf("%s{\"pool\":\"%s\",\"requests\":%zu,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,"
                  "\"timeouts\":%d,\"session_seconds\":%.1f,\"peak\":%d,\"scale_ups\":%llu,\"scale_downs\":%llu}",
                  i ? "," : "", r.name.c_str(), r.waits_ms.size(), percentile(r.waits_ms, 0.5),
                  percentile(r.waits_ms, 0.99), percentile(r.waits_ms, 1.0), r.timeouts, r.session_seconds,
                  r.peak_sessions, static_cast<unsigned long long>(r.scale_ups),
                  static_cast<unsigned long long>(r.scale_downs));
    }
    std::printf("]\n");
    return 0;
  }
  std::printf("%zu requests over %d s (base %.0f/s, %.0f/s for %d s every %d s), hold %d ms, cold start %d ms; "
              "measured after %d s\n",
              load.size(), o.seconds, o.base_rate, o.burst_rate, o.burst, o.period, o.hold_ms, o.cold_start_ms,
              o.learn);
  std::printf("%-14s %9s %9s %9s %8s %12s %5s %10s\n", "POOL", "P50 MS", "P99 MS", "MAX MS", "TIMEOUTS",
              "SESSION-S", "PEAK", "UPS/DOWNS");
  for (const Result& r : results) {
    std::printf("%-14s %9.1f %9.1f %9.1f %8d %12.1f %5d %4llu/%-5llu\n", r.name.c_str(),
                percentile(r.waits_ms, 0.5), percentile(r.waits_ms, 0.99), percentile(r.waits_ms, 1.0),
                r.timeouts, r.session_seconds, r.peak_sessions, static_cast<unsigned long long>(r.scale_ups),
                static_cast<unsigned long long>(r.scale_downs));
  }
  return 0;
}
