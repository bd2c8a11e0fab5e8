// A short demo of the poolkeeper library: a pool of "connections" under a
// concurrent load, with priorities, client sessions and broken objects, then
// its statistics.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "poolkeeper/pool.h"

namespace {

struct Connection {
  int serial = 0;
  std::uint64_t queries = 0;
};

double ms(poolkeeper::Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  const int threads = argc > 1 ? std::stoi(argv[1]) : 8;
  const auto run_for = argc > 2 ? std::chrono::milliseconds(std::stoi(argv[2])) : 2000ms;

  std::atomic<int> serials{0};
  std::atomic<int> destroyed{0};
  poolkeeper::Factory<Connection> factory{
      .create = [&]() -> std::expected<Connection, std::string> {
        return Connection{.serial = ++serials};
      },
      .validate = [](Connection&) { return true; },
      .reset = [](Connection&) { return true; },
      .destroy = [&](Connection&) { ++destroyed; },
  };
  poolkeeper::PoolConfig config;
  config.name = "demo";
  config.min = 2;
  config.max = 4;
  config.overflow = 2;
  config.min_idle = 1;
  config.idle_timeout = 200ms;
  config.lease_timeout = 5s;
  config.max_uses = 10000;

  auto pool = poolkeeper::Pool<Connection>::create(config, factory);
  if (!pool) {
    std::fprintf(stderr, "bad config: %s\n", pool.error().message.c_str());
    return 2;
  }
  std::printf("poolkeeper demo: %d threads for %lld ms on a pool of %d..%d (+%d overflow)\n",
              threads, static_cast<long long>(run_for.count()), config.min, config.max,
              config.overflow);

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> ok{0}, failed{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const std::string client = "user-" + std::to_string(t % 3);
      std::uint64_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        ++i;
        auto lease = (*pool)->acquire({.timeout = 100ms,
                                       .priority = t == 0 ? poolkeeper::kHighPriority
                                                          : poolkeeper::kNormalPriority,
                                       .client_session = (i % 4 == 0) ? client : ""});
        if (!lease) {
          ++failed;
          continue;
        }
        ++(*lease)->queries;
        if (i % 1000 == 0) lease->mark_broken();
        ++ok;
      }
    });
  }
  std::this_thread::sleep_for(run_for);
  stop = true;
  for (auto& w : workers) w.join();

  const poolkeeper::PoolStats s = (*pool)->stats();
  std::printf("\n%-28s %llu\n", "leases granted", static_cast<unsigned long long>(s.acquisitions));
  std::printf("%-28s %.0f /s\n", "throughput",
              static_cast<double>(ok.load()) / std::chrono::duration<double>(run_for).count());
  std::printf("%-28s %llu\n", "granted without waiting", static_cast<unsigned long long>(s.immediate));
  std::printf("%-28s %llu\n", "acquire timeouts", static_cast<unsigned long long>(s.timeouts));
  std::printf("%-28s p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  max %.3f ms\n", "wait", ms(s.wait.p50),
              ms(s.wait.p95), ms(s.wait.p99), ms(s.wait.max));
  std::printf("%-28s %llu created, %llu closed, %llu overflow, %llu broken\n", "sessions",
              static_cast<unsigned long long>(s.sessions_created),
              static_cast<unsigned long long>(s.sessions_closed),
              static_cast<unsigned long long>(s.overflow_created),
              static_cast<unsigned long long>(s.broken_releases));
  std::printf("%-28s %.4f\n", "reuse rate", s.reuse_rate);
  std::printf("%-28s %llu hits, %llu misses, %d client sessions\n", "affinity",
              static_cast<unsigned long long>(s.affinity_hits),
              static_cast<unsigned long long>(s.affinity_misses), s.client_sessions_active);
  std::printf("%-28s", "sessions now");
  for (int i = 0; i < poolkeeper::kSessionStateCount; ++i) {
    std::printf(" %s=%d", std::string(poolkeeper::to_string(static_cast<poolkeeper::SessionState>(i))).c_str(),
                s.sessions_by_state[static_cast<std::size_t>(i)]);
  }
  std::printf("\n");
  pool->reset();
  std::printf("%-28s %d created, %d destroyed\n", "after shutdown", serials.load(), destroyed.load());
  return serials.load() == destroyed.load() ? 0 : 1;
}
