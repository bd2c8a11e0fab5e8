#include "server/daemon.h"

#include <signal.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "drivers/process/process_driver.h"
#include "runtime/pool_runner.h"
#include "server/api.h"
#include "server/http_server.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

}  // namespace

int run_daemon(const DaemonConfig& config, runtime::Log& log) {
  const unsigned threads = std::max(2u, std::thread::hardware_concurrency());
  asio::io_context io(static_cast<int>(threads));
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work(io.get_executor());

  std::vector<std::shared_ptr<runtime::PoolRunner>> runners;
  for (const PoolEntry& e : config.pools) {
    auto driver = drivers::ProcessDriver::create(e.process, e.pool.name, &log);
    if (!driver) {
      log.write(runtime::LogLevel::kError, "pool refused",
                {{"pool", e.pool.name}, {"why", driver.error().message}});
      return 2;
    }
    auto runner = runtime::PoolRunner::create(io.get_executor(), e.pool, std::move(*driver),
                                              {.log = &log});
    if (!runner) {
      log.write(runtime::LogLevel::kError, "pool refused",
                {{"pool", e.pool.name}, {"why", runner.error().message}});
      return 2;
    }
    runners.push_back(*runner);
  }

  Api api(config, runners);
  HttpServer server(io.get_executor(), config.server, api, log);
  auto port = server.listen();
  if (!port) {
    log.write(runtime::LogLevel::kError, "cannot listen", {{"why", port.error().message}});
    return 2;
  }
  for (auto& r : runners) r->start();
  server.start();
  const std::string address = (config.server.host.find(':') != std::string::npos
                                   ? "[" + config.server.host + "]"
                                   : config.server.host) +
                              ":" + std::to_string(*port);
  log.write(runtime::LogLevel::kInfo, "listening",
            {{"address", address},
             {"pools", std::to_string(runners.size())},
             {"auth", config.server.auth == AuthMode::kNone ? "none" : "tokens"},
             {"config", config.source}});

  // Signals and the shutdown run on one strand: their state needs no lock.
  auto control = asio::make_strand(io);
  asio::signal_set signals(control, SIGTERM, SIGINT, SIGHUP);

  // New work is refused from now on; every runner at once answers its
  // waiters, lets its leases finish within the grace (clients can still reach
  // the daemon to execute on and release them) and stops its workers. Then
  // the server closes.
  auto shut_down = [&]() -> asio::awaitable<void> {
    api.set_shutting_down();
    std::size_t left = runners.size();
    asio::steady_timer all_stopped(control, asio::steady_timer::time_point::max());
    for (auto& r : runners) {
      r->shutdown(config.server.shutdown_grace, asio::bind_executor(control, [&] {
                    if (--left == 0) all_stopped.cancel();
                  }));
    }
    while (left > 0) (void)co_await all_stopped.async_wait(asio::as_tuple(asio::use_awaitable));
    server.stop();
    // Responses in flight get a moment to be written.
    for (int i = 0; i < 50 && server.connections() > 0; ++i) {
      asio::steady_timer t(control, 100ms);
      (void)co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    log.write(runtime::LogLevel::kInfo, "stopped", {});
    signals.cancel();
    work.reset();
    io.stop();
  };

  asio::co_spawn(
      control,
      [&]() -> asio::awaitable<void> {
        bool shutting_down = false;
        for (;;) {
          auto [ec, sig] = co_await signals.async_wait(asio::as_tuple(asio::use_awaitable));
          if (ec) co_return;
          if (sig == SIGHUP) {
            log.write(runtime::LogLevel::kWarn,
                      "SIGHUP: reloading is not supported yet; restart to apply changes", {});
            continue;
          }
          if (shutting_down) {
            log.write(runtime::LogLevel::kWarn, "second signal: exiting at once", {});
            std::_Exit(1);
          }
          shutting_down = true;
          log.write(runtime::LogLevel::kInfo, "shutting down",
                    {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
                     {"grace", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                  config.server.shutdown_grace)
                                                  .count()) +
                                   " s"}});
          asio::co_spawn(control, shut_down(), asio::detached);  // signals keep being watched
        }
      },
      asio::detached);

  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool) t.join();
  return 0;
}

}  // namespace poolkeeper::server
