// Cost accounting: what a pool's sessions cost, as exact integer
// micro-dollars, split across UTC days (budgets: core/budget.h).
//
// Pure: wall time comes in as UNIX milliseconds on every call. A rate per
// hour is charged by the millisecond without drift: a session's time charge
// up to t is floor(rate * (t - start) / 1 h), and each charge is the
// difference to what was charged before, so however often accrue() runs, a
// session's charges add up to exactly that, and a day gets exactly the part
// of it that fell inside the day.
//
// Thread-safety: plain values; one owner.
//
//   CostMeter meter({.per_session = 10'000, .per_hour_alive = 50'000});
//   std::vector<CostCharge> out;
//   meter.session_started(7, now_ms, out);   // the creation fee
//   meter.accrue(now_ms + 3'600'000, out);   // an hour alive: 50'000
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "poolkeeper/stats.h"

namespace poolkeeper::core {

inline constexpr std::int64_t kMillisPerHour = 3'600'000;
inline constexpr std::int64_t kMillisPerDay = 86'400'000;
// The highest price per hour a model may hold ($1,000,000 an hour): time
// charges are exact below it.
inline constexpr std::int64_t kMaxRatePerHour = 1'000'000'000'000;

// Prices of one pool, in micro-dollars.
struct CostModel {
  std::int64_t per_session = 0;      // once, when a session is created
  std::int64_t per_hour_alive = 0;   // while a session exists
  std::int64_t per_hour_leased = 0;  // while a session is leased
  std::int64_t per_use = 0;          // once per lease

  bool free() const {
    return per_session == 0 && per_hour_alive == 0 && per_hour_leased == 0 && per_use == 0;
  }
  bool operator==(const CostModel&) const = default;
};

enum class ChargeKind : std::uint8_t { kCreated, kAlive, kLeased, kUse };
std::string_view to_string(ChargeKind kind);

struct CostCharge {
  std::int64_t at_ms = 0;  // when it was charged
  std::int64_t day = 0;    // the UTC day the cost belongs to
  SessionId session = 0;
  std::string tenant;      // who held the lease; empty for the pool's own costs
  ChargeKind kind = ChargeKind::kCreated;
  std::int64_t micros = 0;
};

// The UTC day of a UNIX time in milliseconds (floor, also before 1970).
std::int64_t day_of(std::int64_t unix_ms);
// The month of a UTC day as year * 12 + (month - 1).
std::int64_t month_of_day(std::int64_t day);

class CostMeter {
 public:
  explicit CostMeter(CostModel model = {}) : model_(model) {}

  // New prices apply from now: time until now is charged at the old ones.
  void set_model(const CostModel& model, std::int64_t now_ms, std::vector<CostCharge>& out);
  const CostModel& model() const { return model_; }

  void session_started(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out);
  void leased(SessionId session, const std::string& tenant, std::int64_t at_ms,
              std::vector<CostCharge>& out);
  void released(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out);
  // Charges what is left (an open lease ends here too) and forgets the session.
  void session_closed(SessionId session, std::int64_t at_ms, std::vector<CostCharge>& out);
  // Charges the time of every live session and lease up to now.
  void accrue(std::int64_t now_ms, std::vector<CostCharge>& out);

  // The charges of a session this meter did not watch (a run that died left
  // it open; a provider made it unbeknownst): its time alive from `from_ms`
  // to `to_ms` at this model's price per hour alive (split by day), and the
  // creation fee when `created`. Appends them and returns their sum; the
  // meter itself is unchanged.
  std::int64_t charge_unobserved(SessionId session, std::int64_t from_ms, std::int64_t to_ms, bool created,
                                 std::vector<CostCharge>& out) const;
  // What a live session has cost so far (charged), or nullopt.
  std::optional<std::int64_t> session_cost(SessionId session) const;
  std::size_t live() const { return sessions_.size(); }
  // What the live sessions and leases cost per hour now.
  std::int64_t hourly_rate() const;

 private:
  // A stretch of time charged at a rate: `charged` is what was charged of it.
  struct Span {
    std::int64_t start_ms = 0;
    std::int64_t until_ms = 0;  // charged up to here
    std::int64_t rate = 0;      // micro-dollars per hour
    std::int64_t charged = 0;
  };
  struct Live {
    Span alive;
    std::optional<Span> lease;
    std::string tenant;
    std::int64_t total = 0;
  };

  // Charges span up to `to`, one charge per UTC day it crosses.
  static void charge_span(Span& span, std::int64_t to, SessionId session, const std::string& tenant,
                          ChargeKind kind, std::int64_t at_ms, Live& live,
                          std::vector<CostCharge>& out);

  CostModel model_;
  std::map<SessionId, Live> sessions_;
};

}  // namespace poolkeeper::core
