// Errors of poolkeeper: expected failures are values, never exceptions.
//
// Every fallible call returns std::expected<T, Error>. `Error::code` is a
// closed set that callers switch on; `message` is for humans; `retry_after`
// is set when trying again later may succeed (a timeout, a full queue).
//
// Thread-safety: plain values.
//
//   auto lease = pool.acquire({.timeout = 2s});
//   if (!lease && lease.error().code == poolkeeper::ErrorCode::kAcquireTimeout) { ... }
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace poolkeeper {

enum class ErrorCode : std::uint8_t {
  kInvalidArgument,        // a request field is out of range
  kInvalidConfig,          // a configuration key has a bad value
  kAcquireTimeout,         // the deadline passed while waiting
  kDeadlineUnreachable,    // rejected early: the wait would outlast the deadline
  kQueueFull,              // the wait queue is at its cap
  kPoolPaused,             // the pool is paused
  kPoolDraining,           // the pool is draining or drained
  kEmergencyStop,          // emergency stop refuses all but critical requests
  kShutdown,               // the pool is shutting down
  kCancelled,              // the caller cancelled its wait
  kUnknownLease,           // no such lease was ever issued by this pool
  kLeaseAlreadyReleased,   // the lease was released before
  kLeaseReclaimed,         // the lease outlived its lease timeout and was taken back
  kNotLeaseOwner,          // the lease belongs to another owner
  kUnknownWaiter,          // no such waiter is queued
  kUnknownReservation,     // no such reservation
  kNotReservationOwner,    // the reservation belongs to another owner
  kNoCapacity,             // no free session and no room to start one
  kUnknownClientSession,   // no such client session
  kDocumentTooLarge,       // a client-session document is over its size limit
  kTooManyClientSessions,  // the client-session table is full
  kSessionStartFailed,     // the session could not be created
  kSessionLost,            // the session died while leased (or while serving a request)
  kProtocolError,          // the session answered something that breaks its protocol
  kExecuteTimeout,         // the session did not answer a request in time
  kNotSupported,           // the session's driver cannot do this (e.g. execute)
  kStoreUnavailable,       // the durable store could not commit (I/O error, disk full)
  kBudgetExceeded,         // a budget is spent: no new sessions, and none live to reuse
  kInternal,               // a bug: an unexpected exception was caught at a boundary
};

// The stable snake_case name of a code, as the HTTP API spells it: "acquire_timeout".
std::string_view to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInvalidArgument;
  std::string message;
  // When positive, a hint of how long to wait before trying again.
  std::chrono::milliseconds retry_after{0};

  Error() = default;
  Error(ErrorCode c, std::string m, std::chrono::milliseconds retry = std::chrono::milliseconds{0})
      : code(c), message(std::move(m)), retry_after(retry) {}
};

}  // namespace poolkeeper
