// RateLimiter: token buckets per tenant, driven by a manual clock.
#include "server/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "testing/manual_clock.h"

namespace poolkeeper::server {
namespace {

using namespace std::chrono_literals;

// Verifies that a full bucket lets `burst` requests through at once, then
// refuses with the time until the next token, and refills at the rate.
TEST(RateLimiterTest, BurstThenRate) {
  testing::ManualClock clock;
  RateLimiter limiter({{"alice", {.rate = 10, .burst = 3}}});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(limiter.admit("alice", clock.now()), Duration{0}) << i;
  const Duration wait = limiter.admit("alice", clock.now());
  EXPECT_EQ(wait, 100ms) << "one token every 100 ms";
  clock.advance(60ms);
  EXPECT_EQ(limiter.admit("alice", clock.now()), 40ms);
  clock.advance(40ms);
  EXPECT_EQ(limiter.admit("alice", clock.now()), Duration{0});
  EXPECT_GT(limiter.admit("alice", clock.now()), Duration{0});
  clock.advance(10s);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(limiter.admit("alice", clock.now()), Duration{0}) << i;
  EXPECT_GT(limiter.admit("alice", clock.now()), Duration{0}) << "refills to burst, no further";
}

// Verifies that tenants have their own buckets, that a tenant with no rate
// and an unknown key are not limited.
TEST(RateLimiterTest, TenantsAreIndependent) {
  testing::ManualClock clock;
  RateLimiter limiter({{"alice", {.rate = 1, .burst = 1}},
                       {"bob", {.rate = 1, .burst = 1}},
                       {"carol", {.rate = 0, .burst = 1}}});
  EXPECT_EQ(limiter.admit("alice", clock.now()), Duration{0});
  EXPECT_GT(limiter.admit("alice", clock.now()), Duration{0});
  EXPECT_EQ(limiter.admit("bob", clock.now()), Duration{0});
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(limiter.admit("carol", clock.now()), Duration{0});
    ASSERT_EQ(limiter.admit("nobody", clock.now()), Duration{0});
  }
}

// Verifies that over a long run the admitted rate matches the limit: 2000
// requests offered at 1000/s against 100/s with a burst of 10 admit 10 +
// 100 * 2 = 210.
TEST(RateLimiterTest, LongRunAdmitsTheRate) {
  testing::ManualClock clock;
  RateLimiter limiter({{"t", {.rate = 100, .burst = 10}}});
  int admitted = 0;
  for (int i = 0; i < 2000; ++i) {
    admitted += limiter.admit("t", clock.now()) == Duration{0} ? 1 : 0;
    clock.advance(1ms);
  }
  EXPECT_GE(admitted, 209);
  EXPECT_LE(admitted, 211);
}

// Verifies that concurrent callers never get more than the burst from a
// bucket that does not refill within the test.
TEST(RateLimiterTest, ConcurrentCallersShareOneBucket) {
  RateLimiter limiter({{"t", {.rate = 1e-3, .burst = 500}}});
  const TimePoint now{};
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) admitted += limiter.admit("t", now) == Duration{0} ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 500);
}

}  // namespace
}  // namespace poolkeeper::server
