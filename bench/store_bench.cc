// Benchmarks of the store's durable writes (not tests: numbers only).
//
//   BM_RawFdatasync        a 4 KiB pwrite and an fdatasync of one file in the
//                          same directory: the floor of a durable write here.
//   BM_DurableWrite/threads:N
//                          N requesters, each writing one charge (a Charge
//                          record: a ledger row and a daily-total upsert) and
//                          waiting on sync() until it is committed, as a
//                          priced pool's acquire does.
//
// Counters: items_per_second (durable writes a second, all threads) and
// records_per_commit. Runs against files under $TMPDIR (default /tmp):
//
//   build/release/bench/store_bench --benchmark_min_time=2
#include <fcntl.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "store/store.h"

namespace {

namespace fs = std::filesystem;
using poolkeeper::store::Store;

fs::path scratch_dir() {
  const char* tmp = std::getenv("TMPDIR");
  fs::path dir = fs::path(tmp != nullptr ? tmp : "/tmp") / ("poolkeeper_store_bench." + std::to_string(getpid()));
  fs::create_directories(dir);
  return dir;
}

const fs::path& dir() {
  static const fs::path d = scratch_dir();
  return d;
}

std::unique_ptr<Store> g_store;  // opened in main

void BM_RawFdatasync(benchmark::State& state) {
  const std::string path = (dir() / "raw.bin").string();
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY, 0644);
  if (fd < 0) {
    state.SkipWithError("cannot open the scratch file");
    return;
  }
  std::vector<char> page(4096, 'x');
  for (auto _ : state) {
    if (::pwrite(fd, page.data(), page.size(), 0) != static_cast<ssize_t>(page.size()) || ::fdatasync(fd) != 0) {
      state.SkipWithError("pwrite or fdatasync failed");
      break;
    }
  }
  ::close(fd);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RawFdatasync)->UseRealTime();

void BM_DurableWrite(benchmark::State& state) {
  Store& s = *g_store;
  const poolkeeper::store::StoreStats before = s.stats();
  std::int64_t failures = 0;
  for (auto _ : state) {
    const std::uint64_t mark = s.mark();
    s.write({poolkeeper::store::Charge{.at_ms = 1'700'000'000'000,
                                       .day = 19'675,
                                       .pool = "bench",
                                       .tenant = "t",
                                       .session = static_cast<std::uint64_t>(state.thread_index() + 1),
                                       .kind = "use",
                                       .micros = 1'000}},
            nullptr);
    std::promise<bool> committed;
    s.sync(mark, [&committed](std::expected<void, poolkeeper::Error> r) { committed.set_value(r.has_value()); });
    if (!committed.get_future().get()) ++failures;
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    const poolkeeper::store::StoreStats after = s.stats();
    const std::int64_t commits = after.batches - before.batches;
    state.counters["records_per_commit"] =
        commits > 0 ? static_cast<double>(after.records - before.records) / static_cast<double>(commits) : 0;
  }
  state.counters["failures"] = benchmark::Counter(static_cast<double>(failures), benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_DurableWrite)
    ->Threads(1)
    ->Threads(4)
    ->Threads(16)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  auto opened = Store::open({.path = (dir() / "bench.db").string()});
  if (!opened) {
    std::fprintf(stderr, "store_bench: %s\n", opened.error().message.c_str());
    return 1;
  }
  g_store = std::move(*opened);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_store.reset();
  std::error_code ec;
  fs::remove_all(dir(), ec);
  return 0;
}
