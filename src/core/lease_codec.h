// Lease ids: a keyed, invertible 64-bit permutation of (slot, sequence).
//
// A lease id looks random to a client, yet the core decodes it back to the
// session slot and that slot's lease sequence in a few multiplications: no
// table lookup, no allocation. Because the permutation is a bijection and
// each slot's sequence only grows, an id is never issued twice, and the core
// can tell exactly whether an id was ever issued (sequence below the slot's
// counter) or is unknown. Not a cryptographic MAC: the daemon authenticates
// callers and checks owners; ids only need to be unguessable-looking.
#pragma once

#include <cstdint>

namespace poolkeeper::core {

// The inverse of an odd number modulo 2^64 (Newton's iteration doubles the
// correct low bits each step).
constexpr std::uint64_t inverse_mod_2_64(std::uint64_t a) {
  std::uint64_t x = a;
  for (int i = 0; i < 6; ++i) x *= 2 - a * x;
  return x;
}

class LeaseCodec {
 public:
  static constexpr int kSlotBits = 24;   // 16 M sessions per pool
  static constexpr int kSeqBits = 40;    // 10^12 leases per slot
  static constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << kSeqBits) - 1;

  LeaseCodec(std::uint64_t k0, std::uint64_t k1) : k0_(k0), k1_(k1) {}

  std::uint64_t encode(std::uint32_t slot, std::uint64_t seq) const {
    std::uint64_t x = (static_cast<std::uint64_t>(slot) << kSeqBits) | (seq & kSeqMask);
    x ^= k0_;
    x *= kM1;
    x ^= x >> 31;
    x *= kM2;
    x ^= x >> 29;
    return x ^ k1_;
  }
  void decode(std::uint64_t id, std::uint32_t* slot, std::uint64_t* seq) const {
    std::uint64_t x = id ^ k1_;
    x = unshift(x, 29);
    x *= kM2Inv;
    x = unshift(x, 31);
    x *= kM1Inv;
    x ^= k0_;
    *slot = static_cast<std::uint32_t>(x >> kSeqBits);
    *seq = x & kSeqMask;
  }

 private:
  static constexpr std::uint64_t kM1 = 0xbf58476d1ce4e5b9ULL;
  static constexpr std::uint64_t kM2 = 0x94d049bb133111ebULL;
  static constexpr std::uint64_t kM1Inv = inverse_mod_2_64(kM1);
  static constexpr std::uint64_t kM2Inv = inverse_mod_2_64(kM2);
  static_assert(kM1 * kM1Inv == 1 && kM2 * kM2Inv == 1);

  // Inverts x ^= x >> s.
  static std::uint64_t unshift(std::uint64_t y, int s) {
    std::uint64_t x = y;
    for (int done = s; done < 64; done += s) x = y ^ (x >> s);
    return x;
  }

  std::uint64_t k0_;
  std::uint64_t k1_;
};

}  // namespace poolkeeper::core
