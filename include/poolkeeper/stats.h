// Observable state of a pool: per-session metrics and pool statistics.
//
// Thread-safety: plain values, snapshots taken under the pool's lock.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "poolkeeper/clock.h"

namespace poolkeeper {

// A session's id: its slot in the pool and an incarnation count. Never reused.
using SessionId = std::uint64_t;
// A lease's id: unguessable-looking, never reused within a pool.
using LeaseId = std::uint64_t;

enum class SessionState : std::uint8_t {
  kStarting,   // being created
  kIdle,       // ready, not leased
  kLeased,     // held by one lease
  kChecking,   // being checked (unhealthy, validation, periodic check)
  kClosing,    // being stopped
};
inline constexpr int kSessionStateCount = 5;
std::string_view to_string(SessionState state);

// Why a session was stopped or closed.
enum class StopReason : std::uint8_t {
  kIdleTimeout,
  kMaxLifetime,
  kMaxUses,
  kBroken,          // released as broken
  kUnhealthy,       // failed a health check
  kLeaseAbandoned,  // its lease outlived the lease timeout
  kScaledDown,      // above the target size
  kOverflow,        // released while the pool was above max
  kDrained,
  kShutdown,
  kExited,          // it died on its own
  kStartFailed,
  kMemoryLimit,     // recycled: above its memory limit
  kCpuLimit,        // recycled: above its CPU limit
};
std::string_view to_string(StopReason reason);

struct SessionInfo {
  SessionId id = 0;
  SessionState state = SessionState::kStarting;
  std::int64_t uses = 0;
  int health = 100;                // 0..100
  Duration age{0};
  Duration idle{0};                // time since it last became idle (0 unless idle)
  bool reserved = false;
  std::string reserved_for;
  std::string lease_owner;          // when leased
  std::string client_session;       // the client session of the current lease, if any
};

// Latency quantiles from a log-linear histogram (about 3 % relative error).
struct WaitSummary {
  std::uint64_t count = 0;
  Duration p50{0};
  Duration p95{0};
  Duration p99{0};
  Duration max{0};
};

struct PoolStats {
  std::string name;
  // sessions by state, and in total
  std::array<int, kSessionStateCount> sessions_by_state{};
  int sessions = 0;
  int target = 0;            // the size the pool maintains (min, or the manual scale target)
  int min = 0;               // the configured min
  int max = 0;               // the configured max
  // Fewer usable (idle or leased) sessions than the pool must keep (its min,
  // or a smaller scale target; nothing while its budget is spent), while not
  // draining; or emergency-stopped.
  bool degraded = false;
  int queue_length = 0;
  int unhealthy = 0;          // live sessions whose health score is below health_check_below
  double utilization = 0;     // leased / (idle + leased); 0 with none ready
  TimePoint oldest_waiting_since = TimePoint::max();  // when the longest-waiting acquire came (max: none)
  bool paused = false;
  bool draining = false;
  bool emergency_stopped = false;
  bool budget_exceeded = false;  // a spent budget stops new sessions
  bool autoscale = false;        // the target follows the load (AutoscaleConfig)

  std::uint64_t acquisitions = 0;       // leases granted
  std::uint64_t immediate = 0;          // granted without waiting
  std::uint64_t releases = 0;
  std::uint64_t broken_releases = 0;
  std::uint64_t timeouts = 0;           // waiters whose deadline passed
  std::uint64_t cancellations = 0;
  std::uint64_t rejections = 0;         // refused (queue full, paused, early, ...)
  std::uint64_t reclaimed = 0;          // leases taken back after the lease timeout
  std::uint64_t sessions_created = 0;   // started successfully
  std::uint64_t start_failures = 0;
  std::uint64_t sessions_closed = 0;
  std::uint64_t overflow_created = 0;
  std::uint64_t scale_ups = 0;          // autoscaling decisions that grew the target
  std::uint64_t scale_downs = 0;        // and that shrank it
  std::uint64_t checks = 0;
  std::uint64_t check_failures = 0;
  std::uint64_t reused = 0;             // leases on a session that served before
  double reuse_rate = 0;                // reused / acquisitions
  std::uint64_t affinity_hits = 0;      // client session got the session it used last
  std::uint64_t affinity_misses = 0;
  WaitSummary wait;                     // time from acquire to grant, every grant

  int client_sessions_active = 0;
  std::uint64_t client_sessions_expired = 0;
  std::uint64_t cleanup_runs = 0;
  int reservations = 0;
};

}  // namespace poolkeeper
