// Alerting: measures the pools every alerts.interval, runs the alert rules
// (monitor::AlertEngine) and delivers what changed: the log, the event
// stream (alert_firing, alert_resolved), the store's alert history, and
// webhooks (docs/alerts.md).
//
// Each round asks every pool's scheduler for a snapshot and waits at most a
// second for the answers; a scheduler that has not answered is measured as
// stalled (the scheduler_stalled rule, and /health degraded once it has been
// silent for alerts.stall_after). The rounds run on the daemon's control
// strand, never on a pool's.
//
// Webhooks: each URL has its own bounded outbox and sender, so a dead or slow
// receiver delays only its own deliveries. A delivery is a POST of the change
// as JSON, tried up to webhook_attempts times with backoff (1 s, 2 s, 4 s, ...
// at most 60 s) while the answer is not 2xx (a 4xx other than 408 and 429 is
// final); a full outbox drops its oldest delivery. Nothing the webhooks do
// blocks a pool.
//
// Thread-safety: start() and stop() on the control strand; on_event(),
// report() and stalled() from any thread.
//
//   Alerting alerting(control, config, runners, {.log = &log, .bus = &bus, .store = store, .ledger = &ledger});
//   alerting.start();
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/json/object.hpp>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "monitor/alerts.h"
#include "monitor/event_bus.h"
#include "runtime/log.h"
#include "runtime/pool_runner.h"
#include "server/config.h"

namespace poolkeeper::store {
class Store;
}

namespace poolkeeper::server {

class Ledger;

class Alerting {
 public:
  struct Parts {
    runtime::Log* log = nullptr;
    monitor::EventBus* bus = nullptr;  // null: no events
    store::Store* store = nullptr;     // null: the history is not kept across restarts
    Ledger* ledger = nullptr;          // null: no budget rule
  };

  Alerting(boost::asio::any_io_executor control, const DaemonConfig& config,
           std::vector<std::shared_ptr<runtime::PoolRunner>> runners, Parts parts);
  ~Alerting();
  Alerting(const Alerting&) = delete;
  Alerting& operator=(const Alerting&) = delete;

  void start();
  // Ends the rounds and the webhook senders (deliveries still waiting are
  // counted as dropped and logged).
  void stop();

  // Every core event of `pool` (the runner's strand).
  void on_event(const std::string& pool, const core::Event& event);

  // GET /v1/alerts: the rules, active alerts, recent changes, webhook counts.
  boost::json::object report() const;
  // Pools whose scheduler has not answered for alerts.stall_after, and
  // "alerting" itself when its rounds stopped coming.
  std::vector<std::string> stalled(TimePoint now) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace poolkeeper::server
