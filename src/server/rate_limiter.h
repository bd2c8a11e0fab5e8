// RateLimiter: a token bucket per tenant (server.rate_limit / rate_burst, or
// the tenant's own), so one tenant's flood cannot starve the others.
//
// A bucket holds up to `burst` tokens and refills at `rate` tokens a second;
// each request takes one. A request that finds the bucket empty is refused
// with the time until a token is there (the API answers 429 with
// Retry-After). The set of tenants is fixed at construction; an unknown key
// is not limited. Time comes in as an argument, so tests drive it.
//
// Thread-safety: admit() may be called from any thread (a lock per bucket).
//
//   RateLimiter limiter({{"alice", {.rate = 50, .burst = 100}}});
//   if (Duration wait = limiter.admit("alice", now); wait.count() > 0) { /* 429 */ }
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "poolkeeper/clock.h"

namespace poolkeeper::server {

class RateLimiter {
 public:
  struct Limit {
    double rate = 0;  // tokens a second; 0: unlimited
    int burst = 1;    // the bucket's size (at least 1)
  };

  explicit RateLimiter(const std::map<std::string, Limit, std::less<>>& limits);

  // Takes a token for `key`: zero when the request may go, otherwise how long
  // until one would be there (nothing is taken then).
  Duration admit(std::string_view key, TimePoint now);

 private:
  struct Bucket {
    Limit limit;
    std::mutex mu;
    double tokens = 0;
    TimePoint last{};
    bool started = false;
  };
  std::map<std::string, std::unique_ptr<Bucket>, std::less<>> buckets_;
};

}  // namespace poolkeeper::server
