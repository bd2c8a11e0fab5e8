// What the pool core asks its shell to do, and what it reports.
//
// The core never performs I/O. Each input appends Actions (work for the shell)
// and Events (facts for observers) to an Output the caller owns and reuses, so
// the steady state allocates nothing.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "poolkeeper/clock.h"
#include "poolkeeper/error.h"
#include "poolkeeper/stats.h"

namespace poolkeeper::core {

// A session id is its slot index (low 32 bits) and the slot's incarnation
// (high 32 bits); shells may index per-slot state by session_slot().
inline constexpr SessionId make_session_id(std::uint32_t incarnation, std::uint32_t slot) {
  return (static_cast<SessionId>(incarnation) << 32) | slot;
}
inline constexpr std::uint32_t session_slot(SessionId id) {
  return static_cast<std::uint32_t>(id & 0xffffffffu);
}

// A queued acquire. Never reused within a core.
using WaiterId = std::uint64_t;
using ReservationId = std::uint64_t;

struct Grant {
  LeaseId lease = 0;
  SessionId session = 0;
  TimePoint expires_at = TimePoint::max();  // when the lease will be reclaimed
};

enum class ActionType : std::uint8_t {
  kStartSession,  // create `session`; answer session_started / session_start_failed
  kStopSession,   // stop `session` for `reason`; answer session_stopped
  kCheckSession,  // check `session`; answer check_result
  kGrant,         // `waiter` got `grant`
  kReject,        // `waiter` is answered with `error`
  kWake,          // `waiter` should call retry(): a session is free, first come first served
};

struct Action {
  ActionType type = ActionType::kStartSession;
  SessionId session = 0;
  WaiterId waiter = 0;
  StopReason reason = StopReason::kShutdown;
  Grant grant;
  Error error;
};

enum class ReleaseOutcome : std::uint8_t {
  kOk,      // the session is fine
  kError,   // the work failed; the session lost health but may be reused
  kBroken,  // the session must not be reused
};

// "ok", "error", "broken".
std::string_view to_string(ReleaseOutcome outcome);

enum class EventType : std::uint8_t {
  kSessionStarting,
  kSessionStarted,
  kSessionStartFailed,
  kSessionUnhealthy,
  kSessionOverLimit,  // measured over a resource limit (reason; value: bytes, % or ms)
  kSessionRecovered,
  kSessionClosing,
  kSessionClosed,   // value: the leases it served
  kLeaseGranted,    // only with PoolConfig::lease_events (detail: the owner)
  kLeaseReleased,   // only with PoolConfig::lease_events (value: the ReleaseOutcome)
  kLeaseReclaimed,
  kLeaseLost,       // the leased session died
  kWaiterTimedOut,
  kWaiterRejected,
  kScaled,
  kPaused,
  kResumed,
  kDraining,
  kDrained,
  kEmergencyStop,
  kEmergencyResume,
  kClientSessionsExpired,
  kReservationCreated,
  kReservationEnded,
  kReconfigured,    // a new configuration applies (value: the target size)
  kBudgetExceeded,  // no new sessions until the budget allows (detail: which budget)
  kBudgetRestored,
  kAutoscaled,      // the autoscaler moved the target (value: new size; previous; confidence; detail: why)
  kAutoscaleSet,    // autoscaling turned on (value 1) or off (0)
};
std::string_view to_string(EventType type);

struct Event {
  EventType type = EventType::kSessionStarted;
  TimePoint at{};
  SessionId session = 0;
  LeaseId lease = 0;
  StopReason reason = StopReason::kShutdown;
  std::int64_t value = 0;   // a count or size, where the type has one
  std::string detail{};     // owner, error text, ... (empty on hot paths)
  std::int64_t previous = 0;  // kAutoscaled: the size before
  double confidence = 0;      // kAutoscaled: 1 when observed, the trend's R^2 when predicted
};

struct Output {
  std::vector<Action> actions;
  std::vector<Event> events;

  void clear() {
    actions.clear();
    events.clear();
  }
  bool empty() const { return actions.empty() && events.empty(); }
};

}  // namespace poolkeeper::core
