#include "core/lease_codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <unordered_set>

namespace poolkeeper::core {
namespace {

class LeaseCodecTest : public ::testing::Test {
 protected:
  LeaseCodec codec_{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
};

// Verifies that decode inverts encode for random slots and sequences.
TEST_F(LeaseCodecTest, DecodeInvertsEncode) {
  std::mt19937_64 rng(99);
  for (int i = 0; i < 100000; ++i) {
    const auto slot = static_cast<std::uint32_t>(rng() & ((1u << LeaseCodec::kSlotBits) - 1));
    const std::uint64_t seq = rng() & LeaseCodec::kSeqMask;
    std::uint32_t got_slot = 0;
    std::uint64_t got_seq = 0;
    codec_.decode(codec_.encode(slot, seq), &got_slot, &got_seq);
    ASSERT_EQ(got_slot, slot);
    ASSERT_EQ(got_seq, seq);
  }
}

// Verifies the edges of the slot and sequence ranges round-trip.
TEST_F(LeaseCodecTest, RoundTripsRangeEdges) {
  const std::uint32_t max_slot = (1u << LeaseCodec::kSlotBits) - 1;
  for (std::uint32_t slot : {0u, 1u, max_slot}) {
    for (std::uint64_t seq : {std::uint64_t{0}, std::uint64_t{1}, LeaseCodec::kSeqMask}) {
      std::uint32_t s = 0;
      std::uint64_t q = 0;
      codec_.decode(codec_.encode(slot, seq), &s, &q);
      EXPECT_EQ(s, slot);
      EXPECT_EQ(q, seq);
    }
  }
}

// Verifies that consecutive sequences of a slot give distinct, scattered ids.
TEST_F(LeaseCodecTest, ConsecutiveSequencesGiveDistinctScatteredIds) {
  std::unordered_set<std::uint64_t> ids;
  for (std::uint32_t slot = 0; slot < 64; ++slot) {
    for (std::uint64_t seq = 0; seq < 2000; ++seq) {
      ASSERT_TRUE(ids.insert(codec_.encode(slot, seq)).second) << slot << "/" << seq;
    }
  }
  // Neighbouring sequences differ in many bits: ids do not reveal the count.
  int total_bits = 0;
  for (std::uint64_t seq = 0; seq < 1000; ++seq) {
    total_bits += __builtin_popcountll(codec_.encode(3, seq) ^ codec_.encode(3, seq + 1));
  }
  EXPECT_GT(total_bits / 1000, 20);
}

// Verifies that different keys give different ids for the same slot and sequence.
TEST_F(LeaseCodecTest, KeysChangeTheIds) {
  LeaseCodec other(0x1111111111111111ULL, 0x2222222222222222ULL);
  int same = 0;
  for (std::uint64_t seq = 0; seq < 1000; ++seq) same += codec_.encode(1, seq) == other.encode(1, seq);
  EXPECT_EQ(same, 0);
}

// Verifies that the sequence is truncated to its 40 bits (it never spills into the slot).
TEST_F(LeaseCodecTest, SequenceNeverSpillsIntoSlot) {
  std::uint32_t slot = 0;
  std::uint64_t seq = 0;
  codec_.decode(codec_.encode(5, LeaseCodec::kSeqMask + 1), &slot, &seq);
  EXPECT_EQ(slot, 5u);
  EXPECT_EQ(seq, 0u);
}

}  // namespace
}  // namespace poolkeeper::core
