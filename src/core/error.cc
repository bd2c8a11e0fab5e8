#include "poolkeeper/error.h"

#include "core/actions.h"
#include "poolkeeper/stats.h"

namespace poolkeeper {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kInvalidConfig: return "invalid_config";
    case ErrorCode::kAcquireTimeout: return "acquire_timeout";
    case ErrorCode::kDeadlineUnreachable: return "deadline_unreachable";
    case ErrorCode::kQueueFull: return "queue_full";
    case ErrorCode::kPoolPaused: return "pool_paused";
    case ErrorCode::kPoolDraining: return "pool_draining";
    case ErrorCode::kEmergencyStop: return "emergency_stop";
    case ErrorCode::kShutdown: return "shutdown";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kUnknownLease: return "unknown_lease";
    case ErrorCode::kLeaseAlreadyReleased: return "lease_already_released";
    case ErrorCode::kLeaseReclaimed: return "lease_reclaimed";
    case ErrorCode::kNotLeaseOwner: return "not_lease_owner";
    case ErrorCode::kUnknownWaiter: return "unknown_waiter";
    case ErrorCode::kUnknownReservation: return "unknown_reservation";
    case ErrorCode::kNotReservationOwner: return "not_reservation_owner";
    case ErrorCode::kNoCapacity: return "no_capacity";
    case ErrorCode::kUnknownClientSession: return "unknown_client_session";
    case ErrorCode::kDocumentTooLarge: return "document_too_large";
    case ErrorCode::kTooManyClientSessions: return "too_many_client_sessions";
    case ErrorCode::kSessionStartFailed: return "session_start_failed";
    case ErrorCode::kSessionLost: return "session_lost";
    case ErrorCode::kProtocolError: return "protocol_error";
    case ErrorCode::kExecuteTimeout: return "execute_timeout";
    case ErrorCode::kNotSupported: return "not_supported";
    case ErrorCode::kStoreUnavailable: return "store_unavailable";
    case ErrorCode::kBudgetExceeded: return "budget_exceeded";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string_view to_string(SessionState state) {
  switch (state) {
    case SessionState::kStarting: return "starting";
    case SessionState::kIdle: return "idle";
    case SessionState::kLeased: return "leased";
    case SessionState::kChecking: return "checking";
    case SessionState::kClosing: return "closing";
  }
  return "unknown";
}

std::string_view to_string(StopReason reason) {
  switch (reason) {
    case StopReason::kIdleTimeout: return "idle_timeout";
    case StopReason::kMaxLifetime: return "max_lifetime";
    case StopReason::kMaxUses: return "max_uses";
    case StopReason::kBroken: return "broken";
    case StopReason::kUnhealthy: return "unhealthy";
    case StopReason::kLeaseAbandoned: return "lease_abandoned";
    case StopReason::kScaledDown: return "scaled_down";
    case StopReason::kOverflow: return "overflow";
    case StopReason::kDrained: return "drained";
    case StopReason::kShutdown: return "shutdown";
    case StopReason::kExited: return "exited";
    case StopReason::kStartFailed: return "start_failed";
    case StopReason::kMemoryLimit: return "memory_limit";
    case StopReason::kCpuLimit: return "cpu_limit";
  }
  return "unknown";
}

namespace core {

std::string_view to_string(EventType type) {
  switch (type) {
    case EventType::kSessionStarting: return "session_starting";
    case EventType::kSessionStarted: return "session_started";
    case EventType::kSessionStartFailed: return "session_start_failed";
    case EventType::kSessionUnhealthy: return "session_unhealthy";
    case EventType::kSessionOverLimit: return "session_over_limit";
    case EventType::kSessionRecovered: return "session_recovered";
    case EventType::kSessionClosing: return "session_closing";
    case EventType::kSessionClosed: return "session_closed";
    case EventType::kLeaseGranted: return "lease_granted";
    case EventType::kLeaseReleased: return "lease_released";
    case EventType::kLeaseReclaimed: return "lease_reclaimed";
    case EventType::kLeaseLost: return "lease_lost";
    case EventType::kWaiterTimedOut: return "waiter_timed_out";
    case EventType::kWaiterRejected: return "waiter_rejected";
    case EventType::kScaled: return "scaled";
    case EventType::kPaused: return "paused";
    case EventType::kResumed: return "resumed";
    case EventType::kDraining: return "draining";
    case EventType::kDrained: return "drained";
    case EventType::kEmergencyStop: return "emergency_stop";
    case EventType::kEmergencyResume: return "emergency_resume";
    case EventType::kClientSessionsExpired: return "client_sessions_expired";
    case EventType::kReservationCreated: return "reservation_created";
    case EventType::kReservationEnded: return "reservation_ended";
    case EventType::kReconfigured: return "reconfigured";
    case EventType::kBudgetExceeded: return "budget_exceeded";
    case EventType::kBudgetRestored: return "budget_restored";
    case EventType::kAutoscaled: return "autoscaled";
    case EventType::kAutoscaleSet: return "autoscale_set";
  }
  return "unknown";
}

}  // namespace core
}  // namespace poolkeeper
