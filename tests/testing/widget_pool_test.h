// A test fixture base for Pool<Widget> tests: pools over the counting factory,
// and the check that every object made was destroyed exactly once.
//
// Thread-safety: used by the test thread; the counters are atomic.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>

#include "poolkeeper/pool.h"
#include "testing/counting_factory.h"
#include "testing/wait.h"

namespace poolkeeper::testing {

class WidgetPoolTest : public ::testing::Test {
 protected:
  std::unique_ptr<Pool<Widget>> make_pool(const PoolConfig& config, std::uint64_t seed = 7,
                                          Clock* clock = nullptr) {
    PoolOptions options;
    options.seed = seed;
    options.clock = clock;
    auto pool = Pool<Widget>::create(config, counting_factory(counters_), options);
    EXPECT_TRUE(pool) << describe(pool);
    return pool ? std::move(*pool) : nullptr;
  }

  // After the pool is gone: every object made was destroyed exactly once.
  void expect_balanced() {
    EXPECT_TRUE(wait_until([&] {
      return counters_->destroyed.load() == counters_->created.load() &&
             counters_->live.load() == 0;
    })) << "created " << counters_->created.load() << ", destroyed "
        << counters_->destroyed.load() << ", live " << counters_->live.load();
    EXPECT_EQ(counters_->destroyed_while_in_use.load(), 0);
  }

  std::shared_ptr<FactoryCounters> counters_ = std::make_shared<FactoryCounters>();
};

}  // namespace poolkeeper::testing
