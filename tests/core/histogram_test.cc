#include "core/histogram.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>

namespace poolkeeper::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

class HistogramTest : public ::testing::Test {
 protected:
  // The histogram is 15 KB; keep it off the stack.
  std::unique_ptr<Histogram> h_ = std::make_unique<Histogram>();
};

// Verifies that an empty histogram reports zero everywhere.
TEST_F(HistogramTest, EmptyReportsZero) {
  EXPECT_EQ(h_->count(), 0u);
  EXPECT_EQ(h_->quantile(0.5), Duration{0});
  const WaitSummary s = h_->summary();
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.p50, Duration{0});
  EXPECT_EQ(s.p99, Duration{0});
  EXPECT_EQ(s.max, Duration{0});
}

// Verifies that small values below the sub-bucket count are exact.
TEST_F(HistogramTest, SmallValuesAreExact) {
  for (std::uint64_t v = 0; v < Histogram::kSub; ++v) {
    EXPECT_EQ(Histogram::index(v), static_cast<int>(v));
    EXPECT_EQ(Histogram::upper_bound(static_cast<int>(v)), v);
  }
}

// Verifies that every value lies in its bucket and buckets are contiguous and ordered.
TEST_F(HistogramTest, BucketsAreContiguousAndContainTheirValues) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 100000; ++i) {
    const int shift = static_cast<int>(rng() % 63);
    const std::uint64_t v = rng() >> shift;
    const int b = Histogram::index(v);
    ASSERT_GE(b, 0);
    ASSERT_LT(b, Histogram::kBuckets);
    ASSERT_LE(v, Histogram::upper_bound(b)) << v;
    if (b > 0) {
      ASSERT_GT(v, Histogram::upper_bound(b - 1)) << v;
    }
  }
  for (int b = 1; b < Histogram::kBuckets; ++b) {
    ASSERT_GT(Histogram::upper_bound(b), Histogram::upper_bound(b - 1)) << b;
    ASSERT_EQ(Histogram::index(Histogram::upper_bound(b)), b) << b;
    ASSERT_EQ(Histogram::index(Histogram::upper_bound(b - 1) + 1), b) << b;
  }
  EXPECT_EQ(Histogram::index(std::numeric_limits<std::uint64_t>::max()), Histogram::kBuckets - 1);
  EXPECT_EQ(Histogram::upper_bound(Histogram::kBuckets - 1),
            std::numeric_limits<std::uint64_t>::max());
}

// Verifies that a bucket's width is within 1/32 of its values (about 3 % relative error).
TEST_F(HistogramTest, RelativeErrorIsBounded) {
  for (std::uint64_t v : {33ULL, 100ULL, 1000ULL, 123456ULL, 1000000007ULL, 1ULL << 40,
                          (1ULL << 50) + 12345}) {
    const std::uint64_t ub = Histogram::upper_bound(Histogram::index(v));
    EXPECT_GE(ub, v);
    EXPECT_LE(static_cast<double>(ub - v), static_cast<double>(v) / Histogram::kSub) << v;
  }
}

// Verifies that one recorded value is reported exactly (the max caps the bucket bound).
TEST_F(HistogramTest, SingleValueIsExact) {
  h_->record(milliseconds(1234));
  EXPECT_EQ(h_->count(), 1u);
  EXPECT_EQ(h_->quantile(0.0), milliseconds(1234));
  EXPECT_EQ(h_->quantile(0.5), milliseconds(1234));
  EXPECT_EQ(h_->quantile(1.0), milliseconds(1234));
  EXPECT_EQ(h_->summary().max, milliseconds(1234));
}

// Verifies that negative durations count as zero.
TEST_F(HistogramTest, NegativeDurationsCountAsZero) {
  h_->record(nanoseconds(-5));
  h_->record(nanoseconds(0));
  EXPECT_EQ(h_->count(), 2u);
  EXPECT_EQ(h_->quantile(1.0), Duration{0});
  EXPECT_EQ(h_->summary().max, Duration{0});
}

// Verifies quantiles of a uniform 1..1000 ms sample within the bucket error.
TEST_F(HistogramTest, QuantilesOfUniformSample) {
  for (int ms = 1; ms <= 1000; ++ms) h_->record(milliseconds(ms));
  const WaitSummary s = h_->summary();
  EXPECT_EQ(s.count, 1000u);
  auto near = [](Duration got, Duration want) {
    const double g = static_cast<double>(got.count());
    const double w = static_cast<double>(want.count());
    return g >= w && g <= w * (1.0 + 1.0 / 32);
  };
  EXPECT_TRUE(near(s.p50, milliseconds(500))) << s.p50.count();
  EXPECT_TRUE(near(s.p95, milliseconds(950))) << s.p95.count();
  EXPECT_TRUE(near(s.p99, milliseconds(990))) << s.p99.count();
  EXPECT_EQ(s.max, milliseconds(1000));
  EXPECT_LE(s.p50, s.p95);
  EXPECT_LE(s.p95, s.p99);
  EXPECT_LE(s.p99, s.max);
}

// Verifies that quantile arguments outside 0..1 are clamped.
TEST_F(HistogramTest, ClampsQuantileArgument) {
  h_->record(seconds(1));
  h_->record(seconds(2));
  EXPECT_EQ(h_->quantile(-1.0), h_->quantile(0.0));
  EXPECT_EQ(h_->quantile(2.0), seconds(2));
  EXPECT_LT(h_->quantile(0.0), seconds(2));
}

// Verifies that a skewed sample puts p50 at the bulk and p99 at the tail.
TEST_F(HistogramTest, SeparatesBulkFromTail) {
  for (int i = 0; i < 98; ++i) h_->record(milliseconds(10));
  h_->record(seconds(5));
  h_->record(seconds(5));
  const WaitSummary s = h_->summary();
  EXPECT_LE(s.p50, milliseconds(11));
  EXPECT_GE(s.p50, milliseconds(10));
  EXPECT_LE(s.p95, milliseconds(11));
  EXPECT_GE(s.p99, Duration{seconds(5)} - Duration{seconds(5)} / 32);
  EXPECT_EQ(s.max, seconds(5));
}

}  // namespace
}  // namespace poolkeeper::core
