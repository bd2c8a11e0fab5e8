// Acquire+release cycles per second: Pool<T> with all features on versus a
// plain mutex + condition_variable pool (bench/baseline_pool.h).
//
// Each case is one (threads, pool size) point: every thread loops acquire ->
// (optional tiny work) -> release as fast as it can; nothing else touches the
// object while it is held. Counters:
//   items_per_second   cycles per second over all threads (UseRealTime: the
//                      threads' own wall-clock loop times, averaged)
//   wall_cycles_per_s  cycles over the wall time until the slowest thread is
//                      done (not flattered by threads that finish early)
//   fairness           when the first thread finished / when the last did:
//                      1 = all together, ~1/threads = one after another
//   failures           acquires that failed (should be 0)
// The pool is built and warmed in Setup, outside the measured time. Each case
// runs 0.2 s by default (--benchmark_min_time=<s> overrides).
//
//   build/release/bench/pool_bench                              # all cases, ~0.2 s each
//   build/release/bench/pool_bench --benchmark_filter='Pool/'   # Pool<T> only
//   python3 bench/report.py build/release/bench/pool_bench      # median table (markdown)
//
// Case names: BM_<Impl>Cycle/size:<s>/work:<w>/real_time/threads:<n>, where
// Impl is Pool or Baseline and w is the number of spin rounds done while
// holding the object (0 for the main table).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "baseline_pool.h"
#include "poolkeeper/pool.h"

namespace {

using namespace std::chrono_literals;

// The pooled object: a little state, like a connection handle.
struct Conn {
  std::uint64_t id = 0;
  std::uint64_t uses = 0;
};

// Work done while holding the object: `rounds` dependent multiply-adds that
// the compiler cannot remove (a few ns each).
inline void spin(Conn& conn, std::int64_t rounds) {
  std::uint64_t x = conn.uses;
  for (std::int64_t i = 0; i < rounds; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    benchmark::DoNotOptimize(x);
  }
  conn.uses = x;
}

// "All features on", as a production pool would run: fixed size, every
// limit armed (with values far from the benchmark's time scale, so they cost
// bookkeeping but never fire), aging and early rejection on.
poolkeeper::PoolConfig all_features_config(int size) {
  poolkeeper::PoolConfig config;
  config.name = "bench";
  config.min = size;
  config.max = size;
  config.overflow = 0;
  config.idle_timeout = std::chrono::minutes(5);
  config.lease_timeout = std::chrono::minutes(1);
  config.max_lifetime = std::chrono::hours(1);
  config.max_uses = std::int64_t{1} << 50;
  config.validate_after_idle = poolkeeper::Duration{0};
  config.aging = std::chrono::seconds(1);
  config.early_reject = true;
  config.handoff_after = std::chrono::milliseconds(1);
  config.max_queue = 1024;
  return config;
}

// ------------------------------------------------------------ the loop

// Wall-clock bookkeeping shared by the threads of one run. Google Benchmark
// averages the threads' own loop times, which flatters a pool that lets one
// thread run ahead while the others starve (they finish later but the mean
// hides it), so each run also reports cycles over the wall time of the
// slowest thread, and how evenly the threads finished.
constexpr int kMaxThreads = 64;
poolkeeper::TimePoint g_started;
std::array<poolkeeper::TimePoint, kMaxThreads> g_finished;
std::atomic<std::int64_t> g_failures{0};

poolkeeper::TimePoint now() { return poolkeeper::real_clock().now(); }

double seconds(poolkeeper::Duration d) { return std::chrono::duration<double>(d).count(); }

// acquire -> (work) -> release, `state.max_iterations` times in every thread.
// `acquire` returns something that converts to bool and holds a Conn.
template <class Acquire>
void run_cycles(benchmark::State& state, Acquire&& acquire) {
  const std::int64_t work = state.range(1);
  const int thread = state.thread_index();
  benchmark::IterationCount done = 0;
  std::int64_t failures = 0;
  for (auto _ : state) {
    if (done == 0 && thread == 0) [[unlikely]] g_started = now();  // just past the start barrier
    {
      auto lease = acquire();
      if (lease) [[likely]] {
        Conn& conn = **lease;
        if (work > 0) spin(conn, work);
        benchmark::DoNotOptimize(conn.id);
      } else {
        ++failures;
        g_failures.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (++done == state.max_iterations) [[unlikely]] g_finished[thread] = now();
  }
  state.SetItemsProcessed(state.iterations() - failures);
  if (thread != 0) return;
  // The loop ends with a barrier: every thread has finished and recorded.
  poolkeeper::TimePoint first = g_finished[0];
  poolkeeper::TimePoint last = g_finished[0];
  for (int t = 1; t < state.threads(); ++t) {
    first = std::min(first, g_finished[t]);
    last = std::max(last, g_finished[t]);
  }
  const double wall = seconds(last - g_started);
  const std::int64_t all_failures = g_failures.exchange(0);
  const auto cycles = static_cast<double>(state.iterations() * state.threads() - all_failures);
  state.counters["wall_cycles_per_s"] = wall > 0 ? cycles / wall : 0;
  state.counters["failures"] = static_cast<double>(all_failures);
  // 1: all threads finished together; 1/threads: they ran one after another.
  state.counters["fairness"] = wall > 0 ? seconds(first - g_started) / wall : 1;
}

// ---------------------------------------------------------------- Pool<T>

std::unique_ptr<poolkeeper::Pool<Conn>> g_pool;
std::atomic<std::uint64_t> g_next_id{1};

void make_pool(const benchmark::State& state) {
  const int size = static_cast<int>(state.range(0));
  poolkeeper::Factory<Conn> factory{
      .create = []() -> std::expected<Conn, std::string> {
        return Conn{.id = g_next_id.fetch_add(1, std::memory_order_relaxed)};
      },
      .validate = [](Conn& c) { return c.id != 0; },
      .reset = [](Conn& c) { return c.id != 0; },
      .destroy = {},
  };
  poolkeeper::PoolOptions options;
  options.seed = 42;
  auto pool =
      poolkeeper::Pool<Conn>::create(all_features_config(size), std::move(factory), options);
  if (!pool) {
    fprintf(stderr, "pool_bench: Pool::create failed: %s\n", pool.error().message.c_str());
    std::abort();
  }
  g_pool = std::move(*pool);
  // Warm: wait until `min` objects are idle, so creation is not measured.
  for (int i = 0; i < 100000; ++i) {
    const auto stats = g_pool->stats();
    if (stats.sessions_by_state[static_cast<int>(poolkeeper::SessionState::kIdle)] >= size) return;
    std::this_thread::sleep_for(100us);
  }
  fprintf(stderr, "pool_bench: the pool did not warm up to %d objects in 10 s\n", size);
  std::abort();
}

void drop_pool(const benchmark::State&) { g_pool.reset(); }

void BM_PoolCycle(benchmark::State& state) {
  // Long enough that contention never times out; early rejection should
  // never trigger either, since predicted waits are microseconds.
  poolkeeper::AcquireOptions options;
  options.timeout = 10s;
  run_cycles(state, [&] { return g_pool->acquire(options); });
}

// --------------------------------------------------------------- baseline

std::unique_ptr<poolkeeper::bench::BaselinePool<Conn>> g_baseline;

void make_baseline(const benchmark::State& state) {
  std::uint64_t next = 1;
  g_baseline = std::make_unique<poolkeeper::bench::BaselinePool<Conn>>(
      static_cast<std::size_t>(state.range(0)), [&] { return Conn{.id = next++}; });
}

void drop_baseline(const benchmark::State&) { g_baseline.reset(); }

void BM_BaselineCycle(benchmark::State& state) {
  run_cycles(state, [&] { return g_baseline->acquire(10s); });
}

// ------------------------------------------------------------ registration

// Main table: sizes 1, 4, 16 x threads 1..16, no work while holding.
// Work variant: 64 spin rounds (~100-200 ns) while holding, fewer points.
void cases(benchmark::internal::Benchmark* b) {
  for (int size : {1, 4, 16}) b->Args({size, 0});
  b->ThreadRange(1, 16);  // 1, 2, 4, 8, 16
}
void work_cases(benchmark::internal::Benchmark* b) {
  for (int size : {1, 4}) b->Args({size, 64});
  for (int threads : {1, 4, 16}) b->Threads(threads);
}

BENCHMARK(BM_PoolCycle)
    ->Apply(cases)
    ->ArgNames({"size", "work"})
    ->Setup(make_pool)
    ->Teardown(drop_pool)
    ->UseRealTime();
BENCHMARK(BM_BaselineCycle)
    ->Apply(cases)
    ->ArgNames({"size", "work"})
    ->Setup(make_baseline)
    ->Teardown(drop_baseline)
    ->UseRealTime();
BENCHMARK(BM_PoolCycle)
    ->Apply(work_cases)
    ->ArgNames({"size", "work"})
    ->Setup(make_pool)
    ->Teardown(drop_pool)
    ->UseRealTime();
BENCHMARK(BM_BaselineCycle)
    ->Apply(work_cases)
    ->ArgNames({"size", "work"})
    ->Setup(make_baseline)
    ->Teardown(drop_baseline)
    ->UseRealTime();

}  // namespace

// BENCHMARK_MAIN, with a short default run: 0.2 s per case unless
// --benchmark_min_time is given (a per-benchmark MinTime() would override
// the flag in benchmark 1.7).
int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  std::string min_time = "--benchmark_min_time=0.2";
  bool has_min_time = false;
  for (char* a : args) has_min_time |= std::string_view(a).starts_with("--benchmark_min_time");
  if (!has_min_time) args.push_back(min_time.data());
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
