// A randomized simulation of PoolCore against the rules of docs/pool-rules.md.
//
// The test plays the shell: it performs what the core asks (starts, stops and
// checks sessions; hands grants to waiters), reports the results back in a
// random order (successes, failures, exits, stale results), and mixes in every
// other input: acquire, release (ok, error, broken, wrong owner, twice,
// unknown), cancel, time and ticks, scale, pause/resume, drain, emergency
// stop, reservations, client sessions and, near the end, shutdown. It keeps
// its own model of sessions, pending actions, leases and waiters, and checks
// the rules after every step. Some seeds run several cores on one SharedCap.
//
// About a third of the seeds relax handoff (handoff_after 0.5..50 ms): a freed
// session is held for a waiter that has waited less than that (kWake, one at a
// time), a new acquire of at least its priority may overtake it, and the shell
// retries woken waiters (eagerly, lazily or never, per seed) and sometimes
// calls retry() for waiters that were not woken or were answered. Checked: the
// wake names the queued front and is never doubled; overtaking never passes a
// higher priority or a front that has waited handoff_after; such a front is
// served by the next dispatch (release, acquire, retry, tick) when a session
// is free; a woken waiter that retries gets a free session; next_due() covers
// the moment a held session becomes owed.
//
// A failure prints the seed, the configuration, the last operations and a
// minimized operation sequence that still breaks the same rule.
//
// Environment:
//   POOLKEEPER_SIM_OPS=<n>          operations over all seeds (default 1200000)
//   POOLKEEPER_SIM_SEED=<seed>      run only this seed, as a failure prints it
//   POOLKEEPER_SIM_FIRST_SEED=<s>   first seed of a full run (default 1)
//   POOLKEEPER_SIM_SHRINK=0         do not minimize failing sequences
//   POOLKEEPER_SIM_TRACE=1          print every operation (with POOLKEEPER_SIM_SEED)
//   POOLKEEPER_SIM_IGNORE=<tags>    do not enforce these rules (to look past a known bug)
//   POOLKEEPER_SIM_SESSIONS=1       show the core's sessions after each operation
//
// Broken rules that leave the model intact are recorded and the run goes on
// (the first of each rule per seed is reported); the others end the seed. Under
// ASan/TSan a sanitizer report is followed by the seed and the last operations.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#define POOLKEEPER_SIM_SANITIZED 1
#endif

#include "core/pool_core.h"
#include "core/random.h"
#include "poolkeeper/shared_cap.h"
#include "testing/manual_clock.h"

namespace poolkeeper::core {
namespace {

using namespace std::chrono_literals;

// ----------------------------------------------------------------------------
// formatting

template <class... A>
std::string cat(const A&... a) {
  std::ostringstream s;
  (s << ... << a);
  return s.str();
}

const TimePoint kStart{std::chrono::hours(1)};

std::string ms(Duration d) {
  char b[40];
  std::snprintf(b, sizeof b, "%.3fms", static_cast<double>(d.count()) / 1e6);
  return b;
}
std::string at(TimePoint t) {
  if (t == TimePoint::max()) return "never";
  return "t" + ms(t - kStart);
}
std::string sid(SessionId id) { return cat("s", id & 0xffffffffu, ".", id >> 32); }
std::string code_name(ErrorCode c) { return std::string(poolkeeper::to_string(c)); }
std::string state_name(SessionState s) { return std::string(poolkeeper::to_string(s)); }
std::string reason_name(StopReason r) { return std::string(poolkeeper::to_string(r)); }

// A broken rule. `tag` names the rule: failures are grouped and minimized by it.
struct Violation {
  std::string tag;
  std::string detail;
};

[[noreturn]] void fail(std::string tag, std::string detail) {
  throw Violation{std::move(tag), std::move(detail)};
}

// Rules named in POOLKEEPER_SIM_IGNORE (comma-separated) are not enforced
// where the simulation can carry on without them (to look past a known bug).
bool ignored(std::string_view tag) {
  static const std::set<std::string, std::less<>> tags = [] {
    std::set<std::string, std::less<>> out;
    const char* v = std::getenv("POOLKEEPER_SIM_IGNORE");
    std::string_view list = v != nullptr ? v : "";
    while (!list.empty()) {
      const std::size_t comma = std::min(list.find(','), list.size());
      if (comma > 0) out.emplace(list.substr(0, comma));
      list.remove_prefix(std::min(comma + 1, list.size()));
    }
    return out;
  }();
  return tags.count(tag) != 0;
}

// Where broken rules go that need not stop the run: a normal run records each
// and carries on (so one frequent problem does not hide rarer ones); a replay
// that minimizes a sequence stops only at the rule it looks for.
struct SoftSink {
  std::string only;  // replay: the rule to stop at
  std::function<void(const std::string&, const std::string&)> record;  // normal run
};
SoftSink* g_soft_sink = nullptr;

void soft_fail(std::string tag, std::string detail) {
  if (ignored(tag)) return;
  if (g_soft_sink != nullptr) {
    if (g_soft_sink->record) return g_soft_sink->record(tag, detail);
    if (tag != g_soft_sink->only) return;
  }
  fail(std::move(tag), std::move(detail));
}

Duration span(std::uint64_t r, Duration lo, Duration hi) {
  const auto width = static_cast<std::uint64_t>((hi - lo).count()) + 1;
  return lo + Duration{static_cast<Duration::rep>(r % width)};
}

// ----------------------------------------------------------------------------
// the random setup of one seed

constexpr std::array<std::string_view, 4> kOwners = {"", "alice", "bob", "carol"};
constexpr std::array<std::string_view, 8> kClients = {"", "", "", "c0", "c1", "c2", "c3", "c4"};
constexpr std::array<std::string_view, 5> kClientIds = {"c0", "c1", "c2", "c3", "c4"};
// A late release must get the precise error (reclaimed, session lost) for at
// least this many later such endings; older ones may have been forgotten.
constexpr std::size_t kEndedRemembered = 256;
constexpr std::size_t kRecentOps = 30;

struct SimSetup {
  std::uint64_t seed = 0;
  std::vector<PoolConfig> configs;      // one per core
  std::vector<int> start_fail_percent;  // per core
  std::vector<int> check_fail_percent;  // per core
  // handoff_after > 0: how eagerly the shell retries a woken waiter (weight of
  // the op; 0: woken waiters never retry and must be served by a tick).
  std::vector<int> retry_weight;  // per core
  int cap_limit = 0;                    // 0: no shared cap
  int ops = 0;
};

PoolConfig random_config(Random& r, int index) {
  auto ms_range = [&](int lo, int hi) {
    return Duration{std::chrono::milliseconds(lo + static_cast<int>(r.below(hi - lo + 1)))};
  };
  PoolConfig c;
  c.name = cat("pool", index);
  c.max = 1 + static_cast<int>(r.below(8));
  c.min = r.below(3) == 0 ? static_cast<int>(r.below(c.max + 1)) : 0;
  c.overflow = r.below(3) == 0 ? 1 + static_cast<int>(r.below(3)) : 0;
  c.start = r.below(10) == 0 ? StartMode::kEager : StartMode::kLazy;
  c.min_idle = r.below(3) == 0 ? static_cast<int>(r.below(std::min(c.max, 3) + 1)) : 0;
  c.max_starting = 1 + static_cast<int>(r.below(4));
  switch (r.below(6)) {
    case 0:
      c.max_queue = 0;
      break;
    case 1:
      c.max_queue = 1024;
      break;
    case 2:
      c.max_queue = 16;
      break;
    default:
      c.max_queue = 1 + static_cast<int>(r.below(8));
      break;
  }
  c.aging = r.below(3) == 0 ? Duration{0} : ms_range(10, 2000);
  c.early_reject = r.below(2) == 0;
  c.idle_timeout = r.below(4) == 0 ? Duration{0} : ms_range(50, 20000);
  c.lease_timeout = r.below(2) == 0 ? Duration{0} : ms_range(100, 30000);
  c.max_lifetime = r.below(3) == 0 ? ms_range(500, 120000) : Duration{0};
  c.lifetime_jitter = r.below(2) == 0 ? 0.0 : r.unit() * 0.5;
  c.max_uses = r.below(3) == 0 ? 1 + static_cast<std::int64_t>(r.below(20)) : 0;
  c.health_error_penalty = static_cast<int>(r.below(61));
  c.health_success_recovery = static_cast<int>(r.below(21));
  c.health_check_below = static_cast<int>(r.below(101));
  c.validate_after_idle = r.below(3) == 0 ? ms_range(10, 5000) : Duration{0};
  c.check_interval = r.below(3) == 0 ? ms_range(100, 30000) : Duration{0};
  c.start_backoff_initial = ms_range(1, 500);
  c.start_backoff_max = c.start_backoff_initial * (1 + static_cast<int>(r.below(20)));
  c.client_session_ttl =
      r.below(4) == 0 ? Duration{std::chrono::minutes(30)} : ms_range(100, 60000);
  c.client_session_cleanup_interval = ms_range(10, 10000);
  c.client_session_cleanup_batch = 1 + static_cast<int>(r.below(10));
  c.max_client_sessions = r.below(4) == 0 ? 1 + r.below(6) : 100000;
  c.max_client_session_document = 8 + r.below(1024);
  c.lease_events = r.below(2) == 0;
  c.max_memory = r.below(3) == 0 ? 1000 : 0;
  c.max_cpu_percent = r.below(3) == 0 ? 80.0 : 0.0;
  c.cpu_percent_samples = 1 + static_cast<int>(r.below(3));
  c.max_cpu_time = r.below(3) == 0 ? ms_range(100, 1000) : Duration{0};
  return c;
}

SimSetup make_setup(std::uint64_t seed) {
  Random r(seed * 0x9e3779b97f4a7c15ULL + 0x51d);
  SimSetup s;
  s.seed = seed;
  int cores = 1;
  bool cap = false;
  const auto kind = r.below(10);
  if (kind < 3) {
    cores = 2 + static_cast<int>(r.below(2));
    cap = true;
  } else if (kind == 3) {
    cap = true;
  }
  int room = 0;
  constexpr std::array<int, 4> kFail = {0, 5, 15, 40};
  for (int i = 0; i < cores; ++i) {
    s.configs.push_back(random_config(r, i));
    room += s.configs.back().max + s.configs.back().overflow;
    s.start_fail_percent.push_back(kFail[r.below(kFail.size())]);
    s.check_fail_percent.push_back(static_cast<int>(r.below(30)));
  }
  if (cap) s.cap_limit = 1 + static_cast<int>(r.below(room));
  // About a third of the seeds relax handoff (handoff_after > 0). Drawn from a
  // generator of their own, so the rest of each seed's setup is as before.
  Random h(seed * 0xd1342543de82ef95ULL + 0x4a0d);
  const bool handoff = h.below(3) == 0;
  constexpr std::array<int, 4> kRetryWeight = {0, 15, 60, 200};
  for (PoolConfig& c : s.configs) {
    const auto range = h.below(3);
    const auto lo = range == 0 ? 500us : range == 1 ? 2ms : 10ms;
    const auto hi = range == 0 ? 2ms : range == 1 ? 10ms : 50ms;
    const Duration after = span(h.next(), lo, hi);
    if (handoff) c.handoff_after = after;
    s.retry_weight.push_back(kRetryWeight[h.below(kRetryWeight.size())]);
  }
  // Many short runs and some long ones: pools grow (and reallocate) early in a run.
  s.ops = r.below(2) == 0 ? 100 + static_cast<int>(r.below(900))
                          : 1000 + static_cast<int>(r.below(5001));
  return s;
}

std::string describe(const PoolConfig& c) {
  return cat("name=", c.name, " min=", c.min, " max=", c.max, " overflow=", c.overflow,
             " start=", c.start == StartMode::kEager ? "eager" : "lazy", " min_idle=", c.min_idle,
             " max_starting=", c.max_starting, " max_queue=", c.max_queue, " aging=", ms(c.aging),
             " early_reject=", c.early_reject, " idle_timeout=", ms(c.idle_timeout),
             " lease_timeout=", ms(c.lease_timeout), " max_lifetime=", ms(c.max_lifetime),
             " lifetime_jitter=", c.lifetime_jitter, " max_uses=", c.max_uses,
             " health_error_penalty=", c.health_error_penalty,
             " health_success_recovery=", c.health_success_recovery,
             " health_check_below=", c.health_check_below,
             " validate_after_idle=", ms(c.validate_after_idle),
             " check_interval=", ms(c.check_interval),
             " start_backoff=", ms(c.start_backoff_initial), "..", ms(c.start_backoff_max),
             " client_session_ttl=", ms(c.client_session_ttl),
             " cleanup_interval=", ms(c.client_session_cleanup_interval),
             " cleanup_batch=", c.client_session_cleanup_batch,
             " max_client_sessions=", c.max_client_sessions,
             " max_document=", c.max_client_session_document, " lease_events=", c.lease_events,
             " handoff_after=", ms(c.handoff_after));
}

std::string describe(const SimSetup& s) {
  std::string out = cat("seed ", s.seed, ": ", s.configs.size(), " core(s), ", s.ops, " ops",
                        s.cap_limit > 0 ? cat(", shared cap ", s.cap_limit) : std::string(), "\n");
  for (std::size_t i = 0; i < s.configs.size(); ++i) {
    out += cat("  core", i, ": ", describe(s.configs[i]), " start_fail%=", s.start_fail_percent[i],
               " check_fail%=", s.check_fail_percent[i],
               s.configs[i].handoff_after.count() > 0 ? cat(" retry_weight=", s.retry_weight[i])
                                                      : std::string(),
               "\n");
  }
  return out;
}

// ----------------------------------------------------------------------------
// operations: a kind and raw random bits, interpreted against the state when
// run, so a sequence can be replayed and shortened

enum class OpKind : std::uint8_t {
  kAcquire,
  kRelease,
  kReleaseWrongOwner,
  kReleaseAgain,
  kReleaseEnded,
  kReleaseUnknown,
  kCancel,
  kCancelUnknown,
  kCompleteStart,
  kCompleteStop,
  kCompleteCheck,
  kSessionExited,
  kRecycle,  // the shell saw a session go over a resource limit
  kUsage,    // the shell reports a session's measured usage
  kStaleResult,
  kAdvanceAndTick,
  kTickOne,
  kAdvance,
  kScale,
  kPause,
  kResume,
  kDrain,
  kEmergencyStop,
  kEmergencyResume,
  kReserve,
  kCancelReservation,
  kPutClientSession,
  kDeleteClientSession,
  kShutdown,
  kRetryWoken,  // the waiter woken by kWake tries again (handoff_after > 0)
  kRetryOther,  // retry() for a waiter that was not woken, was answered, or never existed
  kReconfigure,  // a reload: a new random config for the same pool (sometimes a bad one)
  kCount,
};
constexpr int kOpKinds = static_cast<int>(OpKind::kCount);

struct Op {
  OpKind kind = OpKind::kAdvance;
  std::uint8_t core = 0;
  std::array<std::uint64_t, 4> p{};
};

// ----------------------------------------------------------------------------
// the shell's model of one core

struct SessionModel {
  bool start_pending = true;
  bool stop_pending = false;
  bool check_pending = false;
  LeaseId lease = 0;
  TimePoint started = TimePoint::max();  // when session_started was reported
  TimePoint last_active{};               // started, checked or released last
  int leases = 0;                        // leases granted on it
  bool recycle = false;                  // recycle() was called for it
  int cpu_over = 0;                      // usage samples in a row above max_cpu_percent
};

struct LeaseModel {
  LeaseId id = 0;
  SessionId session = 0;
  std::string owner;
  std::string client;
  TimePoint expires = TimePoint::max();
  bool counted = true;  // by its client session's record (false once that record was deleted)
};

struct WaiterModel {
  WaiterId id = 0;
  int priority = 0;
  TimePoint deadline{};
  std::int64_t key = 0;  // the documented order: smaller first, then seq
  std::uint64_t seq = 0;
  std::string owner;
  std::string client;
  Duration lease_timeout{0};
  TimePoint queued{};  // when it was queued: handoff_after counts from here
};

bool served_before(const WaiterModel& a, const WaiterModel& b) {
  return a.key != b.key ? a.key < b.key : a.seq < b.seq;
}

enum class Result : std::uint8_t {
  kStarted,
  kStartFailed,
  kStopped,
  kExited,
  kCheckOk,
  kCheckFailed
};
constexpr std::array<std::string_view, 6> kResultNames = {
    "started", "start_failed", "stopped", "exited", "check_ok", "check_failed"};

struct CoreModel {
  PoolConfig cfg;
  int start_fail_percent = 0;
  int check_fail_percent = 0;
  int retry_weight = 0;
  std::unique_ptr<PoolCore> core;

  std::map<SessionId, SessionModel> sessions;  // everything the shell holds a resource for
  std::unordered_set<SessionId> ever_sessions;
  std::deque<std::pair<Result, SessionId>> stale;  // results the core must ignore
  std::vector<SessionId> dead;                     // recent sessions that are gone

  std::vector<LeaseModel> leases;                       // outstanding
  std::unordered_map<LeaseId, std::uint64_t> lease_no;  // every lease ever, numbered
  std::vector<LeaseId> all_leases;
  std::deque<std::pair<LeaseId, std::string>> released;  // recent, with owners
  std::vector<std::pair<LeaseId, ErrorCode>> ended;      // reclaimed or lost, in order

  std::vector<WaiterModel> waiters;                       // queued, unanswered
  std::unordered_map<WaiterId, std::uint64_t> waiter_no;  // every waiter ever, numbered
  std::unordered_set<WaiterId> answered;
  std::deque<WaiterId> answered_recent;
  std::uint64_t next_seq = 0;
  // handoff_after: the waiter the last kWake named. Its wake is outstanding
  // while it is queued and has not called retry().
  WaiterId woken = 0;

  bool paused = false;
  bool draining = false;
  bool emergency = false;
  bool shutdown = false;
  TimePoint leases_until = TimePoint::max();  // shutdown's grace for leases
  std::optional<TimePoint> last_start_failure;

  std::uint64_t grants = 0;
  std::uint64_t immediate = 0;
  std::uint64_t cancels = 0;
  std::uint64_t releases = 0;
  std::uint64_t broken = 0;
  std::uint64_t reclaimed = 0;
  std::uint64_t queued_timeouts = 0;
  std::uint64_t immediate_timeouts = 0;

  std::map<ReservationId, std::string> reservations_made;  // id -> owner
  std::map<std::string, int, std::less<>>
      client_leases;  // leases counted by the client session's record
  PoolStats last_stats;
  TimePoint last_cleanup = kStart;  // last client-session cleanup run
  std::map<std::string, TimePoint, std::less<>>
      client_put;  // last successful put, if not deleted since
  int consecutive_start_failures = 0;
  // After a reload lowered max or max_starting: what was there then may stay
  // until it leaves, but nothing new may start above the new limit.
  int reload_sessions_ceiling = 0;
  int reload_starting_ceiling = 0;
  std::unordered_set<LeaseId> leases_at_reload;  // granted under an older max_uses
  std::uint64_t created = 0;
  std::uint64_t start_failures = 0;
  std::uint64_t checks = 0;
  std::uint64_t check_failures = 0;
  std::uint64_t rejections = 0;  // refusals other than timeouts and invalid requests
  std::uint64_t closed = 0;
  std::uint64_t reused = 0;
};

// ----------------------------------------------------------------------------
// the simulation

class Sim {
 public:
  Sim(const SimSetup& setup, bool trace, bool keep_all)
      : setup_(setup), trace_(trace), keep_all_(keep_all) {
    if (setup.cap_limit > 0) cap_ = std::make_unique<SharedCap>(setup.cap_limit);
    for (std::size_t i = 0; i < setup.configs.size(); ++i) {
      CoreModel& m = cores_.emplace_back();
      m.cfg = setup.configs[i];
      m.start_fail_percent = setup.start_fail_percent[i];
      m.check_fail_percent = setup.check_fail_percent[i];
      m.retry_weight = setup.retry_weight[i];
      auto core =
          PoolCore::create(m.cfg, {.seed = setup.seed * 31 + i + 1, .shared_cap = cap_.get()});
      if (!core) fail("config_rejected", cat("core", i, ": ", core.error().message));
      m.core = std::move(*core);
    }
    for (int i = 0; i < static_cast<int>(cores_.size()); ++i) {
      begin(cat("core", i, " start"));
      Output out;
      cores_[i].core->start(clock_.now(), out);
      absorb(i, out, {});
      check_core(i, false);
      check_cap();
      end();
    }
  }

  ~Sim() {
    // Cores give their cap units back on destruction; destroy them before the cap.
    for (CoreModel& m : cores_) m.core.reset();
  }

  std::uint64_t executed() const { return executed_; }
  const std::map<std::string, std::uint64_t>& coverage() const { return coverage_; }
  std::uint64_t digest() const { return digest_; }
  const std::deque<std::string>& recent() const { return recent_; }
  // The recent operations, the one under way included.
  std::deque<std::string> snapshot() const {
    std::deque<std::string> out = recent_;
    if (!line_.empty()) out.push_back(line_);
    return out;
  }
  const std::vector<std::string>& all_lines() const { return all_; }
  // Records the operation under way (after a violation).
  void end() {
    if (line_.empty()) return;
    for (char ch : line_) digest_ = (digest_ ^ static_cast<unsigned char>(ch)) * 0x100000001b3ULL;
    if (trace_) std::printf("%s\n", line_.c_str());
    recent_.push_back(line_);
    if (recent_.size() > kRecentOps) recent_.pop_front();
    if (keep_all_) all_.push_back(line_);
    line_.clear();
  }

  Op generate(Random& r, int remaining, int total);
  void step(const Op& op);
  void finish();

 private:
  struct Effects {
    bool tick = false;
    SessionId exited = 0;  // the session reported exited by this input
    int immediate_grants = 0;
    int releases = 0;
    WaiterId fresh = 0;  // queued by this input after the core dispatched (not in its queue then)
  };

  TimePoint now() const { return clock_.now(); }
  int ncores() const { return static_cast<int>(cores_.size()); }

  void begin(std::string text) {
    line_ = cat("#", ++executed_, " ", at(now()), " ", std::move(text));
    dispatched_ = false;
    woke_ = false;
  }
  template <class... A>
  void note(const A&... a) {
    line_ += cat(a...);
  }
  void seen(const std::string& what) { ++coverage_[what]; }
  std::string lname(const CoreModel& m, LeaseId id) const {
    auto it = m.lease_no.find(id);
    return it == m.lease_no.end() ? cat("L?", id) : cat("L", it->second);
  }
  std::string wname(const CoreModel& m, WaiterId id) const {
    auto it = m.waiter_no.find(id);
    return it == m.waiter_no.end() ? cat("W?", id) : cat("W", it->second);
  }

  // --- operations
  void do_acquire(int ci, const Op& op);
  void do_release(int ci, const Op& op);
  void do_release_wrong_owner(int ci, const Op& op);
  void do_release_again(int ci, const Op& op);
  void do_release_ended(int ci, const Op& op);
  void do_release_unknown(int ci, const Op& op);
  void do_cancel(int ci, const Op& op);
  void do_cancel_unknown(int ci, const Op& op);
  void do_complete_start(int ci, std::uint64_t pick, bool success);
  void do_complete_stop(int ci, std::uint64_t pick);
  void do_complete_check(int ci, std::uint64_t pick, bool healthy);
  void do_exited(int ci, const Op& op);
  void do_recycle(int ci, const Op& op);
  void do_usage(int ci, const Op& op);
  void do_stale(int ci, const Op& op);
  void do_tick(int ci);
  void do_scale(int ci, const Op& op);
  void do_reconfigure(int ci, const Op& op);
  void do_control(int ci, OpKind kind);
  void do_reserve(int ci, const Op& op);
  void do_cancel_reservation(int ci, const Op& op);
  void do_put_client(int ci, const Op& op);
  void do_delete_client(int ci, const Op& op);
  void do_retry(int ci, const Op& op, bool woken);
  void release_lease(int ci, std::size_t index, std::optional<std::string_view> owner,
                     ReleaseOutcome outcome);

  // --- the shell's bookkeeping
  template <class Pred>
  std::optional<SessionId> pick_session(const CoreModel& m, std::uint64_t r, Pred pred) const;
  void remove_session(CoreModel& m, SessionId id);
  void take_grant(CoreModel& m, const Grant& g, const std::string& owner, const std::string& client,
                  Duration lease_timeout, bool immediate);
  WaiterModel take_waiter(CoreModel& m, WaiterId id, std::string_view how);
  void drop_client_lease(CoreModel& m, const LeaseModel& lease);
  void absorb(int ci, const Output& out, const Effects& fx);
  std::vector<ErrorCode> refusals(const CoreModel& m, int priority) const;
  bool ready(const CoreModel& m, const SessionInfo& si) const;
  void check_stop_reason(const CoreModel& m, SessionId id, const SessionModel& s,
                         StopReason reason);

  // --- handoff_after
  // The waiter the core serves first, leaving out `skip` and `also` (waiters
  // this input granted or queued after the core dispatched); null when none.
  const WaiterModel* front_of(const CoreModel& m, WaiterId skip = 0,
                              const std::vector<WaiterId>* also = nullptr) const;
  // The waiter named by the last kWake is queued and has not retried.
  bool wake_outstanding(const CoreModel& m) const;
  // The front has waited less than handoff_after (so it may be overtaken).
  bool fresh(const CoreModel& m, const WaiterModel& w) const {
    return m.cfg.handoff_after.count() > 0 && now() - w.queued < m.cfg.handoff_after;
  }
  // May a request of `priority` take an idle session while `front` waits?
  // Strict handoff: never. handoff_after: when `front` is fresh and does not
  // outrank it.
  bool may_overtake(const CoreModel& m, const WaiterModel* front, int priority) const {
    return front == nullptr || (fresh(m, *front) && priority >= front->priority);
  }
  bool ready_unreserved_idle(const CoreModel& m) const;
  // The input under way just made a session free for the queue: the core ran
  // its dispatch after it, so a front that waited handoff_after is served.
  void mark_dispatched(bool wakes) {
    dispatched_ = true;
    woke_ = woke_ || wakes;
  }

  // --- rules
  void check_core(int ci, bool ticked);
  void check_after_tick(int ci, const PoolStats& before);
  void check_cap();

  const SimSetup& setup_;
  bool trace_;
  bool keep_all_;
  testing::ManualClock clock_{kStart};
  std::unique_ptr<SharedCap> cap_;
  std::vector<CoreModel> cores_;
  std::uint64_t executed_ = 0;
  std::uint64_t digest_ = 0xcbf29ce484222325ULL;
  std::string line_;
  std::deque<std::string> recent_;
  std::vector<std::string> all_;
  std::map<std::string, std::uint64_t> coverage_;  // what happened, for the summary
  // POOLKEEPER_SIM_SESSIONS=1: every operation line also shows the core's sessions.
  bool show_sessions_ = std::getenv("POOLKEEPER_SIM_SESSIONS") != nullptr;
  // The input under way, for the reasons its stops may give.
  OpKind current_ = OpKind::kCount;
  ReleaseOutcome current_outcome_ = ReleaseOutcome::kOk;
  bool current_healthy_ = true;
  // handoff_after: the input under way ran the core's dispatch with the queue
  // as it is now (a front that waited handoff_after must have been served),
  // and, with `woke_`, a fresh front facing a free session must have a wake.
  bool dispatched_ = false;
  bool woke_ = false;
};

// ----------------------------------------------------------------------------
// generation

Op Sim::generate(Random& r, int remaining, int total) {
  Op op;
  op.core = static_cast<std::uint8_t>(r.below(cores_.size()));
  for (auto& p : op.p) p = r.next();
  const CoreModel& m = cores_[op.core];
  int starts = 0, stops = 0, checks = 0;
  for (const auto& [id, s] : m.sessions) {
    starts += s.start_pending ? 1 : 0;
    stops += s.stop_pending ? 1 : 0;
    checks += s.check_pending ? 1 : 0;
  }
  std::array<int, kOpKinds> w{};
  auto set = [&](OpKind k, int weight) { w[static_cast<int>(k)] = weight; };
  set(OpKind::kAcquire, m.shutdown ? 20 : 180);
  set(OpKind::kRelease, m.leases.empty() ? 0 : 140);
  set(OpKind::kReleaseWrongOwner, m.leases.empty() ? 0 : 12);
  set(OpKind::kReleaseAgain, m.released.empty() ? 0 : 10);
  set(OpKind::kReleaseEnded, m.ended.empty() ? 0 : 10);
  set(OpKind::kReleaseUnknown, 4);
  set(OpKind::kCancel, m.waiters.empty() ? 0 : 30);
  set(OpKind::kCancelUnknown, 4);
  set(OpKind::kCompleteStart, starts == 0 ? 0 : 100);
  set(OpKind::kCompleteStop, stops == 0 ? 0 : 80);
  set(OpKind::kCompleteCheck, checks == 0 ? 0 : 60);
  set(OpKind::kSessionExited, m.sessions.empty() ? 0 : 12);
  set(OpKind::kRecycle, m.sessions.empty() ? 0 : 3);
  set(OpKind::kUsage, m.sessions.empty() ? 0 : 8);
  set(OpKind::kStaleResult, m.stale.empty() && m.dead.empty() ? 0 : 10);
  set(OpKind::kAdvanceAndTick, 90);
  set(OpKind::kTickOne, 20);
  set(OpKind::kAdvance, 15);
  set(OpKind::kScale, 8);
  set(OpKind::kReconfigure, 3);
  set(OpKind::kPause, 2);
  set(OpKind::kResume, m.paused || m.draining ? 40 : 1);
  set(OpKind::kDrain, 1);
  set(OpKind::kEmergencyStop, 2);
  set(OpKind::kEmergencyResume, m.emergency ? 40 : 1);
  set(OpKind::kReserve, 8);
  set(OpKind::kCancelReservation, 6);
  set(OpKind::kPutClientSession, 8);
  set(OpKind::kDeleteClientSession, 4);
  set(OpKind::kShutdown, remaining * 25 < total ? 3 : 0);
  const bool woken = wake_outstanding(m);
  set(OpKind::kRetryWoken, woken ? m.retry_weight : 0);
  // Mostly harmless no-ops; while a session is held for a woken front, a
  // queued waiter's retry may also pass it like a new acquire.
  set(OpKind::kRetryOther, woken ? 40 : 3);
  int sum = 0;
  for (int x : w) sum += x;
  int pick = static_cast<int>(r.below(static_cast<std::uint64_t>(sum)));
  for (int k = 0; k < kOpKinds; ++k) {
    if (pick < w[k]) {
      op.kind = static_cast<OpKind>(k);
      break;
    }
    pick -= w[k];
  }
  return op;
}

// ----------------------------------------------------------------------------
// bookkeeping

template <class Pred>
std::optional<SessionId> Sim::pick_session(const CoreModel& m, std::uint64_t r, Pred pred) const {
  std::uint64_t n = 0;
  for (const auto& [id, s] : m.sessions) n += pred(s) ? 1 : 0;
  if (n == 0) return std::nullopt;
  std::uint64_t k = r % n;
  for (const auto& [id, s] : m.sessions) {
    if (pred(s) && k-- == 0) return id;
  }
  return std::nullopt;
}

// The shell's resource is gone; results still pending for it become stale.
void Sim::remove_session(CoreModel& m, SessionId id) {
  auto it = m.sessions.find(id);
  if (it == m.sessions.end()) return;
  const SessionModel& s = it->second;
  if (s.start_pending) m.stale.emplace_back(Result::kStarted, id);
  if (s.stop_pending) m.stale.emplace_back(Result::kStopped, id);
  if (s.check_pending) m.stale.emplace_back(Result::kCheckOk, id);
  m.sessions.erase(it);
  m.dead.push_back(id);
  if (m.dead.size() > 64) m.dead.erase(m.dead.begin());
}

void Sim::drop_client_lease(CoreModel& m, const LeaseModel& lease) {
  if (lease.client.empty() || !lease.counted) return;
  auto it = m.client_leases.find(lease.client);
  if (it != m.client_leases.end() && --it->second == 0) m.client_leases.erase(it);
}

void Sim::take_grant(CoreModel& m, const Grant& g, const std::string& owner,
                     const std::string& client, Duration lease_timeout, bool immediate) {
  auto it = m.sessions.find(g.session);
  if (it == m.sessions.end())
    fail("grant_unknown_session",
         cat("granted ", sid(g.session), ", which the shell does not hold"));
  SessionModel& s = it->second;
  if (s.start_pending)
    fail("grant_unstarted_session", cat("granted ", sid(g.session), " before it started"));
  if (s.stop_pending)
    fail("grant_closing_session", cat("granted ", sid(g.session), ", which is being stopped"));
  if (s.check_pending)
    fail("grant_checking_session", cat("granted ", sid(g.session), ", which is being checked"));
  if (s.recycle)
    fail("grant_recycled_session", cat("granted ", sid(g.session), ", which was recycled"));
  if (s.lease != 0) {
    fail("two_leases_one_session",
         cat("granted ", sid(g.session), " while ", lname(m, s.lease), " holds it"));
  }
  if (g.lease == 0 || m.lease_no.count(g.lease) != 0) {
    fail("lease_id_reused", cat("lease id ", g.lease, " was issued before as ", lname(m, g.lease)));
  }
  if (m.cfg.validate_after_idle.count() > 0 && now() - s.last_active > m.cfg.validate_after_idle) {
    soft_fail("stale_session_handed_out",
              cat(sid(g.session), " unused for ", ms(now() - s.last_active),
                  " was handed out without a check (validate_after_idle ",
                  ms(m.cfg.validate_after_idle), ")"));
  }
  const Duration timeout = lease_timeout.count() > 0 ? lease_timeout : m.cfg.lease_timeout;
  const TimePoint expires = timeout.count() > 0 ? now() + timeout : TimePoint::max();
  if (g.expires_at != expires) {
    fail("grant_expiry", cat("grant of ", sid(g.session), " expires ", at(g.expires_at),
                             ", expected ", at(expires)));
  }
  s.lease = g.lease;
  s.last_active = now();
  if (s.leases++ > 0) ++m.reused;
  m.lease_no.emplace(g.lease, m.lease_no.size() + 1);
  m.all_leases.push_back(g.lease);
  m.leases.push_back(
      {.id = g.lease, .session = g.session, .owner = owner, .client = client, .expires = expires});
  ++m.grants;
  if (immediate) ++m.immediate;
  if (!client.empty()) ++m.client_leases[client];
}

WaiterModel Sim::take_waiter(CoreModel& m, WaiterId id, std::string_view how) {
  auto it = std::find_if(m.waiters.begin(), m.waiters.end(),
                         [&](const WaiterModel& w) { return w.id == id; });
  if (it == m.waiters.end()) {
    if (m.answered.count(id) != 0) {
      fail("waiter_answered_twice",
           cat(how, " for ", wname(m, id), ", which was already answered"));
    }
    fail("unknown_waiter_answered", cat(how, " for waiter id ", id, ", which was never queued"));
  }
  WaiterModel w = *it;
  m.waiters.erase(it);
  m.answered.insert(id);
  m.answered_recent.push_back(id);
  if (m.answered_recent.size() > 64) m.answered_recent.pop_front();
  return w;
}

std::vector<ErrorCode> Sim::refusals(const CoreModel& m, int priority) const {
  std::vector<ErrorCode> codes;
  if (m.paused) codes.push_back(ErrorCode::kPoolPaused);
  if (m.draining) codes.push_back(ErrorCode::kPoolDraining);
  if (m.shutdown) codes.push_back(ErrorCode::kShutdown);
  if (m.emergency && priority < kCriticalPriority) codes.push_back(ErrorCode::kEmergencyStop);
  return codes;
}

// An idle session the rules say can be handed out at once (no validation due,
// healthy, certainly within its lifetime and uses).
bool Sim::ready(const CoreModel& m, const SessionInfo& si) const {
  if (si.state != SessionState::kIdle) return false;
  if (si.health < m.cfg.health_check_below) return false;
  if (m.cfg.validate_after_idle.count() > 0) {
    // Unused for longer (by the core's clock or the shell's): a check is due first.
    auto it = m.sessions.find(si.id);
    const Duration unused =
        it == m.sessions.end() ? si.idle : std::max(si.idle, now() - it->second.last_active);
    if (unused >= m.cfg.validate_after_idle) return false;
  }
  if (m.cfg.max_uses > 0 && si.uses >= m.cfg.max_uses) return false;
  if (m.cfg.max_lifetime.count() > 0) {
    auto it = m.sessions.find(si.id);
    if (it == m.sessions.end() || it->second.started == TimePoint::max()) return false;
    const double limit =
        static_cast<double>(m.cfg.max_lifetime.count()) * (1.0 - m.cfg.lifetime_jitter);
    if (static_cast<double>((now() - it->second.started).count()) >= limit - 1e6) return false;
  }
  return true;
}

const WaiterModel* Sim::front_of(const CoreModel& m, WaiterId skip,
                                 const std::vector<WaiterId>* also) const {
  const WaiterModel* best = nullptr;
  for (const WaiterModel& w : m.waiters) {
    if (w.id == skip) continue;
    if (also != nullptr && std::find(also->begin(), also->end(), w.id) != also->end()) continue;
    if (best == nullptr || served_before(w, *best)) best = &w;
  }
  return best;
}

bool Sim::wake_outstanding(const CoreModel& m) const {
  return m.woken != 0 && std::any_of(m.waiters.begin(), m.waiters.end(),
                                     [&](const WaiterModel& w) { return w.id == m.woken; });
}

bool Sim::ready_unreserved_idle(const CoreModel& m) const {
  for (const SessionInfo& si : m.core->sessions(now())) {
    if (!si.reserved && ready(m, si)) return true;
  }
  return false;
}

// A stop names a reason that holds for the session and the input under way.
void Sim::check_stop_reason(const CoreModel& m, SessionId id, const SessionModel& s,
                            StopReason reason) {
  const TimePoint t = now();
  const PoolConfig& c = m.cfg;
  bool fits = false;
  switch (reason) {
    case StopReason::kBroken:
      fits = current_ == OpKind::kRelease && current_outcome_ == ReleaseOutcome::kBroken;
      break;
    case StopReason::kUnhealthy:
      fits = current_ == OpKind::kCompleteCheck && !current_healthy_;
      break;
    case StopReason::kDrained:
      fits = m.draining;
      break;
    case StopReason::kMemoryLimit:
    case StopReason::kCpuLimit:
      fits = s.recycle;
      break;
    case StopReason::kShutdown:
      fits = m.shutdown;
      break;
    case StopReason::kOverflow: {
      // Above max (counting what is not being stopped yet, this session included).
      int live = 0;
      for (const auto& [other, sm] : m.sessions) live += sm.stop_pending ? 0 : 1;
      fits = live > c.max;
      break;
    }
    case StopReason::kScaledDown: {
      // Above the target size (counting what is not being stopped yet, this session included).
      int live = 0;
      for (const auto& [other, sm] : m.sessions) live += sm.stop_pending ? 0 : 1;
      fits = live > m.core->stats().target;
      break;
    }
    case StopReason::kLeaseAbandoned:
      fits = true;
      break;  // checked with the reclaimed lease
    case StopReason::kIdleTimeout:
      fits = c.idle_timeout.count() > 0 && t - s.last_active >= c.idle_timeout;
      break;
    case StopReason::kMaxLifetime:
      fits = c.max_lifetime.count() > 0 && s.started != TimePoint::max() &&
             static_cast<double>((t - s.started).count()) >=
                 static_cast<double>(c.max_lifetime.count()) * (1.0 - c.lifetime_jitter) - 1e6;
      break;
    case StopReason::kMaxUses: {
      auto info = m.core->session(id, t);
      fits = c.max_uses > 0 && info.has_value() && info->uses >= c.max_uses;
      break;
    }
    case StopReason::kExited:
    case StopReason::kStartFailed:
      fits = false;
      break;
  }
  if (!fits) {
    soft_fail("stop_reason",
              cat("stop ", sid(id), " for ", reason_name(reason), " does not hold (started ",
                  at(s.started), ", last active ", at(s.last_active), ")"));
  }
}

bool has_stop(const Output& out, SessionId s) {
  return std::any_of(out.actions.begin(), out.actions.end(), [&](const Action& a) {
    return a.type == ActionType::kStopSession && a.session == s;
  });
}
bool has_check(const Output& out, SessionId s) {
  return std::any_of(out.actions.begin(), out.actions.end(), [&](const Action& a) {
    return a.type == ActionType::kCheckSession && a.session == s;
  });
}
// With handoff_after a tick may hand an idle session to a waiter that has
// waited long enough (before the idle timeout runs).
bool has_grant(const Output& out, SessionId s) {
  return std::any_of(out.actions.begin(), out.actions.end(), [&](const Action& a) {
    return a.type == ActionType::kGrant && a.grant.session == s;
  });
}
bool has_event(const Output& out, EventType type, const LeaseModel& l) {
  return std::any_of(out.events.begin(), out.events.end(), [&](const Event& e) {
    return e.type == type && (e.lease == l.id || e.session == l.session);
  });
}

// Takes in what an input produced: leases that ended on their own, then the
// actions in order, as a shell would perform them.
void Sim::absorb(int ci, const Output& out, const Effects& fx) {
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  for (std::size_t i = 0; i < m.leases.size();) {
    const LeaseModel l = m.leases[i];
    if (m.core->lease_of(l.session) == l.id) {
      ++i;
      continue;
    }
    ErrorCode code;
    if (fx.exited == l.session) {
      code = ErrorCode::kSessionLost;
      if (!has_event(out, EventType::kLeaseLost, l)) {
        fail("lease_lost_event",
             cat(lname(m, l.id), " was lost with ", sid(l.session), " but no kLeaseLost event"));
      }
    } else if (t >= l.expires || (m.shutdown && t >= m.leases_until)) {
      code = m.shutdown && t >= m.leases_until ? ErrorCode::kShutdown : ErrorCode::kLeaseReclaimed;
      ++m.reclaimed;
      if (!has_stop(out, l.session)) {
        fail("reclaimed_session_not_stopped",
             cat(lname(m, l.id), " was reclaimed but ", sid(l.session), " was not stopped"));
      }
      if (!has_event(out, EventType::kLeaseReclaimed, l)) {
        fail("reclaim_event",
             cat(lname(m, l.id), " was reclaimed without a kLeaseReclaimed event"));
      }
      for (const Event& e : out.events) {
        if (e.type == EventType::kLeaseReclaimed && e.lease == l.id && e.detail != l.owner) {
          soft_fail("reclaim_event_owner", cat("kLeaseReclaimed for ", lname(m, l.id), " names '",
                                               e.detail, "', owner '", l.owner, "'"));
        }
      }
    } else {
      fail("lease_vanished",
           cat(lname(m, l.id), " on ", sid(l.session), " (owner '", l.owner, "', expires ",
               at(l.expires),
               ") ended without release, timeout or exit; lease_of=", m.core->lease_of(l.session)));
    }
    note(" | ", code == ErrorCode::kSessionLost ? "lost " : "reclaimed ", lname(m, l.id));
    seen(code == ErrorCode::kSessionLost ? "lease lost with its session"
         : code == ErrorCode::kShutdown  ? "lease reclaimed at shutdown"
                                         : "lease reclaimed");
    if (auto it = m.sessions.find(l.session); it != m.sessions.end()) it->second.lease = 0;
    m.ended.emplace_back(l.id, code);
    drop_client_lease(m, l);
    m.leases.erase(m.leases.begin() + static_cast<std::ptrdiff_t>(i));
  }

  // A queued waiter's grant, and whether it may have passed waiters ahead of it.
  struct Served {
    WaiterModel w;
    SessionId session = 0;
    bool overtook = false;  // handoff_after: granted on retry ahead of a fresh front it matches
  };
  std::vector<Served> granted;
  int grants = fx.immediate_grants;
  SessionId overflow_start = 0;  // a session started beyond max by this input
  for (const Action& a : out.actions) {
    switch (a.type) {
      case ActionType::kStartSession: {
        if (m.draining || m.shutdown) {
          fail("start_while_draining",
               cat("started ", sid(a.session), " while ", m.shutdown ? "shut down" : "draining"));
        }
        if (!m.ever_sessions.insert(a.session).second) {
          fail("session_id_reused",
               cat("kStartSession for ", sid(a.session), ", an id used before"));
        }
        m.sessions.emplace(a.session, SessionModel{});
        note(" | start ", sid(a.session));
        seen("action start");
        if (static_cast<int>(m.sessions.size()) > m.cfg.max) overflow_start = a.session;
        if (static_cast<int>(m.sessions.size()) > m.cfg.max && m.waiters.empty()) {
          const auto list = m.core->reservations();
          const bool waiting = std::any_of(list.begin(), list.end(),
                                           [](const ReservationInfo& r) { return r.session == 0; });
          if (!waiting) {
            soft_fail("overflow_without_demand", cat("started ", sid(a.session), " beyond max ",
                                                     m.cfg.max, " with nobody waiting"));
          }
        }
        break;
      }
      case ActionType::kStopSession: {
        auto it = m.sessions.find(a.session);
        if (it == m.sessions.end())
          fail("stop_unknown_session",
               cat("kStopSession for ", sid(a.session), ", which is not held"));
        if (it->second.stop_pending)
          fail("stopped_twice", cat("kStopSession twice for ", sid(a.session)));
        if (it->second.lease != 0) {
          fail("stop_leased_session",
               cat("kStopSession(", reason_name(a.reason), ") for ", sid(a.session), " while ",
                   lname(m, it->second.lease), " holds it"));
        }
        check_stop_reason(m, a.session, it->second, a.reason);
        it->second.stop_pending = true;
        note(" | stop ", sid(a.session), "(", reason_name(a.reason), ")");
        seen("action stop " + reason_name(a.reason));
        break;
      }
      case ActionType::kCheckSession: {
        auto it = m.sessions.find(a.session);
        if (it == m.sessions.end())
          fail("check_unknown_session",
               cat("kCheckSession for ", sid(a.session), ", which is not held"));
        const SessionModel& s = it->second;
        if (s.start_pending || s.stop_pending || s.check_pending || s.lease != 0) {
          fail("check_bad_state",
               cat("kCheckSession for ", sid(a.session), " start_pending=", s.start_pending,
                   " stop_pending=", s.stop_pending, " check_pending=", s.check_pending,
                   " lease=", s.lease != 0 ? lname(m, s.lease) : "-"));
        }
        it->second.check_pending = true;
        note(" | check ", sid(a.session));
        seen("action check");
        break;
      }
      case ActionType::kGrant: {
        // The front as the core saw it when it granted (earlier actions applied).
        const WaiterModel* front = front_of(m, fx.fresh);
        bool overtook = false;
        if (front != nullptr && front->id != a.waiter) {
          auto it = std::find_if(m.waiters.begin(), m.waiters.end(),
                                 [&](const WaiterModel& x) { return x.id == a.waiter; });
          overtook = it != m.waiters.end() && m.cfg.handoff_after.count() > 0 &&
                     may_overtake(m, front, it->priority);
        }
        const bool was_woken = a.waiter == m.woken && wake_outstanding(m);
        WaiterModel w = take_waiter(m, a.waiter, "kGrant");
        take_grant(m, a.grant, w.owner, w.client, w.lease_timeout, false);
        note(" | grant ", wname(m, w.id), " ", lname(m, a.grant.lease), " ", sid(a.grant.session));
        if (m.cfg.handoff_after.count() > 0) {
          if (was_woken) {
            m.woken = 0;
            seen(current_ == OpKind::kTickOne ? "handoff: woken waiter granted by tick, no retry"
                                              : "handoff: woken waiter granted, no retry");
          }
          if (t - w.queued >= m.cfg.handoff_after) seen("handoff: owed waiter granted");
        }
        granted.push_back({std::move(w), a.grant.session, overtook});
        ++grants;
        seen("action grant");
        break;
      }
      case ActionType::kWake: {
        if (m.cfg.handoff_after.count() == 0) {
          fail("unexpected_wake", cat("kWake for ", wname(m, a.waiter), " with strict handoff"));
        }
        auto it = std::find_if(m.waiters.begin(), m.waiters.end(),
                               [&](const WaiterModel& x) { return x.id == a.waiter; });
        if (it == m.waiters.end()) {
          soft_fail("wake_unqueued_waiter",
                    cat("kWake for ", wname(m, a.waiter),
                        m.answered.count(a.waiter) != 0 ? ", which was already answered"
                                                        : ", which was never queued"));
          note(" | wake ", wname(m, a.waiter), " (not queued)");
          break;
        }
        if (wake_outstanding(m)) {
          soft_fail(m.woken == a.waiter ? "wake_repeated" : "two_wakes",
                    cat("kWake for ", wname(m, a.waiter), " while the wake of ",
                        wname(m, m.woken), " is outstanding (it has not retried)"));
        }
        const WaiterModel* front = front_of(m, fx.fresh);
        if (front != nullptr && front->id != a.waiter) {
          soft_fail("wake_not_front", cat("kWake for ", wname(m, a.waiter), " (priority ",
                                          it->priority, "), but ", wname(m, front->id),
                                          " (priority ", front->priority, ") is first"));
        }
        if (t - it->queued >= m.cfg.handoff_after) {
          soft_fail("wake_instead_of_grant",
                    cat(wname(m, a.waiter), " has waited ", ms(t - it->queued), " (handoff_after ",
                        ms(m.cfg.handoff_after), ") and was woken instead of granted"));
        }
        m.woken = a.waiter;
        note(" | wake ", wname(m, a.waiter));
        seen("action wake");
        break;
      }
      case ActionType::kReject: {
        WaiterModel w = take_waiter(m, a.waiter, "kReject");
        bool fits = false;
        switch (a.error.code) {
          case ErrorCode::kAcquireTimeout:
            fits = w.deadline <= t;
            break;
          case ErrorCode::kPoolPaused:
            fits = m.paused;
            break;
          case ErrorCode::kPoolDraining:
            fits = m.draining;
            break;
          case ErrorCode::kShutdown:
            fits = m.shutdown;
            break;
          case ErrorCode::kEmergencyStop:
            fits = m.emergency && w.priority < kCriticalPriority;
            break;
          default:
            break;
        }
        if (!fits) {
          fail("reject_reason",
               cat(wname(m, w.id), " (priority ", w.priority, ", deadline ", at(w.deadline),
                   ") rejected with ", code_name(a.error.code), ": ", a.error.message));
        }
        if (a.error.code == ErrorCode::kAcquireTimeout) {
          ++m.queued_timeouts;
          if (m.consecutive_start_failures > 0 &&
              a.error.message.find("simulated") == std::string::npos) {
            soft_fail(
                "timeout_message",
                cat(wname(m, w.id), " timed out after start failures, but the error does not say: ",
                    a.error.message));
          }
        }
        if (a.error.code != ErrorCode::kAcquireTimeout) ++m.rejections;
        note(" | reject ", wname(m, w.id), " ", code_name(a.error.code));
        seen("action reject " + code_name(a.error.code));
        break;
      }
    }
  }

  // Overflow is started for demand only: waiters (and reservations waiting for
  // a session) not covered by a session on its way or an idle one. With
  // handoff_after an idle session held for a woken waiter covers it.
  if (overflow_start != 0 && !m.waiters.empty()) {
    int idle = 0, coming = 0;
    for (const SessionInfo& si : m.core->sessions(t)) {
      idle += si.state == SessionState::kIdle && !si.reserved ? 1 : 0;
      coming += si.state == SessionState::kStarting || si.state == SessionState::kChecking ? 1 : 0;
    }
    int demand = static_cast<int>(m.waiters.size());
    for (const ReservationInfo& ri : m.core->reservations()) demand += ri.session == 0 ? 1 : 0;
    if (idle > 0 && idle + coming > demand) {
      soft_fail("overflow_start_while_idle",
                cat("started ", sid(overflow_start), " beyond max ", m.cfg.max, " for ", demand,
                    " waiting while ", idle, " unreserved sessions are idle and ", coming,
                    " on their way"));
    }
  }

  // A warm session is not closed only to start another one at once.
  bool closed_warm = false, started = false;
  for (const Action& a : out.actions) {
    started |= a.type == ActionType::kStartSession;
    closed_warm |= a.type == ActionType::kStopSession &&
                   (a.reason == StopReason::kIdleTimeout || a.reason == StopReason::kScaledDown);
  }
  if (closed_warm && started)
    soft_fail("churn", "one input closed an idle session and started a new one");
  for (const auto& [w, session, overtook] : granted) {
    auto info = m.core->session(session, t);
    if (info.has_value() && info->health < m.cfg.health_check_below) {
      soft_fail("granted_unhealthy", cat(sid(session), " with health ", info->health,
                                         " was granted to ", wname(m, w.id)));
    }
  }

  // Service order: a waiter served from the queue has nobody ahead of it left
  // waiting (reserved sessions go to their owner's waiters instead). With
  // handoff_after, a waiter that retries may pass the front (and those behind
  // it) like a new acquire: only while the front has waited less than
  // handoff_after and does not outrank it.
  for (const auto& [w, session, overtook] : granted) {
    auto info = m.core->session(session, t);
    if (info.has_value() && info->reserved) continue;
    if (overtook) {
      seen("handoff: retry passed a fresh front");
      continue;
    }
    for (const WaiterModel& v : m.waiters) {
      if (v.id != fx.fresh && v.deadline > t && served_before(v, w)) {
        soft_fail("priority_order",
                  cat(wname(m, w.id), " (priority ", w.priority, ") was served before ",
                      wname(m, v.id), " (priority ", v.priority, "), which is ahead of it"));
      }
    }
  }

  int grant_events = 0, release_events = 0;
  for (const Event& e : out.events) {
    if (e.type == EventType::kLeaseGranted) ++grant_events;
    if (e.type == EventType::kLeaseReleased) ++release_events;
  }
  if (!m.cfg.lease_events && (grant_events > 0 || release_events > 0)) {
    fail("lease_events_off", "lease events emitted with lease_events off");
  }
  if (m.cfg.lease_events && (grant_events != grants || release_events != fx.releases)) {
    fail("lease_events_count",
         cat(grant_events, " kLeaseGranted for ", grants, " grants, ", release_events,
             " kLeaseReleased for ", fx.releases, " releases"));
  }
}

// ----------------------------------------------------------------------------
// operations

void Sim::step(const Op& op) {
  const int ci = op.core % ncores();
  CoreModel& m = cores_[ci];
  switch (op.kind) {
    case OpKind::kAcquire:
      do_acquire(ci, op);
      break;
    case OpKind::kRelease:
      if (m.leases.empty()) {
        begin(cat("core", ci, " release: none"));
        break;
      } else {
        const std::size_t index = op.p[0] % m.leases.size();
        const bool with_owner = op.p[2] % 10 < 7;
        const auto o = op.p[1] % 10;
        const ReleaseOutcome outcome = o < 7   ? ReleaseOutcome::kOk
                                       : o < 9 ? ReleaseOutcome::kError
                                               : ReleaseOutcome::kBroken;
        const std::string owner = m.leases[index].owner;
        release_lease(ci, index, with_owner ? std::optional<std::string_view>(owner) : std::nullopt,
                      outcome);
      }
      break;
    case OpKind::kReleaseWrongOwner:
      do_release_wrong_owner(ci, op);
      break;
    case OpKind::kReleaseAgain:
      do_release_again(ci, op);
      break;
    case OpKind::kReleaseEnded:
      do_release_ended(ci, op);
      break;
    case OpKind::kReleaseUnknown:
      do_release_unknown(ci, op);
      break;
    case OpKind::kCancel:
      do_cancel(ci, op);
      break;
    case OpKind::kCancelUnknown:
      do_cancel_unknown(ci, op);
      break;
    case OpKind::kCompleteStart:
      do_complete_start(ci, op.p[0], static_cast<int>(op.p[1] % 100) >= m.start_fail_percent);
      break;
    case OpKind::kCompleteStop:
      do_complete_stop(ci, op.p[0]);
      break;
    case OpKind::kCompleteCheck:
      do_complete_check(ci, op.p[0], static_cast<int>(op.p[1] % 100) >= m.check_fail_percent);
      break;
    case OpKind::kSessionExited:
      do_exited(ci, op);
      break;
    case OpKind::kRecycle:
      do_recycle(ci, op);
      break;
    case OpKind::kUsage:
      do_usage(ci, op);
      break;
    case OpKind::kStaleResult:
      do_stale(ci, op);
      break;
    case OpKind::kAdvanceAndTick: {
      const std::uint64_t sel = op.p[0] % 100;
      const std::uint64_t r = op.p[1];
      const Duration d = sel < 30   ? span(r, 0ms, 20ms)
                         : sel < 65 ? span(r, 20ms, 500ms)
                         : sel < 90 ? span(r, 500ms, 5s)
                         : sel < 98 ? span(r, 5s, 60s)
                                    : span(r, 60s, 40min);
      clock_.advance(d);
      for (int i = 0; i < ncores(); ++i) do_tick(i);
      break;
    }
    case OpKind::kTickOne:
      clock_.advance(op.p[0] % 3 == 0 ? Duration{0} : span(op.p[1], 0ms, 20ms));
      do_tick(ci);
      break;
    case OpKind::kAdvance: {
      const Duration d = op.p[0] % 4 == 0 ? span(op.p[1], 500ms, 10s) : span(op.p[1], 0ms, 200ms);
      begin(cat("advance ", ms(d)));
      clock_.advance(d);
      break;
    }
    case OpKind::kReconfigure:
      do_reconfigure(ci, op);
      break;
    case OpKind::kScale:
      do_scale(ci, op);
      break;
    case OpKind::kPause:
    case OpKind::kResume:
    case OpKind::kDrain:
    case OpKind::kEmergencyStop:
    case OpKind::kEmergencyResume:
    case OpKind::kShutdown:
      do_control(ci, op.kind);
      break;
    case OpKind::kReserve:
      do_reserve(ci, op);
      break;
    case OpKind::kCancelReservation:
      do_cancel_reservation(ci, op);
      break;
    case OpKind::kPutClientSession:
      do_put_client(ci, op);
      break;
    case OpKind::kDeleteClientSession:
      do_delete_client(ci, op);
      break;
    case OpKind::kRetryWoken:
    case OpKind::kRetryOther:
      do_retry(ci, op, op.kind == OpKind::kRetryWoken);
      break;
    case OpKind::kCount:
      break;
  }
  if (op.kind != OpKind::kAdvanceAndTick && op.kind != OpKind::kTickOne) {
    check_core(ci, false);
    check_cap();
  }
  if (show_sessions_) {
    note(" {");
    for (const SessionInfo& si : m.core->sessions(now())) {
      note(" ", sid(si.id), ":", state_name(si.state),
           si.state == SessionState::kIdle ? cat("/", ms(si.idle)) : "",
           si.reserved ? cat("/R:", si.reserved_for) : "");
    }
    note(" }");
  }
  end();
}

void Sim::do_acquire(int ci, const Op& op) {
  current_ = OpKind::kAcquire;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  int priority = static_cast<int>(op.p[0] % 10);
  const bool invalid = (op.p[0] >> 8) % 128 == 0;
  if (invalid) priority = (op.p[0] >> 16) % 2 == 0 ? kCriticalPriority + 1 : kLowestPriority - 1;
  const std::uint64_t sel = op.p[1] % 100;
  const std::uint64_t r = op.p[1] >> 8;
  const TimePoint deadline = sel < 8    ? t - span(r, 1ms, 1s)
                             : sel < 12 ? t
                             : sel < 50 ? t + span(r, 1ms, 200ms)
                             : sel < 80 ? t + span(r, 200ms, 10s)
                             : sel < 94 ? t + span(r, 10s, 120s)
                                        : TimePoint::max();
  const std::string client(kClients[op.p[2] % kClients.size()]);
  const std::string owner(kOwners[(op.p[2] >> 8) % kOwners.size()]);
  const Duration lease_timeout = op.p[3] % 5 == 0 ? span(op.p[3] >> 8, 50ms, 10s) : Duration{0};
  begin(cat("core", ci, " acquire prio=", priority,
            " deadline=", deadline == TimePoint::max() ? "never" : ms(deadline - t), " client='",
            client, "' owner='", owner, "' lease_timeout=", ms(lease_timeout)));

  // What the core shows before: may this acquire take an idle session at once?
  const std::vector<SessionInfo> before = m.core->sessions(t);
  bool owner_reserved = false;
  for (const ReservationInfo& ri : m.core->reservations()) owner_reserved |= ri.owner == owner;
  bool idle_for_me = false;
  for (const SessionInfo& si : before) {
    if (ready(m, si) && (!si.reserved || si.reserved_for == owner)) idle_for_me = true;
  }
  SessionId affinity = 0;
  if (!client.empty()) {
    if (auto c = m.core->get_client_session(client, t)) affinity = c->last_session;
  }

  Output out;
  const AcquireRequest request{.priority = priority,
                               .deadline = deadline,
                               .client_session = client,
                               .owner = owner,
                               .lease_timeout = lease_timeout};
  auto result = m.core->acquire(request, t, out);
  Effects fx;
  const std::vector<ErrorCode> refused = refusals(m, priority);
  // With handoff_after the core first hands free sessions to a front that has
  // waited that long (kGrant actions in `out`); then this acquire may take an
  // idle session only past a fresh front that does not outrank it.
  std::vector<WaiterId> served;
  std::set<SessionId> taken;
  for (const Action& a : out.actions) {
    if (a.type != ActionType::kGrant) continue;
    served.push_back(a.waiter);
    taken.insert(a.grant.session);
  }
  const bool handoff = m.cfg.handoff_after.count() > 0;
  const WaiterModel* front = front_of(m, 0, &served);
  // Waiting when the acquire was decided (those it dispatched to are gone).
  const int waiting = static_cast<int>(m.waiters.size() - served.size());
  const bool may_pass = may_overtake(m, front, priority);
  if (!taken.empty()) {
    idle_for_me = false;
    for (const SessionInfo& si : before) {
      if (ready(m, si) && (!si.reserved || si.reserved_for == owner) && taken.count(si.id) == 0)
        idle_for_me = true;
    }
  }
  // An idle session this acquire may not take: the front keeps it (woken to retry).
  const bool held_for_front = handoff && !may_pass;
  // Unless refused up front or served from its owner's reservation, the acquire
  // ran the core's dispatch first (the fast path runs only when nothing is owed).
  bool got_reserved = false;
  if (result.has_value() && result->granted) {
    for (const SessionInfo& si : before) got_reserved |= si.id == result->grant.session && si.reserved;
  }
  if (!invalid && refused.empty() && !got_reserved) mark_dispatched(false);
  if (invalid || !refused.empty()) {
    if (result.has_value()) {
      fail(
          "acquire_not_refused",
          cat("acquire was ", result->granted ? "granted" : "queued", " though ",
              invalid ? "its priority is invalid" : "the pool refuses it", " (paused=", m.paused,
              " draining=", m.draining, " shutdown=", m.shutdown, " emergency=", m.emergency, ")"));
    }
    const ErrorCode code = result.error().code;
    const bool fits = std::find(refused.begin(), refused.end(), code) != refused.end() ||
                      (invalid && code == ErrorCode::kInvalidArgument);
    if (!fits)
      fail("acquire_refusal_code",
           cat("acquire refused with ", code_name(code), ": ", result.error().message));
    if (code != ErrorCode::kInvalidArgument) ++m.rejections;
    note(" -> ", code_name(code));
    seen("acquire refused " + code_name(code));
  } else if (!result.has_value()) {
    const ErrorCode code = result.error().code;
    const bool fits =
        (code == ErrorCode::kQueueFull && waiting >= m.cfg.max_queue) ||
        (code == ErrorCode::kAcquireTimeout && deadline <= t) ||
        (code == ErrorCode::kDeadlineUnreachable && m.cfg.early_reject &&
         deadline != TimePoint::max());
    if (!fits) {
      fail("acquire_refused",
           cat("acquire refused with ", code_name(code), ": ", result.error().message, " (queue ",
               waiting, "/", m.cfg.max_queue, ")"));
    }
    if (idle_for_me && !held_for_front)
      fail("refused_despite_idle",
           cat("acquire refused with ", code_name(code), " while a session was idle"));
    if (idle_for_me) seen("handoff: acquire refused, idle session held for the front");
    if (code == ErrorCode::kAcquireTimeout) ++m.immediate_timeouts;
    if (code != ErrorCode::kAcquireTimeout) ++m.rejections;
    if (code == ErrorCode::kDeadlineUnreachable && result.error().retry_after.count() <= 0) {
      soft_fail("retry_after", "deadline_unreachable without a retry_after");
    }
    note(" -> ", code_name(code));
    seen("acquire refused " + code_name(code));
  } else if (result->granted) {
    const Grant& g = result->grant;
    auto was = std::find_if(before.begin(), before.end(),
                            [&](const SessionInfo& si) { return si.id == g.session; });
    if (was == before.end() || was->state != SessionState::kIdle) {
      fail("granted_session_not_idle",
           cat("acquire got ", sid(g.session), ", which was ",
               was == before.end() ? "unknown" : state_name(was->state)));
    }
    if (was->reserved && was->reserved_for != owner) {
      fail("reserved_for_other_owner", cat("owner '", owner, "' got ", sid(g.session),
                                           ", reserved for '", was->reserved_for, "'"));
    }
    if (m.cfg.validate_after_idle.count() > 0 && was->idle > m.cfg.validate_after_idle) {
      soft_fail("granted_without_validation",
                cat(sid(g.session), " idle for ", ms(was->idle),
                    " was handed out without a check (validate_after_idle ",
                    ms(m.cfg.validate_after_idle), ")"));
    }
    if (!was->reserved && front != nullptr) {
      // Overtaking: only past a front that waited less than handoff_after and
      // does not outrank this acquire.
      if (!handoff) {
        soft_fail("granted_past_queue", cat("acquire got ", sid(g.session), " while ",
                                            wname(m, front->id), " waits (strict handoff)"));
      } else if (priority < front->priority) {
        soft_fail("overtook_higher_priority",
                  cat("acquire of priority ", priority, " got ", sid(g.session), " ahead of ",
                      wname(m, front->id), " (priority ", front->priority, ", waited ",
                      ms(t - front->queued), ")"));
      } else if (!fresh(m, *front)) {
        soft_fail("overtook_owed_waiter",
                  cat("acquire got ", sid(g.session), " ahead of ", wname(m, front->id),
                      ", which has waited ", ms(t - front->queued), " (handoff_after ",
                      ms(m.cfg.handoff_after), ")"));
      } else {
        seen("handoff: acquire overtook a fresh waiter");
      }
    }
    if (affinity != 0 && affinity != g.session && !owner_reserved && taken.count(affinity) == 0) {
      auto a = std::find_if(before.begin(), before.end(),
                            [&](const SessionInfo& si) { return si.id == affinity; });
      if (a != before.end() && ready(m, *a) && !a->reserved) {
        fail("affinity_ignored", cat("client session '", client, "' got ", sid(g.session),
                                     " though its last session ", sid(affinity), " was idle"));
      }
    }
    if (was->health < m.cfg.health_check_below) {
      soft_fail("granted_unhealthy",
                cat(sid(g.session), " with health ", was->health, " was handed out"));
    }
    take_grant(m, g, owner, client, lease_timeout, true);
    fx.immediate_grants = 1;
    note(" -> granted ", lname(m, g.lease), " ", sid(g.session));
    seen(was->reserved           ? "acquire granted reserved"
         : affinity == g.session ? "acquire granted affinity"
                                 : "acquire granted");
  } else {
    if (deadline < t)
      fail("queued_past_deadline", "an acquire whose deadline had passed was queued");
    if (waiting >= m.cfg.max_queue) {
      fail("queue_above_max",
           cat("queued with ", waiting, " waiting, max_queue ", m.cfg.max_queue));
    }
    if (idle_for_me && !held_for_front)
      fail("queued_despite_idle", "an acquire was queued while a session was idle");
    if (idle_for_me) seen("handoff: acquire queued, idle session held for the front");
    if (result->waiter == 0 || m.waiter_no.count(result->waiter) != 0) {
      fail("waiter_id_reused", cat("waiter id ", result->waiter, " was used before"));
    }
    if (result->queue_position < 1 ||
        result->queue_position > waiting + 1) {
      fail("queue_position",
           cat("queue position ", result->queue_position, " with ", waiting, " waiting"));
    }
    WaiterModel w;
    w.id = result->waiter;
    w.priority = priority;
    w.deadline = deadline;
    w.key = m.cfg.aging.count() > 0 ? t.time_since_epoch().count() - priority * m.cfg.aging.count()
                                    : -priority;
    w.seq = m.next_seq++;
    w.owner = owner;
    w.client = client;
    w.lease_timeout = lease_timeout;
    w.queued = t;
    fx.fresh = w.id;
    m.waiters.push_back(w);
    m.waiter_no.emplace(w.id, m.waiter_no.size() + 1);
    note(" -> queued ", wname(m, w.id), " at ", result->queue_position);
    seen("acquire queued");
  }
  absorb(ci, out, fx);
}

void Sim::release_lease(int ci, std::size_t index, std::optional<std::string_view> owner,
                        ReleaseOutcome outcome) {
  current_ = OpKind::kRelease;
  current_outcome_ = outcome;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const LeaseModel l = m.leases[index];
  constexpr std::array<std::string_view, 3> kOutcomes = {"ok", "error", "broken"};
  begin(cat("core", ci, " release ", lname(m, l.id), " ", sid(l.session), " ",
            kOutcomes[static_cast<int>(outcome)],
            " owner=", owner.has_value() ? cat("'", *owner, "'") : std::string("none")));
  const std::optional<SessionInfo> pre = m.core->session(l.session, t);
  int live_before = 0;
  for (const SessionInfo& si : m.core->sessions(t))
    live_before += si.state != SessionState::kClosing ? 1 : 0;
  bool nobody_waits = m.waiters.empty();  // no waiter, and no reservation waiting for a session
  for (const ReservationInfo& ri : m.core->reservations()) nobody_waits &= ri.session != 0;
  Output out;
  auto result = m.core->release(l.id, owner, outcome, t, out);
  Effects fx;
  if (result.has_value()) {
    m.leases.erase(m.leases.begin() + static_cast<std::ptrdiff_t>(index));
    if (auto it = m.sessions.find(l.session); it != m.sessions.end()) {
      it->second.lease = 0;
      it->second.last_active = t;
    }
    m.released.emplace_back(l.id, l.owner);
    if (m.released.size() > 64) m.released.pop_front();
    drop_client_lease(m, l);
    ++m.releases;
    if (outcome == ReleaseOutcome::kBroken) ++m.broken;
    fx.releases = 1;
    note(" -> ok");
  } else if (result.error().code == ErrorCode::kLeaseReclaimed && t >= l.expires) {
    note(" -> lease_reclaimed (expired)");
  } else if (result.error().code == ErrorCode::kShutdown && m.shutdown && t >= m.leases_until) {
    note(" -> shutdown (past the grace)");
  } else {
    fail("release_failed", cat("releasing held ", lname(m, l.id), " failed: ",
                               code_name(result.error().code), ": ", result.error().message));
  }
  absorb(ci, out, fx);
  if (result.has_value()) {
    if (m.core->lease_of(l.session) == l.id)
      fail("leased_after_release", cat(lname(m, l.id), " still holds ", sid(l.session)));
    auto it = m.sessions.find(l.session);
    if (outcome == ReleaseOutcome::kBroken && it != m.sessions.end() && !it->second.stop_pending) {
      fail("broken_not_stopped", cat(sid(l.session), " was released broken but not stopped"));
    }
    const std::optional<SessionInfo> post = m.core->session(l.session, t);
    const bool closing = !post.has_value() || post->state == SessionState::kClosing;
    // Back in general use (idle, or granted to the queue at once): the core dispatched.
    if (post.has_value() && !post->reserved &&
        (post->state == SessionState::kIdle || post->state == SessionState::kLeased)) {
      mark_dispatched(true);
    }
    if (pre.has_value() && post.has_value() && outcome != ReleaseOutcome::kBroken) {
      const int expected = outcome == ReleaseOutcome::kOk
                               ? std::min(100, pre->health + m.cfg.health_success_recovery)
                               : std::max(0, pre->health - m.cfg.health_error_penalty);
      if (post->health != expected) {
        fail("health_arithmetic", cat(sid(l.session), " health ", pre->health, " -> ", post->health,
                                      " on release, expected ", expected));
      }
    }
    seen(cat("release ", closing                                ? "closed"
                         : post->state == SessionState::kLeased ? "regranted"
                                                                : state_name(post->state)));
    if (!closing && live_before > m.cfg.max && nobody_waits && pre.has_value() && !pre->reserved &&
        !post->reserved) {
      soft_fail("overflow_not_closed",
                cat(sid(l.session), " released with ", live_before, " live over max ", m.cfg.max,
                    " and nobody waiting, but it is ", state_name(post->state)));
    }
    if (!closing && m.cfg.max_lifetime.count() > 0 && it != m.sessions.end() &&
        t - it->second.started > m.cfg.max_lifetime) {
      soft_fail("lifetime_on_release",
                cat(sid(l.session), " released ", ms(t - it->second.started),
                    " after it started (max_lifetime ", ms(m.cfg.max_lifetime), ") is ",
                    state_name(post->state)));
    }
    if (!closing && pre.has_value() && pre->reserved && !post->reserved) {
      const auto list = m.core->reservations();
      const bool live = std::any_of(list.begin(), list.end(), [&](const ReservationInfo& r) {
        return r.owner == pre->reserved_for;
      });
      if (live)
        soft_fail("reservation_lost_session", cat(sid(l.session), " left its reservation for '",
                                                  pre->reserved_for, "' on release"));
    }
  }
}

void Sim::do_release_wrong_owner(int ci, const Op& op) {
  current_ = OpKind::kReleaseWrongOwner;
  CoreModel& m = cores_[ci];
  if (m.leases.empty()) return begin(cat("core", ci, " release wrong owner: none"));
  const LeaseModel l = m.leases[op.p[0] % m.leases.size()];
  constexpr std::array<std::string_view, 5> kAll = {"", "alice", "bob", "carol", "mallory"};
  std::vector<std::string_view> others;
  for (auto o : kAll) {
    if (o != l.owner) others.push_back(o);
  }
  const std::string_view wrong = others[op.p[1] % others.size()];
  const TimePoint t = now();
  begin(cat("core", ci, " release ", lname(m, l.id), " as '", wrong, "' (owner '", l.owner, "')"));
  Output out;
  auto result = m.core->release(l.id, wrong, ReleaseOutcome::kOk, t, out);
  if (result.has_value())
    fail("wrong_owner_released",
         cat("'", wrong, "' released ", lname(m, l.id), " of '", l.owner, "'"));
  const ErrorCode code = result.error().code;
  if (code != ErrorCode::kNotLeaseOwner &&
      !(code == ErrorCode::kLeaseReclaimed && t >= l.expires) &&
      !(code == ErrorCode::kShutdown && m.shutdown && t >= m.leases_until)) {
    fail("wrong_owner_code",
         cat("release by the wrong owner gave ", code_name(code), ", expected not_lease_owner"));
  }
  note(" -> ", code_name(code));
  absorb(ci, out, {});
  if (code == ErrorCode::kNotLeaseOwner && m.core->lease_of(l.session) != l.id) {
    fail("wrong_owner_ended_lease", cat("a refused release ended ", lname(m, l.id)));
  }
}

void Sim::do_release_again(int ci, const Op& op) {
  current_ = OpKind::kReleaseAgain;
  CoreModel& m = cores_[ci];
  if (m.released.empty()) return begin(cat("core", ci, " release again: none"));
  const auto& [id, owner] = m.released[op.p[0] % m.released.size()];
  const bool with_owner = op.p[1] % 2 == 0;
  begin(cat("core", ci, " release ", lname(m, id),
            " again, owner=", with_owner ? cat("'", owner, "'") : std::string("none")));
  Output out;
  auto result =
      m.core->release(id, with_owner ? std::optional<std::string_view>(owner) : std::nullopt,
                      ReleaseOutcome::kOk, now(), out);
  if (result.has_value() || result.error().code != ErrorCode::kLeaseAlreadyReleased) {
    fail("release_twice_code", cat("second release of ", lname(m, id), " gave ",
                                   result.has_value() ? "ok" : code_name(result.error().code),
                                   ", expected lease_already_released"));
  }
  note(" -> ", code_name(result.error().code));
  absorb(ci, out, {});
}

void Sim::do_release_ended(int ci, const Op& op) {
  current_ = OpKind::kReleaseEnded;
  CoreModel& m = cores_[ci];
  if (m.ended.empty()) return begin(cat("core", ci, " release ended: none"));
  const std::size_t index =
      m.ended.size() - 1 -
      static_cast<std::size_t>(op.p[0] % std::min<std::size_t>(m.ended.size(), 512));
  const auto [id, expected] = m.ended[index];
  const std::size_t newer = m.ended.size() - 1 - index;
  begin(cat("core", ci, " release ended ", lname(m, id), " (", code_name(expected), ")"));
  Output out;
  auto result = m.core->release(id, std::nullopt, ReleaseOutcome::kOk, now(), out);
  const bool fits =
      !result.has_value() &&
      (result.error().code == expected ||
       (newer >= kEndedRemembered && result.error().code == ErrorCode::kLeaseAlreadyReleased));
  if (!fits) {
    fail("release_ended_code", cat("release of ", lname(m, id), " gave ",
                                   result.has_value() ? "ok" : code_name(result.error().code),
                                   ", expected ", code_name(expected)));
  }
  note(" -> ", code_name(result.error().code));
  absorb(ci, out, {});
}

void Sim::do_release_unknown(int ci, const Op& op) {
  current_ = OpKind::kReleaseUnknown;
  CoreModel& m = cores_[ci];
  LeaseId id = op.p[0];
  std::string from = "random";
  if (ncores() > 1 && op.p[1] % 2 == 0) {
    const CoreModel& other = cores_[(ci + 1 + op.p[2] % (ncores() - 1)) % ncores()];
    if (!other.all_leases.empty()) {
      id = other.all_leases[op.p[3] % other.all_leases.size()];
      from = "another core's";
    }
  }
  if (id == 0 || m.lease_no.count(id) != 0)
    return begin(cat("core", ci, " release unknown: skipped"));
  begin(cat("core", ci, " release ", from, " lease id ", id));
  Output out;
  auto result = m.core->release(id, std::nullopt, ReleaseOutcome::kOk, now(), out);
  if (result.has_value() || result.error().code != ErrorCode::kUnknownLease) {
    fail("release_unknown_code", cat("release of never-issued lease ", id, " gave ",
                                     result.has_value() ? "ok" : code_name(result.error().code),
                                     ", expected unknown_lease"));
  }
  note(" -> ", code_name(result.error().code));
  absorb(ci, out, {});
}

void Sim::do_cancel(int ci, const Op& op) {
  current_ = OpKind::kCancel;
  CoreModel& m = cores_[ci];
  if (m.waiters.empty()) return begin(cat("core", ci, " cancel: none"));
  const WaiterModel w = m.waiters[op.p[0] % m.waiters.size()];
  begin(cat("core", ci, " cancel ", wname(m, w.id)));
  Output out;
  auto result = m.core->cancel(w.id, now(), out);
  if (!result.has_value())
    fail("cancel_failed",
         cat("cancel of queued ", wname(m, w.id), " gave ", code_name(result.error().code)));
  take_waiter(m, w.id, "cancel");
  ++m.cancels;
  // A cancel answers nobody; it may only close an idle session it no longer
  // needs above max or a scale-down target (one held for it with handoff_after).
  for (const Action& a : out.actions) {
    if (a.type != ActionType::kStopSession ||
        (a.reason != StopReason::kOverflow && a.reason != StopReason::kScaledDown)) {
      soft_fail("cancel_emitted_actions",
                cat("cancel of ", wname(m, w.id), " emitted an action other than a trim"));
    }
  }
  note(" -> ok");
  absorb(ci, out, {});
}

void Sim::do_cancel_unknown(int ci, const Op& op) {
  current_ = OpKind::kCancelUnknown;
  CoreModel& m = cores_[ci];
  WaiterId id = op.p[1];
  if (op.p[0] % 2 == 0 && !m.answered_recent.empty())
    id = m.answered_recent[op.p[2] % m.answered_recent.size()];
  if (m.waiter_no.count(id) != 0 && m.answered.count(id) == 0)
    return begin(cat("core", ci, " cancel unknown: skipped"));
  begin(cat("core", ci, " cancel answered/unknown ", wname(m, id)));
  Output out;
  auto result = m.core->cancel(id, now(), out);
  if (result.has_value() || result.error().code != ErrorCode::kUnknownWaiter) {
    fail("cancel_unknown_code", cat("cancel of ", wname(m, id), ", not queued, gave ",
                                    result.has_value() ? "ok" : code_name(result.error().code),
                                    ", expected unknown_waiter"));
  }
  note(" -> ", code_name(result.error().code));
  absorb(ci, out, {});
}

void Sim::do_complete_start(int ci, std::uint64_t pick, bool success) {
  current_ = OpKind::kCompleteStart;
  CoreModel& m = cores_[ci];
  auto id = pick_session(m, pick, [](const SessionModel& s) { return s.start_pending; });
  if (!id) return begin(cat("core", ci, " complete start: none"));
  const TimePoint t = now();
  begin(cat("core", ci, success ? " session_started " : " session_start_failed ", sid(*id)));
  Output out;
  SessionModel& s = m.sessions[*id];
  if (success) {
    if (!s.stop_pending) {
      ++m.created;
      m.consecutive_start_failures = 0;
    }
    s.start_pending = false;
    s.started = t;
    s.last_active = t;
    m.core->session_started(*id, t, out);
    if (auto post = m.core->session(*id, t); post.has_value() && !post->reserved &&
                                            (post->state == SessionState::kIdle ||
                                             post->state == SessionState::kLeased)) {
      mark_dispatched(true);
    }
  } else {
    if (!s.stop_pending) {
      ++m.start_failures;
      ++m.consecutive_start_failures;
    }
    remove_session(m, *id);
    m.last_start_failure = t;
    m.core->session_start_failed(*id, "simulated start failure", t, out);
  }
  absorb(ci, out, {});
}

void Sim::do_complete_stop(int ci, std::uint64_t pick) {
  current_ = OpKind::kCompleteStop;
  CoreModel& m = cores_[ci];
  auto id = pick_session(m, pick, [](const SessionModel& s) { return s.stop_pending; });
  if (!id) return begin(cat("core", ci, " complete stop: none"));
  begin(cat("core", ci, " session_stopped ", sid(*id)));
  ++m.closed;
  remove_session(m, *id);
  Output out;
  m.core->session_stopped(*id, now(), out);
  absorb(ci, out, {});
}

void Sim::do_complete_check(int ci, std::uint64_t pick, bool healthy) {
  current_ = OpKind::kCompleteCheck;
  current_healthy_ = healthy;
  CoreModel& m = cores_[ci];
  auto id = pick_session(m, pick, [](const SessionModel& s) { return s.check_pending; });
  if (!id) return begin(cat("core", ci, " complete check: none"));
  begin(cat("core", ci, " check_result ", sid(*id), healthy ? " healthy" : " unhealthy"));
  SessionModel& s = m.sessions[*id];
  const bool was_closing = s.stop_pending;
  s.check_pending = false;
  s.last_active = now();
  if (!was_closing) {
    ++m.checks;
    m.check_failures += healthy ? 0 : 1;
  }
  Output out;
  m.core->check_result(*id, healthy, now(), out);
  if (auto post = m.core->session(*id, now()); post.has_value() && !post->reserved &&
                                              (post->state == SessionState::kIdle ||
                                               post->state == SessionState::kLeased)) {
    mark_dispatched(true);
  }
  absorb(ci, out, {});
  auto it = m.sessions.find(*id);
  if (!healthy && !was_closing && it != m.sessions.end() && !it->second.stop_pending) {
    fail("failed_check_not_stopped", cat(sid(*id), " failed its check but was not stopped"));
  }
  if (healthy && !was_closing && it != m.sessions.end() && !it->second.stop_pending) {
    auto info = m.core->session(*id, now());
    if (info.has_value() && info->health < m.cfg.health_check_below) {
      soft_fail("check_did_not_restore",
                cat(sid(*id), " passed its check but has health ", info->health));
    }
  }
}

void Sim::do_exited(int ci, const Op& op) {
  current_ = OpKind::kSessionExited;
  CoreModel& m = cores_[ci];
  // Mostly sessions that started; sometimes one still starting (it died early).
  const bool any = op.p[1] % 8 == 0;
  auto id =
      pick_session(m, op.p[0], [&](const SessionModel& s) { return any || !s.start_pending; });
  if (!id) return begin(cat("core", ci, " session_exited: none"));
  const TimePoint t = now();
  begin(cat("core", ci, " session_exited ", sid(*id)));
  if (m.sessions[*id].start_pending) {
    m.last_start_failure = t;
    ++m.start_failures;
    ++m.consecutive_start_failures;
  } else {
    ++m.closed;
  }
  remove_session(m, *id);
  Output out;
  m.core->session_exited(*id, "simulated crash", t, out);
  Effects fx;
  fx.exited = *id;
  absorb(ci, out, fx);
}

void Sim::do_recycle(int ci, const Op& op) {
  current_ = OpKind::kRecycle;
  CoreModel& m = cores_[ci];
  auto id = pick_session(m, op.p[0], [&](const SessionModel& s) { return !s.stop_pending; });
  if (!id) return begin(cat("core", ci, " recycle: none"));
  const StopReason reason = op.p[1] % 2 == 0 ? StopReason::kMemoryLimit : StopReason::kCpuLimit;
  begin(cat("core", ci, " recycle ", sid(*id), " (", reason_name(reason), ")"));
  SessionModel& s = m.sessions[*id];
  const bool idle_now = !s.start_pending && !s.check_pending && s.lease == 0;
  s.recycle = true;
  Output out;
  m.core->recycle(*id, reason, now(), out);
  Effects fx;
  absorb(ci, out, fx);
  auto it = m.sessions.find(*id);
  if (idle_now && it != m.sessions.end() && !it->second.stop_pending) {
    fail("recycle_idle_not_stopped", cat(sid(*id), " was idle and recycled but not stopped"));
  }
}

// A usage sample: the model applies the limits itself and expects the core
// to recycle exactly when a limit is crossed.
void Sim::do_usage(int ci, const Op& op) {
  current_ = OpKind::kUsage;
  CoreModel& m = cores_[ci];
  auto id = pick_session(m, op.p[0], [&](const SessionModel& s) { return !s.stop_pending; });
  if (!id) return begin(cat("core", ci, " usage: none"));
  const PoolConfig& c = m.cfg;
  core::UsageSample u;
  u.memory_bytes = static_cast<std::int64_t>(op.p[1] % 1200);
  u.cpu_percent = static_cast<double>(op.p[2] % 100);
  u.cpu_time = Duration{std::chrono::milliseconds(op.p[3] % 1100)};
  if (op.p[1] % 5 == 0) u.memory_bytes = -1;  // unknown
  begin(cat("core", ci, " usage ", sid(*id), " mem=", u.memory_bytes, " cpu%=", u.cpu_percent,
            " cpu_time=", ms(u.cpu_time)));
  SessionModel& s = m.sessions[*id];
  bool over = false;
  if (!s.recycle) {
    if (c.max_memory > 0 && u.memory_bytes > c.max_memory) {
      over = true;
    } else if (c.max_cpu_time.count() > 0 && u.cpu_time > c.max_cpu_time) {
      over = true;
    } else if (c.max_cpu_percent > 0) {
      s.cpu_over = u.cpu_percent > c.max_cpu_percent ? s.cpu_over + 1 : 0;
      over = s.cpu_over >= c.cpu_percent_samples;
    }
  }
  const bool idle_now = !s.start_pending && !s.check_pending && s.lease == 0;
  if (over) s.recycle = true;
  Output out;
  m.core->usage_sampled(*id, u, now(), out);
  const bool event = std::any_of(out.events.begin(), out.events.end(), [&](const Event& e) {
    return e.type == EventType::kSessionOverLimit && e.session == *id;
  });
  if (event != over) {
    fail("usage_limit", cat(sid(*id), over ? " crossed a limit without" : " got",
                            " a kSessionOverLimit event"));
  }
  if (!over && has_stop(out, *id)) {
    fail("usage_stopped_under_limit", cat(sid(*id), " was stopped by a sample under its limits"));
  }
  Effects fx;
  absorb(ci, out, fx);
  auto it = m.sessions.find(*id);
  if (over && idle_now && it != m.sessions.end() && !it->second.stop_pending) {
    fail("usage_idle_not_stopped", cat(sid(*id), " was idle and over a limit but not stopped"));
  }
}

void Sim::do_stale(int ci, const Op& op) {
  current_ = OpKind::kStaleResult;
  CoreModel& m = cores_[ci];
  Result kind;
  SessionId id;
  if (!m.stale.empty() && op.p[0] % 3 != 0) {
    kind = m.stale.front().first;
    id = m.stale.front().second;
    m.stale.pop_front();
    if (kind == Result::kCheckOk && op.p[1] % 2 == 0) kind = Result::kCheckFailed;
    if (kind == Result::kStarted && op.p[1] % 2 == 0) kind = Result::kStartFailed;
  } else if (!m.dead.empty()) {
    kind = static_cast<Result>(op.p[1] % kResultNames.size());
    id = m.dead[op.p[2] % m.dead.size()];
  } else {
    return begin(cat("core", ci, " stale result: none"));
  }
  const TimePoint t = now();
  begin(cat("core", ci, " stale ", kResultNames[static_cast<int>(kind)], " ", sid(id)));
  const int count = m.core->session_count();
  Output out;
  switch (kind) {
    case Result::kStarted:
      m.core->session_started(id, t, out);
      break;
    case Result::kStartFailed:
      m.core->session_start_failed(id, "late", t, out);
      break;
    case Result::kStopped:
      m.core->session_stopped(id, t, out);
      break;
    case Result::kExited:
      m.core->session_exited(id, "late", t, out);
      break;
    case Result::kCheckOk:
      m.core->check_result(id, true, t, out);
      break;
    case Result::kCheckFailed:
      m.core->check_result(id, false, t, out);
      break;
  }
  if (!out.actions.empty() || m.core->session_count() != count) {
    fail("stale_result_not_ignored", cat("a stale ", kResultNames[static_cast<int>(kind)], " for ",
                                         sid(id), " produced ", out.actions.size(), " actions"));
  }
  absorb(ci, out, {});
}

void Sim::do_tick(int ci) {
  current_ = OpKind::kTickOne;
  CoreModel& m = cores_[ci];
  begin(cat("core", ci, " tick"));
  const PoolStats before = m.core->stats();
  const std::vector<SessionInfo> sessions_before = m.core->sessions(now());
  const std::vector<ReservationInfo> reservations_before = m.core->reservations();
  Output out;
  m.core->tick(now(), out);
  mark_dispatched(true);
  Effects fx;
  fx.tick = true;
  absorb(ci, out, fx);
  // Idle timeout closes the longest idle first. (A reservation may take the
  // longest idle session, and a periodic check may come first, in the same tick:
  // such ticks are not judged.)
  const bool had_reservations = !m.core->reservations().empty() || !reservations_before.empty();
  for (const Action& a : out.actions) {
    if (had_reservations) break;
    if (a.type != ActionType::kStopSession || a.reason != StopReason::kIdleTimeout) continue;
    auto closed = std::find_if(sessions_before.begin(), sessions_before.end(),
                               [&](const SessionInfo& x) { return x.id == a.session; });
    if (closed == sessions_before.end()) continue;
    for (const SessionInfo& other : sessions_before) {
      if (other.state != SessionState::kIdle || other.reserved || other.idle <= closed->idle ||
          has_stop(out, other.id) || has_check(out, other.id) || has_grant(out, other.id))
        continue;
      soft_fail("idle_timeout_order",
                cat(sid(a.session), " idle ", ms(closed->idle), " was closed before ",
                    sid(other.id), " idle ", ms(other.idle)));
    }
  }
  check_core(ci, true);
  check_after_tick(ci, before);
  check_cap();
  end();
}

void Sim::do_scale(int ci, const Op& op) {
  current_ = OpKind::kScale;
  CoreModel& m = cores_[ci];
  const int target = static_cast<int>(op.p[0] % static_cast<std::uint64_t>(m.cfg.max + 3)) - 1;
  begin(cat("core", ci, " scale ", target));
  Output out;
  auto result = m.core->scale(target, now(), out);
  const bool valid = target >= 0 && target <= m.cfg.max;
  if (!m.draining && !m.shutdown) {
    if (valid && !result.has_value())
      fail("scale_failed", cat("scale(", target, ") gave ", code_name(result.error().code)));
    if (!valid && (result.has_value() || result.error().code != ErrorCode::kInvalidArgument)) {
      fail("scale_out_of_range",
           cat("scale(", target, ") with max ", m.cfg.max, " was not refused as invalid_argument"));
    }
  }
  note(" -> ", result.has_value() ? "ok" : code_name(result.error().code));
  absorb(ci, out, {});
  if (result.has_value() && m.core->stats().target != target) {
    fail("scale_target",
         cat("after scale(", target, ") stats().target is ", m.core->stats().target));
  }
  if (result.has_value() && !m.draining && !m.shutdown) {
    int live = 0, idle = 0;
    for (const SessionInfo& si : m.core->sessions(now())) {
      live += si.state != SessionState::kClosing ? 1 : 0;
      idle += si.state == SessionState::kIdle && !si.reserved ? 1 : 0;
    }
    int waiting = 0;  // idle sessions may stay for queued waiters (held with handoff_after)
    for (const WaiterModel& w : m.waiters) waiting += w.deadline > now() ? 1 : 0;
    if (live > target && idle > waiting && m.cfg.min_idle == 0) {
      soft_fail("scale_left_idle",
                cat("after scale(", target, "): ", live, " live with ", idle, " idle"));
    }
  }
}

void Sim::do_reconfigure(int ci, const Op& op) {
  current_ = OpKind::kReconfigure;
  CoreModel& m = cores_[ci];
  Random r(op.p[0]);
  PoolConfig next = random_config(r, ci);
  next.lease_events = m.cfg.lease_events;  // the shell's choice, not the file's
  const int mistake = static_cast<int>(op.p[1] % 8);
  if (mistake == 0) next.min = next.max + 1;  // invalid
  if (mistake == 1) next.name = "renamed";    // refused: a running pool keeps its name
  const bool valid = mistake > 1;
  begin(cat("core", ci, " reconfigure ", valid ? describe(next) : cat("(bad: ", mistake, ")")));
  const PoolStats before = m.core->stats();
  Output out;
  auto result = m.core->reconfigure(next, now(), out);
  note(" -> ", result.has_value() ? "ok" : code_name(result.error().code));
  if (!valid) {
    if (result.has_value() || result.error().code != ErrorCode::kInvalidConfig) {
      fail("reconfigure_bad_accepted", "a bad config was not refused as invalid_config");
    }
    if (!out.actions.empty() || !out.events.empty()) {
      fail("reconfigure_bad_changed", "a refused config still acted");
    }
    if (m.core->config().min != m.cfg.min || m.core->config().name != m.cfg.name) {
      fail("reconfigure_bad_applied", "a refused config was applied");
    }
    return;
  }
  if (!result.has_value()) {
    fail("reconfigure_failed", cat("a valid config was refused: ", result.error().message));
    return;
  }
  const PoolConfig old = std::exchange(m.cfg, next);
  // The model follows what the core documents: waiters re-sorted under the
  // new aging, the next cleanup no later than one new interval from now.
  for (WaiterModel& w : m.waiters) {
    w.key = m.cfg.aging.count() > 0
                ? w.queued.time_since_epoch().count() - w.priority * m.cfg.aging.count()
                : -w.priority;
  }
  m.last_cleanup = std::min(m.last_cleanup + old.client_session_cleanup_interval,
                            now() + m.cfg.client_session_cleanup_interval) -
                   m.cfg.client_session_cleanup_interval;
  // Client sessions gone by now (expired, or never recorded under a small
  // cap) are not owed the new ttl or cap: the checks start from here.
  for (auto it = m.client_put.begin(); it != m.client_put.end();) {
    it = m.core->get_client_session(it->first, now()).has_value() ? std::next(it)
                                                                   : m.client_put.erase(it);
  }
  for (auto it = m.client_leases.begin(); it != m.client_leases.end();) {
    if (m.core->get_client_session(it->first, now()).has_value()) {
      ++it;
      continue;
    }
    for (LeaseModel& l : m.leases) {
      if (l.client == it->first) l.counted = false;
    }
    it = m.client_leases.erase(it);
  }
  for (const LeaseModel& l : m.leases) m.leases_at_reload.insert(l.id);
  m.reload_sessions_ceiling = static_cast<int>(m.sessions.size());
  int starting = 0;
  for (const SessionInfo& si : m.core->sessions(now())) {
    starting += si.state == SessionState::kStarting ? 1 : 0;
  }
  m.reload_starting_ceiling = starting;
  if (m.last_start_failure.has_value()) {
    m.last_start_failure = std::min(*m.last_start_failure + old.start_backoff_max,
                                    now() + m.cfg.start_backoff_max) -
                           m.cfg.start_backoff_max;
  }
  absorb(ci, out, {});
  const bool sizes_changed = old.min != next.min || old.max != next.max || old.start != next.start;
  const int want_target = sizes_changed
                              ? (next.start == StartMode::kEager ? next.max : next.min)
                              : std::min(before.target, next.max);
  if (m.core->stats().target != want_target) {
    fail("reconfigure_target", cat("target ", m.core->stats().target, " after a reload, expected ",
                                   want_target, " (was ", before.target, ")"));
  }
  // Idle sessions above a lowered max nobody waits for close at once.
  if (!m.draining && !m.shutdown && m.waiters.empty()) {
    int live = 0, idle = 0;
    for (const SessionInfo& si : m.core->sessions(now())) {
      live += si.state != SessionState::kClosing ? 1 : 0;
      idle += si.state == SessionState::kIdle && !si.reserved ? 1 : 0;
    }
    if (live > next.max && idle > 0) {
      fail("reconfigure_over_max", cat(live, " live over the new max ", next.max, " with ", idle,
                                       " idle after a reload"));
    }
  }
}

void Sim::do_control(int ci, OpKind kind) {
  current_ = kind;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  Output out;
  switch (kind) {
    case OpKind::kPause:
      begin(cat("core", ci, " pause"));
      m.paused = true;
      m.core->pause(t, out);
      break;
    case OpKind::kResume:
      begin(cat("core", ci, " resume"));
      if (!m.shutdown) m.paused = m.draining = false;
      m.core->resume(t, out);
      break;
    case OpKind::kDrain:
      begin(cat("core", ci, " drain"));
      m.draining = true;
      m.core->drain(t, out);
      break;
    case OpKind::kEmergencyStop:
      begin(cat("core", ci, " emergency_stop"));
      m.emergency = true;
      m.core->emergency_stop(t, out);
      break;
    case OpKind::kEmergencyResume:
      begin(cat("core", ci, " emergency_resume"));
      m.emergency = false;
      m.core->emergency_resume(t, out);
      break;
    default:
      // A third of shutdowns give leases no deadline, a third until now, a third 2 s.
      switch (t.time_since_epoch().count() % 3) {
        case 0: m.leases_until = TimePoint::max(); break;
        case 1: m.leases_until = t; break;
        default: m.leases_until = t + 2s; break;
      }
      begin(cat("core", ci, " shutdown leases_until=",
                m.leases_until == TimePoint::max() ? std::string("never") : at(m.leases_until)));
      m.shutdown = true;
      m.core->shutdown(t, out, m.leases_until);
      break;
  }
  absorb(ci, out, {});
  // Pause keeps warm sessions; it may only trim idle ones above max or a
  // scale-down target that were held for the waiters it refused.
  if (kind == OpKind::kPause) {
    for (const Action& a : out.actions) {
      if (a.type == ActionType::kStopSession && a.reason != StopReason::kOverflow &&
          a.reason != StopReason::kScaledDown) {
        fail("pause_stopped_session", "pause stopped a session");
      }
    }
  }
  if (kind == OpKind::kShutdown) {
    for (const auto& [id, sm] : m.sessions) {
      if (sm.check_pending && !sm.stop_pending) {
        soft_fail("shutdown_left_session",
                  cat(sid(id), " (being checked) was not stopped by shutdown"));
      }
    }
  }
  for (const WaiterModel& w : m.waiters) {
    if (m.paused || m.draining || m.shutdown || (m.emergency && w.priority < kCriticalPriority)) {
      fail("waiter_not_refused",
           cat(wname(m, w.id), " (priority ", w.priority, ") is still queued after ",
               m.shutdown   ? "shutdown"
               : m.draining ? "drain"
               : m.paused   ? "pause"
                            : "emergency stop"));
    }
  }
}

void Sim::do_reserve(int ci, const Op& op) {
  current_ = OpKind::kReserve;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const std::string owner =
      op.p[0] % 20 == 0 ? std::string() : std::string(kOwners[1 + op.p[0] % 3]);
  const TimePoint expires = op.p[1] % 10 == 0 ? t - 1ms : t + span(op.p[2], 100ms, 20s);
  begin(cat("core", ci, " reserve owner='", owner, "' for ", ms(expires - t)));
  bool idle_before = false;
  for (const SessionInfo& si : m.core->sessions(t))
    idle_before |= si.state == SessionState::kIdle && !si.reserved;
  Output out;
  auto result = m.core->reserve(owner, expires, t, out);
  if (result.has_value()) {
    const ReservationInfo& ri = *result;
    if (m.reservations_made.count(ri.id) != 0)
      fail("reservation_id_reused", cat("reservation id ", ri.id, " reused"));
    if (ri.owner != owner || ri.expires_at != expires)
      fail("reservation_info", "reserve() returned another owner or expiry");
    if (ri.session != 0 && m.sessions.count(ri.session) == 0) {
      fail("reservation_unknown_session",
           cat("reservation got ", sid(ri.session), ", which the shell does not hold"));
    }
    if (idle_before && ri.session == 0)
      soft_fail("reserve_ignored_idle", "reserve() waits for a session while one is idle");
    m.reservations_made.emplace(ri.id, owner);
    note(" -> R", ri.id, ri.session != 0 ? cat(" ", sid(ri.session)) : std::string(" (waiting)"));
  } else {
    const ErrorCode code = result.error().code;
    const bool fits = code == ErrorCode::kNoCapacity ||
                      (code == ErrorCode::kInvalidArgument && (owner.empty() || expires <= t)) ||
                      (code == ErrorCode::kPoolPaused && m.paused) ||
                      (code == ErrorCode::kPoolDraining && m.draining) ||
                      (code == ErrorCode::kShutdown && m.shutdown) ||
                      (code == ErrorCode::kEmergencyStop && m.emergency);
    if (!fits)
      fail("reserve_code", cat("reserve gave ", code_name(code), ": ", result.error().message));
    note(" -> ", code_name(code));
  }
  absorb(ci, out, {});
}

void Sim::do_cancel_reservation(int ci, const Op& op) {
  current_ = OpKind::kCancelReservation;
  CoreModel& m = cores_[ci];
  ReservationId id = op.p[1] | (std::uint64_t{1} << 40);
  std::string owner = "alice";
  if (op.p[0] % 4 != 0 && !m.reservations_made.empty()) {
    auto it = m.reservations_made.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(op.p[0] % m.reservations_made.size()));
    id = it->first;
    owner = it->second;
  }
  if (op.p[2] % 4 == 0)
    owner = std::string(kOwners[1 + (op.p[3] % 3)]) + (op.p[3] % 5 == 0 ? "x" : "");
  const auto list = m.core->reservations();
  auto live = std::find_if(list.begin(), list.end(),
                           [&](const ReservationInfo& ri) { return ri.id == id; });
  begin(cat("core", ci, " cancel_reservation R", id, " as '", owner, "'"));
  Output out;
  auto result = m.core->cancel_reservation(id, owner, now(), out);
  std::optional<ErrorCode> expected;
  if (live == list.end()) {
    expected = ErrorCode::kUnknownReservation;
  } else if (live->owner != owner) {
    expected = ErrorCode::kNotReservationOwner;
  }
  const std::optional<ErrorCode> got =
      result.has_value() ? std::nullopt : std::optional<ErrorCode>(result.error().code);
  if (got != expected) {
    fail("cancel_reservation_code", cat("cancel_reservation gave ", got ? code_name(*got) : "ok",
                                        ", expected ", expected ? code_name(*expected) : "ok"));
  }
  note(" -> ", got ? code_name(*got) : "ok");
  absorb(ci, out, {});
}

void Sim::do_put_client(int ci, const Op& op) {
  current_ = OpKind::kPutClientSession;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const std::string id(kClientIds[op.p[0] % kClientIds.size()]);
  const std::size_t size =
      static_cast<std::size_t>(op.p[1] % (2 * m.cfg.max_client_session_document + 2));
  const std::string doc(size, static_cast<char>('a' + op.p[2] % 26));
  const bool exists = m.core->get_client_session(id, t).has_value();
  const int active = m.core->stats().client_sessions_active;
  begin(cat("core", ci, " put_client_session '", id, "' ", size, " bytes"));
  auto result = m.core->put_client_session(id, doc, t);
  const bool too_large = size > m.cfg.max_client_session_document;
  const bool full = !exists && active >= static_cast<int>(m.cfg.max_client_sessions);
  if (result.has_value()) {
    if (too_large)
      fail("document_too_large_accepted", cat("a ", size, "-byte document was accepted (limit ",
                                              m.cfg.max_client_session_document, ")"));
    if (result->id != id || result->document != doc)
      fail("put_client_session_info", "put_client_session returned another record");
    m.client_put[id] = t;
    note(" -> ok");
  } else {
    const ErrorCode code = result.error().code;
    const bool fits = (code == ErrorCode::kDocumentTooLarge && too_large) ||
                      (code == ErrorCode::kTooManyClientSessions && full);
    if (!fits)
      fail("put_client_session_code",
           cat("put_client_session gave ", code_name(code), ": ", result.error().message));
    note(" -> ", code_name(code));
  }
}

void Sim::do_delete_client(int ci, const Op& op) {
  current_ = OpKind::kDeleteClientSession;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const bool never = op.p[0] % 5 == 0;
  const std::string id =
      never ? cat("never-", op.p[1] % 1000) : std::string(kClientIds[op.p[1] % kClientIds.size()]);
  const bool exists = m.core->get_client_session(id, t).has_value();
  begin(cat("core", ci, " delete_client_session '", id, "'"));
  auto result = m.core->delete_client_session(id);
  if (never && (result.has_value() || result.error().code != ErrorCode::kUnknownClientSession)) {
    fail("delete_unknown_client_session",
         cat("deleting never-used '", id, "' gave ",
             result.has_value() ? "ok" : code_name(result.error().code)));
  }
  if (exists && !result.has_value())
    fail("delete_client_session_failed",
         cat("deleting '", id, "' gave ", code_name(result.error().code)));
  if (!result.has_value() && result.error().code != ErrorCode::kUnknownClientSession) {
    fail("delete_client_session_code",
         cat("deleting '", id, "' gave ", code_name(result.error().code)));
  }
  if (result.has_value()) {
    m.client_put.erase(id);
    // Leases in flight no longer count for a record created later under the same id.
    for (LeaseModel& l : m.leases) {
      if (l.client == id) l.counted = false;
    }
    m.client_leases.erase(id);
  }
  note(" -> ", result.has_value() ? "ok" : code_name(result.error().code));
}

// retry(): the waiter a kWake named tries again (`woken`), or, harmlessly, a
// waiter that was not woken, one already answered, or an id never issued.
void Sim::do_retry(int ci, const Op& op, bool woken) {
  current_ = woken ? OpKind::kRetryWoken : OpKind::kRetryOther;
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  WaiterId id = 0;
  std::string_view what;
  if (woken) {
    if (!wake_outstanding(m)) return begin(cat("core", ci, " retry woken: none"));
    id = m.woken;
    what = "woken";
  } else {
    const auto sel = op.p[0] % 4;
    if (sel <= 1 && !m.waiters.empty()) {
      id = m.waiters[op.p[1] % m.waiters.size()].id;
      if (sel == 1) {
        // The one most likely to pass the front: the highest priority behind it.
        const WaiterModel* front = front_of(m);
        const WaiterModel* best = nullptr;
        for (const WaiterModel& w : m.waiters) {
          if (w.id != front->id && (best == nullptr || w.priority > best->priority)) best = &w;
        }
        if (best != nullptr) id = best->id;
      }
      what = id == m.woken && wake_outstanding(m) ? "woken" : "queued, not woken";
    } else if (sel <= 2 && !m.answered_recent.empty()) {
      id = m.answered_recent[op.p[2] % m.answered_recent.size()];
      what = "answered";
    } else {
      id = op.p[3];
      what = "never queued";
      if (m.waiter_no.count(id) != 0) return begin(cat("core", ci, " retry unknown: skipped"));
    }
  }
  auto it = std::find_if(m.waiters.begin(), m.waiters.end(),
                         [&](const WaiterModel& w) { return w.id == id; });
  const bool queued = it != m.waiters.end();
  const bool was_woken = queued && id == m.woken;
  const WaiterModel* front = front_of(m);
  // What the rules promise a woken waiter: a free session when it is first, or
  // when it could overtake the front like a new acquire.
  const bool eligible =
      queued && (front->id == id || (m.cfg.handoff_after.count() > 0 &&
                                     may_overtake(m, front, it->priority)));
  const bool idle = queued && ready_unreserved_idle(m);
  begin(cat("core", ci, " retry ", wname(m, id), " (", what, ")"));
  const int count = m.core->session_count();
  const int length = m.core->queue_length();
  Output out;
  m.core->retry(id, t, out);
  if (id == m.woken) m.woken = 0;  // its wake is used up
  if (queued) mark_dispatched(true);
  bool granted = false;
  for (const Action& a : out.actions) {
    granted |= a.type == ActionType::kGrant && a.waiter == id;
    if (a.type == ActionType::kReject) {
      soft_fail("retry_rejected",
                cat("retry of ", wname(m, id), " rejected ", wname(m, a.waiter), " with ",
                    code_name(a.error.code)));
    }
  }
  if (!queued && (!out.empty() || m.core->session_count() != count ||
                  m.core->queue_length() != length)) {
    soft_fail("retry_not_harmless",
              cat("retry of ", wname(m, id), " (", what, ") emitted ", out.actions.size(),
                  " actions, ", out.events.size(), " events; sessions ", count, " -> ",
                  m.core->session_count(), ", queue ", length, " -> ", m.core->queue_length()));
  }
  note(granted ? " -> granted" : queued ? " -> keeps its place" : " -> nothing");
  absorb(ci, out, {});
  if (was_woken && eligible && idle && !granted) {
    soft_fail("woken_retry_not_granted",
              cat("woken ", wname(m, id), " retried while a session was free for it, but was not "
                  "granted"));
  }
  if (queued && !granted &&
      std::none_of(m.waiters.begin(), m.waiters.end(),
                   [&](const WaiterModel& w) { return w.id == id; })) {
    soft_fail("retry_lost_place", cat(wname(m, id), " left the queue on retry without a grant"));
  }
  seen(cat("retry ", what, granted ? " granted" : queued ? " kept its place" : ""));
}

// ----------------------------------------------------------------------------
// rules

void Sim::check_cap() {
  if (!cap_) return;
  int held = 0, counted = 0;
  for (const CoreModel& m : cores_) {
    held += static_cast<int>(m.sessions.size());
    counted += m.core->session_count();
  }
  if (held > cap_->limit())
    fail("above_shared_cap", cat(held, " sessions held over a shared cap of ", cap_->limit()));
  if (cap_->used() != counted)
    fail("shared_cap_count", cat("shared cap used ", cap_->used(), " but cores count ", counted));
}

void Sim::check_core(int ci, bool ticked) {
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const PoolConfig& c = m.cfg;
  const std::vector<SessionInfo> infos = m.core->sessions(t);
  const PoolStats st = m.core->stats();

  // Sessions: the core's view matches what the shell holds, state by state.
  if (infos.size() != m.sessions.size() ||
      m.core->session_count() != static_cast<int>(m.sessions.size())) {
    std::string core_ids, shell_ids;
    for (const auto& si : infos) core_ids += " " + sid(si.id) + ":" + state_name(si.state);
    for (const auto& [id, s] : m.sessions) shell_ids += " " + sid(id);
    fail("session_set",
         cat("core lists ", infos.size(), " sessions (session_count ", m.core->session_count(), ")",
             core_ids, "; the shell holds ", m.sessions.size(), shell_ids));
  }
  std::array<int, kSessionStateCount> by_state{};
  for (const SessionInfo& si : infos) {
    auto it = m.sessions.find(si.id);
    if (it == m.sessions.end())
      fail("session_set", cat("core lists ", sid(si.id), ", which the shell does not hold"));
    const SessionModel& s = it->second;
    ++by_state[static_cast<int>(si.state)];
    const LeaseId held = m.core->lease_of(si.id);
    auto bad = [&](std::string_view why) {
      fail("session_state", cat(sid(si.id), " is ", state_name(si.state), " but ", why,
                                " (start_pending=", s.start_pending, " stop_pending=",
                                s.stop_pending, " check_pending=", s.check_pending,
                                " lease=", s.lease != 0 ? lname(m, s.lease) : "-", ")"));
    };
    if (si.health < 0 || si.health > 100) bad(cat("its health is ", si.health));
    if (s.lease != 0 && si.state != SessionState::kLeased) bad("the shell holds a lease on it");
    if (s.stop_pending && si.state != SessionState::kClosing) bad("a stop is pending");
    switch (si.state) {
      case SessionState::kStarting:
        if (!s.start_pending) bad("it was reported started");
        break;
      case SessionState::kIdle:
        if (s.start_pending || s.check_pending) bad("a start or check is pending");
        if (held != 0)
          fail("idle_and_leased",
               cat(sid(si.id), " is idle while lease_of() gives ", lname(m, held)));
        if (si.health < c.health_check_below) {
          fail("unhealthy_idle", cat(sid(si.id), " is idle with health ", si.health, " below ",
                                     c.health_check_below));
        }
        if (c.max_uses > 0 && si.uses >= c.max_uses) {
          fail("max_uses_idle",
               cat(sid(si.id), " is idle after ", si.uses, " uses (max_uses ", c.max_uses, ")"));
        }
        if (m.draining || m.shutdown)
          fail("idle_while_draining", cat(sid(si.id), " is idle while the pool drains"));
        break;
      case SessionState::kLeased: {
        if (s.lease == 0) bad("the shell holds no lease on it");
        if (s.start_pending || s.check_pending) bad("a start or check is pending");
        if (held != s.lease)
          fail("lease_of", cat("lease_of(", sid(si.id), ") is ", lname(m, held),
                               ", the shell holds ", lname(m, s.lease)));
        auto l = std::find_if(m.leases.begin(), m.leases.end(),
                              [&](const LeaseModel& x) { return x.id == s.lease; });
        if (l == m.leases.end()) bad("the shell lost track of its lease");
        if (si.lease_owner != l->owner || si.client_session != l->client) {
          fail("lease_owner_shown",
               cat(sid(si.id), " shows owner '", si.lease_owner, "' client '", si.client_session,
                   "', the lease has '", l->owner, "' '", l->client, "'"));
        }
        if (si.reserved && si.reserved_for != l->owner) {
          fail("reserved_for_other_owner", cat(sid(si.id), " reserved for '", si.reserved_for,
                                               "' is leased by '", l->owner, "'"));
        }
        if (c.max_uses > 0 && si.uses > c.max_uses && m.leases_at_reload.count(s.lease) == 0) {
          fail("max_uses_exceeded",
               cat(sid(si.id), " is leased for use ", si.uses, " (max_uses ", c.max_uses, ")"));
        }
        break;
      }
      case SessionState::kChecking:
        if (!s.check_pending) bad("no check is pending");
        if (s.start_pending) bad("a start is pending");
        break;
      case SessionState::kClosing:
        if (!s.stop_pending) bad("no stop is pending");
        break;
    }
  }
  for (const LeaseModel& l : m.leases) {
    if (m.sessions.count(l.session) == 0)
      fail("lease_without_session",
           cat(lname(m, l.id), " holds ", sid(l.session), ", which is gone"));
  }

  // Limits.
  const int held_now = static_cast<int>(m.sessions.size());
  if (held_now > std::max(c.max + c.overflow, m.reload_sessions_ceiling)) {
    fail("above_max",
         cat(m.sessions.size(), " sessions held, max ", c.max, " + overflow ", c.overflow,
             m.reload_sessions_ceiling > 0 ? cat(" (", m.reload_sessions_ceiling, " at a reload)")
                                           : std::string()));
  }
  m.reload_sessions_ceiling =
      held_now > c.max + c.overflow ? std::min(m.reload_sessions_ceiling, held_now) : 0;
  const int starting_now = by_state[static_cast<int>(SessionState::kStarting)];
  if (starting_now > std::max(c.max_starting, m.reload_starting_ceiling)) {
    fail("above_max_starting",
         cat(by_state[0], " sessions starting, max_starting ", c.max_starting));
  }
  m.reload_starting_ceiling =
      starting_now > c.max_starting ? std::min(m.reload_starting_ceiling, starting_now) : 0;

  // Statistics match the real sets.
  if (st.sessions_by_state != by_state)
    fail("stats_by_state", "stats().sessions_by_state differs from sessions()");
  if (st.sessions != static_cast<int>(infos.size()))
    fail("stats_sessions", cat("stats().sessions ", st.sessions, ", sessions() ", infos.size()));
  if (st.queue_length != static_cast<int>(m.waiters.size()) ||
      m.core->queue_length() != static_cast<int>(m.waiters.size())) {
    fail("queue_length", cat("queue_length ", st.queue_length, "/", m.core->queue_length(),
                             ", waiters queued ", m.waiters.size()));
  }
  if (st.acquisitions != m.grants)
    fail("stats_acquisitions", cat("acquisitions ", st.acquisitions, ", grants seen ", m.grants));
  if (st.immediate != m.immediate)
    fail("stats_immediate", cat("immediate ", st.immediate, ", seen ", m.immediate));
  if (st.cancellations != m.cancels)
    fail("stats_cancellations", cat("cancellations ", st.cancellations, ", seen ", m.cancels));
  if (st.releases != m.releases)
    fail("stats_releases", cat("releases ", st.releases, ", seen ", m.releases));
  if (st.broken_releases != m.broken)
    fail("stats_broken", cat("broken_releases ", st.broken_releases, ", seen ", m.broken));
  if (st.reclaimed != m.reclaimed)
    fail("stats_reclaimed", cat("reclaimed ", st.reclaimed, ", seen ", m.reclaimed));
  if (st.sessions_created != m.created)
    fail("stats_created", cat("sessions_created ", st.sessions_created, ", seen ", m.created));
  if (st.start_failures != m.start_failures)
    fail("stats_start_failures",
         cat("start_failures ", st.start_failures, ", seen ", m.start_failures));
  if (st.rejections != m.rejections)
    soft_fail("stats_rejections", cat("rejections ", st.rejections, ", seen ", m.rejections));
  if (st.sessions_closed != m.closed)
    soft_fail("stats_closed", cat("sessions_closed ", st.sessions_closed, ", seen ", m.closed));
  if (st.reused != m.reused)
    soft_fail("stats_reused", cat("reused ", st.reused, ", seen ", m.reused));
  if (st.wait.count != m.grants)
    soft_fail("stats_wait", cat("wait.count ", st.wait.count, ", grants ", m.grants));
  if (st.checks != m.checks || st.check_failures != m.check_failures) {
    fail("stats_checks", cat("checks ", st.checks, "/", st.check_failures, " failed, seen ",
                             m.checks, "/", m.check_failures));
  }
  {
    TimePoint due = TimePoint::max(), lease_due = TimePoint::max();
    for (const WaiterModel& w : m.waiters) due = std::min(due, w.deadline);
    for (const LeaseModel& l : m.leases) lease_due = std::min(lease_due, l.expires);
    const TimePoint next = m.core->next_due();
    if (next > due)
      fail("next_due", cat("next_due() is ", at(next), " but a waiter's deadline is ", at(due)));
    if (next > lease_due)
      soft_fail("next_due_lease",
                cat("next_due() is ", at(next), " but a lease expires ", at(lease_due)));
  }
  if (st.timeouts < m.queued_timeouts || st.timeouts > m.queued_timeouts + m.immediate_timeouts) {
    fail("stats_timeouts", cat("timeouts ", st.timeouts, ", seen ", m.queued_timeouts, " queued + ",
                               m.immediate_timeouts, " at once"));
  }
  if (!m.shutdown && st.paused != m.paused)
    fail("stats_paused", cat("stats().paused is ", st.paused));
  if (st.draining != (m.draining || m.shutdown))
    fail("stats_draining", cat("stats().draining is ", st.draining));
  if (st.emergency_stopped != m.emergency)
    fail("stats_emergency", cat("stats().emergency_stopped is ", st.emergency_stopped));
  if (!ticked && (st.client_sessions_expired != m.last_stats.client_sessions_expired ||
                  st.cleanup_runs != m.last_stats.cleanup_runs)) {
    fail("cleanup_outside_tick", "client sessions were cleaned up by an input other than tick");
  }
  if (m.core->drained() != ((m.draining || m.shutdown) && m.sessions.empty())) {
    fail("drained", cat("drained() is ", m.core->drained(), " with ", m.sessions.size(),
                        " sessions, draining=", m.draining, " shutdown=", m.shutdown));
  }

  // Overflow is temporary: no idle spare beyond max while nobody waits.
  if (m.waiters.empty() && !m.draining && !m.shutdown) {
    int live = 0, idle = 0;
    for (const SessionInfo& si : infos) {
      live += si.state != SessionState::kClosing ? 1 : 0;
      idle += si.state == SessionState::kIdle && !si.reserved ? 1 : 0;
    }
    if (live > c.max && idle > 0) {
      soft_fail("idle_above_max", cat(live, " live sessions over max ", c.max, " with ", idle,
                                      " idle and nobody waiting"));
    }
  }

  // Waiters: none left while a session they may take is idle.
  if (m.emergency) {
    for (const WaiterModel& w : m.waiters) {
      if (w.priority < kCriticalPriority)
        fail("waiter_not_refused", cat(wname(m, w.id), " below critical queued in emergency stop"));
    }
  }
  // With handoff_after, an unreserved idle session is held for the front while
  // it has waited less than handoff_after (it is woken and may be overtaken);
  // once it has waited that long, the core's next dispatch (tick, acquire,
  // release, retry, a session back to idle) hands it a free session.
  const bool handoff = c.handoff_after.count() > 0;
  const WaiterModel* front = front_of(m);
  bool idle_free = false;  // an unreserved idle session ready for anyone
  for (const SessionInfo& si : infos) idle_free |= !si.reserved && ready(m, si);
  if (handoff && front != nullptr && idle_free && !m.paused && !m.draining && !m.shutdown) {
    const bool is_fresh = fresh(m, *front);
    if (is_fresh) seen("handoff: idle session held for a fresh front");
    if (!is_fresh && (ticked || dispatched_)) {
      const bool woken_never_retried = front->id == m.woken && ticked;
      soft_fail(woken_never_retried ? "woken_waiter_not_granted_by_tick" : "owed_waiter_while_idle",
                cat(wname(m, front->id), " (priority ", front->priority, ") has waited ",
                    ms(t - front->queued), " (handoff_after ", ms(c.handoff_after),
                    ") and is first, yet stays queued while an unreserved session is idle",
                    front->id == m.woken ? " (it was woken and has not retried)" : ""));
    }
    if (is_fresh && woke_ && !wake_outstanding(m)) {
      soft_fail("idle_without_wake",
                cat("a session is free and ", wname(m, front->id), " is first (waited ",
                    ms(t - front->queued), "), but no waiter is woken"));
    }
    // A shell that sleeps until next_due() must tick when the front becomes owed.
    const TimePoint owed = front->queued + c.handoff_after;
    if (m.core->next_due() > std::max(owed, t)) {
      soft_fail("next_due_handoff",
                cat("next_due() is ", at(m.core->next_due()), " but ", wname(m, front->id),
                    " is owed the idle session at ", at(owed), " (queued ", at(front->queued),
                    ", handoff_after ", ms(c.handoff_after), ")"));
    }
  }
  if (!m.waiters.empty() && !m.paused && !m.draining && !m.shutdown) {
    for (const SessionInfo& si : infos) {
      if (!ready(m, si)) continue;
      // Held for the front (handoff_after): judged above.
      if (handoff && !si.reserved) continue;
      for (const WaiterModel& w : m.waiters) {
        if (w.deadline > t && (!si.reserved || si.reserved_for == w.owner)) {
          if (handoff) {
            // A reservation may take the session held for a woken front
            // (reserve() takes an idle session): its owner's waiter is judged
            // once it has waited handoff_after, at a tick.
            if (fresh(m, w) || !ticked) continue;
            soft_fail("reserved_idle_while_owner_waits",
                      cat(wname(m, w.id), " (owner '", w.owner, "') has waited ", ms(t - w.queued),
                          " (handoff_after ", ms(c.handoff_after), ") while ", sid(si.id),
                          " reserved for '", si.reserved_for, "' is idle"));
            break;
          }
          fail("waiter_while_idle",
               cat(wname(m, w.id), " (owner '", w.owner, "') waits while ", sid(si.id), " is idle",
                   si.reserved ? cat(" (reserved for '", si.reserved_for, "')") : std::string()));
        }
      }
    }
  }

  // Reservations: each live one points at a distinct live session marked for its owner.
  const auto list = m.core->reservations();
  if (st.reservations != static_cast<int>(list.size()))
    fail("stats_reservations",
         cat("stats().reservations ", st.reservations, ", listed ", list.size()));
  std::set<SessionId> reserved_sessions;
  for (const ReservationInfo& ri : list) {
    auto made = m.reservations_made.find(ri.id);
    if (made == m.reservations_made.end() || made->second != ri.owner)
      fail("reservation_unknown", cat("R", ri.id, " was not made by reserve()"));
    if (ri.session == 0) continue;
    auto si = std::find_if(infos.begin(), infos.end(),
                           [&](const SessionInfo& x) { return x.id == ri.session; });
    if (si == infos.end())
      fail("reservation_session_gone",
           cat("R", ri.id, " holds ", sid(ri.session), ", which is gone"));
    if (!reserved_sessions.insert(ri.session).second)
      fail("reservation_shared", cat(sid(ri.session), " is in two reservations"));
    if (!si->reserved || si->reserved_for != ri.owner) {
      fail("reservation_mark", cat(sid(ri.session), " of R", ri.id, " shows reserved=",
                                   si->reserved, " for '", si->reserved_for, "'"));
    }
  }
  for (const SessionInfo& si : infos) {
    if (si.reserved && reserved_sessions.count(si.id) == 0)
      fail("reservation_mark", cat(sid(si.id), " shows reserved but no reservation holds it"));
  }

  // A client session lives at least client_session_ttl after it was last written.
  for (const auto& [id, put] : m.client_put) {
    if (t < put + c.client_session_ttl && !m.core->get_client_session(id, t).has_value()) {
      fail("client_session_expired_early", cat("client session '", id, "' written at ", at(put),
                                               " is gone (ttl ", ms(c.client_session_ttl), ")"));
    }
  }

  // Client sessions with a lease in flight are never expired (only deleted by
  // the caller), and a record counts every lease in flight under its id.
  if (c.max_client_sessions >= kClientIds.size()) {
    for (std::string_view id : kClientIds) {
      auto lit = m.client_leases.find(id);
      const int since_delete = lit == m.client_leases.end() ? 0 : lit->second;
      const auto in_flight = std::count_if(m.leases.begin(), m.leases.end(),
                                           [&](const LeaseModel& l) { return l.client == id; });
      auto info = m.core->get_client_session(id, t);
      if (since_delete > 0 && !info.has_value()) {
        soft_fail("client_session_expired_in_use", cat("client session '", id, "' is gone with ",
                                                       since_delete, " leases in flight"));
      }
      if (info.has_value() && info->active_leases != in_flight) {
        soft_fail("client_session_active_leases",
                  cat("client session '", id, "' counts ", info->active_leases, " leases, ",
                      in_flight, " in flight"));
      }
    }
  }
  m.last_stats = st;
}

void Sim::check_after_tick(int ci, const PoolStats& before) {
  CoreModel& m = cores_[ci];
  const TimePoint t = now();
  const PoolConfig& c = m.cfg;
  for (const WaiterModel& w : m.waiters) {
    if (w.deadline < t)
      fail("waiter_not_timed_out",
           cat(wname(m, w.id), " is queued past its deadline ", at(w.deadline)));
  }
  for (const LeaseModel& l : m.leases) {
    if (l.expires < t)
      fail("lease_not_reclaimed", cat(lname(m, l.id), " is held past its expiry ", at(l.expires)));
  }
  for (const ReservationInfo& ri : m.core->reservations()) {
    if (ri.expires_at < t)
      fail("reservation_not_expired",
           cat("R", ri.id, " is live past its expiry ", at(ri.expires_at)));
  }
  const std::vector<SessionInfo> infos = m.core->sessions(t);
  const PoolStats st = m.core->stats();
  int live = 0, idle_unreserved = 0, starting = 0, checking = 0;
  bool idle_expired = false;
  for (const SessionInfo& si : infos) {
    live += si.state != SessionState::kClosing ? 1 : 0;
    starting += si.state == SessionState::kStarting ? 1 : 0;
    checking += si.state == SessionState::kChecking ? 1 : 0;
    if (si.state != SessionState::kIdle) continue;
    if (!si.reserved) {
      ++idle_unreserved;
      if (c.idle_timeout.count() > 0 && si.idle > c.idle_timeout) idle_expired = true;
    }
    const TimePoint started = m.sessions.at(si.id).started;
    if (c.max_lifetime.count() > 0 && t - started > c.max_lifetime) {
      fail("lifetime_not_enforced",
           cat(sid(si.id), " is idle ", ms(t - started), " after it started (max_lifetime ",
               ms(c.max_lifetime), ")"));
    }
  }
  // Idle timeout: nothing idle too long while above the warm size and min_idle spares.
  if (idle_expired && live > st.target && idle_unreserved > c.min_idle && !m.draining &&
      !m.shutdown) {
    soft_fail("idle_not_closed", cat("a session idle over ", ms(c.idle_timeout), " stays with ",
                                     live, " live (target ", st.target, ") and ", idle_unreserved,
                                     " idle (min_idle ", c.min_idle, ")"));
  }
  // Overflow is temporary even with the idle timeout off.
  if (c.idle_timeout.count() == 0 && live > c.max && m.waiters.empty() && !m.draining &&
      !m.shutdown) {
    for (const SessionInfo& si : infos) {
      if (si.state == SessionState::kIdle && !si.reserved && si.idle > 60s) {
        soft_fail("overflow_idle_forever",
                  cat(live, " live over max ", c.max, ": ", sid(si.id), " has been idle ",
                      ms(si.idle), " with nobody waiting and no idle timeout"));
      }
    }
  }

  // Demand: waiters not covered by sessions on their way get a start when there is room.
  int waiting = 0;
  for (const WaiterModel& w : m.waiters) waiting += w.deadline > t ? 1 : 0;
  const bool backoff =
      m.last_start_failure.has_value() && t < *m.last_start_failure + c.start_backoff_max;
  // With handoff_after an idle session may be held for a woken waiter: it covers one waiter.
  if (waiting > starting + checking + idle_unreserved && !m.paused && !m.draining &&
      !m.shutdown && !backoff &&
      static_cast<int>(m.sessions.size()) < c.max + c.overflow && starting < c.max_starting &&
      (!cap_ || cap_->used() < cap_->limit())) {
    fail("waiter_starved",
         cat(waiting, " waiting, ", starting, " starting, ", checking, " checking, ",
             m.sessions.size(), " held of ", c.max, "+", c.overflow, ", yet nothing was started"));
  }
  // Warm size and min_idle spares are kept when there is room to start.
  int waiting_reservations = 0;
  for (const ReservationInfo& ri : m.core->reservations())
    waiting_reservations += ri.session == 0 ? 1 : 0;
  const bool room = static_cast<int>(m.sessions.size()) < c.max && starting < c.max_starting &&
                    !backoff && !m.draining && !m.shutdown &&
                    (!cap_ || cap_->used() < cap_->limit());
  if (room && live < st.target) {
    soft_fail("below_warm_size",
              cat(live, " live sessions below the warm size ", st.target, " with room to start"));
  }
  if (room && idle_unreserved + starting + checking - waiting - waiting_reservations < c.min_idle) {
    soft_fail("below_min_idle", cat(idle_unreserved, " idle + ", starting, " starting + ", checking,
                                    " checking for ", waiting, " waiters and ",
                                    waiting_reservations, " reservations, min_idle ", c.min_idle));
  }
  if (waiting_reservations > 0 && idle_unreserved > 0) {
    soft_fail("reservation_waits_while_idle",
              cat(waiting_reservations, " reservations wait for a session while ", idle_unreserved,
                  " are idle"));
  }

  // Client-session cleanup: every interval, at most one run per tick, at most one batch.
  if (st.cleanup_runs > before.cleanup_runs) {
    m.last_cleanup = t;
  } else if (t >= m.last_cleanup + c.client_session_cleanup_interval) {
    fail("cleanup_not_run", cat("no client-session cleanup since ", at(m.last_cleanup),
                                " (interval ", ms(c.client_session_cleanup_interval), ")"));
  }
  if (st.cleanup_runs > before.cleanup_runs + 1)
    fail("cleanup_runs", "more than one cleanup run in a tick");
  if (st.client_sessions_expired >
      before.client_sessions_expired + static_cast<std::uint64_t>(c.client_session_cleanup_batch)) {
    fail("cleanup_batch",
         cat(st.client_sessions_expired - before.client_sessions_expired,
             " client sessions expired in one run, batch ", c.client_session_cleanup_batch));
  }
}

// ----------------------------------------------------------------------------
// the end: shut down, perform everything pending, and check nothing is left

void Sim::finish() {
  for (int ci = 0; ci < ncores(); ++ci) {
    if (!cores_[ci].shutdown) {
      do_control(ci, OpKind::kShutdown);
      check_core(ci, false);
      check_cap();
      end();
    }
  }
  for (int round = 0; round < 100; ++round) {
    bool pending = false;
    for (int ci = 0; ci < ncores(); ++ci) {
      CoreModel& m = cores_[ci];
      auto act = [&](auto&& f) {
        f();
        check_core(ci, false);
        check_cap();
        end();
        pending = true;
      };
      for (int guard = 0; !m.leases.empty() && guard < 10000; ++guard) {
        const std::string owner = m.leases.front().owner;
        act([&] { release_lease(ci, 0, owner, ReleaseOutcome::kOk); });
      }
      auto has = [&](auto pred) { return pick_session(m, 0, pred).has_value(); };
      while (has([](const SessionModel& s) { return s.start_pending; }))
        act([&] { do_complete_start(ci, 0, true); });
      while (has([](const SessionModel& s) { return s.check_pending; }))
        act([&] { do_complete_check(ci, 0, true); });
      while (has([](const SessionModel& s) { return s.stop_pending; }))
        act([&] { do_complete_stop(ci, 0); });
      while (!m.stale.empty()) {
        Op op;
        op.p[0] = 1;
        act([&] { do_stale(ci, op); });
      }
    }
    clock_.advance(1s);
    for (int ci = 0; ci < ncores(); ++ci) do_tick(ci);
    if (!pending) break;
  }
  for (int ci = 0; ci < ncores(); ++ci) {
    CoreModel& m = cores_[ci];
    begin(cat("core", ci, " final check"));
    if (!m.waiters.empty())
      fail("waiter_unanswered",
           cat(m.waiters.size(), " waiters never answered, first ", wname(m, m.waiters[0].id)));
    if (m.answered.size() != m.waiter_no.size())
      fail("waiter_unanswered",
           cat(m.waiter_no.size() - m.answered.size(), " waiters never answered"));
    if (!m.sessions.empty())
      fail("not_drained", cat(m.sessions.size(), " sessions still held after shutdown"));
    if (!m.leases.empty())
      fail("not_drained", cat(m.leases.size(), " leases still out after shutdown"));
    if (!m.core->drained() || m.core->session_count() != 0)
      fail("not_drained", "drained() is false after shutdown");
    end();
  }
  if (cap_ && cap_->used() != 0)
    fail("shared_cap_count", cat("shared cap still used ", cap_->used(), " after shutdown"));
}

// ----------------------------------------------------------------------------
// running, replaying and minimizing

// What runs now, so a sanitizer report that kills the process still names the seed.
std::uint64_t g_seed_under_way = 0;
const Sim* g_sim_under_way = nullptr;

[[maybe_unused]] void print_seed_under_way() {
  if (g_seed_under_way == 0) return;
  std::fprintf(stderr,
               "\n==== pool core simulation died in seed %llu; replay: POOLKEEPER_SIM_SEED=%llu\n",
               static_cast<unsigned long long>(g_seed_under_way),
               static_cast<unsigned long long>(g_seed_under_way));
  if (g_sim_under_way != nullptr) {
    for (const std::string& line : g_sim_under_way->snapshot())
      std::fprintf(stderr, "  %s\n", line.c_str());
  }
}

// One broken rule found in a run, with what led to it.
struct Found {
  Violation violation;
  std::deque<std::string> recent;
  std::size_t ops = 0;  // generated operations up to it (the rest of a run is not needed)
};

struct RunResult {
  std::vector<Found> found;  // the first of each rule; a hard failure ends the run
  std::map<std::string, std::uint64_t> coverage;
  std::vector<Op> ops;  // the generated operations
  std::uint64_t generated = 0;
  std::uint64_t executed = 0;
  std::uint64_t digest = 0;
};

RunResult run_seed(const SimSetup& setup, bool trace) {
  RunResult res;
  std::optional<Sim> sim;
  SoftSink sink;
  sink.record = [&](const std::string& tag, const std::string& detail) {
    for (const Found& f : res.found) {
      if (f.violation.tag == tag) return;
    }
    res.found.push_back(
        {{tag, detail}, sim ? sim->snapshot() : std::deque<std::string>{}, res.ops.size()});
  };
  g_soft_sink = &sink;
  g_seed_under_way = setup.seed;
  try {
    sim.emplace(setup, trace, false);
    g_sim_under_way = &*sim;
    Random r(setup.seed ^ 0x0b5e55ed0b5e55edULL);
    for (int i = 0; i < setup.ops; ++i) {
      res.ops.push_back(sim->generate(r, setup.ops - i, setup.ops));
      ++res.generated;
      sim->step(res.ops.back());
    }
    sim->finish();
  } catch (const Violation& v) {
    if (sim) sim->end();
    res.found.push_back({v, sim ? sim->recent() : std::deque<std::string>{}, res.ops.size()});
  }
  g_soft_sink = nullptr;
  g_sim_under_way = nullptr;
  if (sim) {
    res.coverage = sim->coverage();
    res.executed = sim->executed();
    res.digest = sim->digest();
  }
  return res;
}

// Runs `ops` then the final phase, stopping at the rule `tag` (or any hard
// failure). `lines` gets every operation.
std::optional<Violation> replay(const SimSetup& setup, const std::vector<Op>& ops,
                                const std::string& tag, std::vector<std::string>* lines) {
  SoftSink sink;
  sink.only = tag;
  g_soft_sink = &sink;
  g_seed_under_way = setup.seed;
  std::optional<Sim> sim;
  std::optional<Violation> found;
  try {
    sim.emplace(setup, false, lines != nullptr);
    g_sim_under_way = &*sim;
    for (const Op& op : ops) sim->step(op);
    sim->finish();
  } catch (const Violation& v) {
    found = v;
    if (sim) sim->end();
  }
  g_soft_sink = nullptr;
  g_sim_under_way = nullptr;
  if (lines != nullptr && sim) *lines = sim->all_lines();
  return found;
}

// Delta debugging: drops chunks of operations while the same rule still breaks.
std::vector<Op> shrink(const SimSetup& setup, std::vector<Op> ops, const std::string& tag,
                       std::chrono::steady_clock::duration budget) {
  const auto until = std::chrono::steady_clock::now() + budget;
  auto still_fails = [&](const std::vector<Op>& candidate) {
    auto v = replay(setup, candidate, tag, nullptr);
    return v.has_value() && v->tag == tag;
  };
  std::size_t parts = 2;
  while (ops.size() >= 2 && std::chrono::steady_clock::now() < until) {
    const std::size_t chunk = (ops.size() + parts - 1) / parts;
    bool reduced = false;
    for (std::size_t start = 0; start < ops.size() && std::chrono::steady_clock::now() < until;
         start += chunk) {
      std::vector<Op> candidate(ops.begin(), ops.begin() + static_cast<std::ptrdiff_t>(start));
      candidate.insert(
          candidate.end(),
          ops.begin() + static_cast<std::ptrdiff_t>(std::min(ops.size(), start + chunk)),
          ops.end());
      if (still_fails(candidate)) {
        ops = std::move(candidate);
        parts = std::max<std::size_t>(parts - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (parts >= ops.size()) break;
      parts = std::min(ops.size(), parts * 2);
    }
  }
  return ops;
}

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 0);
}

void report(const SimSetup& setup, const RunResult& res, const Found& found,
            std::chrono::steady_clock::duration shrink_budget) {
  const Violation& v = found.violation;
  std::string text = cat("\n==== pool core simulation: rule '", v.tag, "' broken\n", v.detail, "\n",
                         describe(setup), "replay: POOLKEEPER_SIM_SEED=", setup.seed,
                         " ctest -R sim --output-on-failure\n", "last operations:\n");
  for (const std::string& line : found.recent) text += "  " + line + "\n";
  if (shrink_budget.count() > 0) {
    const std::vector<Op> prefix(res.ops.begin(),
                                 res.ops.begin() + static_cast<std::ptrdiff_t>(found.ops));
    const std::vector<Op> small = shrink(setup, prefix, v.tag, shrink_budget);
    std::vector<std::string> lines;
    const auto again = replay(setup, small, v.tag, &lines);
    text += cat("minimized to ", small.size(), " operations (then shutdown and drain):\n");
    for (const std::string& line : lines) text += "  " + line + "\n";
    if (again) text += cat("  => ", again->tag, ": ", again->detail, "\n");
  }
  std::fprintf(stderr, "%s", text.c_str());
}

// Verifies every pool rule after every step of random operation sequences over many seeds.
TEST(PoolCoreSimTest, RandomOperationsKeepThePoolRules) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  constexpr std::uint64_t kDefaultOps = 300'000;  // sanitizers are several times slower
#else
  constexpr std::uint64_t kDefaultOps = 1'200'000;
#endif
  const std::uint64_t total = env_u64("POOLKEEPER_SIM_OPS", kDefaultOps);
  const std::uint64_t only = env_u64("POOLKEEPER_SIM_SEED", 0);
  const std::uint64_t first = env_u64("POOLKEEPER_SIM_FIRST_SEED", 1);
  const bool minimize = env_u64("POOLKEEPER_SIM_SHRINK", 1) != 0;
  const bool trace = env_u64("POOLKEEPER_SIM_TRACE", 0) != 0;
  const auto t0 = std::chrono::steady_clock::now();
#ifdef POOLKEEPER_SIM_SANITIZED
  __sanitizer_set_death_callback(print_seed_under_way);
#endif

  std::uint64_t generated = 0, executed = 0, seeds = 0, failures = 0;
  std::map<std::string, std::pair<std::uint64_t, int>> by_tag;  // tag -> first seed, count
  std::map<std::string, std::string> seeds_by_tag;              // a few more seeds per tag
  std::map<std::string, std::uint64_t> coverage;
  std::uint64_t shared_cap_seeds = 0;
  for (std::uint64_t seed = only != 0 ? only : first;; ++seed) {
    const SimSetup setup = make_setup(seed);
    const RunResult res = run_seed(setup, trace && only != 0);
    generated += res.generated;
    executed += res.executed;
    ++seeds;
    shared_cap_seeds += setup.cap_limit > 0 ? 1 : 0;
    for (const auto& [what, n] : res.coverage) coverage[what] += n;
    failures += res.found.empty() ? 0 : 1;
    for (const Found& f : res.found) {
      const Violation& v = f.violation;
      auto& [first_seed, count] = by_tag.try_emplace(v.tag, seed, 0).first->second;
      if (count++ == 0) {
        // Minimizing replays the seed many times: a few seconds per broken rule, 30 s at most.
        const auto spent = std::chrono::steady_clock::now() - t0;
        const auto left =
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(30s) - spent;
        const auto budget = std::min<std::chrono::steady_clock::duration>(4s, left);
        report(setup, res, f,
               minimize && budget > 1s ? budget : std::chrono::steady_clock::duration{0});
      }
      if (count <= 8) seeds_by_tag[v.tag] += cat(" ", seed);
      if (count <= 2) ADD_FAILURE() << "seed " << seed << ": " << v.tag << ": " << v.detail;
    }
    if (only != 0 || generated >= total) break;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "[ sim      ] %llu seeds, %llu operations (%llu with the final drains) in %.1f s, %llu "
      "failing seeds\n",
      static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(generated),
      static_cast<unsigned long long>(executed), secs, static_cast<unsigned long long>(failures));
  std::printf("[ sim      ] %llu seeds with a shared cap; seen:",
              static_cast<unsigned long long>(shared_cap_seeds));
  for (const auto& [what, n] : coverage)
    std::printf(" %s=%llu;", what.c_str(), static_cast<unsigned long long>(n));
  std::printf("\n");
  for (const auto& [tag, info] : by_tag) {
    std::printf("[ sim      ]   %-32s %d seeds:%s\n", tag.c_str(), info.second,
                seeds_by_tag[tag].c_str());
  }
  if (only == 0) {
    EXPECT_GE(generated, total);
  }
}

// Verifies that a seed replays exactly, so a printed seed reproduces a failure.
TEST(PoolCoreSimTest, ReplaysASeedExactly) {
  for (std::uint64_t seed = 424242; seed < 424252; ++seed) {
    const SimSetup setup = make_setup(seed);
    const RunResult a = run_seed(setup, false);
    const RunResult b = run_seed(setup, false);
    EXPECT_EQ(a.executed, b.executed) << "seed " << seed;
    EXPECT_EQ(a.digest, b.digest) << "seed " << seed;
    EXPECT_EQ(a.found.size(), b.found.size()) << "seed " << seed;
    EXPECT_GT(a.executed, 0u);
  }
}

}  // namespace
}  // namespace poolkeeper::core
