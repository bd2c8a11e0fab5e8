#include "poolkeeper/pool_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <string>

#include "core/pool_core.h"
#include "poolkeeper/error.h"

namespace poolkeeper {
namespace {

using ::testing::StartsWith;
using std::chrono::seconds;

class PoolConfigTest : public ::testing::Test {
 protected:
  // A valid config with every limit on, so one bad key is the only problem.
  static PoolConfig valid() {
    PoolConfig c;
    c.name = "python";
    c.min = 2;
    c.max = 8;
    c.overflow = 2;
    c.min_idle = 1;
    c.max_starting = 2;
    c.max_queue = 100;
    c.idle_timeout = seconds(60);
    c.lease_timeout = seconds(30);
    c.max_lifetime = seconds(3600);
    c.lifetime_jitter = 0.2;
    c.max_uses = 100;
    c.max_memory = std::int64_t{512} << 20;
    c.max_cpu_percent = 90;
    c.cpu_percent_samples = 5;
    c.max_cpu_time = seconds(600);
    c.validate_after_idle = seconds(10);
    c.check_interval = seconds(30);
    return c;
  }

  // Expects `config` to be refused as kInvalidConfig naming `key`.
  static void expect_bad(const PoolConfig& config, const std::string& key) {
    auto r = validate_config(config);
    ASSERT_FALSE(r.has_value()) << "accepted a bad " << key;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidConfig);
    EXPECT_THAT(r.error().message, StartsWith(key + ":"));
  }
  static void expect_good(const PoolConfig& config) {
    auto r = validate_config(config);
    EXPECT_TRUE(r.has_value()) << r.error().message;
  }
  static PoolConfig with(const std::function<void(PoolConfig&)>& change) {
    PoolConfig c = valid();
    change(c);
    return c;
  }
};

// Verifies that the default config and a fully configured one are accepted.
TEST_F(PoolConfigTest, AcceptsDefaultsAndAFullConfig) {
  expect_good(PoolConfig{});
  expect_good(valid());
}

// Verifies that max below min is refused naming max.
TEST_F(PoolConfigTest, RefusesMaxBelowMin) {
  expect_bad(with([](PoolConfig& c) {
               c.min = 5;
               c.max = 4;
               c.min_idle = 0;
             }),
             "max");
}

// Verifies that max equal to min is accepted (the boundary).
TEST_F(PoolConfigTest, AcceptsMaxEqualToMin) {
  expect_good(with([](PoolConfig& c) {
    c.min = 4;
    c.max = 4;
  }));
}

// Verifies that a max of zero or below is refused naming max.
TEST_F(PoolConfigTest, RefusesNonPositiveMax) {
  for (int max : {0, -1}) {
    SCOPED_TRACE(max);
    expect_bad(with([max](PoolConfig& c) {
                 c.min = 0;
                 c.min_idle = 0;
                 c.max = max;
               }),
               "max");
  }
}

// Verifies that a negative min is refused naming min.
TEST_F(PoolConfigTest, RefusesNegativeMin) {
  expect_bad(with([](PoolConfig& c) { c.min = -1; }), "min");
}

// Verifies that a negative overflow is refused naming overflow.
TEST_F(PoolConfigTest, RefusesNegativeOverflow) {
  expect_bad(with([](PoolConfig& c) { c.overflow = -1; }), "overflow");
}

// Verifies that bad resource limits are refused, each naming its key.
TEST_F(PoolConfigTest, RefusesBadResourceLimits) {
  expect_bad(with([](PoolConfig& c) { c.max_memory = -1; }), "max_memory");
  expect_bad(with([](PoolConfig& c) { c.max_cpu_percent = -5; }), "max_cpu_percent");
  expect_bad(with([](PoolConfig& c) { c.max_cpu_percent = std::nan(""); }), "max_cpu_percent");
  expect_bad(with([](PoolConfig& c) { c.cpu_percent_samples = 0; }), "cpu_percent_samples");
  expect_bad(with([](PoolConfig& c) { c.max_cpu_time = seconds(-1); }), "max_cpu_time");
}

// Verifies that min_idle above max is refused naming min_idle.
TEST_F(PoolConfigTest, RefusesMinIdleAboveMax) {
  expect_bad(with([](PoolConfig& c) { c.min_idle = c.max + 1; }), "min_idle");
  expect_good(with([](PoolConfig& c) { c.min_idle = c.max; }));
}

// Verifies that a max_starting of zero or below is refused naming max_starting.
TEST_F(PoolConfigTest, RefusesNonPositiveMaxStarting) {
  expect_bad(with([](PoolConfig& c) { c.max_starting = 0; }), "max_starting");
  expect_bad(with([](PoolConfig& c) { c.max_starting = -3; }), "max_starting");
}

// Verifies that a negative max_queue is refused naming max_queue.
TEST_F(PoolConfigTest, RefusesNegativeMaxQueue) {
  expect_bad(with([](PoolConfig& c) { c.max_queue = -1; }), "max_queue");
}

// Verifies that lifetime_jitter must lie in [0, 1).
TEST_F(PoolConfigTest, RefusesLifetimeJitterOutsideUnitInterval) {
  for (double j : {-0.1, 1.0, 1.5}) {
    SCOPED_TRACE(j);
    expect_bad(with([j](PoolConfig& c) { c.lifetime_jitter = j; }), "lifetime_jitter");
  }
  expect_good(with([](PoolConfig& c) { c.lifetime_jitter = 0.0; }));
  expect_good(with([](PoolConfig& c) { c.lifetime_jitter = 0.99; }));
}

// Verifies that health_check_below must lie in 0..100.
TEST_F(PoolConfigTest, RefusesHealthCheckBelowOutsideScoreRange) {
  expect_bad(with([](PoolConfig& c) { c.health_check_below = -1; }), "health_check_below");
  expect_bad(with([](PoolConfig& c) { c.health_check_below = 101; }), "health_check_below");
  expect_good(with([](PoolConfig& c) { c.health_check_below = 0; }));
  expect_good(with([](PoolConfig& c) { c.health_check_below = 100; }));
}

// Verifies that every duration key refuses a negative value and names itself.
TEST_F(PoolConfigTest, RefusesNegativeDurations) {
  struct Key {
    const char* name;
    Duration PoolConfig::*field;
  };
  const Key keys[] = {
      {"aging", &PoolConfig::aging},
      {"idle_timeout", &PoolConfig::idle_timeout},
      {"lease_timeout", &PoolConfig::lease_timeout},
      {"max_lifetime", &PoolConfig::max_lifetime},
      {"validate_after_idle", &PoolConfig::validate_after_idle},
      {"check_interval", &PoolConfig::check_interval},
      {"start_backoff_initial", &PoolConfig::start_backoff_initial},
      {"start_backoff_max", &PoolConfig::start_backoff_max},
      {"client_session_ttl", &PoolConfig::client_session_ttl},
      {"client_session_cleanup_interval", &PoolConfig::client_session_cleanup_interval},
  };
  for (const Key& k : keys) {
    SCOPED_TRACE(k.name);
    expect_bad(with([&](PoolConfig& c) { c.*k.field = -seconds(1); }), k.name);
  }
}

// Verifies that PoolCore::create refuses a bad config with the same error.
TEST_F(PoolConfigTest, CoreCreateRefusesBadConfig) {
  auto bad = core::PoolCore::create(with([](PoolConfig& c) { c.max_starting = 0; }));
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidConfig);
  EXPECT_THAT(bad.error().message, StartsWith("max_starting:"));

  auto good = core::PoolCore::create(valid());
  ASSERT_TRUE(good.has_value()) << good.error().message;
  EXPECT_EQ((*good)->config().max, 8);
}

// Verifies that the error code has its stable snake_case name.
TEST_F(PoolConfigTest, InvalidConfigCodeHasStableName) {
  EXPECT_EQ(to_string(ErrorCode::kInvalidConfig), "invalid_config");
}

}  // namespace
}  // namespace poolkeeper
