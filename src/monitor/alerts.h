// Alert rules: a measured value against a threshold, with a `for` duration
// and the states pending → firing → resolved (docs/alerts.md).
//
// An alert is one rule on one subject (a pool, a budget, the daemon): at most
// one of each is active, so a condition that stays true fires once. It turns
// pending when the value goes above the threshold, fires once it has stayed
// above for the rule's `for`, and resolves once it has stayed at or below for
// as long (so a value hovering at the threshold does not flap). A pending
// alert whose value drops back is forgotten without a word. A subject that
// sends no value keeps its state (no data is not recovery).
//
// No I/O, no clock: time comes in with each observation, so the rules are
// tested with a manual clock. The daemon measures, feeds, and delivers what
// changed (log, events, webhooks, the store).
//
// Thread-safety: none; one owner.
//
//   AlertEngine engine(builtin_rules());
//   engine.set_threshold("queue_length", "python", 50);   // a pool's own
//   for (AlertChange& c : engine.observe(now, samples)) deliver(c);
#pragma once

#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "poolkeeper/clock.h"
#include "poolkeeper/stats.h"

namespace poolkeeper::monitor {

struct AlertRule {
  std::string name;           // "queue_length"
  std::string description;    // "requests waiting for a session"
  double threshold = 0;       // fires above it
  Duration for_duration{0};   // how long above before it fires (and at or below before it resolves)
  std::string unit;           // for messages: "", "s", "%" (a fraction shown as a percentage)
};

// The rules built in, with the seeds' defaults (docs/alerts.md).
std::vector<AlertRule> builtin_rules();

// One measurement: `rule`'s value for `subject` (a pool's name, "" for the
// daemon, "tenant:NAME" for a tenant's budget).
struct AlertSample {
  std::string rule;
  std::string subject;
  double value = 0;
};

enum class AlertState { kPending, kFiring };

struct ActiveAlert {
  std::string rule;
  std::string subject;
  AlertState state = AlertState::kPending;
  double value = 0;      // the latest
  double threshold = 0;
  TimePoint since{};     // pending since, or firing since
};

struct AlertChange {
  std::string rule;
  std::string subject;
  bool firing = true;    // false: resolved
  double value = 0;
  double threshold = 0;
  TimePoint at{};
  std::string message;   // "queue_length of python is 14 (above 10 for 1m)"
};

class AlertEngine {
 public:
  explicit AlertEngine(std::vector<AlertRule> rules);

  // A subject's own threshold for a rule (a pool's configuration).
  void set_threshold(const std::string& rule, const std::string& subject, double threshold);
  // False for an unknown rule name.
  bool knows(const std::string& rule) const;

  // Feeds what was measured at `now`; returns the alerts that started firing
  // or resolved, in the order of `samples`.
  std::vector<AlertChange> observe(TimePoint now, const std::vector<AlertSample>& samples);

  // Pending and firing alerts, by rule then subject.
  std::vector<ActiveAlert> active() const;
  const std::vector<AlertRule>& rules() const { return rules_; }
  double threshold(const std::string& rule, const std::string& subject) const;

 private:
  struct Entry {
    AlertState state = AlertState::kPending;
    double value = 0;
    TimePoint since{};                // pending or firing since
    std::optional<TimePoint> below{};  // firing, and at or below since
  };
  const AlertRule* rule(const std::string& name) const;
  std::string message(const AlertRule& r, const std::string& subject, double value, double threshold,
                      bool firing) const;

  std::vector<AlertRule> rules_;
  std::map<std::pair<std::string, std::string>, double> thresholds_;  // (rule, subject)
  std::map<std::pair<std::string, std::string>, Entry> entries_;
};

// A value as a rule shows it: "14", "31.5 s", "92%".
std::string format_value(double value, const std::string& unit);

// Who hears of a subject's alerts: a pool's (and its budget's, "pool:NAME")
// go to that pool's listeners, a tenant's budget ("tenant:NAME") to that
// tenant, the global budget ("global") to admins only (audience as in
// EventBus: "" everyone who may see the pool, "tenant:NAME", "admin").
struct AlertScope {
  std::string pool;
  std::string audience;
};
AlertScope scope_of(const std::string& subject);

// Measures one pool for the rules from its statistics: queue_length,
// queue_wait, utilization, unhealthy_sessions, start_failure_rate (what the
// start counters moved by over the last five minutes), client_sessions and
// memory_over_limit (sessions over their memory limit since the last call).
class PoolSampler {
 public:
  explicit PoolSampler(std::string pool) : pool_(std::move(pool)) {}
  std::vector<AlertSample> sample(const PoolStats& st, TimePoint now, std::uint64_t over_memory);

 private:
  struct Starts {
    TimePoint at;
    std::uint64_t created;
    std::uint64_t failed;
  };
  std::string pool_;
  std::deque<Starts> starts_;
};

}  // namespace poolkeeper::monitor
