// The engine behind Pool<T>: one PoolCore behind a mutex, worker threads that
// run factory calls and ticks, and waiters parked on a futex each.
//
// Fast path (an idle session is there): a clock read (CLOCK_MONOTONIC_COARSE
// unless the lease can be reclaimed, whose deadline needs a precise start),
// lock, core.try_acquire_fast, unlock; release is lock,
// core.try_release_fast, unlock. No allocation, no syscall. Every reading is
// at or behind real time, so a deadline that starts from a precise reading
// (a lease timeout, an acquire's wait) is never judged passed early. A
// waiter parks on its own futex and is handed its lease directly by whoever frees a session (or, with
// handoff_after, woken to retry); there is no thundering herd.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/pool_core.h"
#include "pool/futex_lock.h"
#include "pool/random_seed.h"
#include "poolkeeper/pool.h"

namespace poolkeeper::detail {
namespace {

// A waiter's word: kWaiting until it parks on the futex (kParked); answering
// a waiter that has not parked yet costs no system call.
constexpr std::uint32_t kWaiting = 0;
constexpr std::uint32_t kAnswered = 1;
constexpr std::uint32_t kParked = 2;
constexpr std::uint32_t kWoken = 3;  // a session is free: retry (handoff_after)

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, Duration timeout) {
  timespec ts{};
  const auto n = std::max<Duration::rep>(timeout.count(), 0);
  ts.tv_sec = static_cast<time_t>(n / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(n % 1'000'000'000);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts,
          nullptr, 0);
}

void futex_wake(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr,
          nullptr, 0);
}

using Lock = std::unique_lock<FutexLock>;

std::uint32_t slot_of(SessionId id) { return core::session_slot(id); }

}  // namespace

class PoolEngine {
 public:
  PoolEngine(std::unique_ptr<core::PoolCore> core, ErasedFactory factory, PoolOptions options)
      : clock_(options.clock != nullptr ? options.clock : &real_clock()),
        cap_(std::move(options.shared_cap)),
        core_(std::move(core)),
        leases_expire_(core_->config().lease_timeout.count() > 0),
        factory_(std::move(factory)),
        tick_interval_(options.tick_interval.count() > 0 ? options.tick_interval
                                                         : std::chrono::milliseconds(10)) {
    Lock lock(mu_);
    now_ = clock_->now();
    core_->start(now_, out_);
    flush(lock);
    lock.unlock();
    const int n = std::max(1, options.worker_threads);
    workers_.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { work(); });
  }

  ~PoolEngine() = default;

  std::expected<LeaseHandle, Error> acquire(const AcquireOptions& o) {
    // Outside the lock. A lease that can be reclaimed starts its clock from
    // a precise reading, so it is never reclaimed early; otherwise the cheap
    // coarse one (never ahead of real time, so now_ never is either).
    const bool reclaimable = leases_expire_ || o.lease_timeout.count() > 0;
    const TimePoint fresh = reclaimable ? clock_->now() : clock_->coarse_now();
    Lock lock(mu_);
    if (fresh > now_) now_ = fresh;
    core::AcquireRequest request{.priority = o.priority,
                                 .deadline = deadline_after(now_, o.timeout),
                                 .client_session = o.client_session,
                                 .owner = o.owner,
                                 .lease_timeout = o.lease_timeout};
    core::Grant grant;
    if (core_->try_acquire_fast(request, now_, &grant)) return hand_out(grant);
    // The slow path may queue us: the deadline we wait on starts from a
    // precise reading, so an acquire never times out early.
    if (!reclaimable) {
      refresh_now();
      request.deadline = deadline_after(now_, o.timeout);
    }
    auto result = core_->acquire(request, now_, out_);
    if (!result) {
      if (!out_.empty()) flush(lock);
      return std::unexpected(std::move(result.error()));
    }
    if (result->granted) {
      const LeaseHandle handle = hand_out(result->grant);
      if (!out_.empty()) flush(lock);
      return handle;
    }
    // Queued: park until a release, a start, a tick or the deadline answers us.
    WaitRecord record;
    record.id = result->waiter;
    waiters_.emplace(result->waiter, &record);
    waiting_threads_.fetch_add(1, std::memory_order_relaxed);
    flush(lock);
    lock.unlock();
    wait(record, request.deadline);
    std::expected<LeaseHandle, Error> answer = std::move(record.result);
    waiting_threads_.fetch_sub(1, std::memory_order_release);  // last touch of the engine
    return answer;
  }

  std::expected<void, Error> release(const LeaseHandle& handle, int outcome) {
    if (outcome == 0 && factory_.reset) {
      bool ok = false;
      try {
        ok = factory_.reset(handle.object);
      } catch (...) {
        ok = false;
      }
      if (!ok) outcome = 2;
    }
    const auto kind = outcome == 0   ? core::ReleaseOutcome::kOk
                      : outcome == 1 ? core::ReleaseOutcome::kError
                                     : core::ReleaseOutcome::kBroken;
    Lock lock(mu_);
    const std::uint32_t slot = slot_of(handle.session);
    if (kind == core::ReleaseOutcome::kOk && core_->try_release_fast(handle.lease, now_)) {
      handed_out_[slot] = 0;
      lease_returned(lock);
      return {};
    }
    auto result = core_->release(handle.lease, std::nullopt, kind, now_, out_);
    if (slot < handed_out_.size()) handed_out_[slot] = 0;
    if (slot < destroy_on_return_.size() && destroy_on_return_[slot] != 0) {
      // The lease was reclaimed while we held the object: it is ours to destroy now.
      destroy_on_return_[slot] = 0;
      run_stop(lock, handle.session);
    }
    if (!out_.empty()) flush(lock);
    // Counted until here: flush may unlock to run jobs, and the engine must
    // outlive every release in progress once the Pool is gone.
    lease_returned(lock);
    return result;
  }

  template <class F>
  auto control(F&& f) {
    Lock lock(mu_);
    refresh_now();
    auto r = f(*core_, now_, out_);
    flush(lock);
    return r;
  }

  // Idempotent and safe from several threads at once: the first call does
  // the work, the others wait for it to finish.
  void shutdown(Duration grace) {
    std::call_once(shutdown_once_, [&] { do_shutdown(grace); });
  }

  void do_shutdown(Duration grace) {
    {
      Lock lock(mu_);
      refresh_now();
      core_->shutdown(now_, out_);
      flush(lock);
      // Let leases in flight come back: their sessions stop on release.
      const TimePoint until = deadline_after(clock_->now(), grace);
      while (core_->session_count() > 0 && clock_->now() < until) {
        changed_.wait_for(lock, std::min<Duration>(until - clock_->now(), tick_interval_));
      }
      stopping_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    Lock lock(mu_);
    workers_done_ = true;
    flush(lock);  // anything left runs inline from now on
  }

  void close(Duration grace) {
    shutdown(grace);
    Lock lock(mu_);
    // Threads still inside acquire() were answered by the shutdown; let them leave.
    lock.unlock();
    while (waiting_threads_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    lock.lock();
    closed_ = true;
    if (outstanding_ == 0) {
      lock.unlock();
      delete this;
    }
  }

  PoolStats stats() const {
    Lock lock(mu_);
    return core_->stats();
  }
  std::vector<SessionInfo> sessions() const {
    Lock lock(mu_);
    return core_->sessions(clock_->now());
  }
  std::expected<ClientSessionView, Error> client_session(std::string_view id) const {
    Lock lock(mu_);
    auto info = core_->get_client_session(id, clock_->now());
    if (!info) return std::unexpected(std::move(info.error()));
    return ClientSessionView{.id = std::move(info->id),
                             .last_session = info->last_session,
                             .document = std::move(info->document),
                             .active_leases = info->active_leases};
  }
  Clock& clock() const { return *clock_; }

 private:
  struct WaitRecord {
    std::atomic<std::uint32_t> state{kWaiting};
    core::WaiterId id = 0;
    std::expected<LeaseHandle, Error> result;
  };

  // Under mu_.
  void refresh_now() {
    const TimePoint t = clock_->now();
    if (t > now_) now_ = t;
  }

  // Under mu_ (held by `lock`): a lease came back. Once the Pool is gone the
  // last one frees the engine; `this` must not be touched after that.
  void lease_returned(Lock& lock) {
    if (--outstanding_ == 0 && closed_ && workers_done_) {
      lock.unlock();
      delete this;
    }
  }

  // Under mu_: records a lease given to a caller.
  LeaseHandle hand_out(const core::Grant& grant) {
    const std::uint32_t slot = slot_of(grant.session);
    handed_out_[slot] = 1;
    ++outstanding_;
    return LeaseHandle{.lease = grant.lease, .session = grant.session, .object = objects_[slot]};
  }

  void ensure_slot(std::uint32_t slot) {
    if (slot >= objects_.size()) {
      objects_.resize(slot + 1, nullptr);
      handed_out_.resize(slot + 1, 0);
      destroy_on_return_.resize(slot + 1, 0);
    }
  }

  // Under mu_ (held by `lock`): performs the core's output. Grants and
  // rejections answer waiters (woken after the lock is released); session
  // work goes to the workers, or runs here once they are gone.
  void flush(Lock& lock) {
    std::vector<std::atomic<std::uint32_t>*> wake;  // parked waiters to wake once unlocked
    bool again = true;
    while (again) {
      again = false;
      for (core::Action& a : out_.actions) {
        switch (a.type) {
          case core::ActionType::kGrant:
          case core::ActionType::kReject: {
            auto it = waiters_.find(a.waiter);
            if (it == waiters_.end()) break;  // cannot happen: every waiter is registered
            WaitRecord* record = it->second;
            waiters_.erase(it);
            if (a.type == core::ActionType::kGrant) {
              record->result = hand_out(a.grant);
            } else {
              record->result = std::unexpected(std::move(a.error));
            }
            if (record->state.exchange(kAnswered, std::memory_order_acq_rel) == kParked) {
              wake.push_back(&record->state);
            }
            break;
          }
          case core::ActionType::kWake: {
            auto it = waiters_.find(a.waiter);
            if (it == waiters_.end()) break;
            std::atomic<std::uint32_t>& state = it->second->state;
            std::uint32_t was = state.load(std::memory_order_acquire);
            while (was != kAnswered && was != kWoken &&
                   !state.compare_exchange_weak(was, kWoken, std::memory_order_acq_rel)) {
            }
            if (was == kParked) wake.push_back(&state);
            break;
          }
          default:
            jobs_.push_back(std::move(a));
            break;
        }
      }
      const bool had_events = !out_.events.empty();
      out_.clear();
      if (had_events) changed_.notify_all();
      if (workers_done_ && !jobs_.empty()) {
        // No workers any more: run the jobs in this thread.
        while (!jobs_.empty()) {
          core::Action job = std::move(jobs_.front());
          jobs_.pop_front();
          run_job(lock, job);
        }
        again = !out_.actions.empty() || !out_.events.empty();
      }
    }
    if (!jobs_.empty()) work_cv_.notify_one();
    if (!wake.empty()) {
      lock.unlock();
      for (auto* w : wake) futex_wake(w);
      lock.lock();
    }
  }

  void wait(WaitRecord& record, TimePoint deadline) {
    // Park; an answer or a wake that came first is handled by the loop.
    std::uint32_t fresh = kWaiting;
    record.state.compare_exchange_strong(fresh, kParked, std::memory_order_acq_rel);
    for (;;) {
      const std::uint32_t state = record.state.load(std::memory_order_acquire);
      if (state == kAnswered) return;
      if (state == kWoken) {
        // A session came free: try for it; keep our place if someone was faster.
        Lock lock(mu_);
        std::uint32_t woken = kWoken;
        if (record.state.compare_exchange_strong(woken, kParked, std::memory_order_acq_rel)) {
          refresh_now();
          core_->retry(record.id, now_, out_);
          flush(lock);
        }
        continue;
      }
      const TimePoint now = clock_->now();
      if (now >= deadline) {
        // Our deadline passed: a tick answers us (and anyone else due).
        Lock lock(mu_);
        if (record.state.load(std::memory_order_acquire) == kAnswered) return;
        refresh_now();
        core_->tick(now_, out_);
        flush(lock);
        if (record.state.load(std::memory_order_acquire) == kAnswered) return;
        // The pool's clock is not real time (a manual clock in tests): the
        // workers' ticks answer us once it moves. Wait in short steps.
        lock.unlock();
        futex_wait(&record.state, kParked, tick_interval_);
        continue;
      }
      futex_wait(&record.state, kParked, std::min<Duration>(deadline - now, std::chrono::seconds(1)));
    }
  }

  void work() {
    Lock lock(mu_);
    TimePoint last_tick = clock_->now();
    for (;;) {
      if (jobs_.empty()) {
        if (stopping_) return;
        work_cv_.wait_for(lock, tick_interval_);
      }
      refresh_now();
      if (now_ - last_tick >= tick_interval_) {
        last_tick = now_;
        core_->tick(now_, out_);
        flush(lock);
      }
      if (!jobs_.empty()) {
        core::Action job = std::move(jobs_.front());
        jobs_.pop_front();
        run_job(lock, job);
        flush(lock);
      }
    }
  }

  // Under mu_; unlocks around factory calls.
  void run_job(Lock& lock, const core::Action& job) {
    switch (job.type) {
      case core::ActionType::kStartSession: {
        lock.unlock();
        std::expected<void*, std::string> made;
        try {
          made = factory_.create();
        } catch (const std::exception& e) {
          made = std::unexpected(std::string("create threw: ") + e.what());
        } catch (...) {
          made = std::unexpected(std::string("create threw"));
        }
        lock.lock();
        refresh_now();
        if (made) {
          const std::uint32_t slot = slot_of(job.session);
          ensure_slot(slot);
          objects_[slot] = *made;
          core_->session_started(job.session, now_, out_);
        } else {
          core_->session_start_failed(job.session, made.error(), now_, out_);
        }
        break;
      }
      case core::ActionType::kStopSession: {
        const std::uint32_t slot = slot_of(job.session);
        if (slot < handed_out_.size() && handed_out_[slot] != 0) {
          // A reclaimed lease still holds the object: destroy it when it comes back.
          destroy_on_return_[slot] = 1;
          break;
        }
        run_stop(lock, job.session);
        break;
      }
      case core::ActionType::kCheckSession: {
        void* object = objects_[slot_of(job.session)];
        bool healthy = true;
        if (factory_.validate) {
          lock.unlock();
          try {
            healthy = factory_.validate(object);
          } catch (...) {
            healthy = false;
          }
          lock.lock();
        }
        refresh_now();
        core_->check_result(job.session, healthy, now_, out_);
        break;
      }
      default:
        break;
    }
  }

  // Under mu_: destroys the session's object and reports it stopped.
  void run_stop(Lock& lock, SessionId session) {
    const std::uint32_t slot = slot_of(session);
    void* object = slot < objects_.size() ? std::exchange(objects_[slot], nullptr) : nullptr;
    if (object != nullptr) {
      lock.unlock();
      try {
        factory_.destroy(object);
      } catch (...) {
        // A throwing destroy must not take the pool down; the object is gone either way.
      }
      lock.lock();
    }
    refresh_now();
    core_->session_stopped(session, now_, out_);
  }

  Clock* clock_;
  mutable FutexLock mu_;
  std::condition_variable_any work_cv_;
  std::condition_variable_any changed_;
  std::shared_ptr<SharedCap> cap_;  // declared first: outlives the core, which releases into it
  std::unique_ptr<core::PoolCore> core_;
  const bool leases_expire_;  // the pool reclaims leases held too long
  ErasedFactory factory_;
  Duration tick_interval_;

  TimePoint now_{};  // the latest reading: never ahead of real time
  core::Output out_;
  std::vector<void*> objects_;            // by slot
  std::vector<std::uint8_t> handed_out_;  // by slot: a Lease holds the object
  std::vector<std::uint8_t> destroy_on_return_;
  std::unordered_map<core::WaiterId, WaitRecord*> waiters_;
  std::deque<core::Action> jobs_;
  std::vector<std::thread> workers_;
  std::once_flag shutdown_once_;
  int outstanding_ = 0;       // leases held by callers
  std::atomic<int> waiting_threads_{0};  // callers parked in acquire()
  bool stopping_ = false;
  bool workers_done_ = false;
  bool closed_ = false;
};

std::expected<PoolEngine*, Error> make_engine(PoolConfig config, ErasedFactory factory,
                                              PoolOptions options) {
  if (!factory.create) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig, "factory.create: required"));
  }
  auto core = core::PoolCore::create(std::move(config),
                                     core::CoreOptions{.seed = seed_or_random(options.seed),
                                                       .shared_cap = options.shared_cap.get()});
  if (!core) return std::unexpected(std::move(core.error()));
  return new PoolEngine(std::move(*core), std::move(factory), std::move(options));
}

void close_engine(PoolEngine* engine, std::chrono::nanoseconds grace) { engine->close(grace); }

std::expected<LeaseHandle, Error> engine_acquire(PoolEngine* engine, const AcquireOptions& options) {
  return engine->acquire(options);
}

std::expected<void, Error> engine_release(PoolEngine* engine, const LeaseHandle& handle,
                                          int outcome) {
  return engine->release(handle, outcome);
}

std::expected<void, Error> engine_scale(PoolEngine* engine, int target) {
  return engine->control([&](core::PoolCore& c, TimePoint now, core::Output& out) {
    return c.scale(target, now, out);
  });
}

void engine_pause(PoolEngine* engine) {
  engine->control([](core::PoolCore& c, TimePoint now, core::Output& out) {
    c.pause(now, out);
    return 0;
  });
}

void engine_resume(PoolEngine* engine) {
  engine->control([](core::PoolCore& c, TimePoint now, core::Output& out) {
    c.resume(now, out);
    return 0;
  });
}

void engine_drain(PoolEngine* engine) {
  engine->control([](core::PoolCore& c, TimePoint now, core::Output& out) {
    c.drain(now, out);
    return 0;
  });
}

void engine_emergency_stop(PoolEngine* engine) {
  engine->control([](core::PoolCore& c, TimePoint now, core::Output& out) {
    c.emergency_stop(now, out);
    return 0;
  });
}

void engine_emergency_resume(PoolEngine* engine) {
  engine->control([](core::PoolCore& c, TimePoint now, core::Output& out) {
    c.emergency_resume(now, out);
    return 0;
  });
}

void engine_shutdown(PoolEngine* engine, std::chrono::nanoseconds grace) {
  engine->shutdown(grace);
}

PoolStats engine_stats(const PoolEngine* engine) { return engine->stats(); }

std::vector<SessionInfo> engine_sessions(const PoolEngine* engine) { return engine->sessions(); }

std::expected<std::uint64_t, Error> engine_reserve(PoolEngine* engine, std::string_view owner,
                                                   std::chrono::nanoseconds duration) {
  return engine->control(
      [&](core::PoolCore& c, TimePoint now,
          core::Output& out) -> std::expected<std::uint64_t, Error> {
        auto r = c.reserve(owner, deadline_after(now, duration), now, out);
        if (!r) return std::unexpected(std::move(r.error()));
        return r->id;
      });
}

std::expected<void, Error> engine_cancel_reservation(PoolEngine* engine, std::uint64_t id,
                                                     std::string_view owner) {
  return engine->control([&](core::PoolCore& c, TimePoint now, core::Output& out) {
    return c.cancel_reservation(id, owner, now, out);
  });
}

std::expected<void, Error> engine_put_client_session(PoolEngine* engine, std::string_view id,
                                                     std::string document) {
  return engine->control(
      [&](core::PoolCore& c, TimePoint now, core::Output&) -> std::expected<void, Error> {
        auto r = c.put_client_session(id, std::move(document), now);
        if (!r) return std::unexpected(std::move(r.error()));
        return {};
      });
}

std::expected<ClientSessionView, Error> engine_get_client_session(const PoolEngine* engine,
                                                                  std::string_view id) {
  return engine->client_session(id);
}

std::expected<void, Error> engine_delete_client_session(PoolEngine* engine, std::string_view id) {
  return engine->control([&](core::PoolCore& c, TimePoint, core::Output&) {
    return c.delete_client_session(id);
  });
}

}  // namespace poolkeeper::detail
