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
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <boost/json/serialize.hpp>

#include "drivers/process/process_driver.h"
#include "monitor/event_bus.h"
#include "drivers/remote/remote_driver.h"
#include "runtime/pool_runner.h"
#include "server/alerting.h"
#include "server/api.h"
#include "server/http_server.h"
#include "server/ledger.h"
#include "server/views.h"
#include "store/store.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// What a reload cannot apply to a running daemon, by section.
std::vector<std::string> needs_restart(const DaemonConfig& was, const DaemonConfig& now) {
  std::vector<std::string> out;
  if (!(was.server == now.server)) out.emplace_back("server");
  if (!(was.store == now.store)) out.emplace_back("store");
  if (!(was.log == now.log)) out.emplace_back("log");
  // Budgets apply on reload (the ledger); everything else of a tenant waits.
  auto without_budgets = [](std::vector<TenantConfig> tenants) {
    for (TenantConfig& t : tenants) t.budget = {};
    return tenants;
  };
  if (without_budgets(was.tenants) != without_budgets(now.tenants)) out.emplace_back("tenants");
  auto find = [](const DaemonConfig& c, const std::string& name) -> const PoolEntry* {
    for (const PoolEntry& e : c.pools) {
      if (e.pool.name == name) return &e;
    }
    return nullptr;
  };
  for (const PoolEntry& e : now.pools) {
    const PoolEntry* old = find(was, e.pool.name);
    if (old == nullptr) {
      out.push_back("pools." + e.pool.name + " (new pool)");
    } else if (!(old->process == e.process) || !(old->remote == e.remote) || old->driver != e.driver) {
      out.push_back("pools." + e.pool.name + " (driver settings)");
    }
  }
  for (const PoolEntry& e : was.pools) {
    if (find(now, e.pool.name) == nullptr) out.push_back("pools." + e.pool.name + " (removed)");
  }
  return out;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string s;
  for (const std::string& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

std::string random_hex() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

}  // namespace

int run_daemon(const DaemonConfig& config, runtime::Log& log) {
  const unsigned threads = std::max(2u, std::thread::hardware_concurrency());
  asio::io_context io(static_cast<int>(threads));
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work(io.get_executor());

  // The store outlives the ledger, the ledger the pools that report to it.
  std::unique_ptr<store::Store> store;
  if (config.store.enabled) {
    auto opened = store::Store::open(
        {.path = config.store.path,
         .sync_to_disk = config.store.sync_to_disk,
         .retention = std::chrono::duration_cast<std::chrono::milliseconds>(config.store.retention),
         .daily_retention =
             std::chrono::duration_cast<std::chrono::milliseconds>(config.store.daily_retention)});
    if (!opened) {
      log.write(runtime::LogLevel::kError, "cannot open the store", {{"why", opened.error().message}});
      return 2;
    }
    store = std::move(*opened);
    log.write(runtime::LogLevel::kInfo, "store open",
              {{"path", config.store.path},
               {"schema", std::to_string(store->schema_version())},
               {"run", std::to_string(store->run_id())}});
  }
  Ledger ledger(config, store.get(), wall_ms, log);
  // What happens, live (/v1/events, /v1/ws).
  monitor::EventBus bus({.ring = config.server.event_ring, .queue = config.server.event_queue});
  std::set<std::string> remote_pools;
  for (const PoolEntry& e : config.pools) {
    if (e.driver == "remote") remote_pools.insert(e.pool.name);
  }
  auto reconciled = ledger.reconcile(remote_pools);
  if (!reconciled) {
    log.write(runtime::LogLevel::kError, "cannot reconcile the store", {{"why", reconciled.error().message}});
    return 2;
  }
  if (reconciled->closed > 0) {
    log.write(runtime::LogLevel::kWarn, "reconciled sessions an earlier run left open",
              {{"sessions", std::to_string(reconciled->closed)}});
  }
  for (const store::OpenSession& s : reconciled->unreachable) {
    log.write(runtime::LogLevel::kError,
              "a paid session an earlier run left open belongs to a pool that is no longer remote: "
              "close it at its provider (it stays open in the store until its pool is back)",
              {{"pool", s.pool}, {"session", std::to_string(s.session)}, {"external_id", s.external_id}});
  }
  if (auto restored = ledger.restore(); !restored) {
    log.write(runtime::LogLevel::kError, "cannot read the cost totals",
              {{"why", restored.error().message}});
    return 2;
  }

  // Paid sessions carry the store's name and this run at their provider.
  const std::string instance = store ? store->instance_id() : random_hex();
  const std::string run = store ? std::to_string(store->run_id()) : "0";
  if (!store && !remote_pools.empty()) {
    log.write(runtime::LogLevel::kWarn,
              "remote pools without a store: after a crash nothing records which paid sessions were open", {});
  }
  std::vector<std::shared_ptr<runtime::PoolRunner>> runners;
  std::map<std::string, drivers::RemoteDriver*> remotes;  // owned by their runners
  std::atomic<Alerting*> alerting_ptr{nullptr};  // set before the runners start
  for (const PoolEntry& e : config.pools) {
    std::expected<std::unique_ptr<runtime::Driver>, Error> driver = std::unexpected(Error());
    if (e.driver == "remote") {
      auto remote = drivers::RemoteDriver::create(e.remote, e.pool.name, instance, run, &log);
      if (remote) {
        remotes[e.pool.name] = remote->get();
        std::vector<std::string> reconciling;
        for (const store::OpenSession& s : reconciled->remote) {
          if (s.pool == e.pool.name) reconciling.push_back(s.external_id);
        }
        (*remote)->leave_to_reconciliation(reconciling);
        (*remote)->set_sweep_hook([&ledger, name = e.pool.name](const std::vector<drivers::SweptSession>& swept) {
          ledger.swept(name, swept);
        });
      }
      driver = remote ? std::expected<std::unique_ptr<runtime::Driver>, Error>(std::move(*remote))
                      : std::unexpected(remote.error());
    } else {
      auto process = drivers::ProcessDriver::create(e.process, e.pool.name, &log);
      driver = process ? std::expected<std::unique_ptr<runtime::Driver>, Error>(std::move(*process))
                       : std::unexpected(process.error());
    }
    if (!driver) {
      log.write(runtime::LogLevel::kError, "pool refused",
                {{"pool", e.pool.name}, {"why", driver.error().message}});
      return 2;
    }
    auto runner = runtime::PoolRunner::create(
        io.get_executor(), e.pool, std::move(*driver),
        {.log = &log,
         .on_event = [&ledger, &bus, &alerting_ptr, name = e.pool.name](const core::Event& ev) {
           ledger.on_event(name, ev);
           bus.publish(name, ev);
           if (Alerting* a = alerting_ptr.load(std::memory_order_acquire)) a->on_event(name, ev);
         }});
    if (!runner) {
      log.write(runtime::LogLevel::kError, "pool refused",
                {{"pool", e.pool.name}, {"why", runner.error().message}});
      return 2;
    }
    runners.push_back(*runner);
  }

  // A spent budget stops the pool's starts (and drains it if so configured).
  ledger.set_budget_hook([&runners](const BudgetChange& c) {
    for (auto& r : runners) {
      if (r->name() != c.pool) continue;
      r->with_core<bool>(
          [c](core::PoolCore& core, TimePoint now, core::Output& out) {
            core.set_budget_exceeded(c.exceeded, c.why, now, out);
            if (c.drain) core.drain(now, out);
            return true;
          },
          asio::detached);
    }
  });

  // Signals, the books, alerting and the shutdown run on one strand.
  auto control = asio::make_strand(io);
  Alerting alerting(control, config, runners,
                    {.log = &log, .bus = &bus, .store = store.get(), .ledger = &ledger});
  alerting_ptr.store(&alerting, std::memory_order_release);

  Api api(config, runners);
  api.set_ledger(&ledger);
  api.set_event_bus(&bus);
  api.set_alerting(&alerting);
  HttpServer server(io.get_executor(), config.server, api, log);
  auto port = server.listen();
  if (!port) {
    log.write(runtime::LogLevel::kError, "cannot listen", {{"why", port.error().message}});
    return 2;
  }
  for (auto& r : runners) r->start();
  server.start();
  asio::post(control, [&alerting] { alerting.start(); });

  const std::string address = (config.server.host.find(':') != std::string::npos
                                   ? "[" + config.server.host + "]"
                                   : config.server.host) +
                              ":" + std::to_string(*port);
  log.write(runtime::LogLevel::kInfo, "listening",
            {{"address", address},
             {"pools", std::to_string(runners.size())},
             {"auth", config.server.auth == AuthMode::kNone ? "none" : "tokens"},
             {"config", config.source}});


  // Time charges and budgets, once a second (on the control strand, like the
  // shutdown that stops it).
  asio::steady_timer books_timer(control);
  bool books_stopped = false;
  asio::co_spawn(
      control,
      [&]() -> asio::awaitable<void> {
        while (!books_stopped) {
          books_timer.expires_after(1s);
          (void)co_await books_timer.async_wait(asio::as_tuple(asio::use_awaitable));
          ledger.tick();
        }
      },
      asio::detached);
  asio::signal_set signals(control, SIGTERM, SIGINT, SIGHUP);

  // Each pool's status, at server.status_interval, while anyone listens.
  asio::steady_timer status_timer(control);
  bool status_stopped = config.server.status_interval.count() == 0;
  asio::co_spawn(
      control,
      [&]() -> asio::awaitable<void> {
        while (!status_stopped) {
          status_timer.expires_after(config.server.status_interval);
          (void)co_await status_timer.async_wait(asio::as_tuple(asio::use_awaitable));
          if (status_stopped || bus.subscribers() == 0) continue;
          for (auto& r : runners) {
            auto snapshotting = r->snapshot(asio::use_awaitable);
            runtime::PoolSnapshot snap = co_await std::move(snapshotting);
            std::string fields = boost::json::serialize(stats_json(snap.stats));
            bus.publish("pool_status", r->name(), std::string_view(fields).substr(1, fields.size() - 2), false);
          }
        }
      },
      asio::detached);

  // Paid sessions an earlier run left open are closed at their provider and
  // charged up to then (retried while the provider cannot be reached: they
  // stay open in the store until it answers); then each remote pool sweeps
  // its provider for sessions no record knew of (a create whose answer was
  // lost in the crash). On the control strand, stopped by the shutdown.
  bool reconciling_stopped = false;
  std::vector<asio::steady_timer*> reconcile_waits;
  auto pause = [&](Duration d) -> asio::awaitable<bool> {
    asio::steady_timer t(control, d);
    reconcile_waits.push_back(&t);
    (void)co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    std::erase(reconcile_waits, &t);
    co_return !reconciling_stopped;
  };
  for (auto& [name, driver] : remotes) {
    std::vector<store::OpenSession> left;
    for (const store::OpenSession& s : reconciled->remote) {
      if (s.pool == name) left.push_back(s);
    }
    asio::co_spawn(
        control,
        [&, pool = name, driver = driver, left = std::move(left)]() -> asio::awaitable<void> {
          Duration backoff = 1s;
          for (const store::OpenSession& s : left) {
            for (;;) {
              auto closing = driver->close_session(s.external_id);
              std::expected<drivers::RemoteClosed, Error> closed = co_await std::move(closing);
              if (reconciling_stopped) co_return;
              if (closed) {
                const bool was_running = *closed == drivers::RemoteClosed::kClosed;
                auto charged = ledger.remote_closed(s, wall_ms(), was_running);
                log.write(charged ? runtime::LogLevel::kWarn : runtime::LogLevel::kError,
                          was_running ? "closed a paid session an earlier run left open"
                                      : "a paid session an earlier run left open was already gone",
                          {{"pool", pool},
                           {"session", std::to_string(s.session)},
                           {"external_id", s.external_id},
                           {charged ? "charged_micros" : "store_error",
                            charged ? std::to_string(*charged) : charged.error().message}});
                break;
              }
              log.write(runtime::LogLevel::kWarn,
                        "cannot close a paid session an earlier run left open; retrying",
                        {{"pool", pool}, {"external_id", s.external_id}, {"why", closed.error().message},
                         {"retry_in_ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(backoff).count())}});
              if (!co_await pause(backoff)) co_return;
              backoff = std::min<Duration>(backoff * 2, 60s);
            }
          }
          if (!driver->can_sweep()) co_return;
          backoff = 1s;
          for (;;) {
            auto sweeping = driver->sweep();
            auto swept = co_await std::move(sweeping);
            if (reconciling_stopped) co_return;
            if (swept) {  // the sweep hook charged what it deleted
              log.write(runtime::LogLevel::kInfo, "swept the provider for untracked sessions",
                        {{"pool", pool}, {"deleted", std::to_string(swept->size())}});
              co_return;
            }
            log.write(runtime::LogLevel::kWarn, "cannot sweep the provider; retrying",
                      {{"pool", pool}, {"why", swept.error().message}});
            if (!co_await pause(backoff)) co_return;
            backoff = std::min<Duration>(backoff * 2, 60s);
          }
        },
        asio::detached);
  }

  // New work is refused from now on; every runner at once answers its
  // waiters, lets its leases finish within the grace (clients can still reach
  // the daemon to execute on and release them) and stops its workers. Then
  // the server closes.
  auto shut_down = [&]() -> asio::awaitable<void> {
    api.set_shutting_down();
    reconciling_stopped = true;
    for (asio::steady_timer* t : reconcile_waits) t->cancel();
    std::size_t left = runners.size();
    asio::steady_timer all_stopped(control, asio::steady_timer::time_point::max());
    for (auto& r : runners) {
      r->shutdown(config.server.shutdown_grace, asio::bind_executor(control, [&] {
                    if (--left == 0) all_stopped.cancel();
                  }));
    }
    while (left > 0) (void)co_await all_stopped.async_wait(asio::as_tuple(asio::use_awaitable));
    ledger.tick();  // the last time charges, after every session stopped
    books_stopped = true;
    books_timer.cancel();
    status_stopped = true;
    status_timer.cancel();
    alerting.stop();
    bus.close_all("the daemon is stopping");  // after the pools' last events
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

  // SIGHUP: the file is read again (with the environment as it is now). Pool
  // sizes, queue, limits, health and client-session keys apply to the running
  // pools without dropping a lease or a waiter (PoolCore::reconfigure); what
  // a running daemon cannot change (server, store, log, tenants, pools added
  // or removed, a pool's driver settings) is named in the log and waits for a
  // restart. A bad file changes nothing.
  DaemonConfig current = config;
  auto reload = [&]() -> asio::awaitable<void> {
    auto next = load_config(config.source, process_environment());
    if (!next) {
      log.write(runtime::LogLevel::kError, "reload refused: the running configuration stays",
                {{"why", next.error().message}});
      co_return;
    }
    const std::vector<std::string> later = needs_restart(current, *next);
    int applied = 0;
    for (const PoolEntry& e : next->pools) {
      auto it = std::find_if(runners.begin(), runners.end(),
                             [&](const auto& r) { return r->name() == e.pool.name; });
      if (it == runners.end()) continue;
      std::function<std::expected<void, Error>(core::PoolCore&, TimePoint, core::Output&)> apply =
          [pool = e.pool](core::PoolCore& core, TimePoint now, core::Output& out) {
            return core.reconfigure(pool, now, out);
          };
      auto reconfiguring = (*it)->with_core(std::move(apply), asio::use_awaitable);
      std::expected<void, Error> r = co_await std::move(reconfiguring);
      if (!r) {
        log.write(runtime::LogLevel::kError, "pool reload refused",
                  {{"pool", e.pool.name}, {"why", r.error().message}});
        continue;
      }
      ++applied;
      log.write(runtime::LogLevel::kInfo, "pool reloaded",
                {{"pool", e.pool.name},
                 {"min", std::to_string(e.pool.min)},
                 {"max", std::to_string(e.pool.max)}});
      // What was applied is what the next reload compares against.
      for (PoolEntry& c : current.pools) {
        if (c.pool.name == e.pool.name) c.pool = e.pool;
      }
    }
    // Prices and budgets (pools', tenants', global) apply from now.
    ledger.configure(*next);
    if (!later.empty()) {
      log.write(runtime::LogLevel::kWarn, "reload: these changes need a restart",
                {{"sections", joined(later)}});
    }
    log.write(runtime::LogLevel::kInfo, "reloaded",
              {{"pools", std::to_string(applied)}, {"config", config.source}});
  };

  asio::co_spawn(
      control,
      [&]() -> asio::awaitable<void> {
        bool shutting_down = false;
        for (;;) {
          auto [ec, sig] = co_await signals.async_wait(asio::as_tuple(asio::use_awaitable));
          if (ec) co_return;
          if (sig == SIGHUP) {
            if (shutting_down) continue;
            log.write(runtime::LogLevel::kInfo, "SIGHUP: reloading", {{"config", config.source}});
            co_await reload();  // one at a time: signals arriving meanwhile wait
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
  runners.clear();  // nothing reports to the ledger any more
  if (store) {
    store->close();  // commits what is queued
    const store::StoreStats st = store->stats();
    log.write(runtime::LogLevel::kInfo, "store closed",
              {{"transactions", std::to_string(st.batches)},
               {"records", std::to_string(st.records)},
               {"largest_transaction", std::to_string(st.largest_batch)},
               {"failed_transactions", std::to_string(st.failed_batches)}});
  }
  return 0;
}

}  // namespace poolkeeper::server
