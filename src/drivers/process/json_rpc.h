// The worker protocol's messages: JSON-RPC 2.0 lines to and from a worker.
//
// Parsing is strict about what would confuse the pool (not an object, invalid
// UTF-8, a response without an integer id or without result/error) and
// lenient about the rest (unknown members are ignored). Boost.JSON stays
// inside json_rpc.cc.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>

namespace poolkeeper::drivers {

struct WorkerMessage {
  enum class Kind : std::uint8_t { kResponse, kNotification };
  Kind kind = Kind::kResponse;
  std::int64_t id = 0;      // responses
  bool ok = true;           // responses: result (true) or error (false)
  std::string body;         // responses: the result or the error object, as compact JSON
  std::string method;       // notifications
};

// Parses one line from a worker; the error says what was wrong with it.
std::expected<WorkerMessage, std::string> parse_worker_line(std::string_view line);

// The integer `code` of a JSON-RPC error object, if it has one.
std::optional<std::int64_t> error_code_of(std::string_view error_json);

// Validates JSON text and returns it on one line: unchanged when it already
// is, compacted when it spans lines. Nesting deeper than `max_depth` is
// refused.
std::expected<std::string, std::string> one_line_json(std::string_view text, int max_depth = 256);

// A request line, ending in '\n'. `params` is one-line JSON or empty (none);
// `client_session` is added when not empty.
std::string request_line(std::int64_t id, std::string_view method, std::string_view params,
                         std::string_view client_session = {});

}  // namespace poolkeeper::drivers
