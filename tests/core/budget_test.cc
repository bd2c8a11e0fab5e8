#include "core/budget.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>

#include "core/cost.h"

namespace poolkeeper::core {
namespace {

constexpr std::int64_t kDay0 = 20'000;  // 2024-10-04

// Verifies budget levels: below the warning, at 80 %, at the limit; the worse
// of the daily and monthly budgets counts; scopes are apart.
TEST(BudgetBookTest, LevelsFollowSpending) {
  BudgetBook b;
  b.set_limits("pool:p", {.daily = 1'000, .monthly = 10'000});
  for (const char* scope : {"", "pool:p", "tenant:a"}) b.add(scope, kDay0, 799);
  EXPECT_EQ(b.status("pool:p", kDay0).level, BudgetLevel::kOk);
  for (const char* scope : {"", "pool:p"}) b.add(scope, kDay0, 1);
  BudgetStatus s = b.status("pool:p", kDay0);
  EXPECT_EQ(s.level, BudgetLevel::kWarning);
  EXPECT_EQ(s.spent, 800);
  EXPECT_EQ(s.limit, 1'000);
  EXPECT_FALSE(s.monthly);
  b.add("pool:p", kDay0, 200);
  EXPECT_EQ(b.status("pool:p", kDay0).level, BudgetLevel::kExceeded);
  EXPECT_EQ(b.status("pool:p", kDay0 + 1).level, BudgetLevel::kOk) << "a new day";
  EXPECT_EQ(b.status("tenant:a", kDay0).level, BudgetLevel::kOk) << "no limit";
  EXPECT_EQ(b.spent_on_day("tenant:a", kDay0), 799);
  EXPECT_EQ(b.spent_on_day("", kDay0), 800);
  // The month: 10 more days at 999 each (99.9 % of a day's budget) pass the
  // monthly limit, which is then the worse.
  for (int d = 1; d <= 10; ++d) b.add("pool:p", kDay0 + d, 999);
  s = b.status("pool:p", kDay0 + 10);
  EXPECT_EQ(s.level, BudgetLevel::kExceeded);
  EXPECT_TRUE(s.monthly);
  EXPECT_EQ(s.spent, 1'000 + 10 * 999);
  EXPECT_EQ(s.limit, 10'000);
  b.forget_before(kDay0 + 10);
  EXPECT_EQ(b.spent_on_day("pool:p", kDay0), 0);
  EXPECT_EQ(b.spent_in_month("pool:p", kDay0 + 10), 1'000 + 10 * 999) << "the month stays";
  b.set_limits("pool:p", {});
  EXPECT_EQ(b.status("pool:p", kDay0 + 10).level, BudgetLevel::kOk);
}

// Verifies that a charge counts against the global budget, its pool's and
// its tenant's, and a pool's own cost against no tenant's.
TEST(BudgetsTest, ChargesCountForGlobalPoolAndTenant) {
  Budgets b;
  b.set_global({.daily = 10'000});
  b.set_pool("p", {.daily = 1'000}, BudgetAction::kRefuse);
  b.set_pool("q", {.daily = 1'000}, BudgetAction::kRefuse);
  b.set_tenants({{"a", {.daily = 500}}});
  b.charge("p", "a", kDay0, 250);
  b.charge("p", "", kDay0, 250);
  b.charge("q", "b", kDay0, 100);
  const std::map<std::string, double> usage = [&] {
    std::map<std::string, double> m;
    for (const auto& [budget, share] : b.usage(kDay0)) m[budget] = share;
    return m;
  }();
  EXPECT_DOUBLE_EQ(usage.at("global"), 0.06);
  EXPECT_DOUBLE_EQ(usage.at("pool:p"), 0.5);
  EXPECT_DOUBLE_EQ(usage.at("pool:q"), 0.1);
  EXPECT_DOUBLE_EQ(usage.at("tenant:a"), 0.5);
  EXPECT_FALSE(usage.contains("tenant:b")) << "no budget, no share";
  const std::vector<BudgetLine> lines = b.lines(kDay0);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0].budget, "global");
  EXPECT_EQ(lines[1].budget, "pool:p");
  EXPECT_EQ(lines[1].spent_today, 500);
  EXPECT_EQ(lines[1].spent_this_month, 500);
  EXPECT_EQ(lines[1].level, BudgetLevel::kOk);
  EXPECT_EQ(lines[2].budget, "pool:q");
  EXPECT_EQ(lines[3].budget, "tenant:a");
  EXPECT_EQ(lines[3].spent_today, 250);
}

// Verifies the stages of a pool's budget: a warning at 80 % (once a day),
// at the limit a notice and the pool's starts stopped with the reason, no
// repeat while nothing changes, and the next day the pool restored.
TEST(BudgetsTest, APoolWarnsThenStopsThenIsRestoredTheNextDay) {
  Budgets b;
  b.set_pool("p", {.daily = 1'000'000}, BudgetAction::kRefuse);
  b.charge("p", "", kDay0, 799'999);
  BudgetDecisions d = b.decide(kDay0);
  EXPECT_TRUE(d.notices.empty());
  EXPECT_TRUE(d.pools.empty());

  b.charge("p", "", kDay0, 1);
  d = b.decide(kDay0);
  ASSERT_EQ(d.notices.size(), 1u);
  EXPECT_EQ(d.notices[0].budget, "pool:p");
  EXPECT_EQ(d.notices[0].status.level, BudgetLevel::kWarning);
  EXPECT_EQ(d.notices[0].why, "pool p budget: spent $0.800000 of $1.000000 today");
  EXPECT_TRUE(d.pools.empty()) << "a warning does not stop the pool";
  b.charge("p", "", kDay0, 1);
  EXPECT_TRUE(b.decide(kDay0).notices.empty()) << "once a day";

  b.charge("p", "", kDay0, 199'999);
  d = b.decide(kDay0);
  ASSERT_EQ(d.notices.size(), 1u);
  EXPECT_EQ(d.notices[0].status.level, BudgetLevel::kExceeded);
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_EQ(d.pools[0].pool, "p");
  EXPECT_TRUE(d.pools[0].exceeded);
  EXPECT_FALSE(d.pools[0].drain);
  EXPECT_EQ(d.pools[0].why, "pool p budget: spent $1.000000 of $1.000000 today");
  EXPECT_TRUE(b.pool_exceeded("p"));
  d = b.decide(kDay0);
  EXPECT_TRUE(d.notices.empty());
  EXPECT_TRUE(d.pools.empty()) << "no change, no decision";

  d = b.decide(kDay0 + 1);
  EXPECT_TRUE(d.notices.empty());
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_FALSE(d.pools[0].exceeded);
  EXPECT_EQ(d.pools[0].why, "the budget allows new sessions again");
  EXPECT_FALSE(b.pool_exceeded("p"));

  // The next day's warning is announced again.
  b.charge("p", "", kDay0 + 1, 900'000);
  d = b.decide(kDay0 + 1);
  ASSERT_EQ(d.notices.size(), 1u);
  EXPECT_EQ(d.notices[0].status.level, BudgetLevel::kWarning);
}

// Verifies that a spent global budget stops every pool, that a pool's own
// spent budget names itself as the reason, and that drain is asked of pools
// whose action is drain only.
TEST(BudgetsTest, TheGlobalBudgetStopsEveryPool) {
  Budgets b;
  b.set_global({.daily = 1'000});
  b.set_pool("p", {}, BudgetAction::kRefuse);
  b.set_pool("q", {.daily = 300}, BudgetAction::kDrain);
  b.charge("p", "", kDay0, 600);
  b.charge("q", "", kDay0, 400);
  BudgetDecisions d = b.decide(kDay0);
  ASSERT_EQ(d.pools.size(), 2u);
  EXPECT_EQ(d.pools[0].pool, "p");
  EXPECT_EQ(d.pools[0].why, "global budget: spent $0.001000 of $0.001000 today");
  EXPECT_FALSE(d.pools[0].drain);
  EXPECT_EQ(d.pools[1].pool, "q");
  EXPECT_EQ(d.pools[1].why, "pool q budget: spent $0.000400 of $0.000300 today");
  EXPECT_TRUE(d.pools[1].drain);
  ASSERT_EQ(d.notices.size(), 2u);
  EXPECT_EQ(d.notices[0].budget, "global");
  EXPECT_EQ(d.notices[1].budget, "pool:q");

  // A raised global limit restores the pool only it stopped.
  b.set_global({.daily = 2'000});
  d = b.decide(kDay0);
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_EQ(d.pools[0].pool, "p");
  EXPECT_FALSE(d.pools[0].exceeded);
  EXPECT_TRUE(b.pool_exceeded("q"));
}

// Verifies that a monthly budget counts the month's days and stops the pool
// with "this month", and still does on a later day of that month.
TEST(BudgetsTest, AMonthlyBudgetSpansTheMonth) {
  Budgets b;
  b.set_pool("p", {.daily = 0, .monthly = 10'000}, BudgetAction::kRefuse);
  const std::int64_t first = 20'423;  // 2025-12-01
  ASSERT_EQ(month_of_day(first), month_of_day(first + 30));
  ASSERT_NE(month_of_day(first), month_of_day(first + 31));
  ASSERT_NE(month_of_day(first - 1), month_of_day(first));
  b.charge("p", "", first - 1, 9'000);  // the month before counts for nothing
  for (int d = 0; d < 10; ++d) b.charge("p", "", first + d, 1'000);
  BudgetDecisions d = b.decide(first + 9);
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_EQ(d.pools[0].why, "pool p budget: spent $0.010000 of $0.010000 this month");
  EXPECT_TRUE(b.decide(first + 20).pools.empty()) << "still the same month";
  d = b.decide(first + 31);  // 2026-01-01
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_FALSE(d.pools[0].exceeded) << "a new month";
}

// Verifies a tenant's refusal: only its own spent budget refuses it, with
// the reason; a tenant without a budget is never refused; a budget taken
// away by a reload lifts the refusal.
TEST(BudgetsTest, ATenantPastItsBudgetIsRefused) {
  Budgets b;
  b.set_pool("p", {}, BudgetAction::kRefuse);
  b.set_tenants({{"a", {.daily = 100}}, {"b", {.daily = 1'000}}});
  b.charge("p", "a", kDay0, 100);
  b.charge("p", "b", kDay0, 100);
  b.charge("p", "c", kDay0, 1'000'000);
  EXPECT_EQ(b.tenant_refusal("a", kDay0), "tenant a budget: spent $0.000100 of $0.000100 today");
  EXPECT_EQ(b.tenant_refusal("b", kDay0), std::nullopt);
  EXPECT_EQ(b.tenant_refusal("c", kDay0), std::nullopt) << "no budget";
  EXPECT_EQ(b.tenant_refusal("a", kDay0 + 1), std::nullopt) << "a new day";
  const BudgetDecisions d = b.decide(kDay0);
  ASSERT_EQ(d.notices.size(), 1u);
  EXPECT_EQ(d.notices[0].budget, "tenant:a");
  EXPECT_TRUE(d.pools.empty()) << "a tenant's budget does not stop a pool";
  b.set_tenants({{"b", {.daily = 1'000}}});
  EXPECT_EQ(b.tenant_refusal("a", kDay0), std::nullopt);
  EXPECT_EQ(b.lines(kDay0).size(), 1u) << "only b's budget is left";
}

// Verifies that reannounce() makes the next decision name every pool that
// is over budget again (a new listener learns the state), and only those.
TEST(BudgetsTest, ReannounceNamesPoolsOverBudgetAgain) {
  Budgets b;
  b.set_pool("p", {.daily = 10}, BudgetAction::kRefuse);
  b.set_pool("q", {.daily = 10}, BudgetAction::kRefuse);
  b.charge("p", "", kDay0, 10);
  ASSERT_EQ(b.decide(kDay0).pools.size(), 1u);
  b.reannounce();
  const BudgetDecisions d = b.decide(kDay0);
  ASSERT_EQ(d.pools.size(), 1u);
  EXPECT_EQ(d.pools[0].pool, "p");
  EXPECT_TRUE(d.pools[0].exceeded);
  EXPECT_TRUE(d.notices.empty()) << "notices are still once a day";
}

// Verifies that forgetting old days keeps the running month.
TEST(BudgetsTest, ForgettingOldDaysKeepsTheMonth) {
  Budgets b;
  b.set_pool("p", {.daily = 10, .monthly = 1'000}, BudgetAction::kRefuse);
  b.charge("p", "", kDay0, 10);
  EXPECT_EQ(b.decide(kDay0).notices.size(), 1u);
  b.forget_before(kDay0 + 1);
  const std::vector<BudgetLine> lines = b.lines(kDay0);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].spent_today, 0);
  EXPECT_EQ(lines[0].spent_this_month, 10);
}

TEST(DollarsTextTest, SixDecimalsAndTheSign) {
  EXPECT_EQ(dollars_text(0), "0.000000");
  EXPECT_EQ(dollars_text(1'250'000), "1.250000");
  EXPECT_EQ(dollars_text(-1'250'000), "-1.250000");
  EXPECT_EQ(dollars_text(-5), "-0.000005");
  EXPECT_EQ(dollars_text(INT64_MIN), "-9223372036854.775808");
}

}  // namespace
}  // namespace poolkeeper::core
