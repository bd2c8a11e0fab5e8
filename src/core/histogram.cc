#include "core/histogram.h"

#include <algorithm>
#include <cmath>

namespace poolkeeper::core {

std::uint64_t Histogram::upper_bound(int i) {
  if (i < kSub) return static_cast<std::uint64_t>(i);
  const int e = i / kSub + kSubBits - 1;
  const std::uint64_t m = static_cast<std::uint64_t>(i % kSub);
  const std::uint64_t base = (std::uint64_t{1} << e) | (m << (e - kSubBits));
  return base + ((std::uint64_t{1} << (e - kSubBits)) - 1);
}

Duration Histogram::quantile(double q) const {
  if (count_ == 0) return Duration{0};
  q = std::clamp(q, 0.0, 1.0);
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::max<std::uint64_t>(rank, 1);
  std::uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= rank) {
      return Duration{static_cast<Duration::rep>(std::min(upper_bound(i), max_))};
    }
  }
  return Duration{static_cast<Duration::rep>(max_)};
}

WaitSummary Histogram::summary() const {
  WaitSummary s;
  s.count = count_;
  s.p50 = quantile(0.50);
  s.p95 = quantile(0.95);
  s.p99 = quantile(0.99);
  s.max = Duration{static_cast<Duration::rep>(max_)};
  return s;
}

}  // namespace poolkeeper::core
