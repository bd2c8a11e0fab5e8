#include "pool/random_seed.h"

#include <random>

namespace poolkeeper {

std::uint64_t seed_or_random(std::uint64_t seed) {
  if (seed != 0) return seed;
  std::random_device device;
  const std::uint64_t s = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  return s != 0 ? s : 1;
}

}  // namespace poolkeeper
