// The seed a pool's core gets: the one asked for, or a fresh random one for
// 0, so lease ids differ between runs (a lease id from before a restart must
// not name a lease after it). Tests pass a fixed seed to be repeatable.
//
// Thread-safety: may be called from any thread.
#pragma once

#include <cstdint>

namespace poolkeeper {

std::uint64_t seed_or_random(std::uint64_t seed);

}  // namespace poolkeeper
