// Small text helpers the drivers and the command line share: durations in
// messages, printable excerpts of untrusted bytes, percent-encoding.
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "poolkeeper/clock.h"

namespace poolkeeper::runtime {

// A lease's or reservation's id as clients see it: "POOL.N" (the server's
// split_id() reads it back).
inline std::string pool_scoped_id(std::string_view pool, std::uint64_t id) {
  return std::string(pool) + "." + std::to_string(id);
}

// "250 ms".
inline std::string ms_text(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

// At most `n` bytes of `s` for a message: anything but printable ASCII
// becomes '?', and "..." marks a cut.
inline std::string excerpt(std::string_view s, std::size_t n = 80) {
  std::string out;
  for (unsigned char c : s.substr(0, n)) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  if (s.size() > n) out += "...";
  return out;
}

// RFC 3986 percent-encoding of everything but the unreserved characters (for
// one path segment or query value).
inline std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace poolkeeper::runtime
