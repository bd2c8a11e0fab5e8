// CoreHarness: plays the shell around one PoolCore in tests.
//
// It owns the core, a ManualClock and the Output, passes `clock.now()` into
// every call, and records every action and event the core emits. Starts,
// stops and checks the core asks for stay pending until the test completes
// them (complete_starts(), complete_stops(), finish_checks(), settle()), so a
// test decides exactly when each result arrives. Answers to queued acquires
// (kGrant / kReject) are collected by waiter id, and the harness checks that no
// waiter is answered twice.
//
// Thread-safety: none; one test thread.
//
//   CoreHarness h(config);
//   h.start();
//   h.settle();                       // every start succeeds, every stop is confirmed
//   auto lease = h.acquire({.priority = 5});
//   h.advance(std::chrono::seconds(10));   // moves the clock and ticks
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <expected>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/actions.h"
#include "core/pool_core.h"
#include "poolkeeper/error.h"
#include "poolkeeper/pool_config.h"
#include "poolkeeper/stats.h"
#include "testing/manual_clock.h"

namespace poolkeeper::testing {

using core::AcquireOutcome;
using core::AcquireRequest;
using core::Action;
using core::ActionType;
using core::Event;
using core::EventType;
using core::Grant;
using core::Output;
using core::PoolCore;
using core::ReleaseOutcome;
using core::WaiterId;

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

// A config whose rules are all off or generous, so each test turns on only
// what it checks: no idle timeout, no early rejection, no aging.
inline PoolConfig quiet_config(int min = 0, int max = 4) {
  PoolConfig c;
  c.name = "test";
  c.min = min;
  c.max = max;
  c.max_starting = 64;
  c.aging = Duration{0};
  c.early_reject = false;
  c.idle_timeout = Duration{0};
  c.lifetime_jitter = 0.0;
  return c;
}

// What tests pass to acquire: the core's own request (every member defaults).
using AcquireArgs = AcquireRequest;

class CoreHarness {
 public:
  explicit CoreHarness(PoolConfig config, core::CoreOptions options = {.seed = 42})
      : core_(std::make_unique<PoolCore>(std::move(config), options)) {}

  PoolCore& core() { return *core_; }
  const PoolCore& core() const { return *core_; }
  TimePoint now() const { return clock.now(); }

  ManualClock clock;

  // --- driving the core ---

  void start() {
    call([&](Output& o) { core_->start(now(), o); });
  }

  void usage_sampled(SessionId s, const core::UsageSample& usage) {
    call([&](Output& o) { core_->usage_sampled(s, usage, now(), o); });
  }
  void recycle(SessionId s, StopReason reason) {
    call([&](Output& o) { core_->recycle(s, reason, now(), o); });
  }

  std::expected<AcquireOutcome, Error> acquire(const AcquireArgs& args) {
    const AcquireRequest& request = args;
    std::expected<AcquireOutcome, Error> result;
    call([&](Output& o) { result = core_->acquire(request, now(), o); });
    if (result && !result->granted) queued_.push_back(result->waiter);
    return result;
  }
  // An acquire that waits at most `timeout` from now.
  std::expected<AcquireOutcome, Error> acquire_within(Duration timeout,
                                                      int priority = kNormalPriority) {
    return acquire({.priority = priority, .deadline = now() + timeout});
  }
  // An acquire that must be granted at once; returns its grant.
  Grant lease_now(const AcquireArgs& request = {}) {
    auto r = acquire(request);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    if (!r) return {};
    EXPECT_TRUE(r->granted) << "acquire was queued as waiter " << r->waiter;
    return r->grant;
  }
  // An acquire that must be queued; returns its waiter id.
  WaiterId queue(const AcquireArgs& request = {}) {
    auto r = acquire(request);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    if (!r) return 0;
    EXPECT_FALSE(r->granted) << "acquire was granted at once";
    return r->granted ? 0 : r->waiter;
  }

  std::expected<void, Error> release(LeaseId lease, ReleaseOutcome outcome = ReleaseOutcome::kOk,
                                     std::optional<std::string_view> owner = std::nullopt) {
    std::expected<void, Error> result;
    call([&](Output& o) { result = core_->release(lease, owner, outcome, now(), o); });
    return result;
  }

  std::expected<void, Error> cancel(WaiterId waiter) {
    std::expected<void, Error> result;
    call([&](Output& o) { result = core_->cancel(waiter, now(), o); });
    if (result) cancelled_.insert(waiter);
    return result;
  }

  void tick() {
    call([&](Output& o) { core_->tick(now(), o); });
  }
  // A waiter woken by kWake tries again.
  void retry(WaiterId waiter) {
    call([&](Output& o) { core_->retry(waiter, now(), o); });
  }
  // Waiters woken (kWake) so far, oldest first.
  const std::vector<WaiterId>& wakes() const { return wakes_; }
  // Moves the clock by `d` and ticks once.
  void advance(Duration d) {
    clock.advance(d);
    tick();
  }
  // Moves the clock by `total` in steps of `step`, ticking after each step.
  void advance_in_steps(Duration total, Duration step) {
    for (Duration done{0}; done < total; done += step) advance(std::min(step, total - done));
  }

  std::expected<void, Error> scale(int target) {
    std::expected<void, Error> result;
    call([&](Output& o) { result = core_->scale(target, now(), o); });
    return result;
  }
  std::expected<void, Error> reconfigure(PoolConfig config) {
    std::expected<void, Error> result;
    call([&](Output& o) { result = core_->reconfigure(std::move(config), now(), o); });
    return result;
  }
  void pause() {
    call([&](Output& o) { core_->pause(now(), o); });
  }
  void resume() {
    call([&](Output& o) { core_->resume(now(), o); });
  }
  void drain() {
    call([&](Output& o) { core_->drain(now(), o); });
  }
  void emergency_stop() {
    call([&](Output& o) { core_->emergency_stop(now(), o); });
  }
  void emergency_resume() {
    call([&](Output& o) { core_->emergency_resume(now(), o); });
  }
  void set_autoscale(bool on) {
    call([&](Output& o) { core_->set_autoscale(on, now(), o); });
  }
  void set_budget_exceeded(bool exceeded, std::string why = "daily budget spent") {
    call([&](Output& o) { core_->set_budget_exceeded(exceeded, std::move(why), now(), o); });
  }
  void shutdown(TimePoint leases_until = TimePoint::max()) {
    call([&](Output& o) { core_->shutdown(now(), o, leases_until); });
  }

  std::expected<core::ReservationInfo, Error> reserve(std::string_view owner, Duration lasting) {
    std::expected<core::ReservationInfo, Error> result;
    call([&](Output& o) { result = core_->reserve(owner, now() + lasting, now(), o); });
    return result;
  }
  std::expected<void, Error> cancel_reservation(core::ReservationId id, std::string_view owner) {
    std::expected<void, Error> result;
    call([&](Output& o) { result = core_->cancel_reservation(id, owner, now(), o); });
    return result;
  }

  // --- answering the core's actions ---

  // Reports the oldest `limit` pending starts as started (and any starts they
  // trigger, until `limit` is reached). Returns the sessions started.
  std::vector<SessionId> complete_starts(int limit = 1 << 30) {
    std::vector<SessionId> done;
    while (!pending_starts_.empty() && static_cast<int>(done.size()) < limit) {
      SessionId s = pending_starts_.front();
      pending_starts_.pop_front();
      done.push_back(s);
      call([&](Output& o) { core_->session_started(s, now(), o); });
    }
    return done;
  }
  void fail_start(SessionId s, std::string_view error) {
    erase(pending_starts_, s);
    call([&](Output& o) { core_->session_start_failed(s, error, now(), o); });
  }
  // Fails every pending start with `error`; returns how many.
  int fail_starts(std::string_view error) {
    int n = 0;
    while (!pending_starts_.empty()) {
      fail_start(pending_starts_.front(), error);
      ++n;
    }
    return n;
  }
  // Confirms every pending stop (and those confirming triggers). Returns how many.
  int complete_stops() {
    int n = 0;
    while (!pending_stops_.empty()) {
      SessionId s = pending_stops_.front();
      pending_stops_.pop_front();
      ++n;
      call([&](Output& o) { core_->session_stopped(s, now(), o); });
    }
    return n;
  }
  void stop_confirmed(SessionId s) {
    erase(pending_stops_, s);
    call([&](Output& o) { core_->session_stopped(s, now(), o); });
  }
  void exited(SessionId s, std::string_view why = "crashed") {
    erase(pending_starts_, s);
    erase(pending_stops_, s);
    erase(pending_checks_, s);
    call([&](Output& o) { core_->session_exited(s, why, now(), o); });
  }
  // Answers every pending check with `healthy`. Returns how many.
  int finish_checks(bool healthy = true) {
    int n = 0;
    while (!pending_checks_.empty()) {
      SessionId s = pending_checks_.front();
      pending_checks_.pop_front();
      ++n;
      call([&](Output& o) { core_->check_result(s, healthy, now(), o); });
    }
    return n;
  }
  void check_result(SessionId s, bool healthy) {
    erase(pending_checks_, s);
    call([&](Output& o) { core_->check_result(s, healthy, now(), o); });
  }
  // Completes starts and stops until nothing is pending (checks stay pending).
  void settle() {
    for (int round = 0; round < 1000; ++round) {
      if (pending_starts_.empty() && pending_stops_.empty()) return;
      complete_starts();
      complete_stops();
    }
    ADD_FAILURE() << "the core keeps asking for starts or stops";
  }

  const std::deque<SessionId>& pending_starts() const { return pending_starts_; }
  const std::deque<SessionId>& pending_stops() const { return pending_stops_; }
  const std::deque<SessionId>& pending_checks() const { return pending_checks_; }

  // --- what the core said ---

  // The output of the most recent call.
  const Output& last() const { return out_; }
  const std::vector<Action>& actions() const { return actions_; }
  const std::vector<Event>& events() const { return events_; }
  // Marks the journal position; *_since(mark) look only at what came after.
  std::size_t mark() const { return actions_.size(); }
  std::size_t event_mark() const { return events_.size(); }

  std::vector<Action> actions_of(ActionType type, std::size_t since = 0) const {
    std::vector<Action> r;
    for (std::size_t i = since; i < actions_.size(); ++i) {
      if (actions_[i].type == type) r.push_back(actions_[i]);
    }
    return r;
  }
  int count(ActionType type, std::size_t since = 0) const {
    return static_cast<int>(actions_of(type, since).size());
  }
  std::vector<Action> stops(StopReason reason, std::size_t since = 0) const {
    std::vector<Action> r;
    for (const Action& a : actions_of(ActionType::kStopSession, since)) {
      if (a.reason == reason) r.push_back(a);
    }
    return r;
  }
  int count_stops(StopReason reason, std::size_t since = 0) const {
    return static_cast<int>(stops(reason, since).size());
  }
  bool stopped(SessionId s) const {
    for (const Action& a : actions_) {
      if (a.type == ActionType::kStopSession && a.session == s) return true;
    }
    return false;
  }
  std::vector<Event> events_of(EventType type, std::size_t since = 0) const {
    std::vector<Event> r;
    for (std::size_t i = since; i < events_.size(); ++i) {
      if (events_[i].type == type) r.push_back(events_[i]);
    }
    return r;
  }

  // The grant for a queued waiter, if it got one.
  std::optional<Grant> grant_of(WaiterId w) const {
    auto it = grants_.find(w);
    if (it == grants_.end()) return std::nullopt;
    return it->second;
  }
  // The error a queued waiter was rejected with, if it was.
  std::optional<Error> reject_of(WaiterId w) const {
    auto it = rejects_.find(w);
    if (it == rejects_.end()) return std::nullopt;
    return it->second;
  }
  // The grant of a waiter that must have been granted (a test failure otherwise).
  // The first lease of a pool with nothing idle: its waiter's session takes
  // `start_time` to start (the start time the core learns).
  Grant lease_after_start(Duration start_time) {
    const WaiterId w = queue();
    clock.advance(start_time);
    complete_starts();
    return granted(w);
  }
  Grant granted(WaiterId w) const {
    auto g = grant_of(w);
    if (!g) {
      ADD_FAILURE() << "waiter " << w << " was not granted";
      return {};
    }
    return *g;
  }
  // The error of a waiter that must have been rejected (a test failure otherwise).
  Error rejected(WaiterId w) const {
    auto e = reject_of(w);
    if (!e) {
      ADD_FAILURE() << "waiter " << w << " was not rejected";
      return Error(ErrorCode::kInvalidArgument, "<not rejected>");
    }
    return *e;
  }
  int answers(WaiterId w) const {
    auto it = answers_.find(w);
    return it == answers_.end() ? 0 : it->second;
  }
  bool answered(WaiterId w) const { return answers(w) > 0; }
  // Waiters in the order they were granted.
  const std::vector<WaiterId>& grant_order() const { return grant_order_; }
  // Every acquire that was queued, in order.
  const std::vector<WaiterId>& queued() const { return queued_; }
  const std::set<WaiterId>& cancelled() const { return cancelled_; }

  // Sessions and their states, as the core reports them.
  std::optional<SessionInfo> session(SessionId s) const { return core_->session(s, now()); }
  // The session's info; a test failure (and a default value) when the core does not know it.
  SessionInfo info(SessionId s) const {
    auto i = core_->session(s, now());
    if (!i) {
      ADD_FAILURE() << "unknown session " << s;
      return {};
    }
    return *i;
  }
  // A client session's info; a test failure (and a default value) when it is unknown.
  core::ClientSessionInfo client_session(std::string_view id) const {
    auto c = core_->get_client_session(id, now());
    if (!c) {
      ADD_FAILURE() << "client session " << id << ": " << c.error().message;
      return {};
    }
    return *c;
  }
  int count_state(SessionState state) const {
    return core_->stats().sessions_by_state[static_cast<int>(state)];
  }
  int idle() const { return count_state(SessionState::kIdle); }
  int leased() const { return count_state(SessionState::kLeased); }
  PoolStats stats() const { return core_->stats(); }

 private:
  template <class F>
  void call(F&& f) {
    out_.clear();
    f(out_);
    absorb();
  }

  void absorb() {
    for (const Action& a : out_.actions) {
      actions_.push_back(a);
      switch (a.type) {
        case ActionType::kStartSession:
          pending_starts_.push_back(a.session);
          break;
        case ActionType::kStopSession:
          // A stop answers an outstanding start or check too.
          erase(pending_starts_, a.session);
          erase(pending_checks_, a.session);
          if (std::find(pending_stops_.begin(), pending_stops_.end(), a.session) ==
              pending_stops_.end()) {
            pending_stops_.push_back(a.session);
          }
          break;
        case ActionType::kCheckSession:
          pending_checks_.push_back(a.session);
          break;
        case ActionType::kGrant:
          grants_[a.waiter] = a.grant;
          grant_order_.push_back(a.waiter);
          note_answer(a.waiter);
          break;
        case ActionType::kReject:
          rejects_[a.waiter] = a.error;
          note_answer(a.waiter);
          break;
        case ActionType::kWake:
          wakes_.push_back(a.waiter);
          break;
      }
    }
    for (const Event& e : out_.events) events_.push_back(e);
  }

  void note_answer(WaiterId w) {
    if (w == 0) return;  // not a queued waiter
    const int n = ++answers_[w];
    EXPECT_EQ(n, 1) << "waiter " << w << " was answered " << n << " times";
    EXPECT_EQ(cancelled_.count(w), 0u) << "waiter " << w << " was answered after its cancel";
  }

  static void erase(std::deque<SessionId>& q, SessionId s) {
    q.erase(std::remove(q.begin(), q.end(), s), q.end());
  }

  std::unique_ptr<PoolCore> core_;
  Output out_;
  std::vector<Action> actions_;
  std::vector<Event> events_;
  std::deque<SessionId> pending_starts_;
  std::deque<SessionId> pending_stops_;
  std::deque<SessionId> pending_checks_;
  std::map<WaiterId, Grant> grants_;
  std::map<WaiterId, Error> rejects_;
  std::map<WaiterId, int> answers_;
  std::vector<WaiterId> grant_order_;
  std::vector<WaiterId> wakes_;
  std::vector<WaiterId> queued_;
  std::set<WaiterId> cancelled_;
};

// A fixture holding one harness, made by the test with the config it needs.
class CoreHarnessTest : public ::testing::Test {
 protected:
  CoreHarness& make(PoolConfig config, core::CoreOptions options = {.seed = 42}) {
    h_ = std::make_unique<CoreHarness>(std::move(config), options);
    return *h_;
  }
  // Makes a harness, starts the pool and brings its warm sessions up.
  CoreHarness& make_started(PoolConfig config, core::CoreOptions options = {.seed = 42}) {
    CoreHarness& h = make(std::move(config), options);
    h.start();
    h.settle();
    return h;
  }

  std::unique_ptr<CoreHarness> h_;
};

}  // namespace poolkeeper::testing
