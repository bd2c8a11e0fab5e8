#include "core/cost.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <tuple>

namespace poolkeeper::core {
namespace {

constexpr std::int64_t kH = kMillisPerHour;
constexpr std::int64_t kDay0 = 20'000;  // 2024-10-04
constexpr std::int64_t kT0 = kDay0 * kMillisPerDay;

std::int64_t sum(const std::vector<CostCharge>& out, ChargeKind kind) {
  std::int64_t total = 0;
  for (const auto& c : out) total += c.kind == kind ? c.micros : 0;
  return total;
}

// Verifies the one-off fees: creation to the pool, each use to its tenant.
TEST(CostMeterTest, ChargesCreationAndUse) {
  CostMeter m({.per_session = 10'000, .per_use = 25});
  std::vector<CostCharge> out;
  m.session_started(1, kT0, out);
  m.leased(1, "alice", kT0 + 5, out);
  m.released(1, kT0 + 9, out);
  m.leased(1, "bob", kT0 + 10, out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].kind, ChargeKind::kCreated);
  EXPECT_EQ(out[0].micros, 10'000);
  EXPECT_EQ(out[0].tenant, "");
  EXPECT_EQ(out[0].day, kDay0);
  EXPECT_EQ(out[1].tenant, "alice");
  EXPECT_EQ(out[2].tenant, "bob");
  EXPECT_EQ(out[2].micros, 25);
  EXPECT_EQ(m.session_cost(1), 10'050);
  EXPECT_EQ(m.session_cost(2), std::nullopt);
}

// Verifies that an hour alive costs the hourly price exactly however the
// time is cut into accruals, and that a session that spans midnight splits
// its cost between the days.
TEST(CostMeterTest, ChargesTimeExactlyAndSplitsAtMidnight) {
  CostMeter m({.per_hour_alive = 50'000});
  std::vector<CostCharge> out;
  const std::int64_t start = kT0 + 23 * kH;  // 23:00
  m.session_started(1, start, out);
  for (std::int64_t t = start; t < start + 2 * kH; t += 7'919) m.accrue(t, out);
  m.session_closed(1, start + 2 * kH, out);  // 01:00 the next day
  EXPECT_EQ(sum(out, ChargeKind::kAlive), 100'000);
  std::int64_t first = 0, second = 0;
  for (const auto& c : out) (c.day == kDay0 ? first : second) += c.micros;
  EXPECT_EQ(first, 50'000);
  EXPECT_EQ(second, 50'000);
  for (const auto& c : out) EXPECT_GT(c.micros, 0);
  EXPECT_EQ(m.live(), 0u);
}

// Verifies that leased time is charged to the tenant holding the lease, and
// that closing a session ends its lease.
TEST(CostMeterTest, ChargesLeasedTimeToTheTenant) {
  CostMeter m({.per_hour_leased = 3'600});
  std::vector<CostCharge> out;
  m.session_started(1, kT0, out);
  m.leased(1, "alice", kT0 + kH, out);
  m.accrue(kT0 + kH + 500'000, out);
  m.session_closed(1, kT0 + 2 * kH, out);
  EXPECT_EQ(sum(out, ChargeKind::kLeased), 3'600);
  for (const auto& c : out) EXPECT_EQ(c.tenant, "alice");
}

// Verifies that new prices apply from the change on, and that a wall clock
// that steps back charges nothing negative.
TEST(CostMeterTest, PriceChangesApplyFromNowAndTimeNeverRunsBackwards) {
  CostMeter m({.per_hour_alive = 1'000});
  std::vector<CostCharge> out;
  m.session_started(1, kT0, out);
  m.set_model({.per_hour_alive = 3'000}, kT0 + kH, out);
  m.accrue(kT0 + kH / 2, out);  // the clock stepped back
  m.session_closed(1, kT0 + 2 * kH, out);
  EXPECT_EQ(sum(out, ChargeKind::kAlive), 1'000 + 3'000);
  for (const auto& c : out) EXPECT_GT(c.micros, 0);
}

// Verifies that rates up to the maximum over years do not overflow.
TEST(CostMeterTest, LargeRatesOverLongTimesAreExact) {
  CostMeter m({.per_hour_alive = kMaxRatePerHour});
  std::vector<CostCharge> out;
  m.session_started(1, kT0, out);
  m.session_closed(1, kT0 + 24 * kH * 365 + 1'800'000, out);  // a year and half an hour
  EXPECT_EQ(sum(out, ChargeKind::kAlive), kMaxRatePerHour * (24 * 365) + kMaxRatePerHour / 2);
  EXPECT_EQ(out.size(), 366u) << "one charge per day touched";
}

// Verifies the arithmetic over long simulated days: random sessions and
// leases over ten days, accrued at random moments, add up per session, kind,
// tenant and day to exactly what each stretch of time costs.
TEST(CostMeterTest, RandomDaysAddUpExactly) {
  const CostModel model{.per_session = 10'000, .per_hour_alive = 50'021, .per_hour_leased = 7'777,
                        .per_use = 13};
  std::mt19937_64 rng(20261204);
  for (int round = 0; round < 20; ++round) {
    CostMeter m(model);
    std::vector<CostCharge> out;
    using Key = std::tuple<SessionId, ChargeKind, std::string, std::int64_t>;  // session, kind, tenant, day
    std::map<Key, std::int64_t> expected;
    // What a stretch [from, to) at rate costs on each day, computed apart.
    auto expect_span = [&](SessionId s, ChargeKind kind, const std::string& tenant, std::int64_t from,
                           std::int64_t to, std::int64_t rate) {
      auto f = [&](std::int64_t t) { return rate * (t - from) / kH; };  // small enough here
      for (std::int64_t d = day_of(from); d <= day_of(to - 1); ++d) {
        const std::int64_t a = std::max(from, d * kMillisPerDay);
        const std::int64_t b = std::min(to, (d + 1) * kMillisPerDay);
        const std::int64_t micros = f(b) - f(a);
        if (micros > 0) expected[{s, kind, tenant, d}] += micros;
      }
    };
    struct State {
      std::int64_t started = 0;
      std::optional<std::pair<std::string, std::int64_t>> lease;
    };
    std::map<SessionId, State> live;
    SessionId next = 1;
    std::int64_t now = kT0 + static_cast<std::int64_t>(rng() % kMillisPerDay);
    const std::int64_t end = kT0 + 10 * kMillisPerDay;
    while (now < end) {
      now += static_cast<std::int64_t>(rng() % (40 * 60'000));  // up to 40 minutes
      const int op = static_cast<int>(rng() % 5);
      if (op == 0 || live.empty()) {
        m.session_started(next, now, out);
        live[next] = State{.started = now, .lease = std::nullopt};
        expected[{next, ChargeKind::kCreated, "", day_of(now)}] += model.per_session;
        ++next;
        continue;
      }
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      const SessionId s = it->first;
      State& st = it->second;
      if (op == 1 && !st.lease) {
        const std::string tenant = (rng() % 2) ? "a" : "b";
        m.leased(s, tenant, now, out);
        st.lease = {tenant, now};
        expected[{s, ChargeKind::kUse, tenant, day_of(now)}] += model.per_use;
      } else if (op == 2 && st.lease) {
        m.released(s, now, out);
        expect_span(s, ChargeKind::kLeased, st.lease->first, st.lease->second, now, model.per_hour_leased);
        st.lease.reset();
      } else if (op == 3) {
        m.session_closed(s, now, out);
        if (st.lease) {
          expect_span(s, ChargeKind::kLeased, st.lease->first, st.lease->second, now,
                      model.per_hour_leased);
        }
        expect_span(s, ChargeKind::kAlive, "", st.started, now, model.per_hour_alive);
        live.erase(it);
      } else {
        m.accrue(now, out);
      }
    }
    for (auto& [s, st] : live) {
      m.session_closed(s, now, out);
      if (st.lease) {
        expect_span(s, ChargeKind::kLeased, st.lease->first, st.lease->second, now, model.per_hour_leased);
      }
      expect_span(s, ChargeKind::kAlive, "", st.started, now, model.per_hour_alive);
    }
    std::map<Key, std::int64_t> got;
    for (const auto& c : out) {
      ASSERT_GT(c.micros, 0);
      got[{c.session, c.kind, c.tenant, c.day}] += c.micros;
    }
    ASSERT_EQ(got, expected) << "round " << round;
  }
}

// Verifies the calendar: UTC days and months, also around 1970.
// Verifies the charges of a session the meter did not watch: its fee when
// it was created then, its time alive split at midnight, and the meter left
// as it was.
TEST(CostMeterTest, ChargesWhatItDidNotWatch) {
  CostMeter m({.per_session = 10'000, .per_hour_alive = 3'600'000, .per_use = 5});
  std::vector<CostCharge> out;
  const std::int64_t midnight = 20'000 * kMillisPerDay;
  // 30 min before midnight to 15 min after at $3.60/h: $1.80 and $0.90.
  EXPECT_EQ(m.charge_unobserved(7, midnight - 1'800'000, midnight + 900'000, true, out),
            10'000 + 1'800'000 + 900'000);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].kind, ChargeKind::kCreated);
  EXPECT_EQ(out[1].day, 19'999);
  EXPECT_EQ(out[1].micros, 1'800'000);
  EXPECT_EQ(out[2].day, 20'000);
  EXPECT_EQ(out[2].micros, 900'000);
  for (const CostCharge& c : out) EXPECT_EQ(c.session, 7u);
  // Without the fee; backwards time charges nothing.
  out.clear();
  EXPECT_EQ(m.charge_unobserved(8, midnight, midnight + 1000, false, out), 1000);
  EXPECT_EQ(m.charge_unobserved(9, midnight + 1000, midnight, false, out), 0);
  EXPECT_EQ(m.live(), 0u);
}

TEST(CostCalendarTest, DaysAndMonths) {
  EXPECT_EQ(day_of(0), 0);
  EXPECT_EQ(day_of(-1), -1);
  EXPECT_EQ(day_of(kMillisPerDay), 1);
  EXPECT_EQ(month_of_day(0), 1970 * 12);
  EXPECT_EQ(month_of_day(-1), 1969 * 12 + 11);
  EXPECT_EQ(month_of_day(20'426), 2025 * 12 + 11);  // 2025-12-04
  EXPECT_EQ(month_of_day(20'453), 2025 * 12 + 11);  // 2025-12-31
  EXPECT_EQ(month_of_day(20'454), 2026 * 12);       // 2026-01-01
}

}  // namespace
}  // namespace poolkeeper::core
