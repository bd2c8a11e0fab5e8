// The configuration of one pool: sizing, queue, limits, health and client sessions.
//
// Every field has a safe default. `validate_config()` checks a config and names
// the offending key in its error ("max: must be >= min (2), got 1"). Durations of
// zero mean "off" where noted.
//
// Thread-safety: plain value.
//
//   poolkeeper::PoolConfig config;
//   config.name = "python";
//   config.min = 2;
//   config.max = 8;
//   config.idle_timeout = std::chrono::minutes(5);
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <string>

#include "poolkeeper/clock.h"
#include "poolkeeper/error.h"

namespace poolkeeper {

// Priorities run from kLowestPriority to kCriticalPriority; higher is served first.
inline constexpr int kLowestPriority = 0;
inline constexpr int kLowPriority = 2;
inline constexpr int kNormalPriority = 5;
inline constexpr int kHighPriority = 7;
inline constexpr int kCriticalPriority = 9;

enum class StartMode : std::uint8_t {
  kLazy,   // start sessions when they are needed (and to keep `min`/`min_idle`)
  kEager,  // start `max` sessions at once
};

// Autoscaling: the pool moves the number of sessions it keeps warm (its
// target) between min and max with its load (PoolCore decides; see
// docs/pool-rules.md, "Autoscaling"). Utilization is demand (leased sessions
// plus waiters) over live sessions.
struct AutoscaleConfig {
  bool enabled = false;
  double up_at = 0.8;     // utilization above this: grow
  double down_at = 0.3;   // below this (and nobody waiting): shrink
  // Either grows the pool too (0: not a signal).
  int queue_length = 1;                                 // this many waiting
  Duration queue_wait = std::chrono::seconds(2);        // the oldest waiter waited this long
  // Sessions added or removed per decision at most (0: as many as the load needs).
  int step_up = 0;
  int step_down = 1;
  // Cooldowns: after growing, before growing again; after any change, before shrinking.
  Duration cooldown_up = std::chrono::seconds(5);
  Duration cooldown_down = std::chrono::seconds(60);
  // Stabilization: grow to the lowest recommendation of the last up_window,
  // shrink to the highest of the last down_window (grow fast, shrink slowly).
  Duration up_window{0};
  Duration down_window = std::chrono::minutes(5);
  Duration interval = std::chrono::seconds(1);  // how often it decides
  // Predictive: a linear trend of demand over trend_window; when it explains
  // the recent demand well enough (min_confidence, R^2) the pool grows ahead
  // of need by the sessions' learned cold-start time.
  bool predictive = true;
  Duration trend_window = std::chrono::minutes(2);
  double min_confidence = 0.6;
  // A repeating pattern (a day, or any period): demand is remembered per
  // phase (1440 slots a season at most); once two whole seasons agree (their
  // similarity reaches min_confidence), the pool grows ahead for what the last
  // season saw one cold start later. 0: off.
  Duration season{0};

  bool operator==(const AutoscaleConfig&) const = default;
};

struct PoolConfig {
  std::string name = "default";

  // --- sizing ---
  int min = 0;            // sessions kept alive even when idle
  int max = 8;            // sessions the pool keeps at most
  int overflow = 0;       // temporary sessions beyond max, closed when released above max
  StartMode start = StartMode::kLazy;
  int min_idle = 0;       // idle spares kept warm (within max)
  int max_starting = 4;   // sessions starting at the same time at most

  // --- wait queue ---
  int max_queue = 1024;                         // waiters at most; more are refused (queue_full)
  Duration aging = std::chrono::seconds(1);     // waiting this long counts as one priority level (0: off)
  bool early_reject = true;                     // refuse at once when the predicted wait outlasts the deadline
  // 0: a freed session goes straight to the first waiter (strict order). Above
  // 0: a waiter that has waited less than this may be overtaken by a new
  // acquire of at least its priority that finds a session free (the waiter is
  // woken to try again); once it has waited this long, sessions are handed to
  // it directly. Bounded unfairness for throughput under contention.
  Duration handoff_after{0};

  // --- limits (0: off) ---
  Duration idle_timeout = std::chrono::minutes(5);  // close idle sessions above min after this
  Duration lease_timeout{0};                        // reclaim a lease held longer
  Duration max_lifetime{0};                         // recycle sessions older than this...
  double lifetime_jitter = 0.1;                     // ...minus up to this fraction, at random
  std::int64_t max_uses = 0;                        // recycle a session after this many leases

  // --- resource limits (0: off), measured by the shell (usage_sampled) ---
  // A session over one is recycled after its current lease: stopped once it
  // comes back, never handed out again.
  std::int64_t max_memory = 0;        // bytes of resident memory (a process tree's RSS)
  double max_cpu_percent = 0;         // 100 = one core, above it for...
  int cpu_percent_samples = 3;        // ...this many samples in a row
  Duration max_cpu_time{0};           // CPU time used since it started

  // --- health ---
  int health_error_penalty = 25;     // score lost when a lease ends with an error (score 0..100)
  int health_success_recovery = 5;   // score regained per clean lease or passed check
  int health_check_below = 50;       // a session scoring below this is checked before reuse
  Duration validate_after_idle{0};   // check a session idle longer than this before handing it out
  Duration check_interval{0};        // check idle sessions this often (spread with jitter)

  // --- start failures ---
  Duration start_backoff_initial = std::chrono::milliseconds(100);
  Duration start_backoff_max = std::chrono::seconds(30);

  // --- client sessions ---
  Duration client_session_ttl = std::chrono::minutes(30);       // inactivity before expiry
  Duration client_session_cleanup_interval = std::chrono::minutes(1);
  int client_session_cleanup_batch = 100;                       // expiries per cleanup run at most
  std::size_t max_client_sessions = 100000;
  std::size_t max_client_session_document = 64 * 1024;          // bytes

  // --- autoscaling ---
  AutoscaleConfig autoscale{};
  // --- events ---
  bool lease_events = false;  // emit lease granted/released events (the daemon turns this on)
};

// Checks every key; the error names the first bad one.
std::expected<void, Error> validate_config(const PoolConfig& config);

}  // namespace poolkeeper
