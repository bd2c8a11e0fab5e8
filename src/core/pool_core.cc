#include "core/pool_core.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <utility>

namespace poolkeeper::core {
namespace {

constexpr std::size_t kEndedLeasesRemembered = 4096;
constexpr std::size_t kMaxClientSessionIdLength = 256;
constexpr int kMaxHealth = 100;

std::int64_t ns(Duration d) { return d.count(); }

}  // namespace

struct PoolCore::Slot {
  std::uint32_t index = 0;
  std::uint32_t incarnation = 0;
  bool in_use = false;
  SessionState state = SessionState::kStarting;
  SessionId id = 0;

  TimePoint created_at{};
  TimePoint started_at{};  // when it became ready: lifetimes count from here
  TimePoint idle_since{};
  TimePoint last_checked{};
  TimePoint next_check = TimePoint::max();
  TimePoint expires_at = TimePoint::max();  // lifetime end
  std::int64_t uses = 0;
  int health = kMaxHealth;
  bool holds_cap = false;
  bool was_unhealthy = false;  // the current check is a recovery check
  TimePoint last_used{};       // started, released or checked: what validation measures
  StopReason stop_reason = StopReason::kShutdown;
  std::optional<StopReason> recycle;  // retire at the next return (over a resource limit)
  int cpu_over = 0;                   // samples in a row above max_cpu_percent

  // Lease sequence for this slot; only grows, across incarnations.
  std::uint64_t next_lease_seq = 0;
  bool leased = false;
  std::uint64_t lease_seq = 0;
  LeaseId lease_id = 0;
  TimePoint lease_started{};
  TimePoint lease_deadline = TimePoint::max();
  std::string lease_owner;
  std::string lease_client;

  ReservationId reservation = 0;

  // Intrusive list of unreserved idle sessions.
  std::uint32_t idle_prev = kNil;
  std::uint32_t idle_next = kNil;
  bool in_idle_list = false;
};

struct PoolCore::ClientRecord {
  std::string id;
  SessionId last_session = 0;
  TimePoint last_activity{};
  std::string document;
  int active_leases = 0;
  ClientRecord* prev = nullptr;  // LRU list, least recently active first
  ClientRecord* next = nullptr;
};

struct PoolCore::Reservation {
  ReservationId id = 0;
  std::string owner;
  SessionId session = 0;  // 0 while waiting for a session
  TimePoint expires_at{};
};

// ---------------------------------------------------------------------------
// construction

std::expected<std::unique_ptr<PoolCore>, Error> PoolCore::create(PoolConfig config,
                                                                  CoreOptions options) {
  if (auto ok = validate_config(config); !ok) return std::unexpected(std::move(ok.error()));
  return std::make_unique<PoolCore>(std::move(config), options);
}

PoolCore::PoolCore(PoolConfig config, CoreOptions options)
    : config_(std::move(config)),
      options_(options),
      random_(options.seed),
      codec_(Random(options.seed ^ 0x6c65617365ULL).next(),
             Random(options.seed ^ 0x6b6579ULL).next()) {
  assert(validate_config(config_).has_value());
  target_ = config_.start == StartMode::kEager ? config_.max : config_.min;
  fast_paths_ = config_.validate_after_idle.count() == 0 && !config_.lease_events &&
                config_.min_idle == 0;
  counters_.name = config_.name;
  autoscaler_.configure(config_.autoscale);
  autoscale_ = config_.autoscale.enabled;
}

PoolCore::~PoolCore() {
  // Give back what this core still holds of a shared cap.
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slot(i);
    if (s.in_use && s.holds_cap && options_.shared_cap != nullptr) options_.shared_cap->release();
  }
}

void PoolCore::start(TimePoint now, Output& out) {
  next_cleanup_ = now + config_.client_session_cleanup_interval;
  ensure_capacity(now, out);
}

// ---------------------------------------------------------------------------
// session bookkeeping

PoolCore::Slot* PoolCore::find(SessionId id) {
  const std::uint32_t index = session_slot(id);
  if (index >= slots_.size()) return nullptr;
  Slot& s = slot(index);
  return (s.in_use && s.id == id) ? &s : nullptr;
}

const PoolCore::Slot* PoolCore::find(SessionId id) const {
  return const_cast<PoolCore*>(this)->find(id);
}

void PoolCore::set_state(Slot& s, SessionState state) {
  --by_state_[static_cast<int>(s.state)];
  if (s.state == SessionState::kClosing) {
    --closing_;
  } else {
    --live_;
  }
  s.state = state;
  ++by_state_[static_cast<int>(state)];
  if (state == SessionState::kClosing) {
    ++closing_;
  } else {
    ++live_;
  }
}

void PoolCore::idle_push(Slot& s) {
  assert(!s.in_idle_list);
  s.in_idle_list = true;
  s.idle_prev = kNil;
  s.idle_next = idle_head_;
  if (idle_head_ != kNil) slot(idle_head_).idle_prev = s.index;
  idle_head_ = s.index;
  if (idle_tail_ == kNil) idle_tail_ = s.index;
  ++idle_unreserved_;
}

void PoolCore::idle_remove(Slot& s) {
  if (!s.in_idle_list) return;
  s.in_idle_list = false;
  if (s.idle_prev != kNil) {
    slot(s.idle_prev).idle_next = s.idle_next;
  } else {
    idle_head_ = s.idle_next;
  }
  if (s.idle_next != kNil) {
    slot(s.idle_next).idle_prev = s.idle_prev;
  } else {
    idle_tail_ = s.idle_prev;
  }
  s.idle_prev = s.idle_next = kNil;
  --idle_unreserved_;
}

int PoolCore::floor() const { return budget_exceeded_ ? 0 : target_; }

int PoolCore::min_idle() const { return budget_exceeded_ ? 0 : config_.min_idle; }

bool PoolCore::can_start_one(bool for_demand) const {
  return by_state_[static_cast<int>(SessionState::kStarting)] < config_.max_starting && room_to_grow(for_demand);
}

bool PoolCore::room_to_grow(bool for_demand) const {
  if (modes_.shutdown || modes_.draining || budget_exceeded_) return false;
  const int limit = config_.max + (for_demand ? config_.overflow : 0);
  if (live_ + closing_ >= limit) return false;
  if (options_.shared_cap != nullptr &&
      options_.shared_cap->used() >= options_.shared_cap->limit()) {
    return false;
  }
  return true;
}

void PoolCore::start_session(TimePoint now, Output& out) {
  if (options_.shared_cap != nullptr && !options_.shared_cap->try_reserve()) return;
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->index = index;
  }
  Slot& s = slot(index);
  s.in_use = true;
  ++s.incarnation;
  s.recycle.reset();
  s.cpu_over = 0;
  s.id = make_session_id(s.incarnation, index);
  s.state = SessionState::kStarting;
  ++by_state_[static_cast<int>(SessionState::kStarting)];
  ++live_;
  s.created_at = now;
  s.idle_since = now;
  s.last_checked = now;
  s.last_used = now;
  s.next_check = TimePoint::max();
  s.expires_at = TimePoint::max();
  s.uses = 0;
  s.health = kMaxHealth;
  s.holds_cap = options_.shared_cap != nullptr;
  s.was_unhealthy = false;
  s.leased = false;
  s.reservation = 0;
  if (live_ > config_.max) ++counters_.overflow_created;

  Action a;
  a.type = ActionType::kStartSession;
  a.session = s.id;
  out.actions.push_back(std::move(a));
  emit(out, EventType::kSessionStarting, now, s.id);
}

void PoolCore::stop_session(Slot& s, StopReason reason, TimePoint now, Output& out) {
  if (s.state == SessionState::kClosing) return;
  idle_remove(s);
  if (s.leased) end_lease(s, now, ErrorCode::kLeaseAlreadyReleased);
  const ReservationId orphaned = std::exchange(s.reservation, 0);
  set_state(s, SessionState::kClosing);
  s.stop_reason = reason;
  Action a;
  a.type = ActionType::kStopSession;
  a.session = s.id;
  a.reason = reason;
  out.actions.push_back(std::move(a));
  Event e;
  e.type = EventType::kSessionClosing;
  e.at = now;
  e.session = s.id;
  e.reason = reason;
  out.events.push_back(std::move(e));
  if (orphaned != 0) reservation_lost_session(orphaned, now, out);
}

// A reservation's session is gone: it takes the longest idle session, if any;
// otherwise it waits for the next session to become idle.
void PoolCore::reservation_lost_session(ReservationId id, TimePoint now, Output& out) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) return;
  Reservation& r = *it->second;
  r.session = 0;
  if (modes_.shutdown || modes_.draining || idle_tail_ == kNil) return;
  Slot& t = slot(idle_tail_);
  idle_remove(t);
  t.reservation = id;
  r.session = t.id;
  give_to_reservation(t, now, out);
}

void PoolCore::free_slot(Slot& s, TimePoint now, StopReason reason, Output& out) {
  idle_remove(s);
  if (s.leased) end_lease(s, now, ErrorCode::kSessionLost);
  const ReservationId orphaned = std::exchange(s.reservation, 0);
  --by_state_[static_cast<int>(s.state)];
  if (s.state == SessionState::kClosing) {
    --closing_;
  } else {
    --live_;
  }
  if (s.holds_cap && options_.shared_cap != nullptr) options_.shared_cap->release();
  s.holds_cap = false;
  s.in_use = false;
  s.lease_owner.clear();
  s.lease_client.clear();
  free_slots_.push_back(s.index);
  if (reason != StopReason::kStartFailed) ++counters_.sessions_closed;
  Event e;
  e.type = EventType::kSessionClosed;
  e.at = now;
  e.session = s.id;
  e.reason = reason;
  e.value = static_cast<std::int64_t>(s.uses);
  out.events.push_back(std::move(e));
  if (orphaned != 0) reservation_lost_session(orphaned, now, out);
}

std::optional<StopReason> PoolCore::recycle_due(const Slot& s, TimePoint now) const {
  if (s.recycle) return s.recycle;
  if (config_.max_uses > 0 && s.uses >= config_.max_uses) return StopReason::kMaxUses;
  if (s.expires_at <= now) return StopReason::kMaxLifetime;
  return std::nullopt;
}

void PoolCore::send_to_check(Slot& s, TimePoint now, Output& out) {
  idle_remove(s);
  set_state(s, SessionState::kChecking);
  Action a;
  a.type = ActionType::kCheckSession;
  a.session = s.id;
  out.actions.push_back(std::move(a));
  if (s.was_unhealthy) emit(out, EventType::kSessionUnhealthy, now, s.id, 0, {}, s.health);
}

// A session came back (started, released, checked): why the pool no longer
// wants it, if it does not.
std::optional<StopReason> PoolCore::retire_reason(const Slot& s, TimePoint now) {
  if (modes_.shutdown || modes_.draining) {
    return modes_.shutdown ? StopReason::kShutdown : StopReason::kDrained;
  }
  if (auto due = recycle_due(s, now)) return due;
  if (!queue_.empty() || s.reservation != 0) return std::nullopt;
  for (const auto& [id, r] : reservations_) {
    if (r->session == 0) return std::nullopt;  // a reservation is waiting for this one
  }
  // Above max and nobody waits for it: an overflow session does not stay.
  if (live_ > config_.max) return StopReason::kOverflow;
  if (shrinking_) {
    // After a scale-down, sessions above the target close as they come back.
    if (live_ <= target_) {
      shrinking_ = false;
    } else if (idle_unreserved_ >= min_idle()) {
      return StopReason::kScaledDown;
    }
  }
  return std::nullopt;
}

// Sessions come back through here (started, released, checked): it stops
// those the pool no longer wants and settles capacity once for all of them,
// so a replacement starts while the old session stops.
void PoolCore::make_idle(Slot& s, TimePoint now, Output& out) {
  if (const std::optional<StopReason> reason = retire_reason(s, now)) {
    stop_session(s, *reason, now, out);
    ensure_capacity(now, out);
    maybe_finish_drain(now, out);
    return;
  }
  if (s.health < config_.health_check_below) {
    s.was_unhealthy = true;
    send_to_check(s, now, out);
    ensure_capacity(now, out);
    return;
  }
  set_state(s, SessionState::kIdle);
  s.idle_since = now;
  if (s.reservation != 0 || !reservations_.empty()) [[unlikely]] {
    if (give_to_reservation(s, now, out)) {
      // It may have served the waiter another idle session was held for.
      if (config_.handoff_after.count() > 0) trim_idle(now, out);
      return;
    }
  }
  idle_push(s);
  if (!queue_.empty()) dispatch(now, out);
}

// An idle session with a reservation goes to a waiter of the reservation's
// owner, if any; an unreserved one is taken by a reservation still waiting for
// a session. True when the session is no longer for general use.
bool PoolCore::give_to_reservation(Slot& s, TimePoint now, Output& out) {
  if (s.reservation != 0) {
    auto it = reservations_.find(s.reservation);
    if (it != reservations_.end()) {
      const std::string& owner = it->second->owner;
      Waiter* w = queue_.best_matching([&](const Waiter& x) { return x.owner == owner; });
      if (w != nullptr && needs_validation(s, now)) {
        send_to_check(s, now, out);  // comes back here once checked
        return true;
      }
      if (w != nullptr) grant_to(*w, s, now, out);
      return true;
    }
    s.reservation = 0;
  }
  // The oldest reservation still waiting for a session takes this one.
  Reservation* waiting = nullptr;
  for (auto& [id, r] : reservations_) {
    if (r->session == 0 && (waiting == nullptr || r->id < waiting->id)) waiting = r.get();
  }
  if (waiting == nullptr) return false;
  waiting->session = s.id;
  s.reservation = waiting->id;
  return give_to_reservation(s, now, out);
}

// What a queued waiter asked for, as a request (views into the waiter).
AcquireRequest PoolCore::request_of(const Waiter& w) {
  return AcquireRequest{.priority = w.priority,
                        .deadline = w.deadline,
                        .client_session = w.client_session,
                        .owner = w.owner,
                        .lease_timeout = w.lease_timeout};
}

// The lease itself: id, times, owner, counts. Shared by every way to grant.
inline void PoolCore::begin_lease(Slot& s, const AcquireRequest& r, TimePoint now) {
  s.leased = true;
  s.lease_seq = s.next_lease_seq++;
  s.lease_id = codec_.encode(s.index, s.lease_seq);
  s.lease_started = now;
  const Duration timeout = r.lease_timeout.count() > 0 ? r.lease_timeout : config_.lease_timeout;
  s.lease_deadline = timeout.count() > 0 ? now + timeout : TimePoint::max();
  if (!r.owner.empty() || !s.lease_owner.empty()) s.lease_owner.assign(r.owner);
  if (!r.client_session.empty() || !s.lease_client.empty()) s.lease_client.assign(r.client_session);
  counters_.reused += s.uses > 0 ? 1 : 0;
  ++s.uses;
  ++counters_.acquisitions;
}

Grant PoolCore::lease_to(Slot& s, const AcquireRequest& r, TimePoint enqueued, TimePoint now,
                         Output* out) {
  // Before the lease exists, so a new record does not count it twice.
  ClientRecord* client = r.client_session.empty() ? nullptr : client_touch(r.client_session, now);
  idle_remove(s);
  set_state(s, SessionState::kLeased);
  begin_lease(s, r, now);
  waits_.record(now - enqueued);
  if (client != nullptr) {
    client->last_session = s.id;
    ++client->active_leases;
  }
  if (config_.lease_events && out != nullptr) {
    emit(*out, EventType::kLeaseGranted, now, s.id, s.lease_id, s.lease_owner);
  }
  return Grant{.lease = s.lease_id, .session = s.id, .expires_at = s.lease_deadline};
}

void PoolCore::remember_ended(LeaseId lease, ErrorCode code) {
  if (ended_.emplace(lease, code).second) ended_order_.push_back(lease);
  while (ended_order_.size() > kEndedLeasesRemembered) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
}

// Ends the lease on `s` without a release. `unreleased` is what a late
// release of it will be told; kLeaseAlreadyReleased records nothing.
void PoolCore::end_lease(Slot& s, TimePoint now, ErrorCode unreleased) {
  if (!s.leased) return;
  s.leased = false;
  if (unreleased != ErrorCode::kLeaseAlreadyReleased) remember_ended(s.lease_id, unreleased);
  if (!s.lease_client.empty()) {
    if (ClientRecord* c = client(s.lease_client); c != nullptr) {
      if (c->active_leases > 0) --c->active_leases;
      c->last_activity = now;
      client_lru_unlink(*c);
      client_lru_push_back(*c);
    }
  }
}

// ---------------------------------------------------------------------------
// leases

bool PoolCore::needs_validation(const Slot& s, TimePoint now) const {
  return config_.validate_after_idle.count() > 0 && now - s.last_used > config_.validate_after_idle;
}

PoolCore::Slot* PoolCore::reserved_idle_for(std::string_view owner) {
  for (auto& [id, r] : reservations_) {
    if (r->owner != owner || r->session == 0) continue;
    Slot* s = find(r->session);
    if (s != nullptr && s->state == SessionState::kIdle) return s;
  }
  return nullptr;
}

PoolCore::Slot* PoolCore::take_idle_for(const AcquireRequest& r, TimePoint now, Output& out,
                                        bool* affinity_hit) {
  *affinity_hit = false;
  if (!r.client_session.empty() && idle_unreserved_ > 0) {
    if (ClientRecord* c = client(r.client_session); c != nullptr && c->last_session != 0) {
      Slot* s = find(c->last_session);
      if (s != nullptr && s->in_idle_list) {
        *affinity_hit = true;
        ++counters_.affinity_hits;
      } else {
        ++counters_.affinity_misses;
      }
      if (*affinity_hit) {
        if (needs_validation(*s, now)) {
          send_to_check(*s, now, out);
          *affinity_hit = false;
        } else {
          return s;
        }
      }
    }
  }
  while (idle_head_ != kNil) {
    Slot& s = slot(idle_head_);
    if (needs_validation(s, now)) {
      send_to_check(s, now, out);
      continue;
    }
    return &s;
  }
  return nullptr;
}

bool PoolCore::try_acquire_fast(const AcquireRequest& r, TimePoint now, Grant* grant) {
  if (idle_head_ == kNil || !fast_paths_ || std::bit_cast<std::uint32_t>(modes_) != 0 ||
      !r.client_session.empty() || !reservations_.empty() ||
      static_cast<unsigned>(r.priority) > static_cast<unsigned>(kCriticalPriority) ||
      overtaking_blocked(r.priority, now)) {
    return false;
  }
  Slot& s = slot(idle_head_);
  // Pop the idle head.
  idle_head_ = s.idle_next;
  if (idle_head_ != kNil) {
    slot(idle_head_).idle_prev = kNil;
  } else {
    idle_tail_ = kNil;
  }
  s.idle_next = kNil;
  s.in_idle_list = false;
  --idle_unreserved_;
  --by_state_[static_cast<int>(SessionState::kIdle)];
  ++by_state_[static_cast<int>(SessionState::kLeased)];
  s.state = SessionState::kLeased;
  begin_lease(s, r, now);
  ++counters_.immediate;
  waits_.record_zero();
  *grant = Grant{.lease = s.lease_id, .session = s.id, .expires_at = s.lease_deadline};
  return true;
}

bool PoolCore::try_release_fast(LeaseId lease, TimePoint now) {
  std::uint32_t index;
  std::uint64_t seq;
  codec_.decode(lease, &index, &seq);
  if (index >= slots_.size() || !fast_paths_) return false;
  Slot& s = slot(index);
  if (!s.leased || s.lease_seq != seq || !s.in_use) return false;
  return release_fast(s, now);
}

// A clean release straight back to idle, for a lease already checked to be held.
bool PoolCore::release_fast(Slot& s, TimePoint now) {
  if (!fast_paths_ || !s.lease_client.empty() || s.reservation != 0 ||
      std::bit_cast<std::uint32_t>(modes_) != 0 || !reservations_.empty() || !queue_.empty() ||
      live_ > config_.max || shrinking_ || recycle_due(s, now).has_value()) {
    return false;
  }
  const int health = std::min(kMaxHealth, s.health + config_.health_success_recovery);
  if (health < config_.health_check_below) return false;
  note_hold(s, now);
  s.leased = false;
  s.last_used = now;
  s.health = health;
  --by_state_[static_cast<int>(SessionState::kLeased)];
  ++by_state_[static_cast<int>(SessionState::kIdle)];
  s.state = SessionState::kIdle;
  s.idle_since = now;
  idle_push(s);
  return true;
}

// Learns hold times (for wait prediction) and counts the release.
// Integer EWMA (weight 1/16): cheap, and no denormals when holds are ~0.
void PoolCore::note_hold(const Slot& s, TimePoint now) {
  const std::int64_t held = ns(now - s.lease_started);
  avg_hold_ns_ = hold_samples_ == 0 ? held : avg_hold_ns_ + (held - avg_hold_ns_) / 16;
  ++hold_samples_;
  ++counters_.releases;
}

std::expected<AcquireOutcome, Error> PoolCore::acquire(const AcquireRequest& r, TimePoint now,
                                                       Output& out) {
  Grant fast;
  if (try_acquire_fast(r, now, &fast)) [[likely]] {
    AcquireOutcome o;
    o.granted = true;
    o.grant = fast;
    return o;
  }
  if (r.priority < kLowestPriority || r.priority > kCriticalPriority) {
    return std::unexpected(Error(ErrorCode::kInvalidArgument,
                                 "priority: must be in 0..9, got " + std::to_string(r.priority)));
  }
  if (r.client_session.size() > kMaxClientSessionIdLength) {
    return std::unexpected(
        Error(ErrorCode::kInvalidArgument, "client_session: longer than 256 bytes"));
  }
  if (modes_.shutdown || modes_.draining || modes_.paused) {
    ++counters_.rejections;
    if (modes_.shutdown) return std::unexpected(Error(ErrorCode::kShutdown, "the pool is shutting down"));
    if (modes_.draining) return std::unexpected(Error(ErrorCode::kPoolDraining, "the pool is draining"));
    return std::unexpected(Error(ErrorCode::kPoolPaused, "the pool is paused"));
  }
  if (modes_.emergency && r.priority < kCriticalPriority) {
    ++counters_.rejections;
    return std::unexpected(
        Error(ErrorCode::kEmergencyStop, "emergency stop: only critical requests are served"));
  }

  Slot* s = nullptr;
  if (!reservations_.empty() && !r.owner.empty()) {
    // Stale reserved sessions go to a check (and back to this owner's waiters).
    while ((s = reserved_idle_for(r.owner)) != nullptr && needs_validation(*s, now)) {
      send_to_check(*s, now, out);
    }
  }
  if (s == nullptr && config_.handoff_after.count() > 0 && !queue_.empty()) {
    dispatch(now, out, /*trim=*/false);  // a waiter that waited long enough goes first
  }
  if (s == nullptr && !overtaking_blocked(r.priority, now)) {
    bool hit = false;
    s = take_idle_for(r, now, out, &hit);
  }
  if (s != nullptr) {
    ++counters_.immediate;
    AcquireOutcome o;
    o.granted = true;
    o.grant = lease_to(*s, r, now, now, &out);
    if (min_idle() > 0) ensure_capacity(now, out);
    if (config_.handoff_after.count() > 0) trim_idle(now, out);  // held for waiters now served
    return o;
  }

  // No idle session: wait, unless nothing live can serve and the budget
  // forbids starting one.
  if (budget_exceeded_ && live_ == 0) {
    ++counters_.rejections;
    return std::unexpected(Error(ErrorCode::kBudgetExceeded, budget_why_));
  }
  if (r.deadline <= now) {
    ++counters_.timeouts;
    return std::unexpected(Error(ErrorCode::kAcquireTimeout, "no idle session and no time to wait"));
  }
  if (static_cast<int>(queue_.size()) >= config_.max_queue) {
    ++counters_.rejections;
    const Duration wait = predict_wait(static_cast<int>(queue_.size()) + 1);
    return std::unexpected(Error(
        ErrorCode::kQueueFull, "the wait queue is full (" + std::to_string(config_.max_queue) + ")",
        std::max(std::chrono::milliseconds(1),
                 std::chrono::duration_cast<std::chrono::milliseconds>(wait))));
  }
  Waiter& w = queue_.push(r.priority, r.deadline, now, config_.aging);
  const WaiterId wid = w.id;
  const int position = queue_.ahead_of(w) + 1;
  const Duration estimate = predict_wait(position);
  if (config_.early_reject && estimate.count() > 0 && now + estimate > r.deadline) {
    queue_.remove(wid);
    ++counters_.rejections;
    return std::unexpected(Error(
        ErrorCode::kDeadlineUnreachable,
        "predicted wait " + std::to_string(ns(estimate) / 1000000) + " ms at queue position " +
            std::to_string(position) + " exceeds the deadline (" + std::to_string(ns(r.deadline - now) / 1000000) +
            " ms away)",
        std::max(std::chrono::milliseconds(1),
                 std::chrono::duration_cast<std::chrono::milliseconds>(estimate))));
  }
  w.owner.assign(r.owner);
  w.client_session.assign(r.client_session);
  w.lease_timeout = r.lease_timeout;
  ensure_capacity(now, out);
  // ensure_capacity may not grant; a queued waiter is answered by an action.
  AcquireOutcome o;
  o.waiter = wid;
  o.queue_position = position;
  o.estimated_wait = estimate;
  return o;
}

std::vector<QueuedView> PoolCore::queue_view(TimePoint now) const {
  std::vector<const Waiter*> waiting;
  queue_.for_each([&](const Waiter& w) { waiting.push_back(&w); });
  std::sort(waiting.begin(), waiting.end(), [](const Waiter* a, const Waiter* b) {
    return a->key != b->key ? a->key < b->key : a->seq < b->seq;
  });
  std::vector<QueuedView> out;
  out.reserve(waiting.size());
  for (const Waiter* w : waiting) {
    const int position = static_cast<int>(out.size()) + 1;
    out.push_back(QueuedView{
        .position = position,
        .priority = w->priority,
        .waited = now - w->enqueued_at,
        .deadline_in = w->deadline == TimePoint::max() ? Duration::max() : w->deadline - now,
        .estimated_wait = predict_wait(position),
        .owner = w->owner});
  }
  return out;
}

// The predicted wait of the waiter at `position` (1-based), 0 when the core
// has not learned enough to predict.
Duration PoolCore::predict_wait(int position) const {
  const int coming = by_state_[static_cast<int>(SessionState::kStarting)] +
                     by_state_[static_cast<int>(SessionState::kChecking)];
  if (position <= coming || room_to_grow(true)) {
    return Duration{avg_start_ns_};
  }
  const int leased = by_state_[static_cast<int>(SessionState::kLeased)];
  if (hold_samples_ < 8 || leased == 0) return Duration{0};
  return Duration{avg_hold_ns_ / leased * (position - coming)};
}

std::expected<void, Error> PoolCore::cancel(WaiterId waiter, TimePoint now, Output& out) {
  if (queue_.find(waiter) == nullptr) {
    return std::unexpected(Error(ErrorCode::kUnknownWaiter, "no such waiter is queued"));
  }
  queue_.remove(waiter);
  ++counters_.cancellations;
  trim_idle(now, out);  // a session held for it may no longer be wanted
  return {};
}

std::expected<void, Error> PoolCore::release(LeaseId lease, std::optional<std::string_view> owner,
                                             ReleaseOutcome outcome, TimePoint now, Output& out) {
  auto held = held_slot(lease, owner);
  if (!held) return std::unexpected(std::move(held.error()));
  Slot& s = **held;
  if (outcome == ReleaseOutcome::kOk && release_fast(s, now)) [[likely]] return {};

  note_hold(s, now);
  if (config_.lease_events) {
    emit(out, EventType::kLeaseReleased, now, s.id, s.lease_id, {}, static_cast<std::int64_t>(outcome));
  }
  end_lease(s, now, ErrorCode::kLeaseAlreadyReleased);
  s.last_used = now;

  switch (outcome) {
    case ReleaseOutcome::kOk:
      s.health = std::min(kMaxHealth, s.health + config_.health_success_recovery);
      break;
    case ReleaseOutcome::kError:
      s.health = std::max(0, s.health - config_.health_error_penalty);
      break;
    case ReleaseOutcome::kBroken:
      ++counters_.broken_releases;
      stop_session(s, StopReason::kBroken, now, out);
      ensure_capacity(now, out);
      // Its reservation may have moved to a session held for a waiter it served.
      trim_idle(now, out);
      return {};
  }
  make_idle(s, now, out);
  if (config_.handoff_after.count() > 0) trim_idle(now, out);  // held for waiters now served
  return {};
}

// ---------------------------------------------------------------------------
// queue and capacity

void PoolCore::grant_to(Waiter& w, Slot& s, TimePoint now, Output& out) {
  const AcquireRequest r = request_of(w);
  const WaiterId wid = w.id;
  Action a;
  a.type = ActionType::kGrant;
  a.waiter = wid;
  a.grant = lease_to(s, r, w.enqueued_at, now, &out);
  out.actions.push_back(std::move(a));
  if (woken_ == wid) woken_ = 0;
  queue_.remove(wid);
}

void PoolCore::retry(WaiterId waiter, TimePoint now, Output& out) {
  if (woken_ == waiter) woken_ = 0;
  Waiter* w = queue_.find(waiter);
  if (w == nullptr) return;  // answered meanwhile
  if (idle_unreserved_ > 0 && (w == queue_.front() || !overtaking_blocked(w->priority, now))) {
    const AcquireRequest r = request_of(*w);
    bool hit = false;
    if (Slot* s = take_idle_for(r, now, out, &hit); s != nullptr) grant_to(*w, *s, now, out);
  }
  if (!queue_.empty() && idle_unreserved_ > 0) dispatch(now, out);
  trim_idle(now, out);  // sessions held for waiters who are now served
}

void PoolCore::dispatch(TimePoint now, Output& out, bool trim) {
  while (!queue_.empty() && idle_unreserved_ > 0) {
    Waiter* w = queue_.front();
    if (config_.handoff_after.count() > 0 && now - w->enqueued_at < config_.handoff_after) {
      // Not waited long enough to be owed the session: wake it to compete.
      if (woken_ == 0 || queue_.find(woken_) == nullptr) {
        woken_ = w->id;
        Action a;
        a.type = ActionType::kWake;
        a.waiter = w->id;
        out.actions.push_back(std::move(a));
      }
      break;
    }
    const AcquireRequest r = request_of(*w);
    bool hit = false;
    Slot* s = take_idle_for(r, now, out, &hit);
    if (s == nullptr) break;
    grant_to(*w, *s, now, out);
  }
  if (!queue_.empty()) {
    ensure_capacity(now, out);
  } else if (trim && config_.handoff_after.count() > 0) {
    trim_idle(now, out);  // sessions held for waiters who are now served
  }
}

void PoolCore::ensure_capacity(TimePoint now, Output& out) {
  if (modes_.shutdown || modes_.draining || batch_depth_ > 0) return;
  if (now < next_start_allowed_) return;
  // Sessions on their way (starting, being checked) go to reservations waiting
  // for a session first, then to waiters, then become idle spares.
  int unassigned_reservations = 0;
  for (auto& [id, r] : reservations_) {
    if (r->session == 0) ++unassigned_reservations;
  }
  const int coming = by_state_[static_cast<int>(SessionState::kStarting)] +
                     by_state_[static_cast<int>(SessionState::kChecking)];
  const int demand = static_cast<int>(queue_.size()) + unassigned_reservations;
  // Idle sessions cover waiters too (with handoff_after one may be held for a
  // woken waiter; with strict handoff none is idle while waiters queue).
  const int for_demand = demand - coming - idle_unreserved_;
  const int for_idle = min_idle() - (idle_unreserved_ + coming - demand);
  const int for_floor = floor() - live_;
  const int want = std::max({for_demand, for_idle, for_floor});
  for (int i = 0; i < want; ++i) {
    if (!can_start_one(i < for_demand)) break;
    const int before = live_;
    start_session(now, out);
    if (live_ == before) break;  // the shared cap refused
  }
}

void PoolCore::reject_waiter(WaiterId id, Error error, TimePoint now, Output& out) {
  const bool timeout = error.code == ErrorCode::kAcquireTimeout;
  if (timeout) {
    ++counters_.timeouts;
  } else {
    ++counters_.rejections;
  }
  emit(out, timeout ? EventType::kWaiterTimedOut : EventType::kWaiterRejected, now, 0, 0,
       std::string(to_string(error.code)));
  Action a;
  a.type = ActionType::kReject;
  a.waiter = id;
  a.error = std::move(error);
  out.actions.push_back(std::move(a));
  queue_.remove(id);
}

void PoolCore::reject_all(ErrorCode code, std::string_view why, int below_priority, TimePoint now,
                          Output& out) {
  std::vector<WaiterId> ids;
  queue_.for_each([&](const Waiter& w) {
    if (w.priority < below_priority) ids.push_back(w.id);
  });
  for (WaiterId id : ids) reject_waiter(id, Error(code, std::string(why)), now, out);
  trim_idle(now, out);
}

void PoolCore::maybe_finish_drain(TimePoint now, Output& out) {
  if ((modes_.draining || modes_.shutdown) && !drain_announced_ && live_ + closing_ == 0) {
    drain_announced_ = true;
    emit(out, EventType::kDrained, now);
  }
}

// ---------------------------------------------------------------------------
// results of actions

void PoolCore::session_started(SessionId session, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state != SessionState::kStarting) return;
  const std::int64_t took = ns(now - s->created_at);
  avg_start_ns_ = counters_.sessions_created == 0 ? took : avg_start_ns_ + (took - avg_start_ns_) / 4;
  ++counters_.sessions_created;
  consecutive_start_failures_ = 0;
  last_start_error_.clear();
  s->started_at = now;
  s->last_checked = now;
  s->last_used = now;
  if (config_.max_lifetime.count() > 0) {
    const double cut = config_.lifetime_jitter * random_.unit();
    s->expires_at = now + Duration{static_cast<Duration::rep>(
                              static_cast<double>(ns(config_.max_lifetime)) * (1.0 - cut))};
  }
  if (config_.check_interval.count() > 0) {
    // Spread the first check over one interval so sessions started together are not checked together.
    s->next_check = now + Duration{static_cast<Duration::rep>(
                              static_cast<double>(ns(config_.check_interval)) * (0.5 + random_.unit()))};
  }
  emit(out, EventType::kSessionStarted, now, s->id);
  make_idle(*s, now, out);
  ensure_capacity(now, out);  // a start slot is free: the next start may go
  maybe_finish_drain(now, out);
}

void PoolCore::session_start_failed(SessionId session, std::string_view error, TimePoint now,
                                    Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state != SessionState::kStarting) return;
  ++counters_.start_failures;
  ++consecutive_start_failures_;
  last_start_error_.assign(error);
  // Exponential backoff with jitter: the delay is drawn in [d/2, d].
  double d = static_cast<double>(ns(config_.start_backoff_initial)) *
             std::pow(2.0, std::min(consecutive_start_failures_ - 1, 40));
  d = std::min(d, static_cast<double>(ns(config_.start_backoff_max)));
  d *= 0.5 + 0.5 * random_.unit();
  next_start_allowed_ = now + Duration{static_cast<Duration::rep>(d)};
  emit(out, EventType::kSessionStartFailed, now, s->id, 0, std::string(error),
       consecutive_start_failures_);
  free_slot(*s, now, StopReason::kStartFailed, out);
  maybe_finish_drain(now, out);
  reject_unservable(now, out);
}

void PoolCore::session_stopped(SessionId session, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state != SessionState::kClosing) return;
  free_slot(*s, now, s->stop_reason, out);
  ensure_capacity(now, out);
  maybe_finish_drain(now, out);
  reject_unservable(now, out);
}

void PoolCore::set_budget_exceeded(bool exceeded, std::string why, TimePoint now, Output& out) {
  if (exceeded == budget_exceeded_) {
    if (exceeded) budget_why_ = std::move(why);
    return;
  }
  budget_exceeded_ = exceeded;
  budget_why_ = std::move(why);
  emit(out, exceeded ? EventType::kBudgetExceeded : EventType::kBudgetRestored, now, 0, 0,
       budget_why_);
  if (exceeded) {
    reject_unservable(now, out);
  } else {
    ensure_capacity(now, out);
  }
}

// With the budget spent and no session live, waiters wait for nothing.
void PoolCore::reject_unservable(TimePoint now, Output& out) {
  if (!budget_exceeded_ || live_ > 0 || queue_.empty()) return;
  reject_all(ErrorCode::kBudgetExceeded, budget_why_, kCriticalPriority + 1, now, out);
}

void PoolCore::session_exited(SessionId session, std::string_view why, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr) return;
  if (s->state == SessionState::kStarting) {
    session_start_failed(session, why, now, out);
    return;
  }
  if (s->leased) {
    Event e;
    e.type = EventType::kLeaseLost;
    e.at = now;
    e.session = s->id;
    e.lease = s->lease_id;
    e.detail.assign(why);
    out.events.push_back(std::move(e));
  }
  free_slot(*s, now, StopReason::kExited, out);
  ensure_capacity(now, out);
  maybe_finish_drain(now, out);
  reject_unservable(now, out);
}

void PoolCore::check_result(SessionId session, bool healthy, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state != SessionState::kChecking) return;
  ++counters_.checks;
  s->last_checked = now;
  s->last_used = now;
  if (config_.check_interval.count() > 0) s->next_check = now + config_.check_interval;
  if (!healthy) {
    ++counters_.check_failures;
    stop_session(*s, StopReason::kUnhealthy, now, out);
    ensure_capacity(now, out);
    return;
  }
  s->health = std::min(kMaxHealth, std::max(s->health, config_.health_check_below) +
                                       config_.health_success_recovery);
  if (s->was_unhealthy) {
    s->was_unhealthy = false;
    emit(out, EventType::kSessionRecovered, now, s->id, 0, {}, s->health);
  }
  make_idle(*s, now, out);
}

// ---------------------------------------------------------------------------
// time

// Idle sessions nobody waits for close while the pool is above max (overflow)
// or above a scale-down target. Sessions usually leave on their way back
// (retire_if_unneeded); this catches those that went idle while waiters
// queued and the waiters then left (handoff_after).
void PoolCore::trim_idle(TimePoint now, Output& out) {
  if (!queue_.empty()) return;
  while (idle_tail_ != kNil && live_ > config_.max) {
    stop_session(slot(idle_tail_), StopReason::kOverflow, now, out);
  }
  while (shrinking_ && idle_tail_ != kNil && live_ > target_ &&
         idle_unreserved_ > min_idle()) {
    stop_session(slot(idle_tail_), StopReason::kScaledDown, now, out);
  }
  if (shrinking_ && live_ <= target_) shrinking_ = false;
}

// Waiters whose deadline passed are answered with acquire_timeout.
void PoolCore::expire_waiters(TimePoint now, Output& out) {
  while (Waiter* w = queue_.earliest_deadline()) {
    if (w->deadline > now) break;
    std::string message = "no session became free before the deadline";
    if (consecutive_start_failures_ > 0) {
      message += "; the last session start failed: " + last_start_error_;
    }
    reject_waiter(w->id, Error(ErrorCode::kAcquireTimeout, std::move(message)), now, out);
  }
}

void PoolCore::tick(TimePoint now, Output& out) {
  expire_waiters(now, out);
  reject_unservable(now, out);

  // With handoff_after, a waiter may now have waited long enough to be owed a
  // free session. Trimming waits until leases are reclaimed below: a
  // reservation that loses its session takes an idle one before any closes.
  if (!queue_.empty() && idle_unreserved_ > 0) dispatch(now, out, /*trim=*/false);

  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slot(i);
    if (!s.in_use) continue;
    if (s.state == SessionState::kLeased && s.lease_deadline <= now) {
      ++counters_.reclaimed;
      Event e;
      e.type = EventType::kLeaseReclaimed;
      e.at = now;
      e.session = s.id;
      e.lease = s.lease_id;
      e.detail = s.lease_owner;
      out.events.push_back(std::move(e));
      const bool at_shutdown = modes_.shutdown && now >= leases_until_;
      end_lease(s, now, at_shutdown ? ErrorCode::kShutdown : ErrorCode::kLeaseReclaimed);
      stop_session(s, at_shutdown ? StopReason::kShutdown : StopReason::kLeaseAbandoned, now, out);
    } else if (s.state == SessionState::kIdle) {
      if (s.expires_at <= now) {
        stop_session(s, StopReason::kMaxLifetime, now, out);
      } else if (s.next_check <= now) {
        s.next_check = now + config_.check_interval;
        send_to_check(s, now, out);
      }
    }
  }

  expire_reservations(now, out);  // before the idle timeout: returned sessions count as idle

  trim_idle(now, out);

  // Idle timeout: longest idle first, keeping the warm size and min_idle spares.
  if (config_.idle_timeout.count() > 0) {
    while (idle_tail_ != kNil && live_ > floor() && idle_unreserved_ > min_idle()) {
      Slot& s = slot(idle_tail_);
      if (now - s.idle_since < config_.idle_timeout) break;
      stop_session(s, StopReason::kIdleTimeout, now, out);
    }
  }

  if (now >= next_cleanup_) {
    cleanup_client_sessions(now, out);
    next_cleanup_ = now + config_.client_session_cleanup_interval;
  }
  if (autoscale_) run_autoscaler(now, out);
  ensure_capacity(now, out);
  maybe_finish_drain(now, out);
}

void PoolCore::run_autoscaler(TimePoint now, Output& out) {
  if (modes_.shutdown || modes_.draining || modes_.emergency || modes_.paused) return;
  if (now < autoscaler_.next_due()) return;
  AutoscaleObservation o;
  o.size = target_;
  o.live = live_;
  o.busy = by_state_[static_cast<int>(SessionState::kLeased)];
  o.waiting = static_cast<int>(queue_.size());
  o.starting = by_state_[static_cast<int>(SessionState::kStarting)];
  if (!queue_.empty()) {
    TimePoint oldest = now;
    queue_.for_each([&](const Waiter& w) { oldest = std::min(oldest, w.enqueued_at); });
    o.oldest_wait = now - oldest;
  }
  o.cold_start = Duration{avg_start_ns_};
  o.min = config_.min;
  o.max = config_.max;
  std::optional<ScaleDecision> d = autoscaler_.evaluate(o, now);
  if (!d) return;
  target_ = d->to;
  if (d->to > d->from) {
    ++counters_.scale_ups;
  } else {
    ++counters_.scale_downs;
    shrink_to_target(now, out);
  }
  Event e;
  e.type = EventType::kAutoscaled;
  e.at = now;
  e.value = d->to;
  e.previous = d->from;
  e.confidence = d->confidence;
  e.detail = (d->predictive ? "predicted: " : "") + d->reason;
  out.events.push_back(std::move(e));
}

void PoolCore::set_autoscale(bool on, TimePoint now, Output& out) {
  if (autoscale_ == on) return;
  autoscale_ = on;
  emit(out, EventType::kAutoscaleSet, now, 0, 0, {}, on ? 1 : 0);
}

TimePoint PoolCore::next_due() const {
  TimePoint due = TimePoint::max();
  if (auto* w = const_cast<WaitQueue&>(queue_).earliest_deadline()) due = w->deadline;
  if (consecutive_start_failures_ > 0 && next_start_allowed_ > TimePoint{}) {
    due = std::min(due, next_start_allowed_);
  }
  for (const auto& owned : slots_) {
    const Slot& s = *owned;
    if (!s.in_use) continue;
    if (s.state == SessionState::kLeased) {
      due = std::min(due, s.lease_deadline);
    } else if (s.state == SessionState::kIdle) {
      due = std::min({due, s.expires_at, s.next_check});
    }
  }
  if (config_.idle_timeout.count() > 0 && idle_tail_ != kNil && live_ > floor()) {
    due = std::min(due, slot(idle_tail_).idle_since + config_.idle_timeout);
  }
  for (const auto& [id, r] : reservations_) due = std::min(due, r->expires_at);
  if (!clients_.empty()) due = std::min(due, next_cleanup_);
  if (autoscale_) due = std::min(due, autoscaler_.next_due());
  if (config_.handoff_after.count() > 0 && !queue_.empty() && idle_unreserved_ > 0) {
    // The first waiter becomes owed the free session: a tick hands it over.
    due = std::min(due, queue_.front()->enqueued_at + config_.handoff_after);
  }
  return due;
}

// ---------------------------------------------------------------------------
// operator controls

std::expected<void, Error> PoolCore::scale(int target, TimePoint now, Output& out) {
  if (target < 0 || target > config_.max) {
    return std::unexpected(Error(ErrorCode::kInvalidArgument,
                                 "target: must be in 0..max (" + std::to_string(config_.max) +
                                     "), got " + std::to_string(target)));
  }
  target_ = target;
  autoscaler_.scaled(now);
  expire_waiters(now, out);  // so waiters past their deadline count for nothing below
  shrink_to_target(now, out);
  emit(out, EventType::kScaled, now, 0, 0, {}, target);
  ensure_capacity(now, out);
  return {};
}

void PoolCore::shrink_to_target(TimePoint now, Output& out) {
  // Idle sessions may be held for waiters (handoff_after): keep those, and the
  // spares on top of them.
  const int keep_idle = min_idle() + static_cast<int>(queue_.size());
  while (live_ > target_ && idle_tail_ != kNil && idle_unreserved_ > keep_idle) {
    stop_session(slot(idle_tail_), StopReason::kScaledDown, now, out);
  }
  shrinking_ = live_ > target_;
}

std::expected<void, Error> PoolCore::reconfigure(PoolConfig config, TimePoint now, Output& out) {
  if (auto ok = validate_config(config); !ok) return std::unexpected(std::move(ok.error()));
  if (config.name != config_.name) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig,
                                 "name: cannot change on a running pool (\"" + config_.name +
                                     "\" to \"" + config.name + "\")"));
  }
  const PoolConfig old = std::exchange(config_, std::move(config));
  fast_paths_ = config_.validate_after_idle.count() == 0 && !config_.lease_events &&
                config_.min_idle == 0;

  // Sizes: the file's sizes win when they changed; otherwise an operator's
  // target stays (within the new max). Sessions above the new target but
  // within max leave by the idle timeout, as above min they always do.
  if (old.min != config_.min || old.max != config_.max || old.start != config_.start) {
    target_ = config_.start == StartMode::kEager ? config_.max : config_.min;
    shrinking_ = false;
  } else {
    target_ = std::min(target_, config_.max);
  }

  if (old.aging != config_.aging) queue_.reorder(config_.aging);
  autoscaler_.configure(config_.autoscale);
  if (old.autoscale.enabled != config_.autoscale.enabled) {
    set_autoscale(config_.autoscale.enabled, now, out);  // else an operator's on/off stays
  }

  const bool lifetime_changed =
      old.max_lifetime != config_.max_lifetime || old.lifetime_jitter != config_.lifetime_jitter;
  const bool checks_changed = old.check_interval != config_.check_interval;
  for (const auto& owned : slots_) {
    Slot& s = *owned;
    // A starting session gets both from the new config when it is up.
    if (!s.in_use || s.state == SessionState::kStarting || s.state == SessionState::kClosing) continue;
    if (lifetime_changed) {
      // Counted from its start, as always, with a new draw of the jitter.
      s.expires_at = TimePoint::max();
      if (config_.max_lifetime.count() > 0) {
        const double cut = config_.lifetime_jitter * random_.unit();
        s.expires_at = s.started_at + Duration{static_cast<Duration::rep>(
                                          static_cast<double>(ns(config_.max_lifetime)) * (1.0 - cut))};
      }
    }
    if (checks_changed) {
      // Spread over one new interval, as for sessions started together.
      s.next_check = TimePoint::max();
      if (config_.check_interval.count() > 0) {
        s.next_check = now + Duration{static_cast<Duration::rep>(
                                 static_cast<double>(ns(config_.check_interval)) * (0.5 + random_.unit()))};
      }
    }
  }
  next_cleanup_ = std::min(next_cleanup_, now + config_.client_session_cleanup_interval);
  // A start backoff under way ends no later than the new longest one.
  next_start_allowed_ = std::min(next_start_allowed_, now + config_.start_backoff_max);

  emit(out, EventType::kReconfigured, now, 0, 0, {}, target_);
  // Idle sessions the new rules no longer allow go now (past a lifetime or a
  // use limit, above a lowered max) and those below a raised health bar are
  // checked; busy ones meet the rules when they come back, timeouts and
  // cleanups at the next tick.
  for (const auto& owned : slots_) {
    Slot& s = *owned;
    if (!s.in_use || s.state != SessionState::kIdle) continue;
    if (auto why = recycle_due(s, now)) {
      stop_session(s, *why, now, out);
    } else if (s.health < config_.health_check_below) {
      send_to_check(s, now, out);
    }
  }
  // With handoff_after now off, a session held for a woken waiter is owed
  // to the queue at once.
  if (!queue_.empty() && idle_unreserved_ > 0) dispatch(now, out, /*trim=*/false);
  trim_idle(now, out);
  ensure_capacity(now, out);
  return {};
}

void PoolCore::pause(TimePoint now, Output& out) {
  if (modes_.paused) return;
  modes_.paused = true;
  reject_all(ErrorCode::kPoolPaused, "the pool was paused", kCriticalPriority + 1, now, out);
  emit(out, EventType::kPaused, now);
}

void PoolCore::resume(TimePoint now, Output& out) {
  if (modes_.shutdown) return;
  if (!modes_.paused && !modes_.draining) return;
  modes_.paused = false;
  modes_.draining = false;
  drain_announced_ = false;
  emit(out, EventType::kResumed, now);
  ensure_capacity(now, out);
}

void PoolCore::drain(TimePoint now, Output& out) {
  if (modes_.draining || modes_.shutdown) return;
  modes_.draining = true;
  drain_announced_ = false;
  reject_all(ErrorCode::kPoolDraining, "the pool is draining", kCriticalPriority + 1, now, out);
  emit(out, EventType::kDraining, now);
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slot(i);
    if (s.in_use && (s.state == SessionState::kIdle || s.state == SessionState::kChecking)) {
      stop_session(s, StopReason::kDrained, now, out);
    }
  }
  maybe_finish_drain(now, out);
}

void PoolCore::emergency_stop(TimePoint now, Output& out) {
  if (modes_.emergency) return;
  modes_.emergency = true;
  reject_all(ErrorCode::kEmergencyStop, "emergency stop", kCriticalPriority, now, out);
  emit(out, EventType::kEmergencyStop, now);
}

void PoolCore::emergency_resume(TimePoint now, Output& out) {
  if (!modes_.emergency) return;
  modes_.emergency = false;
  emit(out, EventType::kEmergencyResume, now);
}

void PoolCore::shutdown(TimePoint now, Output& out, TimePoint leases_until) {
  if (modes_.shutdown) return;
  modes_.shutdown = true;
  // Leases still held then are reclaimed like leases past their timeout.
  leases_until_ = leases_until;
  for (const auto& owned : slots_) {
    if (owned->in_use && owned->leased) {
      owned->lease_deadline = std::min(owned->lease_deadline, leases_until);
    }
  }
  drain_announced_ = false;
  reject_all(ErrorCode::kShutdown, "the pool is shutting down", kCriticalPriority + 1, now, out);
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slot(i);
    if (s.in_use && (s.state == SessionState::kIdle || s.state == SessionState::kChecking)) {
      stop_session(s, StopReason::kShutdown, now, out);
    }
  }
  maybe_finish_drain(now, out);
}

bool PoolCore::drained() const { return (modes_.draining || modes_.shutdown) && live_ + closing_ == 0; }

// ---------------------------------------------------------------------------
// reservations

std::expected<ReservationInfo, Error> PoolCore::reserve(std::string_view owner,
                                                        TimePoint expires_at, TimePoint now,
                                                        Output& out) {
  if (owner.empty()) return std::unexpected(Error(ErrorCode::kInvalidArgument, "owner: required"));
  if (expires_at <= now) {
    return std::unexpected(Error(ErrorCode::kInvalidArgument, "expires_at: must be in the future"));
  }
  if (modes_.shutdown) return std::unexpected(Error(ErrorCode::kShutdown, "the pool is shutting down"));
  if (modes_.draining) return std::unexpected(Error(ErrorCode::kPoolDraining, "the pool is draining"));
  auto r = std::make_unique<Reservation>();
  r->id = next_reservation_++;
  r->owner.assign(owner);
  r->expires_at = expires_at;
  if (idle_tail_ != kNil) {
    // The longest idle session, so the most recently used stay in general use.
    Slot& s = slot(idle_tail_);
    idle_remove(s);
    s.reservation = r->id;
    r->session = s.id;
  } else {
    // Only reserve what can be started now; a reservation must not wait on demand.
    int unassigned = 0;
    for (auto& [id, other] : reservations_) {
      if (other->session == 0) ++unassigned;
    }
    const int coming = by_state_[static_cast<int>(SessionState::kStarting)];
    if (unassigned >= coming && !can_start_one(false)) {
      return std::unexpected(Error(ErrorCode::kNoCapacity,
                                   "no idle session to reserve and no room to start one"));
    }
  }
  ReservationInfo info{.id = r->id, .owner = r->owner, .session = r->session,
                       .expires_at = r->expires_at};
  const ReservationId id = r->id;
  reservations_.emplace(id, std::move(r));
  emit(out, EventType::kReservationCreated, now, info.session, 0, info.owner,
       static_cast<std::int64_t>(id));
  if (info.session != 0) give_to_reservation(*find(info.session), now, out);  // a waiting owner
  if (config_.handoff_after.count() > 0) trim_idle(now, out);  // held for waiters now served
  ensure_capacity(now, out);
  info.session = reservations_[id]->session;
  return info;
}

void PoolCore::release_reservation(Reservation& r, TimePoint now, Output& out) {
  end_reservations({r.id}, now, out);
}

// Ends reservations together, so one ending reservation's session is never
// picked up by another that ends in the same step.
void PoolCore::end_reservations(const std::vector<ReservationId>& ids, TimePoint now,
                                Output& out) {
  std::vector<SessionId> returned;
  for (ReservationId id : ids) {
    auto it = reservations_.find(id);
    if (it == reservations_.end()) continue;
    Slot* s = it->second->session != 0 ? find(it->second->session) : nullptr;
    emit(out, EventType::kReservationEnded, now, s != nullptr ? s->id : 0, 0, it->second->owner,
         static_cast<std::int64_t>(id));
    reservations_.erase(it);
    if (s == nullptr) continue;
    s->reservation = 0;
    if (s->state == SessionState::kIdle) returned.push_back(s->id);
  }
  // Back to general use or to waiters, all of them before deciding on starts.
  ++batch_depth_;
  for (SessionId id : returned) {
    if (Slot* s = find(id); s != nullptr && s->state == SessionState::kIdle) make_idle(*s, now, out);
  }
  --batch_depth_;
  ensure_capacity(now, out);
}

std::expected<void, Error> PoolCore::cancel_reservation(ReservationId id, std::string_view owner,
                                                        TimePoint now, Output& out) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) {
    return std::unexpected(Error(ErrorCode::kUnknownReservation, "no such reservation"));
  }
  if (it->second->owner != owner) {
    return std::unexpected(
        Error(ErrorCode::kNotReservationOwner, "the reservation belongs to another owner"));
  }
  release_reservation(*it->second, now, out);
  return {};
}

void PoolCore::expire_reservations(TimePoint now, Output& out) {
  if (reservations_.empty()) return;
  std::vector<ReservationId> expired;
  for (auto& [id, r] : reservations_) {
    if (r->expires_at <= now) expired.push_back(id);
  }
  std::sort(expired.begin(), expired.end());
  end_reservations(expired, now, out);
}

std::vector<ReservationInfo> PoolCore::reservations() const {
  std::vector<ReservationInfo> list;
  for (const auto& [id, r] : reservations_) {
    list.push_back({.id = r->id, .owner = r->owner, .session = r->session,
                    .expires_at = r->expires_at});
  }
  std::sort(list.begin(), list.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return list;
}

// ---------------------------------------------------------------------------
// client sessions

PoolCore::ClientRecord* PoolCore::client(std::string_view id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second.get();
}

void PoolCore::client_lru_unlink(ClientRecord& c) {
  if (c.prev != nullptr) {
    c.prev->next = c.next;
  } else if (lru_head_ == &c) {
    lru_head_ = c.next;
  }
  if (c.next != nullptr) {
    c.next->prev = c.prev;
  } else if (lru_tail_ == &c) {
    lru_tail_ = c.prev;
  }
  c.prev = c.next = nullptr;
}

void PoolCore::client_lru_push_back(ClientRecord& c) {
  c.prev = lru_tail_;
  c.next = nullptr;
  if (lru_tail_ != nullptr) lru_tail_->next = &c;
  lru_tail_ = &c;
  if (lru_head_ == nullptr) lru_head_ = &c;
}

// Finds or creates the record and marks it active now. Null when the table
// is full: affinity is then not remembered for this client session.
PoolCore::ClientRecord* PoolCore::client_touch(std::string_view id, TimePoint now) {
  ClientRecord* c = client(id);
  if (c == nullptr) {
    if (clients_.size() >= config_.max_client_sessions) return nullptr;
    auto record = std::make_unique<ClientRecord>();
    record->id.assign(id);
    // Leases of this id may still be in flight from before a delete or expiry.
    for (const auto& owned : slots_) {
      const Slot& slot = *owned;
      if (slot.in_use && slot.leased && slot.lease_client == id) ++record->active_leases;
    }
    c = record.get();
    clients_.emplace(record->id, std::move(record));
  } else {
    client_lru_unlink(*c);
  }
  c->last_activity = now;
  client_lru_push_back(*c);
  return c;
}

ClientSessionInfo PoolCore::client_info(const ClientRecord& c) const {
  return {.id = c.id,
          .last_session = c.last_session,
          .last_activity = c.last_activity,
          .expires_at = c.last_activity + config_.client_session_ttl,
          .document = c.document,
          .active_leases = c.active_leases};
}

std::expected<ClientSessionInfo, Error> PoolCore::put_client_session(std::string_view id,
                                                                     std::string document,
                                                                     TimePoint now) {
  if (id.empty() || id.size() > kMaxClientSessionIdLength) {
    return std::unexpected(Error(ErrorCode::kInvalidArgument, "id: must be 1..256 bytes"));
  }
  if (document.size() > config_.max_client_session_document) {
    return std::unexpected(Error(ErrorCode::kDocumentTooLarge,
                                 "document: " + std::to_string(document.size()) +
                                     " bytes, the limit is " +
                                     std::to_string(config_.max_client_session_document)));
  }
  if (client(id) == nullptr && clients_.size() >= config_.max_client_sessions) {
    return std::unexpected(Error(ErrorCode::kTooManyClientSessions,
                                 "the pool holds " + std::to_string(clients_.size()) +
                                     " client sessions, the limit"));
  }
  ClientRecord* c = client_touch(id, now);
  c->document = std::move(document);
  return client_info(*c);
}

std::expected<ClientSessionInfo, Error> PoolCore::get_client_session(std::string_view id,
                                                                     TimePoint now) const {
  auto it = clients_.find(id);
  if (it == clients_.end() ||
      (it->second->active_leases == 0 &&
       now - it->second->last_activity >= config_.client_session_ttl)) {
    return std::unexpected(Error(ErrorCode::kUnknownClientSession, "no such client session"));
  }
  return client_info(*it->second);
}

std::expected<void, Error> PoolCore::delete_client_session(std::string_view id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) {
    return std::unexpected(Error(ErrorCode::kUnknownClientSession, "no such client session"));
  }
  client_lru_unlink(*it->second);
  clients_.erase(it);
  return {};
}

void PoolCore::cleanup_client_sessions(TimePoint now, Output& out) {
  ++counters_.cleanup_runs;
  int expired = 0;
  int examined = 0;
  const int limit = config_.client_session_cleanup_batch;
  while (lru_head_ != nullptr && expired < limit && examined < 2 * limit) {
    ClientRecord* c = lru_head_;
    if (now - c->last_activity < config_.client_session_ttl) break;
    ++examined;
    client_lru_unlink(*c);
    if (c->active_leases > 0) {
      // In use: a lease in flight keeps it alive.
      c->last_activity = now;
      client_lru_push_back(*c);
      continue;
    }
    clients_.erase(c->id);
    ++expired;
  }
  counters_.client_sessions_expired += static_cast<std::uint64_t>(expired);
  if (expired > 0) emit(out, EventType::kClientSessionsExpired, now, 0, 0, {}, expired);
}

// ---------------------------------------------------------------------------
// observation

void PoolCore::emit(Output& out, EventType type, TimePoint now, SessionId session, LeaseId lease,
                    std::string detail, std::int64_t value) {
  Event e;
  e.type = type;
  e.at = now;
  e.session = session;
  e.lease = lease;
  e.detail = std::move(detail);
  e.value = value;
  out.events.push_back(std::move(e));
}

PoolStats PoolCore::stats() const {
  PoolStats st = counters_;
  st.sessions_by_state = by_state_;
  st.sessions = live_ + closing_;
  st.target = target_;
  st.queue_length = static_cast<int>(queue_.size());
  queue_.for_each([&](const Waiter& w) { st.oldest_waiting_since = std::min(st.oldest_waiting_since, w.enqueued_at); });
  st.paused = modes_.paused;
  st.draining = modes_.draining || modes_.shutdown;
  st.emergency_stopped = modes_.emergency;
  st.budget_exceeded = budget_exceeded_;
  st.autoscale = autoscale_;
  st.min = config_.min;
  st.max = config_.max;
  const int usable = by_state_[static_cast<int>(SessionState::kIdle)] +
                     by_state_[static_cast<int>(SessionState::kLeased)];
  st.utilization = usable == 0 ? 0.0
                               : static_cast<double>(by_state_[static_cast<int>(SessionState::kLeased)]) / usable;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slot(i);
    if (s.in_use && s.state != SessionState::kStarting && s.state != SessionState::kClosing &&
        s.health < config_.health_check_below) {
      ++st.unhealthy;
    }
  }
  // A spent budget keeps no minimum by policy (budget_exceeded says so).
  st.degraded = st.emergency_stopped || (!st.draining && usable < std::min(config_.min, floor()));
  st.reuse_rate = st.acquisitions == 0 ? 0.0
                                       : static_cast<double>(st.reused) /
                                             static_cast<double>(st.acquisitions);
  st.wait = waits_.summary();
  st.client_sessions_active = static_cast<int>(clients_.size());
  st.reservations = static_cast<int>(reservations_.size());
  return st;
}

std::optional<SessionInfo> PoolCore::session(SessionId id, TimePoint now) const {
  const Slot* s = find(id);
  if (s == nullptr) return std::nullopt;
  SessionInfo info;
  info.id = s->id;
  info.state = s->state;
  info.uses = s->uses;
  info.health = s->health;
  info.age = now - s->created_at;
  info.idle = s->state == SessionState::kIdle ? now - s->idle_since : Duration{0};
  info.reserved = s->reservation != 0;
  if (s->reservation != 0) {
    auto it = reservations_.find(s->reservation);
    if (it != reservations_.end()) info.reserved_for = it->second->owner;
  }
  if (s->leased) {
    info.lease_owner = s->lease_owner;
    info.client_session = s->lease_client;
  }
  return info;
}

std::vector<SessionInfo> PoolCore::sessions(TimePoint now) const {
  std::vector<SessionInfo> list;
  list.reserve(static_cast<std::size_t>(live_ + closing_));
  for (const auto& owned : slots_) {
    const Slot& s = *owned;
    if (s.in_use) list.push_back(*session(s.id, now));
  }
  return list;
}

std::string_view to_string(ReleaseOutcome outcome) {
  switch (outcome) {
    case ReleaseOutcome::kOk: return "ok";
    case ReleaseOutcome::kError: return "error";
    case ReleaseOutcome::kBroken: return "broken";
  }
  return "ok";
}

ReleaseOutcome release_outcome_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kSessionLost:
    case ErrorCode::kProtocolError:
    case ErrorCode::kExecuteTimeout:
      return ReleaseOutcome::kBroken;
    default:
      return ReleaseOutcome::kError;
  }
}

void PoolCore::usage_sampled(SessionId session, const UsageSample& u, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state == SessionState::kClosing || s->recycle) return;
  std::optional<StopReason> over;
  std::int64_t value = 0;
  if (config_.max_memory > 0 && u.memory_bytes > config_.max_memory) {
    over = StopReason::kMemoryLimit;
    value = u.memory_bytes;
  } else if (config_.max_cpu_time.count() > 0 && u.cpu_time > config_.max_cpu_time) {
    over = StopReason::kCpuLimit;
    value = std::chrono::duration_cast<std::chrono::milliseconds>(u.cpu_time).count();
  } else if (config_.max_cpu_percent > 0 && u.cpu_percent >= 0) {
    s->cpu_over = u.cpu_percent > config_.max_cpu_percent ? s->cpu_over + 1 : 0;
    if (s->cpu_over >= config_.cpu_percent_samples) {
      over = StopReason::kCpuLimit;
      value = static_cast<std::int64_t>(u.cpu_percent);
    }
  }
  if (!over) return;
  Event e;
  e.type = EventType::kSessionOverLimit;
  e.at = now;
  e.session = s->id;
  e.reason = *over;
  e.value = value;
  out.events.push_back(std::move(e));
  recycle(session, *over, now, out);
}

void PoolCore::recycle(SessionId session, StopReason reason, TimePoint now, Output& out) {
  Slot* s = find(session);
  if (s == nullptr || s->state == SessionState::kClosing || s->recycle) return;
  s->recycle = reason;
  if (s->state == SessionState::kIdle) {
    stop_session(*s, reason, now, out);
    ensure_capacity(now, out);
  }
  // Starting, checking or leased: retired when it comes back (make_idle, release).
}

std::expected<PoolCore::Slot*, Error> PoolCore::held_slot(
    LeaseId lease, std::optional<std::string_view> owner) const {
  std::uint32_t index;
  std::uint64_t seq;
  codec_.decode(lease, &index, &seq);
  if (index >= slots_.size() || seq >= slots_[index]->next_lease_seq) {
    return std::unexpected(Error(ErrorCode::kUnknownLease, "no such lease"));
  }
  Slot& s = *slots_[index];
  if (!s.in_use || !s.leased || s.lease_seq != seq) {
    if (auto it = ended_.find(lease); it != ended_.end()) {
      return std::unexpected(Error(it->second, std::string(ended_message(it->second))));
    }
    return std::unexpected(Error(ErrorCode::kLeaseAlreadyReleased, "the lease was released before"));
  }
  if (owner.has_value() && *owner != s.lease_owner) {
    return std::unexpected(Error(ErrorCode::kNotLeaseOwner, "the lease belongs to another owner"));
  }
  return &s;
}

std::string_view PoolCore::ended_message(ErrorCode code) {
  switch (code) {
    case ErrorCode::kLeaseReclaimed: return "the lease outlived its lease timeout";
    case ErrorCode::kShutdown: return "the pool shut down while the lease was held";
    default: return "the session died during the lease";
  }
}

std::expected<HeldLease, Error> PoolCore::leased_session(
    LeaseId lease, std::optional<std::string_view> owner) const {
  auto held = held_slot(lease, owner);
  if (!held) return std::unexpected(std::move(held.error()));
  return HeldLease{.session = (*held)->id, .client_session = (*held)->lease_client};
}

LeaseId PoolCore::lease_of(SessionId id) const {
  const Slot* s = find(id);
  return (s != nullptr && s->leased) ? s->lease_id : 0;
}

}  // namespace poolkeeper::core
