// SHA-256 against the FIPS 180-2 examples and lengths around the padding
// boundaries, hex round trips and the constant-time comparison.
#include "server/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace poolkeeper::server {
namespace {

// Verifies the published FIPS 180-2 digests, including a million 'a's.
TEST(Sha256Test, MatchesPublishedDigests) {
  EXPECT_EQ(to_hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(to_hex(sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(to_hex(sha256(std::string(1000000, 'a'))),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Verifies messages whose padding needs one block or spills into a second.
TEST(Sha256Test, PadsAtEveryBoundary) {
  const std::pair<int, const char*> cases[] = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
  };
  for (const auto& [n, hex] : cases) {
    EXPECT_EQ(to_hex(sha256(std::string(static_cast<std::size_t>(n), 'a'))), hex) << n << " bytes";
  }
}

// Verifies that hex digests round-trip in either case and that anything
// else is refused.
TEST(Sha256Test, ReadsHexDigests) {
  const Sha256Digest d = sha256("token");
  EXPECT_EQ(digest_from_hex(to_hex(d)), d);
  std::string upper = to_hex(d);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(digest_from_hex(upper), d);
  EXPECT_FALSE(digest_from_hex(to_hex(d).substr(1)).has_value());
  EXPECT_FALSE(digest_from_hex(std::string(64, 'g')).has_value());
  EXPECT_FALSE(digest_from_hex("").has_value());
}

// Verifies that the comparison tells equal from different digests wherever
// they differ.
TEST(Sha256Test, ComparesDigests) {
  const Sha256Digest a = sha256("a");
  EXPECT_TRUE(equal_in_constant_time(a, sha256("a")));
  for (std::size_t i = 0; i < a.size(); ++i) {
    Sha256Digest b = a;
    b[i] ^= 1;
    EXPECT_FALSE(equal_in_constant_time(a, b)) << "byte " << i;
  }
}

}  // namespace
}  // namespace poolkeeper::server
