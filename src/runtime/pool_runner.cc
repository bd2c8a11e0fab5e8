#include "runtime/pool_runner.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <utility>

#include "pool/random_seed.h"

namespace poolkeeper::runtime {
namespace {

using namespace std::chrono_literals;

std::string id_text(std::uint64_t id) { return std::to_string(id); }

// A coroutine's unexpected exception ends at its co_spawn boundary, logged.
auto log_exception(Log* log, std::string where) {
  return [log, where = std::move(where)](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log->write(LogLevel::kError, "unexpected exception", {{"in", where}, {"what", ex.what()}});
    } catch (...) {
      log->write(LogLevel::kError, "unexpected exception", {{"in", where}});
    }
  };
}

}  // namespace

// A started session and what is under way on it.
struct PoolRunner::Running {
  SessionId id = 0;
  std::shared_ptr<DriverSession> session;
  int executing = 0;         // executes in flight
  bool releasing = false;    // a release (with its reset) is under way
  bool stopping = false;     // the runner is stopping it
  // A release waiting for the executes in flight (at most one: `releasing`).
  std::optional<std::pair<core::ReleaseOutcome, Handler<std::expected<void, Error>>>>
      release_after_executes;
  LeaseId releasing_lease = 0;
};

// An acquire between its call and its answer.
struct PoolRunner::PendingAcquire {
  AcquireArgs args;
  TimePoint called_at{};
  Handler<std::expected<LeaseGrant, Error>> handler;
  core::WaiterId waiter = 0;
  int queue_position = 0;
  Duration estimated_wait{0};
  bool answered = false;
  bool cancelled = false;  // cancelled before the strand saw it
};

std::expected<std::shared_ptr<PoolRunner>, Error> PoolRunner::create(
    Executor executor, PoolConfig config, std::unique_ptr<Driver> driver, RunnerOptions options) {
  if (driver == nullptr) return std::unexpected(Error(ErrorCode::kInvalidConfig, "no driver"));
  if ((config.max_memory > 0 || config.max_cpu_percent > 0 || config.max_cpu_time.count() > 0) &&
      driver->sample_interval().count() <= 0) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig,
                                 "max_memory/max_cpu_percent/max_cpu_time: the driver does not "
                                 "measure usage (its sample_interval is 0)"));
  }
  // The runner reports lease events (the daemon streams them).
  auto core = core::PoolCore::create(std::move(config),
                                     {.seed = seed_or_random(options.seed), .shared_cap = options.shared_cap});
  if (!core) return std::unexpected(core.error());
  return std::shared_ptr<PoolRunner>(
      new PoolRunner(std::move(executor), std::move(*core), std::move(driver), std::move(options)));
}

PoolRunner::PoolRunner(Executor executor, std::unique_ptr<core::PoolCore> core,
                       std::unique_ptr<Driver> driver, RunnerOptions options)
    : name_(core->config().name),
      strand_(asio::make_strand(executor)),
      core_(std::move(core)),
      driver_(std::move(driver)),
      options_(std::move(options)),
      log_(options_.log != nullptr ? options_.log : &stderr_log()),
      tick_timer_(strand_),
      sample_timer_(strand_) {}

PoolRunner::~PoolRunner() = default;

TimePoint PoolRunner::now() const { return real_clock().now(); }

void PoolRunner::start() {
  post_to_strand([self = shared_from_this()] {
    if (self->started_ || self->shutting_down_) return;
    self->started_ = true;
    asio::co_spawn(self->strand_, self->tick_loop(), log_exception(self->log_, "tick loop"));
    if (self->driver_->sample_interval().count() > 0) {
      asio::co_spawn(self->strand_, self->sample_loop(), log_exception(self->log_, "sampler"));
    }
    core::Output out;
    self->core_->start(self->now(), out);
    self->apply(out);
  });
}

// ---------------------------------------------------------------------------
// acquire

void PoolRunner::initiate_acquire(AcquireArgs args, asio::cancellation_slot slot,
                                  Handler<std::expected<LeaseGrant, Error>> handler) {
  auto pending = std::make_shared<PendingAcquire>();
  pending->args = std::move(args);
  pending->called_at = now();
  pending->handler = std::move(handler);
  if (slot.is_connected()) {
    slot.assign([weak = weak_from_this(), pending](asio::cancellation_type) {
      auto self = weak.lock();
      if (!self) return;
      self->post_to_strand([self, pending] {
        if (pending->answered) return;
        if (pending->waiter == 0) {
          pending->cancelled = true;  // do_acquire has not run yet
          return;
        }
        core::Output out;
        if (self->core_->cancel(pending->waiter, self->now(), out)) {
          self->answer(pending->waiter,
                       std::unexpected(Error(ErrorCode::kCancelled, "the caller went away")));
        }
        self->apply(out);
      });
    });
  }
  begin_on_strand([self = shared_from_this(), pending] { self->do_acquire(pending); });
}

void PoolRunner::do_acquire(const std::shared_ptr<PendingAcquire>& p) {
  if (p->cancelled) {
    p->answered = true;
    complete(std::move(p->handler), std::expected<LeaseGrant, Error>(std::unexpected(
                                        Error(ErrorCode::kCancelled, "the caller went away"))));
    return;
  }
  const TimePoint t = now();
  // The wait counts from the call, not from when the strand got to it.
  const core::AcquireRequest request{.priority = p->args.priority,
                                     .deadline = deadline_after(p->called_at, p->args.timeout),
                                     .client_session = p->args.client_session,
                                     .owner = p->args.owner,
                                     .lease_timeout = p->args.lease_timeout};
  core::Output out;
  auto r = core_->acquire(request, t, out);
  std::optional<std::expected<LeaseGrant, Error>> answer_now;
  if (!r) {
    p->answered = true;
    answer_now.emplace(std::unexpected(r.error()));
  } else if (r->granted) {
    p->answered = true;
    answer_now.emplace(LeaseGrant{.lease = r->grant.lease,
                                  .session = r->grant.session,
                                  .expires_at = r->grant.expires_at,
                                  .connect = connect_of(r->grant.session)});
  } else {
    p->waiter = r->waiter;
    p->queue_position = r->queue_position;
    p->estimated_wait = r->estimated_wait;
    waiters_.emplace(r->waiter, p);
  }
  // The events (the ledger's rows among them) go out before the answer: a
  // caller that waits for what the answer acknowledges to be stored finds
  // it already handed to the store.
  apply(out);
  if (answer_now) complete(std::move(p->handler), std::move(*answer_now));
}

void PoolRunner::answer(core::WaiterId waiter, std::expected<LeaseGrant, Error> result) {
  auto it = waiters_.find(waiter);
  if (it == waiters_.end()) return;
  std::shared_ptr<PendingAcquire> p = std::move(it->second);
  waiters_.erase(it);
  if (p->answered) return;
  p->answered = true;
  if (result) {
    result->queue_position = p->queue_position;
    result->estimated_wait = p->estimated_wait;
  }
  complete(std::move(p->handler), std::move(result));
}

std::string PoolRunner::connect_of(SessionId session) const {
  auto it = sessions_.find(session);
  return it == sessions_.end() || it->second->session == nullptr ? std::string()
                                                                 : it->second->session->connect();
}

// ---------------------------------------------------------------------------
// release and execute

void PoolRunner::initiate_release(LeaseId lease, std::optional<std::string> owner,
                                  core::ReleaseOutcome outcome,
                                  Handler<std::expected<void, Error>> handler) {
  begin_on_strand([self = shared_from_this(), lease, owner = std::move(owner), outcome,
                   h = std::move(handler)]() mutable {
    auto held = self->core_->leased_session(
        lease, owner ? std::optional<std::string_view>(*owner) : std::nullopt);
    if (!held) {
      complete(std::move(h), std::expected<void, Error>(std::unexpected(held.error())));
      return;
    }
    auto it = self->sessions_.find(held->session);
    if (it != self->sessions_.end()) {
      Running& r = *it->second;
      if (r.releasing) {
        complete(std::move(h), std::expected<void, Error>(std::unexpected(
                                   Error(ErrorCode::kLeaseAlreadyReleased,
                                         "the lease is being released"))));
        return;
      }
      r.releasing = true;
      if (r.executing > 0) {
        // The lease ends when its requests have been answered.
        r.releasing_lease = lease;
        r.release_after_executes.emplace(outcome, std::move(h));
        return;
      }
    }
    self->do_release(lease, outcome, std::move(h));
  });
}

void PoolRunner::do_release(LeaseId lease, core::ReleaseOutcome outcome,
                            Handler<std::expected<void, Error>> handler) {
  auto held = core_->leased_session(lease, std::nullopt);
  std::shared_ptr<Running> running;
  if (held) {
    if (auto it = sessions_.find(held->session); it != sessions_.end()) running = it->second;
  }
  if (held && running != nullptr && outcome == core::ReleaseOutcome::kOk &&
      driver_->reset_on_release() && !running->stopping) {
    asio::co_spawn(strand_, run_reset_and_release(running, lease, std::move(handler)),
                   log_exception(log_, "reset"));
    return;
  }
  if (running != nullptr) running->releasing = false;
  core::Output out;
  auto r = core_->release(lease, std::nullopt, outcome, now(), out);
  apply(out);  // before the answer, as in do_acquire
  complete(std::move(handler), std::move(r));
}

asio::awaitable<void> PoolRunner::run_reset_and_release(
    std::shared_ptr<Running> running, LeaseId lease, Handler<std::expected<void, Error>> handler) {
  auto self = shared_from_this();
  auto resetting = guarded(running->session->reset(), ErrorCode::kInternal);
  std::expected<void, Error> reset = co_await std::move(resetting);
  running->releasing = false;
  if (!reset) {
    log_->write(LogLevel::kWarn, "reset failed; the session is retired",
                {{"pool", name_}, {"session", id_text(running->id)}, {"why", reset.error().message}});
  }
  core::Output out;
  auto r = core_->release(lease, std::nullopt,
                          reset ? core::ReleaseOutcome::kOk : core::ReleaseOutcome::kBroken, now(),
                          out);
  // The client's release happened; a session lost during the reset is the pool's business.
  if (!r && r.error().code == ErrorCode::kSessionLost) r = {};
  apply(out);  // before the answer, as in do_acquire
  complete(std::move(handler), std::move(r));
}

void PoolRunner::initiate_execute(LeaseId lease, std::optional<std::string> owner,
                                  ExecuteRequest request,
                                  Handler<std::expected<ExecuteReply, Error>> handler) {
  begin_on_strand([self = shared_from_this(), lease, owner = std::move(owner),
                  request = std::move(request), h = std::move(handler)]() mutable {
    using Result = std::expected<ExecuteReply, Error>;
    auto held = self->core_->leased_session(
        lease, owner ? std::optional<std::string_view>(*owner) : std::nullopt);
    if (!held) {
      complete(std::move(h), Result(std::unexpected(held.error())));
      return;
    }
    auto it = self->sessions_.find(held->session);
    if (it == self->sessions_.end() || it->second->stopping) {
      complete(std::move(h), Result(std::unexpected(
                                 Error(ErrorCode::kSessionLost, "the session is gone"))));
      return;
    }
    if (it->second->releasing) {
      complete(std::move(h), Result(std::unexpected(Error(ErrorCode::kLeaseAlreadyReleased,
                                                           "the lease is being released"))));
      return;
    }
    // The lease's client session goes with its requests.
    if (request.client_session.empty()) request.client_session = held->client_session;
    ++it->second->executing;
    asio::co_spawn(self->strand_, self->run_execute(it->second, std::move(request), std::move(h)),
                   log_exception(self->log_, "execute"));
  });
}

asio::awaitable<void> PoolRunner::run_execute(std::shared_ptr<Running> running,
                                              ExecuteRequest request,
                                              Handler<std::expected<ExecuteReply, Error>> handler) {
  auto self = shared_from_this();
  auto executing = guarded(running->session->execute(std::move(request)), ErrorCode::kInternal);
  std::expected<ExecuteReply, Error> r = co_await std::move(executing);
  complete(std::move(handler), std::move(r));
  if (--running->executing == 0 && running->release_after_executes) {
    auto [outcome, release_handler] = std::move(*running->release_after_executes);
    running->release_after_executes.reset();
    do_release(running->releasing_lease, outcome, std::move(release_handler));
  }
}

void PoolRunner::initiate_run(AcquireArgs args, ExecuteRequest request,
                              asio::cancellation_slot slot,
                              Handler<std::expected<ExecuteReply, Error>> handler) {
  auto done = [h = std::move(handler)](std::exception_ptr e,
                                       std::expected<ExecuteReply, Error> r) mutable {
    if (e) r = std::unexpected(Error(ErrorCode::kInternal, "unexpected exception"));
    complete(std::move(h), std::move(r));
  };
  asio::co_spawn(strand_, run_once(std::move(args), std::move(request)),
                 asio::bind_cancellation_slot(slot, std::move(done)));
}

asio::awaitable<std::expected<ExecuteReply, Error>> PoolRunner::run_once(AcquireArgs args,
                                                                         ExecuteRequest request) {
  auto self = shared_from_this();
  // Cancellation reaches the acquire only (as kCancelled): once a lease is
  // taken, the execute and the release must run, so nothing may throw.
  co_await asio::this_coro::throw_if_cancelled(false);
  if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none) {
    co_return std::unexpected(Error(ErrorCode::kCancelled, "the caller went away"));
  }
  // Each awaitable is made before its co_await: g++ 12 mishandles temporaries
  // with non-trivial members inside a co_await expression.
  auto acquiring = acquire(std::move(args), asio::use_awaitable);
  auto lease = co_await std::move(acquiring);
  if (!lease) co_return std::unexpected(lease.error());
  std::optional<std::string> no_owner;
  auto executing = execute(lease->lease, no_owner, std::move(request), asio::use_awaitable);
  auto reply = co_await std::move(executing);
  const core::ReleaseOutcome outcome =
      reply ? core::ReleaseOutcome::kOk : core::release_outcome_for(reply.error().code);
  auto releasing = release(lease->lease, no_owner, outcome, asio::use_awaitable);
  (void)co_await std::move(releasing);
  co_return reply;
}

template <class T>
asio::awaitable<std::expected<T, Error>> PoolRunner::guarded(
    asio::awaitable<std::expected<T, Error>> call, ErrorCode code) {
  try {
    co_return co_await std::move(call);
  } catch (const std::exception& e) {
    log_->write(LogLevel::kError, "driver call threw", {{"pool", name_}, {"what", e.what()}});
    co_return std::unexpected(Error(code, std::string("the driver failed: ") + e.what()));
  }
}

// ---------------------------------------------------------------------------
// actions

void PoolRunner::apply(core::Output& out) {
  // Events first: a grant's waiter must not hear of it before the ledger
  // has the lease (its caller may wait for the lease's rows to be stored).
  for (const core::Event& e : out.events) {
    log_event(e);
    if (options_.on_event) options_.on_event(e);
  }
  std::vector<core::WaiterId> wakes;
  for (core::Action& a : out.actions) {
    switch (a.type) {
      case core::ActionType::kStartSession:
        asio::co_spawn(strand_, run_start(a.session), log_exception(log_, "start"));
        break;
      case core::ActionType::kStopSession:
        // Marked before the coroutine runs: an exit seen meanwhile is this stop's.
        if (auto it = sessions_.find(a.session); it != sessions_.end()) it->second->stopping = true;
        asio::co_spawn(strand_, run_stop(a.session, a.reason), log_exception(log_, "stop"));
        break;
      case core::ActionType::kCheckSession:
        asio::co_spawn(strand_, run_check(a.session), log_exception(log_, "check"));
        break;
      case core::ActionType::kGrant:
        answer(a.waiter, LeaseGrant{.lease = a.grant.lease,
                                    .session = a.grant.session,
                                    .expires_at = a.grant.expires_at,
                                    .connect = connect_of(a.grant.session)});
        break;
      case core::ActionType::kReject:
        answer(a.waiter, std::unexpected(std::move(a.error)));
        break;
      case core::ActionType::kWake:
        wakes.push_back(a.waiter);
        break;
    }
  }
  out.clear();
  for (core::WaiterId w : wakes) {
    core::Output more;
    core_->retry(w, now(), more);
    apply(more);
  }
  schedule_tick();
  maybe_finish_shutdown();
}

void PoolRunner::log_event(const core::Event& e) {
  switch (e.type) {
    case core::EventType::kSessionStartFailed:
      log_->write(LogLevel::kWarn, "session start failed",
                  {{"pool", name_}, {"session", id_text(e.session)}, {"error", e.detail},
                   {"consecutive_failures", id_text(static_cast<std::uint64_t>(e.value))}});
      break;
    case core::EventType::kLeaseLost:
      log_->write(LogLevel::kWarn, "leased session lost",
                  {{"pool", name_}, {"session", id_text(e.session)}, {"why", e.detail}});
      break;
    case core::EventType::kAutoscaled: {
      char confidence[16];
      std::snprintf(confidence, sizeof confidence, "%.2f", e.confidence);
      log_->write(LogLevel::kInfo, "autoscaled",
                  {{"pool", name_}, {"from", std::to_string(e.previous)}, {"to", std::to_string(e.value)},
                   {"why", e.detail}, {"confidence", confidence}});
      break;
    }
    case core::EventType::kLeaseReclaimed:
      log_->write(LogLevel::kWarn, "lease reclaimed after its lease timeout",
                  {{"pool", name_}, {"session", id_text(e.session)}});
      break;
    case core::EventType::kSessionClosing:
      if (e.reason == StopReason::kMemoryLimit || e.reason == StopReason::kCpuLimit ||
          e.reason == StopReason::kUnhealthy) {
        log_->write(LogLevel::kInfo, "stopping session",
                    {{"pool", name_}, {"session", id_text(e.session)},
                     {"reason", to_string(e.reason)}});
      }
      break;
    default:
      break;
  }
}

asio::awaitable<void> PoolRunner::run_start(SessionId id) {
  auto self = shared_from_this();
  auto starting = guarded(driver_->start(id), ErrorCode::kSessionStartFailed);
  std::expected<std::shared_ptr<DriverSession>, Error> started = co_await std::move(starting);
  core::Output out;
  if (started && *started != nullptr) {
    auto running = std::make_shared<Running>();
    running->id = id;
    running->session = std::move(*started);
    sessions_[id] = running;
    asio::co_spawn(strand_, watch(id, running), log_exception(log_, "watch"));
    core_->session_started(id, now(), out);
    // Who the session is outside the daemon goes with the event (the store
    // keeps it, so a crash does not lose track of a paid session).
    for (core::Event& e : out.events) {
      if (e.type == core::EventType::kSessionStarted && e.session == id) e.detail = running->session->external_id();
    }
  } else {
    core_->session_start_failed(id, started ? "no session" : started.error().message, now(), out);
  }
  apply(out);
}

asio::awaitable<void> PoolRunner::watch(SessionId id, std::shared_ptr<Running> running) {
  auto self = shared_from_this();
  std::string why = co_await running->session->wait_ended();
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second != running || running->stopping) co_return;
  sessions_.erase(it);
  log_->write(LogLevel::kWarn, "session ended on its own",
              {{"pool", name_}, {"session", id_text(id)}, {"why", why}});
  core::Output out;
  core_->session_exited(id, why, now(), out);
  apply(out);
}

asio::awaitable<void> PoolRunner::run_stop(SessionId id, StopReason reason) {
  auto self = shared_from_this();
  if (auto it = sessions_.find(id); it != sessions_.end()) {
    std::shared_ptr<Running> running = it->second;
    try {
      co_await running->session->stop(reason);
    } catch (const std::exception& e) {
      log_->write(LogLevel::kError, "stop failed", {{"pool", name_}, {"what", e.what()}});
    }
    // Erased only now: shutdown completes when no session is left.
    if (auto again = sessions_.find(id); again != sessions_.end() && again->second == running) {
      sessions_.erase(again);
    }
  }
  core::Output out;
  core_->session_stopped(id, now(), out);
  apply(out);
}

asio::awaitable<void> PoolRunner::run_check(SessionId id) {
  auto self = shared_from_this();
  auto it = sessions_.find(id);
  bool healthy = false;
  if (it != sessions_.end()) {
    std::shared_ptr<Running> running = it->second;
    auto checking = guarded(running->session->check(driver_->check_timeout()), ErrorCode::kInternal);
    auto r = co_await std::move(checking);
    healthy = r.has_value();
    if (!r) {
      log_->write(LogLevel::kWarn, "health check failed",
                  {{"pool", name_}, {"session", id_text(id)}, {"why", r.error().message}});
    }
  }
  core::Output out;
  core_->check_result(id, healthy, now(), out);
  apply(out);
}

// ---------------------------------------------------------------------------
// time

void PoolRunner::schedule_tick() {
  if (closed_ || !started_) return;
  // Only ever earlier: a timer that fires early finds nothing due and re-arms.
  const TimePoint due = std::min(core_->next_due(), now() + options_.max_tick);
  if (due >= tick_due_) return;
  tick_due_ = due;
  tick_timer_.expires_at(due);
}

asio::awaitable<void> PoolRunner::tick_loop() {
  auto self = shared_from_this();
  schedule_tick();
  while (!closed_) {
    (void)co_await tick_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (closed_) break;
    const TimePoint t = now();
    if (t < tick_due_) continue;  // re-armed for later while we waited
    tick_due_ = TimePoint::max();
    core::Output out;
    core_->tick(t, out);
    apply(out);  // schedules the next tick
  }
}

asio::awaitable<void> PoolRunner::sample_loop() {
  auto self = shared_from_this();
  const Duration every = driver_->sample_interval();
  while (!closed_) {
    sample_timer_.expires_after(every);
    (void)co_await sample_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (closed_) break;
    const TimePoint t = now();
    core::Output out;
    for (auto& [id, running] : sessions_) {
      if (running->stopping) continue;
      const Usage u = running->session->sample(t);
      core_->usage_sampled(
          id,
          {.memory_bytes = u.rss_bytes,
           .cpu_percent = u.cpu_percent,
           .cpu_time = u.cpu_seconds < 0 ? Duration{-1}
                                          : std::chrono::duration_cast<Duration>(
                                                std::chrono::duration<double>(u.cpu_seconds))},
          t, out);
    }
    apply(out);
  }
}

// ---------------------------------------------------------------------------
// observation and shutdown

void PoolRunner::initiate_snapshot(Handler<PoolSnapshot> handler) {
  post_to_strand([self = shared_from_this(), h = std::move(handler)]() mutable {
    PoolSnapshot snap;
    snap.stats = self->core_->stats();
    for (SessionInfo& info : self->core_->sessions(self->now())) {
      SessionView v;
      if (auto it = self->sessions_.find(info.id); it != self->sessions_.end()) {
        v.usage = it->second->session->usage();
        v.describe = it->second->session->describe();
      }
      v.info = std::move(info);
      snap.sessions.push_back(std::move(v));
    }
    complete(std::move(h), std::move(snap));
  });
}

void PoolRunner::initiate_shutdown(Duration grace, Completion<> handler) {
  post_to_strand([self = shared_from_this(), grace, h = std::move(handler)]() mutable {
    if (self->closed_) {
      h();
      return;
    }
    self->shutdown_handlers_.push_back(std::move(h));
    if (!self->shutting_down_) {
      self->shutting_down_ = true;
      const bool ticking = self->started_;
      self->started_ = true;  // a pool never started shuts down just the same
      if (!ticking) {
        asio::co_spawn(self->strand_, self->tick_loop(), log_exception(self->log_, "tick loop"));
      }
      // Leases still held after the grace are reclaimed by the core's tick.
      core::Output out;
      const TimePoint t = self->now();
      self->core_->shutdown(t, out, deadline_after(t, grace));
      self->apply(out);
    }
    self->maybe_finish_shutdown();
  });
}

void PoolRunner::maybe_finish_shutdown() {
  if (!shutting_down_ || closed_) return;
  if (!core_->drained() || !sessions_.empty()) return;
  closed_ = true;
  tick_timer_.cancel();
  sample_timer_.cancel();
  for (auto& h : shutdown_handlers_) h();
  shutdown_handlers_.clear();
}

}  // namespace poolkeeper::runtime
