// poolkeeper::Pool<T>: a typed, thread-safe pool of expensive objects for
// programs that embed poolkeeper.
//
// The pool keeps objects made by a Factory warm and lends them out as RAII
// Leases. All rules (sizing, the priority wait queue with deadlines, idle and
// lease timeouts, lifetimes, health, client-session affinity, reservations,
// pause/drain/emergency stop) live in the same deterministic PoolCore the
// daemon uses. Factory calls never run under the pool's lock: create and
// validate on its worker threads; destroy there too (or in the releasing
// thread for a reclaimed lease's object, inline after shutdown); reset in the
// releasing thread.
//
// Thread-safety: every method may be called from any thread. A Lease must be
// used by one thread at a time, and may outlive the Pool (the object is then
// destroyed when the lease ends).
//
//   poolkeeper::Factory<Conn> factory{
//       .create = [] { return Conn::open("db"); },        // may throw: retried with backoff
//       .validate = [](Conn& c) { return c.ping(); },
//   };
//   poolkeeper::PoolConfig config{.name = "db", .min = 2, .max = 16};
//   auto pool = poolkeeper::Pool<Conn>::create(config, factory).value();
//   if (auto lease = pool->acquire({.timeout = std::chrono::seconds(2)})) {
//     (*lease)->query("select 1");   // released when `lease` goes out of scope
//   } else {
//     std::cerr << lease.error().message;  // acquire_timeout, queue_full, ...
//   }
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "poolkeeper/clock.h"
#include "poolkeeper/error.h"
#include "poolkeeper/pool_config.h"
#include "poolkeeper/shared_cap.h"
#include "poolkeeper/stats.h"

namespace poolkeeper {

// How to make, check, reset and destroy the pooled objects.
template <class T>
struct Factory {
  // Makes one object. Return an error string or throw to report a failure;
  // failures are retried with exponential backoff and counted in stats.
  std::function<std::expected<T, std::string>()> create;
  // Optional: true when the object is fine. Used for validation and checks.
  std::function<bool(T&)> validate;
  // Optional: called on every clean release; false means the object is broken.
  std::function<bool(T&)> reset;
  // Optional: called before the object is destroyed.
  std::function<void(T&)> destroy;
};

struct AcquireOptions {
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  int priority = kNormalPriority;      // kLowestPriority .. kCriticalPriority
  std::string_view client_session{};   // prefer the object this client session used last
  std::string_view owner{};            // reservations made for this owner are used first
  std::chrono::nanoseconds lease_timeout{0};  // 0: the pool's lease_timeout
};

struct PoolOptions {
  Clock* clock = nullptr;           // the real clock when null
  std::uint64_t seed = 0;           // 0: random
  int worker_threads = 2;           // threads running factory calls and ticks
  std::chrono::nanoseconds tick_interval = std::chrono::milliseconds(10);
  std::shared_ptr<SharedCap> shared_cap;  // a cap shared with other pools, if any
};

struct ClientSessionView {
  std::string id;
  SessionId last_session = 0;
  std::string document;
  int active_leases = 0;
};

namespace detail {

struct ErasedFactory {
  std::function<std::expected<void*, std::string>()> create;
  std::function<bool(void*)> validate;
  std::function<bool(void*)> reset;
  std::function<void(void*)> destroy;  // runs the user's destroy, then deletes
};

struct LeaseHandle {
  LeaseId lease = 0;
  SessionId session = 0;
  void* object = nullptr;
};

// The type-erased engine behind Pool<T> (src/pool/pool_engine.cc).
class PoolEngine;

std::expected<PoolEngine*, Error> make_engine(PoolConfig config, ErasedFactory factory,
                                              PoolOptions options);
// Ends the pool's ownership: shuts down (waiting up to `grace` for leases) and
// frees the engine once its last lease is released.
void close_engine(PoolEngine* engine, std::chrono::nanoseconds grace);
std::expected<LeaseHandle, Error> engine_acquire(PoolEngine* engine, const AcquireOptions& options);
std::expected<void, Error> engine_release(PoolEngine* engine, const LeaseHandle& handle,
                                          int outcome);  // 0 ok, 1 error, 2 broken

// Operator controls and observation, forwarded by Pool<T>.
std::expected<void, Error> engine_scale(PoolEngine* engine, int target);
void engine_pause(PoolEngine* engine);
void engine_resume(PoolEngine* engine);
void engine_drain(PoolEngine* engine);
void engine_emergency_stop(PoolEngine* engine);
void engine_emergency_resume(PoolEngine* engine);
void engine_shutdown(PoolEngine* engine, std::chrono::nanoseconds grace);
PoolStats engine_stats(const PoolEngine* engine);
std::vector<SessionInfo> engine_sessions(const PoolEngine* engine);
std::expected<std::uint64_t, Error> engine_reserve(PoolEngine* engine, std::string_view owner,
                                                   std::chrono::nanoseconds duration);
std::expected<void, Error> engine_cancel_reservation(PoolEngine* engine, std::uint64_t id,
                                                     std::string_view owner);
std::expected<void, Error> engine_put_client_session(PoolEngine* engine, std::string_view id,
                                                     std::string document);
std::expected<ClientSessionView, Error> engine_get_client_session(const PoolEngine* engine,
                                                                  std::string_view id);
std::expected<void, Error> engine_delete_client_session(PoolEngine* engine, std::string_view id);

}  // namespace detail

template <class T>
class Pool;

// One exclusive hold on one pooled object. Releases on destruction.
template <class T>
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& other) noexcept
      : engine_(std::exchange(other.engine_, nullptr)),
        handle_(other.handle_),
        outcome_(other.outcome_) {}
  Lease& operator=(Lease&& other) noexcept {
    if (this != &other) {
      (void)release();
      engine_ = std::exchange(other.engine_, nullptr);
      handle_ = other.handle_;
      outcome_ = other.outcome_;
    }
    return *this;
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { (void)release(); }

  T& operator*() const { return *static_cast<T*>(handle_.object); }
  T* operator->() const { return static_cast<T*>(handle_.object); }
  T& get() const { return *static_cast<T*>(handle_.object); }
  explicit operator bool() const { return engine_ != nullptr; }

  LeaseId id() const { return handle_.lease; }
  SessionId session() const { return handle_.session; }

  // The object must not be reused: it is destroyed (and replaced) on release.
  void mark_broken() { outcome_ = 2; }
  // The work failed: the object's health score drops; it is checked once low.
  void mark_error() {
    if (outcome_ == 0) outcome_ = 1;
  }

  // Releases now. Reports kLeaseReclaimed when the lease outlived its lease
  // timeout (the object was taken back and is destroyed now).
  std::expected<void, Error> release() {
    if (engine_ == nullptr) return {};
    detail::PoolEngine* engine = std::exchange(engine_, nullptr);
    return detail::engine_release(engine, handle_, outcome_);
  }

 private:
  friend class Pool<T>;
  Lease(detail::PoolEngine* engine, detail::LeaseHandle handle)
      : engine_(engine), handle_(handle) {}

  detail::PoolEngine* engine_ = nullptr;
  detail::LeaseHandle handle_;
  int outcome_ = 0;
};

template <class T>
class Pool {
 public:
  // Validates the config (the error names the bad key) and starts the pool.
  static std::expected<std::unique_ptr<Pool>, Error> create(PoolConfig config, Factory<T> factory,
                                                            PoolOptions options = {}) {
    if (!factory.create) return std::unexpected(Error(ErrorCode::kInvalidConfig, "factory.create: required"));
    detail::ErasedFactory erased;
    erased.create = [create = std::move(factory.create)]() -> std::expected<void*, std::string> {
      std::expected<T, std::string> made = create();
      if (!made) return std::unexpected(std::move(made.error()));
      return static_cast<void*>(new T(std::move(*made)));
    };
    if (factory.validate) {
      erased.validate = [f = std::move(factory.validate)](void* p) { return f(*static_cast<T*>(p)); };
    }
    if (factory.reset) {
      erased.reset = [f = std::move(factory.reset)](void* p) { return f(*static_cast<T*>(p)); };
    }
    erased.destroy = [f = std::move(factory.destroy)](void* p) {
      std::unique_ptr<T> owned(static_cast<T*>(p));
      if (f) f(*owned);
    };
    auto engine = detail::make_engine(std::move(config), std::move(erased), std::move(options));
    if (!engine) return std::unexpected(std::move(engine.error()));
    return std::unique_ptr<Pool>(new Pool(*engine));
  }

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // Shuts down: waiters are answered at once, idle objects destroyed; leases
  // still out destroy their object when released.
  ~Pool() { detail::close_engine(engine_, std::chrono::nanoseconds{0}); }

  // Blocks until a lease is granted, the timeout passes, or the pool refuses.
  std::expected<Lease<T>, Error> acquire(const AcquireOptions& options = {}) {
    auto handle = detail::engine_acquire(engine_, options);
    if (!handle) return std::unexpected(std::move(handle.error()));
    return Lease<T>(engine_, *handle);
  }

  std::expected<void, Error> scale(int target) { return detail::engine_scale(engine_, target); }
  void pause() { detail::engine_pause(engine_); }
  void resume() { detail::engine_resume(engine_); }
  void drain() { detail::engine_drain(engine_); }
  void emergency_stop() { detail::engine_emergency_stop(engine_); }
  void emergency_resume() { detail::engine_emergency_resume(engine_); }
  // Answers all waiters (kShutdown) at once, destroys idle objects, and waits
  // up to `grace` for leases in flight to come back. Idempotent.
  void shutdown(std::chrono::nanoseconds grace = std::chrono::seconds(5)) {
    detail::engine_shutdown(engine_, grace);
  }

  PoolStats stats() const { return detail::engine_stats(engine_); }
  std::vector<SessionInfo> sessions() const { return detail::engine_sessions(engine_); }

  // Sets one idle object aside for `owner` for `duration`; only acquires with
  // that owner may lease it.
  std::expected<std::uint64_t, Error> reserve(std::string_view owner,
                                              std::chrono::nanoseconds duration) {
    return detail::engine_reserve(engine_, owner, duration);
  }
  std::expected<void, Error> cancel_reservation(std::uint64_t id, std::string_view owner) {
    return detail::engine_cancel_reservation(engine_, id, owner);
  }

  std::expected<void, Error> put_client_session(std::string_view id, std::string document) {
    return detail::engine_put_client_session(engine_, id, std::move(document));
  }
  std::expected<ClientSessionView, Error> client_session(std::string_view id) const {
    return detail::engine_get_client_session(engine_, id);
  }
  std::expected<void, Error> delete_client_session(std::string_view id) {
    return detail::engine_delete_client_session(engine_, id);
  }

 private:
  explicit Pool(detail::PoolEngine* engine) : engine_(engine) {}
  detail::PoolEngine* engine_;
};

}  // namespace poolkeeper
