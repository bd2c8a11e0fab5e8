// PoolCore: the rules of one pool as a deterministic state machine.
//
// The core owns no threads, does no I/O and never reads a clock: every input
// carries `now`, and every decision comes back as Actions (start, stop or
// check a session; grant or reject a waiter) and Events in an Output the
// caller owns. The shell (Pool<T>, the runtime's PoolRunner, the simulator)
// performs the actions and feeds the results back.
//
// Rules implemented here: sizing (min, max, overflow, lazy/eager start,
// min_idle, a cap shared across pools, manual scale), leases with unguessable
// never-reused ids, a priority wait queue with aging, deadlines, cancellation,
// a length cap and early rejection, idle/lease/lifetime/use limits, health
// scores with checks and validation, client sessions with affinity and TTL
// expiry in batches, reservations, pause/resume/drain and emergency stop, and
// statistics.
//
// Thread-safety: none. One caller at a time (a mutex in Pool<T>, a strand in
// the runtime). The optional SharedCap is the only state shared with others.
//
//   PoolCore core(config, {.seed = 42});
//   Output out;
//   auto r = core.acquire({.deadline = now + 1s}, now, out);
//   for (const Action& a : out.actions) { ... perform, then report back ... }
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/actions.h"
#include "core/autoscaler.h"
#include "core/histogram.h"
#include "core/lease_codec.h"
#include "core/random.h"
#include "poolkeeper/shared_cap.h"
#include "core/wait_queue.h"
#include "poolkeeper/pool_config.h"
#include "poolkeeper/stats.h"

namespace poolkeeper::core {

struct CoreOptions {
  std::uint64_t seed = 0x5eed;   // jitter and lease-id keys
  SharedCap* shared_cap = nullptr;  // not owned; may be shared with other cores
};

struct AcquireRequest {
  int priority = kNormalPriority;
  TimePoint deadline = TimePoint::max();
  std::string_view client_session{};  // affinity key; empty for none
  std::string_view owner{};           // who may release; reservations match on it
  Duration lease_timeout{0};         // 0: the pool's lease_timeout
};

// An acquire either got a lease at once or was queued (answered later by a
// kGrant or kReject action for `waiter`). Refusals are errors.
struct AcquireOutcome {
  bool granted = false;
  Grant grant;        // when granted
  WaiterId waiter = 0;  // when queued
  int queue_position = 0;         // when queued: waiters ahead + 1
  Duration estimated_wait{0};     // when queued: the predicted wait, 0 when unknown
};

// A waiting acquire as the queue endpoint shows it.
struct QueuedView {
  int position = 0;              // 1: served next
  int priority = 0;
  Duration waited{0};
  Duration deadline_in{0};       // Duration::max(): no deadline
  Duration estimated_wait{0};    // the predicted wait from now, 0 when unknown
  std::string owner{};
};

// How a lease whose request failed with `code` goes back: broken when the
// session itself failed (died, broke its protocol, hung), with an error otherwise.
ReleaseOutcome release_outcome_for(ErrorCode code);

// A session's resource use as a shell measured it; negative: unknown.
struct UsageSample {
  std::int64_t memory_bytes = -1;
  double cpu_percent = -1;   // over the last sampling interval; 100 = one core
  Duration cpu_time{-1};     // since the session started
};

// A lease being held: its session and the client session it was taken for.
struct HeldLease {
  SessionId session = 0;
  std::string_view client_session{};  // valid until the core is next changed
};

struct ReservationInfo {
  ReservationId id = 0;
  std::string owner;
  SessionId session = 0;
  TimePoint expires_at{};
};

struct ClientSessionInfo {
  std::string id;
  SessionId last_session = 0;
  TimePoint last_activity{};
  TimePoint expires_at{};
  std::string document;
  int active_leases = 0;
};

class PoolCore {
 public:
  // Validates `config`; a bad key is an error that names it.
  static std::expected<std::unique_ptr<PoolCore>, Error> create(PoolConfig config,
                                                                CoreOptions options = {});
  PoolCore(PoolConfig config, CoreOptions options);  // config must be valid
  ~PoolCore();
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  const PoolConfig& config() const { return config_; }

  // Starts what the pool keeps warm (min, min_idle, or max when eager).
  void start(TimePoint now, Output& out);

  // --- leases ---
  std::expected<AcquireOutcome, Error> acquire(const AcquireRequest& request, TimePoint now,
                                               Output& out);
  // Hot paths for shells, with the same rules: a grant when an idle session is
  // there and nothing needs the general path (no client session, reservation,
  // validation, events or min_idle upkeep); false: call acquire(). And a clean
  // release straight back to idle; false: call release() (nothing changed).
  bool try_acquire_fast(const AcquireRequest& request, TimePoint now, Grant* grant);
  bool try_release_fast(LeaseId lease, TimePoint now);

  // A waiter woken by kWake tries again: granted (kGrant) if a session is
  // still free for it, otherwise it keeps its place in the queue.
  void retry(WaiterId waiter, TimePoint now, Output& out);

  // The caller went away. Answers the waiter (kCancelled) without an action.
  std::expected<void, Error> cancel(WaiterId waiter, TimePoint now, Output& out);
  // `owner` must match the acquire's owner; std::nullopt skips the check (a
  // shell releasing a lease it handed out itself).
  std::expected<void, Error> release(LeaseId lease, std::optional<std::string_view> owner,
                                     ReleaseOutcome outcome, TimePoint now, Output& out);

  // The session that `lease` holds and the lease's client session, with
  // release's errors (unknown, released, reclaimed, lost, not the owner).
  std::expected<HeldLease, Error> leased_session(LeaseId lease,
                                                 std::optional<std::string_view> owner) const;

  // What a shell measured of `session`; over a limit of the config
  // (max_memory, max_cpu_time, max_cpu_percent sustained over
  // cpu_percent_samples samples) the session is recycled. Negative fields are
  // unknown and ignored.
  void usage_sampled(SessionId session, const UsageSample& usage, TimePoint now, Output& out);
  // Recycles `session` for `reason`: stopped now when idle, otherwise when it
  // comes back (after its current lease or check), never handed out again.
  void recycle(SessionId session, StopReason reason, TimePoint now, Output& out);

  // --- results of actions ---
  void session_started(SessionId session, TimePoint now, Output& out);
  void session_start_failed(SessionId session, std::string_view error, TimePoint now, Output& out);
  void session_stopped(SessionId session, TimePoint now, Output& out);
  void session_exited(SessionId session, std::string_view why, TimePoint now, Output& out);
  void check_result(SessionId session, bool healthy, TimePoint now, Output& out);

  // Timeouts, limits, health schedule, expiries, retries. Call at least every
  // `tick_interval()`; calling more often is harmless.
  void tick(TimePoint now, Output& out);
  // The earliest time something in the core becomes due (a waiter deadline,
  // a start retry), or TimePoint::max(). Shells may sleep until then.
  TimePoint next_due() const;

  // --- operator controls ---
  std::expected<void, Error> scale(int target, TimePoint now, Output& out);
  void pause(TimePoint now, Output& out);
  void resume(TimePoint now, Output& out);
  void drain(TimePoint now, Output& out);
  // A spent budget (the caller keeps the books): no session starts, idle
  // sessions are not kept above zero (min, min_idle) and leave by the idle
  // timeout, acquires reuse live sessions, and when none is live they are
  // refused with budget_exceeded and `why`. false restores the pool.
  void set_budget_exceeded(bool exceeded, std::string why, TimePoint now, Output& out);
  bool budget_exceeded() const { return budget_exceeded_; }
  // Autoscaling (config().autoscale): the target follows the load between
  // min and max, decided every autoscale interval on tick(); each decision is
  // a kAutoscaled event. A manual scale() still applies and restarts the
  // cooldowns.
  void set_autoscale(bool on, TimePoint now, Output& out);
  bool autoscale() const { return autoscale_; }
  // The demand the autoscaler's trend predicts at `at`.
  DemandForecast forecast(TimePoint at) const { return autoscaler_.forecast(at); }
  void emergency_stop(TimePoint now, Output& out);
  void emergency_resume(TimePoint now, Output& out);
  // Answers every waiter (kShutdown), refuses new acquires and stops every
  // session not leased; leased ones are stopped when released, or reclaimed at
  // `leases_until` (a late release then gets kShutdown) like a lease past its
  // timeout.
  void shutdown(TimePoint now, Output& out, TimePoint leases_until = TimePoint::max());
  bool drained() const;  // no session left after drain or shutdown

  // Applies a new configuration to the running pool (a reload) without
  // dropping anything in flight: leases keep their deadlines and waiters
  // their place. Sessions above a lowered max close as they come back (idle
  // ones at once) unless waiters need them; a raised min or min_idle starts
  // sessions; lifetimes and check schedules are recomputed for live sessions.
  // A scale target set by an operator stays unless min, max or start
  // changed, which resets the target to the new config's. The name cannot
  // change; a bad config changes nothing and names the bad key.
  std::expected<void, Error> reconfigure(PoolConfig config, TimePoint now, Output& out);

  // --- reservations ---
  std::expected<ReservationInfo, Error> reserve(std::string_view owner, TimePoint expires_at,
                                                TimePoint now, Output& out);
  std::expected<void, Error> cancel_reservation(ReservationId id, std::string_view owner,
                                                TimePoint now, Output& out);
  std::vector<ReservationInfo> reservations() const;

  // --- client sessions ---
  std::expected<ClientSessionInfo, Error> put_client_session(std::string_view id,
                                                             std::string document, TimePoint now);
  std::expected<ClientSessionInfo, Error> get_client_session(std::string_view id,
                                                             TimePoint now) const;
  std::expected<void, Error> delete_client_session(std::string_view id);

  // --- observation ---
  PoolStats stats() const;
  // The waiting acquires in the order they will be served, with the
  // predicted wait of each (O(n log n)).
  std::vector<QueuedView> queue_view(TimePoint now) const;
  std::vector<SessionInfo> sessions(TimePoint now) const;
  std::optional<SessionInfo> session(SessionId id, TimePoint now) const;
  int session_count() const { return live_ + closing_; }  // everything not yet stopped
  int queue_length() const { return static_cast<int>(queue_.size()); }
  // The lease held on `session`, or 0.
  LeaseId lease_of(SessionId session) const;

 private:
  struct Slot;
  struct ClientRecord;
  struct Reservation;

  // sessions
  Slot* find(SessionId id);
  const Slot* find(SessionId id) const;
  // A start may begin now: room_to_grow() and fewer than max_starting in flight.
  bool can_start_one(bool for_demand) const;
  // The pool may add a session (now or once its starts in flight are done):
  // not stopping, draining or over budget, below max (+ overflow for
  // demand) and the shared cap.
  bool room_to_grow(bool for_demand) const;
  void start_session(TimePoint now, Output& out);
  void stop_session(Slot& s, StopReason reason, TimePoint now, Output& out);
  void free_slot(Slot& s, TimePoint now, StopReason reason, Output& out);
  void make_idle(Slot& s, TimePoint now, Output& out);
  std::optional<StopReason> retire_reason(const Slot& s, TimePoint now);
  bool needs_validation(const Slot& s, TimePoint now) const;
  bool give_to_reservation(Slot& s, TimePoint now, Output& out);
  void send_to_check(Slot& s, TimePoint now, Output& out);
  std::optional<StopReason> recycle_due(const Slot& s, TimePoint now) const;
  std::expected<Slot*, Error> held_slot(LeaseId lease, std::optional<std::string_view> owner) const;
  static std::string_view ended_message(ErrorCode code);
  bool release_fast(Slot& s, TimePoint now);
  void note_hold(const Slot& s, TimePoint now);
  void idle_push(Slot& s);
  void idle_remove(Slot& s);
  static AcquireRequest request_of(const Waiter& w);
  void begin_lease(Slot& s, const AcquireRequest& r, TimePoint now);
  Grant lease_to(Slot& s, const AcquireRequest& r, TimePoint enqueued, TimePoint now, Output* out);
  void end_lease(Slot& s, TimePoint now, ErrorCode unreleased);
  void remember_ended(LeaseId lease, ErrorCode code);
  void set_state(Slot& s, SessionState state);

  // queue and capacity
  // Serves waiters from idle sessions; `trim` closes idle sessions left above
  // max or a scale-down target once nobody waits.
  void dispatch(TimePoint now, Output& out, bool trim = true);
  void ensure_capacity(TimePoint now, Output& out);
  void reject_waiter(WaiterId id, Error error, TimePoint now, Output& out);
  void reject_all(ErrorCode code, std::string_view why, int below_priority, TimePoint now,
                  Output& out);
  void reject_unservable(TimePoint now, Output& out);
  int min_idle() const;
  Duration predict_wait(int position) const;
  // True when a new acquire of `priority` must not take a free session ahead
  // of the queue: with handoff_after, once the first waiter has waited that
  // long or outranks it (with strict handoff sessions never idle while
  // waiters queue).
  bool overtaking_blocked(int priority, TimePoint now) const {
    if (queue_.empty() || config_.handoff_after.count() == 0) return false;
    const Waiter* head = queue_.front();
    return priority < head->priority || now - head->enqueued_at >= config_.handoff_after;
  }
  void grant_to(Waiter& w, Slot& s, TimePoint now, Output& out);
  Slot* take_idle_for(const AcquireRequest& r, TimePoint now, Output& out, bool* affinity_hit);
  Slot* reserved_idle_for(std::string_view owner);
  int floor() const;
  void maybe_finish_drain(TimePoint now, Output& out);
  void run_autoscaler(TimePoint now, Output& out);
  // Closes idle sessions above the target now (longest idle first, keeping
  // min_idle spares and those held for waiters); busy ones on their return.
  void shrink_to_target(TimePoint now, Output& out);
  void trim_idle(TimePoint now, Output& out);
  void expire_waiters(TimePoint now, Output& out);
  void emit(Output& out, EventType type, TimePoint now, SessionId session = 0, LeaseId lease = 0,
            std::string detail = {}, std::int64_t value = 0);

  // client sessions
  ClientRecord* client(std::string_view id);
  ClientRecord* client_touch(std::string_view id, TimePoint now);
  void client_lru_unlink(ClientRecord& c);
  void client_lru_push_back(ClientRecord& c);
  void cleanup_client_sessions(TimePoint now, Output& out);
  ClientSessionInfo client_info(const ClientRecord& c) const;

  void expire_reservations(TimePoint now, Output& out);
  void release_reservation(Reservation& r, TimePoint now, Output& out);
  void end_reservations(const std::vector<ReservationId>& ids, TimePoint now, Output& out);
  void reservation_lost_session(ReservationId id, TimePoint now, Output& out);

  PoolConfig config_;
  CoreOptions options_;
  Random random_;
  LeaseCodec codec_;

  // Each slot on the heap: references to slots stay valid while new sessions
  // are added (a rule may start sessions while another holds a slot).
  std::vector<std::unique_ptr<Slot>> slots_;
  Slot& slot(std::size_t index) { return *slots_[index]; }
  const Slot& slot(std::size_t index) const { return *slots_[index]; }
  std::vector<std::uint32_t> free_slots_;
  std::uint32_t idle_head_ = kNil;  // most recently idle
  std::uint32_t idle_tail_ = kNil;  // longest idle
  static constexpr std::uint32_t kNil = 0xffffffffu;

  std::array<int, kSessionStateCount> by_state_{};
  int live_ = 0;       // starting + idle + leased + checking
  int closing_ = 0;
  int idle_unreserved_ = 0;
  int target_ = 0;

  WaitQueue queue_;

  // start failures and backoff
  int consecutive_start_failures_ = 0;
  TimePoint next_start_allowed_{};
  std::string last_start_error_;

  // learned timings (nanoseconds, exponentially weighted)
  std::int64_t avg_hold_ns_ = 0;
  std::int64_t avg_start_ns_ = 0;
  std::uint64_t hold_samples_ = 0;

  // Modes that refuse work; read together as one word on the hot paths.
  struct Modes {
    bool paused = false;
    bool draining = false;
    bool emergency = false;
    bool shutdown = false;
  };
  static_assert(sizeof(Modes) == 4);
  Modes modes_;
  bool drain_announced_ = false;
  bool budget_exceeded_ = false;  // no session starts; idle ones are not kept
  std::string budget_why_;
  TimePoint leases_until_ = TimePoint::max();  // after shutdown: leases held then are reclaimed
  bool fast_paths_ = false;  // the config allows try_acquire_fast / try_release_fast
  int batch_depth_ = 0;      // >0: capacity is settled once at the end of a batch
  WaiterId woken_ = 0;       // the waiter woken by kWake that has not retried yet

  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::unique_ptr<ClientRecord>, StringHash, std::equal_to<>>
      clients_;
  ClientRecord* lru_head_ = nullptr;  // least recently active
  ClientRecord* lru_tail_ = nullptr;
  TimePoint next_cleanup_{};

  std::unordered_map<ReservationId, std::unique_ptr<Reservation>> reservations_;
  ReservationId next_reservation_ = 1;

  // Leases that ended without a release (reclaimed, session lost), so a late
  // release gets the precise error. Bounded: the oldest are forgotten first.
  std::unordered_map<LeaseId, ErrorCode> ended_;
  std::deque<LeaseId> ended_order_;
  bool shrinking_ = false;  // after a scale-down, until the pool is at its target
  Autoscaler autoscaler_;
  bool autoscale_ = false;

  Histogram waits_;
  PoolStats counters_;
};

}  // namespace poolkeeper::core
