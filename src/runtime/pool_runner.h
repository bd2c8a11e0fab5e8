// PoolRunner: one pool's core, run for real on Boost.Asio.
//
// The runner owns a PoolCore and a Driver. Every core call happens on the
// pool's strand; the runner carries out the core's actions (start, check and
// stop sessions through the driver as coroutines, answer waiters) and feeds
// the results back. One timer per pool wakes the core when something is due
// (a waiter's deadline, a start retry, a limit) and at least every `max_tick`.
// The runner decides nothing: every rule is the core's.
//
// The async API may be called from any thread or coroutine. Each operation
// takes an Asio completion token (use_awaitable by default) and completes on
// the caller's executor, posted, never inline and never on the strand.
// acquire, release and execute begin at once on the calling thread when it
// runs the pool's io_context and the strand is free (else they are queued to
// the strand, as are calls made from the strand itself), so `on_event` may
// run inside such a call: do not hold a lock across it that on_event takes.
//
//   auto runner = *PoolRunner::create(io.get_executor(), config, std::move(driver));
//   runner->start();
//   auto lease = co_await runner->acquire({.priority = 7, .timeout = 2s});
//   if (!lease) co_return;  // lease.error().code: acquire_timeout, pool_paused, ...
//   auto reply = co_await runner->execute(lease->lease, {}, {.params = R"({"x":1})"});
//   co_await runner->release(lease->lease, {}, core::ReleaseOutcome::kOk);
//
// Cancelling an acquire (an Asio cancellation signal: a client that went away,
// `acquire(...) || timer`) takes the waiter out of the queue. An execute that
// was sent cannot be called back; a release waits for executes in flight on
// its lease. Call shutdown() before dropping the last reference: it answers
// every waiter, lets leases finish within a grace period and stops every
// session. The io_context must keep running until it completes.
//
// Thread-safety: all public members are safe from any thread.
#pragma once

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/pool_core.h"
#include "poolkeeper/pool_config.h"
#include "runtime/completion.h"
#include "runtime/driver.h"
#include "runtime/log.h"

namespace poolkeeper::runtime {

struct AcquireArgs {
  int priority = kNormalPriority;
  Duration timeout = std::chrono::seconds(30);  // Duration::max(): wait as long as it takes
  std::string client_session{};
  std::string owner{};
  Duration lease_timeout{0};  // 0: the pool's
};

struct LeaseGrant {
  LeaseId lease = 0;
  SessionId session = 0;
  TimePoint expires_at = TimePoint::max();
  std::string connect{};  // the driver's endpoint for the session, if any
  int queue_position = 0;        // the place it was queued at (0: granted at once)
  Duration estimated_wait{0};    // the wait predicted then (0: unknown or none)
};

struct SessionView {
  SessionInfo info{};
  Usage usage{};
  std::string describe{};
};

struct PoolSnapshot {
  PoolStats stats{};
  std::vector<SessionView> sessions{};
};

struct RunnerOptions {
  std::uint64_t seed = 0;                      // the core's jitter and lease keys (0: random)
  SharedCap* shared_cap = nullptr;             // not owned
  Duration max_tick = std::chrono::milliseconds(250);
  Log* log = nullptr;                          // stderr_log() when null
  // Every core event, on the strand (keep it short; post elsewhere for work),
  // until shutdown() has completed: what it captures must live that long.
  // An event is reported before the answer it goes with is handed to its
  // caller (the lease_granted before the grant, lease_released before the
  // release's answer), so what on_event records is there when the caller
  // hears.
  std::function<void(const core::Event&)> on_event{};
};

class PoolRunner : public std::enable_shared_from_this<PoolRunner> {
 public:
  template <class T>
  using Handler = Completion<T>;
  using Executor = asio::any_io_executor;

  static std::expected<std::shared_ptr<PoolRunner>, Error> create(Executor executor,
                                                                  PoolConfig config,
                                                                  std::unique_ptr<Driver> driver,
                                                                  RunnerOptions options = {});
  ~PoolRunner();
  PoolRunner(const PoolRunner&) = delete;
  PoolRunner& operator=(const PoolRunner&) = delete;

  const std::string& name() const { return name_; }
  const Driver& driver() const { return *driver_; }

  // Starts what the pool keeps warm. Once.
  void start();

  template <class Token = asio::use_awaitable_t<>>
  auto acquire(AcquireArgs args, Token&& token = {}) {
    return asio::async_initiate<Token, void(std::expected<LeaseGrant, Error>)>(
        [self = shared_from_this()](auto handler, AcquireArgs a) {
          auto slot = asio::get_associated_cancellation_slot(handler);
          self->initiate_acquire(
              std::move(a), slot,
              Handler<std::expected<LeaseGrant, Error>>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token, std::move(args));
  }

  // `owner` must match the acquire's owner when given.
  template <class Token = asio::use_awaitable_t<>>
  auto release(LeaseId lease, std::optional<std::string> owner, core::ReleaseOutcome outcome,
               Token&& token = {}) {
    return asio::async_initiate<Token, void(std::expected<void, Error>)>(
        [self = shared_from_this()](auto handler, LeaseId l, std::optional<std::string> o,
                                    core::ReleaseOutcome r) {
          self->initiate_release(
              l, std::move(o), r, Handler<std::expected<void, Error>>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token, lease, std::move(owner), outcome);
  }

  // Runs one request on the session a lease holds.
  template <class Token = asio::use_awaitable_t<>>
  auto execute(LeaseId lease, std::optional<std::string> owner, ExecuteRequest request,
               Token&& token = {}) {
    return asio::async_initiate<Token, void(std::expected<ExecuteReply, Error>)>(
        [self = shared_from_this()](auto handler, LeaseId l, std::optional<std::string> o,
                                    ExecuteRequest r) {
          self->initiate_execute(
              l, std::move(o), std::move(r),
              Handler<std::expected<ExecuteReply, Error>>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token, lease, std::move(owner), std::move(request));
  }

  // Acquire, execute, release in one call (a session that failed the request
  // with a broken protocol or died is not reused).
  template <class Token = asio::use_awaitable_t<>>
  auto run(AcquireArgs args, ExecuteRequest request, Token&& token = {}) {
    return asio::async_initiate<Token, void(std::expected<ExecuteReply, Error>)>(
        [self = shared_from_this()](auto handler, AcquireArgs a, ExecuteRequest r) {
          auto slot = asio::get_associated_cancellation_slot(handler);
          self->initiate_run(
              std::move(a), std::move(r), slot,
              Handler<std::expected<ExecuteReply, Error>>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token, std::move(args), std::move(request));
  }

  template <class Token = asio::use_awaitable_t<>>
  auto snapshot(Token&& token = {}) {
    return asio::async_initiate<Token, void(PoolSnapshot)>(
        [self = shared_from_this()](auto handler) {
          self->initiate_snapshot(Handler<PoolSnapshot>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token);
  }

  // Runs `fn` on the strand with the core (operator controls: scale, pause,
  // drain, reservations, client sessions); the runner carries out what it
  // asks for. The result is fn's.
  template <class R, class Token = asio::use_awaitable_t<>>
  auto with_core(std::function<R(core::PoolCore&, TimePoint, core::Output&)> fn,
                 Token&& token = {}) {
    return asio::async_initiate<Token, void(R)>(
        [self = shared_from_this()](auto handler, auto f) {
          Handler<R> h(std::move(handler), self->strand_.get_inner_executor());
          self->post_to_strand([self, f = std::move(f), h = std::move(h)]() mutable {
            core::Output out;
            R r = f(*self->core_, self->now(), out);
            self->apply(out);
            h(std::move(r));
          });
        },
        token, std::move(fn));
  }

  // Answers every waiter, refuses new acquires, lets leases end within
  // `grace` (then stops their sessions anyway) and stops every session.
  // Completes when the last session is gone. Safe to call more than once.
  template <class Token = asio::use_awaitable_t<>>
  auto shutdown(Duration grace, Token&& token = {}) {
    return asio::async_initiate<Token, void()>(
        [self = shared_from_this()](auto handler, Duration g) {
          self->initiate_shutdown(g, Completion<>(std::move(handler), self->strand_.get_inner_executor()));
        },
        token, grace);
  }

 private:
  struct Running;
  struct PendingAcquire;

  PoolRunner(Executor executor, std::unique_ptr<core::PoolCore> core,
             std::unique_ptr<Driver> driver, RunnerOptions options);

  TimePoint now() const;
  template <class F>
  void post_to_strand(F&& fn) {
    asio::post(strand_, std::forward<F>(fn));
  }
  // The hot paths (acquire, release, execute): at once on this thread when it
  // runs the pool's io_context and the strand is free, else queued. Saves a
  // trip through the scheduler per call; completions are still posted. A
  // call made from the strand itself (an on_event callback, a coroutine on
  // the strand) is queued: it must not run inside the runner's own work.
  template <class F>
  void begin_on_strand(F&& fn) {
    if (strand_.running_in_this_thread()) {
      asio::post(strand_, std::forward<F>(fn));
    } else {
      asio::dispatch(strand_, std::forward<F>(fn));
    }
  }
  template <class T>
  static void complete(Handler<T> handler, T value) {
    handler(std::move(value));
  }

  void initiate_acquire(AcquireArgs args, asio::cancellation_slot slot,
                        Handler<std::expected<LeaseGrant, Error>> handler);
  void initiate_release(LeaseId lease, std::optional<std::string> owner,
                        core::ReleaseOutcome outcome, Handler<std::expected<void, Error>> handler);
  void initiate_execute(LeaseId lease, std::optional<std::string> owner, ExecuteRequest request,
                        Handler<std::expected<ExecuteReply, Error>> handler);
  void initiate_run(AcquireArgs args, ExecuteRequest request, asio::cancellation_slot slot,
                    Handler<std::expected<ExecuteReply, Error>> handler);
  void initiate_snapshot(Handler<PoolSnapshot> handler);
  void initiate_shutdown(Duration grace, Completion<> handler);

  // On the strand.
  void do_acquire(const std::shared_ptr<PendingAcquire>& pending);
  void do_release(LeaseId lease, core::ReleaseOutcome outcome,
                  Handler<std::expected<void, Error>> handler);
  void apply(core::Output& out);
  void answer(core::WaiterId waiter, std::expected<LeaseGrant, Error> result);
  void schedule_tick();
  void maybe_finish_shutdown();
  void log_event(const core::Event& e);
  std::string connect_of(SessionId session) const;

  asio::awaitable<void> run_start(SessionId id);
  asio::awaitable<void> run_stop(SessionId id, StopReason reason);
  asio::awaitable<void> run_check(SessionId id);
  // A driver call whose unexpected exception becomes an error value.
  template <class T>
  asio::awaitable<std::expected<T, Error>> guarded(asio::awaitable<std::expected<T, Error>> call,
                                                   ErrorCode code);
  asio::awaitable<void> watch(SessionId id, std::shared_ptr<Running> running);
  asio::awaitable<void> run_execute(std::shared_ptr<Running> running, ExecuteRequest request,
                                    Handler<std::expected<ExecuteReply, Error>> handler);
  asio::awaitable<void> run_reset_and_release(std::shared_ptr<Running> running, LeaseId lease,
                                              Handler<std::expected<void, Error>> handler);
  asio::awaitable<std::expected<ExecuteReply, Error>> run_once(AcquireArgs args,
                                                               ExecuteRequest request);
  asio::awaitable<void> tick_loop();
  asio::awaitable<void> sample_loop();

  std::string name_{};
  asio::strand<Executor> strand_;
  std::unique_ptr<core::PoolCore> core_;
  std::unique_ptr<Driver> driver_;
  RunnerOptions options_;
  Log* log_;

  // Strand state.
  std::unordered_map<SessionId, std::shared_ptr<Running>> sessions_;
  std::unordered_map<core::WaiterId, std::shared_ptr<PendingAcquire>> waiters_;
  asio::steady_timer tick_timer_;
  asio::steady_timer sample_timer_;
  TimePoint tick_due_ = TimePoint::max();
  bool started_ = false;
  bool shutting_down_ = false;
  bool closed_ = false;
  std::vector<Completion<>> shutdown_handlers_;
};

}  // namespace poolkeeper::runtime
