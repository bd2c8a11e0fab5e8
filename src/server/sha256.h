// SHA-256 (FIPS 180-4), for tenant tokens: the configuration holds only their
// hashes, and a request's token is hashed and compared in constant time.
//
// Thread-safety: pure functions.
//
//   auto digest = poolkeeper::server::sha256("secret");
//   std::string hex = poolkeeper::server::to_hex(digest);
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace poolkeeper::server {

using Sha256Digest = std::array<std::uint8_t, 32>;

Sha256Digest sha256(std::string_view data);

// Lowercase hex, 64 characters.
std::string to_hex(const Sha256Digest& digest);
// 64 hex digits (either case); nullopt otherwise.
std::optional<Sha256Digest> digest_from_hex(std::string_view hex);

// Compares without an early exit, so the time taken says nothing about
// where two digests differ.
bool equal_in_constant_time(const Sha256Digest& a, const Sha256Digest& b);

}  // namespace poolkeeper::server
