#include "server/alerting.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <optional>

#include "drivers/remote/rest_client.h"
#include "server/ledger.h"
#include "store/store.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;

double seconds_of(Duration d) { return std::chrono::duration<double>(d).count(); }

// What GET /v1/alerts lists and the webhooks receive.
struct Change {
  std::int64_t at_ms = 0;
  std::string rule;
  std::string subject;
  std::string state;  // "firing", "resolved"
  double value = 0;
  std::optional<double> threshold;  // unknown for history from before a restart
  std::string message;
};

json::object change_json(const Change& c) {
  return json::object{{"at", runtime::utc_text(WallTime(std::chrono::milliseconds(c.at_ms)))},
                      {"rule", c.rule},
                      {"subject", c.subject},
                      {"state", c.state},
                      {"value", c.value},
                      {"threshold", c.threshold ? json::value(*c.threshold) : json::value(nullptr)},
                      {"message", c.message}};
}

}  // namespace

struct Alerting::State : std::enable_shared_from_this<Alerting::State> {
  struct Pool {
    std::shared_ptr<runtime::PoolRunner> runner;
    monitor::PoolSampler sampler;
    bool asked = false;           // a snapshot request is outstanding
    TimePoint asked_at{};
    bool fresh = false;           // answered in this round
    runtime::PoolSnapshot latest{};
  };
  struct Webhook {
    std::string url;
    std::deque<std::string> outbox;
    std::unique_ptr<asio::steady_timer> wake;
    bool backing_off = false;  // waiting before a retry
    bool in_flight = false;    // a delivery is being tried
  };

  State(asio::any_io_executor ex, const DaemonConfig& config, std::vector<std::shared_ptr<runtime::PoolRunner>> runners,
        Parts p)
      : control(ex), settings(config.alerts), parts(p), engine(rules_of(config)), round_timer(ex), gather(ex) {
    for (const PoolEntry& e : config.pools) {
      for (const auto& [rule, threshold] : e.alert_thresholds) engine.set_threshold(rule, e.pool.name, threshold);
    }
    for (auto& r : runners) {
      monitor::PoolSampler sampler(r->name());
      pools.push_back(Pool{.runner = std::move(r), .sampler = std::move(sampler)});
    }
    if (!settings.webhooks.empty()) {
      if (auto c = drivers::RestClient::create({})) {
        client = std::move(*c);
      } else {
        parts.log->write(runtime::LogLevel::kError, "alert webhooks disabled", {{"why", c.error()}});
        settings.webhooks.clear();
      }
    }
    for (const std::string& url : settings.webhooks) {
      webhooks.push_back(std::make_unique<Webhook>(Webhook{url, {}, std::make_unique<asio::steady_timer>(ex), false, false}));
    }
    if (parts.store != nullptr) {
      if (auto saved = parts.store->recent_alerts(settings.history)) {
        for (const store::AlertRecord& r : *saved) {
          history.push_back({r.at_ms, r.rule, r.pool, r.state, r.value, std::nullopt, r.message});
        }
      }
    }
    last_round = real_clock().now();
  }

  static std::vector<monitor::AlertRule> rules_of(const DaemonConfig& config) {
    std::vector<monitor::AlertRule> rules;
    for (monitor::AlertRule r : monitor::builtin_rules()) {
      if (auto it = config.alerts.rules.find(r.name); it != config.alerts.rules.end()) {
        if (!it->second.enabled) continue;
        if (it->second.threshold) r.threshold = *it->second.threshold;
        if (it->second.for_duration) r.for_duration = *it->second.for_duration;
      }
      rules.push_back(std::move(r));
    }
    return rules;
  }

  asio::any_io_executor control;
  AlertsConfig settings;
  Parts parts;
  monitor::AlertEngine engine;  // the control strand's
  std::vector<Pool> pools;      // the control strand's
  asio::steady_timer round_timer;
  asio::steady_timer gather;
  std::uint64_t round = 0;
  int waiting = 0;
  bool stopped = false;
  std::vector<std::unique_ptr<Webhook>> webhooks;
  std::unique_ptr<drivers::RestClient> client;

  // Shared with other threads.
  mutable std::mutex mu;
  std::map<std::string, std::uint64_t> over_memory;  // pool -> sessions over their memory limit since the last round
  std::deque<Change> history;
  std::vector<monitor::ActiveAlert> active;
  TimePoint last_round{};
  std::vector<std::pair<std::string, TimePoint>> silent_since;  // pools with an unanswered request
  std::uint64_t sent = 0, failed = 0, dropped = 0;

  void start() {
    auto self = shared_from_this();
    asio::co_spawn(control, rounds(self), asio::detached);
    for (auto& w : webhooks) asio::co_spawn(control, send_loop(self, w.get()), asio::detached);
  }

  void stop() {
    stopped = true;
    round_timer.cancel();
    gather.cancel();
    std::size_t waiting_deliveries = 0;
    for (auto& w : webhooks) {
      waiting_deliveries += w->outbox.size() + (w->in_flight ? 1 : 0);
      w->wake->cancel();
    }
    if (waiting_deliveries > 0) {
      parts.log->write(runtime::LogLevel::kWarn, "alert webhooks not delivered at shutdown",
                       {{"deliveries", std::to_string(waiting_deliveries)}});
      std::lock_guard lock(mu);
      dropped += waiting_deliveries;
    }
  }

  static asio::awaitable<void> rounds(std::shared_ptr<State> self) {
    while (!self->stopped) {
      self->round_timer.expires_after(self->settings.interval);
      (void)co_await self->round_timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (self->stopped) break;
      auto running = self->run_round();
      co_await std::move(running);
    }
  }

  asio::awaitable<void> run_round() {
    const std::uint64_t this_round = ++round;
    waiting = 0;
    for (std::size_t i = 0; i < pools.size(); ++i) {
      Pool& p = pools[i];
      if (p.asked) continue;  // still silent since an earlier round
      p.asked = true;
      p.asked_at = real_clock().now();
      ++waiting;
      p.runner->snapshot(asio::bind_executor(control, [self = shared_from_this(), i, this_round](runtime::PoolSnapshot s) {
        Pool& q = self->pools[i];
        q.asked = false;
        q.latest = std::move(s);
        q.fresh = true;
        if (self->round == this_round && --self->waiting == 0) self->gather.cancel();
      }));
    }
    if (waiting > 0) {
      gather.expires_after(std::min<Duration>(1s, settings.interval));
      (void)co_await gather.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (stopped) co_return;
    const TimePoint now = real_clock().now();
    std::vector<monitor::AlertSample> samples;
    std::map<std::string, std::uint64_t> over;
    {
      std::lock_guard lock(mu);
      over.swap(over_memory);
    }
    std::vector<std::pair<std::string, TimePoint>> silent;
    for (Pool& p : pools) {
      const std::string& name = p.runner->name();
      samples.push_back({"scheduler_stalled", name, p.asked ? seconds_of(now - p.asked_at) : 0.0});
      if (p.asked) silent.emplace_back(name, p.asked_at);
      if (!p.fresh) continue;  // no answer: no other measurement this round
      p.fresh = false;
      for (monitor::AlertSample& x : p.sampler.sample(p.latest.stats, now, over[name])) samples.push_back(std::move(x));
    }
    if (parts.ledger != nullptr) {
      for (auto& [subject, share] : parts.ledger->budget_usage()) samples.push_back({"budget_consumed", subject, share});
    }
    const std::vector<monitor::AlertChange> changes = engine.observe(now, samples);
    {
      std::lock_guard lock(mu);
      active = engine.active();
      last_round = now;
      silent_since = std::move(silent);
    }
    for (const monitor::AlertChange& c : changes) deliver(c);
  }

  void deliver(const monitor::AlertChange& c) {
    const Change change{wall_ms(), c.rule, c.subject, c.firing ? "firing" : "resolved", c.value, c.threshold, c.message};
    parts.log->write(c.firing ? runtime::LogLevel::kWarn : runtime::LogLevel::kInfo,
                     c.firing ? "alert firing" : "alert resolved",
                     {{"rule", c.rule}, {"subject", c.subject}, {"message", c.message}});
    json::object o = change_json(change);
    if (parts.bus != nullptr) {
      json::object fields = o;
      fields.erase("at");
      std::string text = json::serialize(fields);
      const monitor::AlertScope scope = monitor::scope_of(c.subject);
      parts.bus->publish(c.firing ? "alert_firing" : "alert_resolved", scope.pool,
                         std::string_view(text).substr(1, text.size() - 2), true, scope.audience);
    }
    if (parts.store != nullptr) {
      parts.store->write({store::AlertRecord{.at_ms = change.at_ms,
                                             .rule = c.rule,
                                             .pool = c.subject,
                                             .state = change.state,
                                             .value = c.value,
                                             .message = c.message}},
                         [log = parts.log](std::expected<void, Error> r) {
                           if (!r) log->write(runtime::LogLevel::kError, "store write failed", {{"why", r.error().message}});
                         });
    }
    {
      std::lock_guard lock(mu);
      history.push_back(change);
      while (history.size() > settings.history) history.pop_front();
    }
    const std::string payload = json::serialize(o);
    for (auto& w : webhooks) {
      if (w->outbox.size() >= settings.outbox) {
        w->outbox.pop_front();
        parts.log->write(runtime::LogLevel::kWarn, "alert webhook outbox full: the oldest delivery dropped",
                         {{"url", w->url}});
        std::lock_guard lock(mu);
        ++dropped;
      }
      w->outbox.push_back(payload);
      if (!w->backing_off) w->wake->cancel();
    }
  }

  // One delivery at a time per URL: the one in flight is taken out of the
  // outbox, so a full outbox drops only deliveries still waiting, and each
  // delivery has its own tries.
  static asio::awaitable<void> send_loop(std::shared_ptr<State> self, Webhook* w) {
    while (!self->stopped) {
      if (w->outbox.empty()) {
        w->wake->expires_at(asio::steady_timer::time_point::max());
        (void)co_await w->wake->async_wait(asio::as_tuple(asio::use_awaitable));
        continue;
      }
      drivers::RestRequest request{.method = "POST",
                                   .url = w->url,
                                   .headers = {{"Content-Type", "application/json"}},
                                   .body = std::move(w->outbox.front()),
                                   .timeout = self->settings.webhook_timeout};
      w->outbox.pop_front();
      w->in_flight = true;
      for (int attempt = 1; !self->stopped; ++attempt) {
        auto calling = self->client->call(request);
        auto answer = co_await std::move(calling);
        if (self->stopped) break;
        const int status = answer ? answer->status : 0;
        const bool ok = status >= 200 && status < 300;
        const bool final_refusal = status >= 400 && status < 500 && status != 408 && status != 429;
        const std::string why = answer ? "HTTP " + std::to_string(status) : answer.error().message;
        if (ok || final_refusal || attempt >= self->settings.webhook_attempts) {
          {
            std::lock_guard lock(self->mu);
            ++(ok ? self->sent : self->failed);
          }
          if (!ok) {
            self->parts.log->write(runtime::LogLevel::kWarn, "alert webhook gave up",
                                   {{"url", w->url}, {"attempts", std::to_string(attempt)}, {"why", why}});
          }
          break;
        }
        self->parts.log->write(runtime::LogLevel::kInfo, "alert webhook failed; retrying",
                               {{"url", w->url}, {"attempt", std::to_string(attempt)}, {"why", why}});
        // New deliveries do not cut the pause short; stop() does.
        w->backing_off = true;
        w->wake->expires_after(std::min<Duration>(std::chrono::seconds(1) * (1 << std::min(attempt - 1, 6)), 60s));
        (void)co_await w->wake->async_wait(asio::as_tuple(asio::use_awaitable));
        w->backing_off = false;
      }
      w->in_flight = false;
    }
  }
};

Alerting::Alerting(asio::any_io_executor control, const DaemonConfig& config,
                   std::vector<std::shared_ptr<runtime::PoolRunner>> runners, Parts parts)
    : state_(std::make_shared<State>(control, config, std::move(runners), parts)) {}

Alerting::~Alerting() = default;

void Alerting::start() { state_->start(); }

void Alerting::stop() { state_->stop(); }

void Alerting::on_event(const std::string& pool, const core::Event& event) {
  if (event.type != core::EventType::kSessionOverLimit || event.reason != StopReason::kMemoryLimit) return;
  std::lock_guard lock(state_->mu);
  ++state_->over_memory[pool];
}

json::object Alerting::report() const {
  std::lock_guard lock(state_->mu);
  json::array rules;
  for (const monitor::AlertRule& r : state_->engine.rules()) {
    rules.push_back(json::object{{"name", r.name},
                                 {"description", r.description},
                                 {"threshold", r.threshold},
                                 {"for_ms", std::chrono::duration_cast<std::chrono::milliseconds>(r.for_duration).count()}});
  }
  json::array active;
  const TimePoint now = real_clock().now();
  for (const monitor::ActiveAlert& a : state_->active) {
    active.push_back(json::object{
        {"rule", a.rule},
        {"subject", a.subject},
        {"state", a.state == monitor::AlertState::kFiring ? "firing" : "pending"},
        {"value", a.value},
        {"threshold", a.threshold},
        {"since", runtime::utc_text(real_clock().wall_now() - (now - a.since))}});
  }
  json::array history;
  for (auto it = state_->history.rbegin(); it != state_->history.rend(); ++it) history.push_back(change_json(*it));
  return json::object{{"active", std::move(active)},
                      {"history", std::move(history)},
                      {"rules", std::move(rules)},
                      {"webhooks", json::object{{"urls", state_->webhooks.size()},
                                                {"delivered", state_->sent},
                                                {"failed", state_->failed},
                                                {"dropped", state_->dropped}}}};
}

std::vector<std::string> Alerting::stalled(TimePoint now) const {
  std::lock_guard lock(state_->mu);
  std::vector<std::string> out;
  for (const auto& [pool, since] : state_->silent_since) {
    if (now - since >= state_->settings.stall_after) out.push_back(pool);
  }
  if (now - state_->last_round >= state_->settings.interval + state_->settings.stall_after) out.push_back("alerting");
  return out;
}

}  // namespace poolkeeper::server
