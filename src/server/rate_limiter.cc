#include "server/rate_limiter.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace poolkeeper::server {

RateLimiter::RateLimiter(const std::map<std::string, Limit, std::less<>>& limits) {
  for (const auto& [key, limit] : limits) {
    if (limit.rate <= 0) continue;  // unlimited: no bucket, no lock
    auto b = std::make_unique<Bucket>();
    b->limit = limit;
    b->limit.burst = std::max(1, limit.burst);
    b->tokens = b->limit.burst;
    buckets_.emplace(key, std::move(b));
  }
}

Duration RateLimiter::admit(std::string_view key, TimePoint now) {
  auto it = buckets_.find(key);
  if (it == buckets_.end()) return Duration{0};
  Bucket& b = *it->second;
  std::lock_guard lock(b.mu);
  if (b.started && now > b.last) {
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    b.tokens = std::min<double>(b.limit.burst, b.tokens + elapsed * b.limit.rate);
  }
  if (!b.started || now > b.last) b.last = now;
  b.started = true;
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return Duration{0};
  }
  // Round up: a client that waits this long finds a whole token.
  const double seconds = (1.0 - b.tokens) / b.limit.rate;
  return std::max(Duration{1},
                  std::chrono::duration_cast<Duration>(
                      std::chrono::duration<double>(std::ceil(seconds * 1e6) / 1e6)));
}

}  // namespace poolkeeper::server
