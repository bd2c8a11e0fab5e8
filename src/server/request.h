// Request decoding for the HTTP API (docs/api.md): the request target into
// path segments and query, the body into a JSON object with bounded nesting,
// and each route's body into typed, bounded values.
//
// Everything here is a pure function of the request's bytes: no sockets, no
// Asio, no pools. The API (server/api.h) routes, checks the caller and calls
// the runners; unit tests and the fuzz target (fuzz/request_fuzz.cc) call the
// decoders directly. A refusal is a DecodeError: 400 and a message naming the
// field ("timeout_ms: must be between 0 and 86400000"), which the API answers
// as {"error": {"code": "invalid_argument", "message": ...}}. Fields a route
// does not know are ignored; JSON null reads as an absent field.
//
// Thread-safety: pure functions on values; callable from any thread.
//
//   auto body = parse_body(request.body, config.server.max_json_depth);
//   if (!body) return bad_request(body.error());
//   auto acquire = decode_acquire(*body);
//   if (!acquire) return bad_request(acquire.error());
#pragma once

#include <boost/json/object.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "poolkeeper/pool_config.h"

namespace poolkeeper::server {

// The longest wait or timeout a request may ask for (a day).
inline constexpr std::int64_t kMaxTimeoutMs = 24LL * 3600 * 1000;
// The longest client session id or owner label, in bytes.
inline constexpr std::size_t kMaxIdLength = 256;
// The largest scale target.
inline constexpr int kMaxScaleTarget = 100000;
// A reservation's lifetime when the body does not say.
inline constexpr std::chrono::milliseconds kDefaultReservationTtl = std::chrono::hours(1);

// Why a request was refused before any pool saw it.
struct DecodeError {
  int status = 400;
  std::string message;
};

// A request target ("/v1/pools/python?x=1"), percent-decoded.
struct Target {
  std::vector<std::string> path;  // segments; a trailing slash adds an empty one
  std::map<std::string, std::string, std::less<>> query;  // a repeated key: the last wins
};

// The path must start with '/'; a malformed %XX escape, or decoded text that
// is not UTF-8, is refused anywhere in the target.
std::expected<Target, DecodeError> parse_target(std::string_view target);

// The body as a JSON object; an empty (or all-whitespace) body is an empty
// object. Nesting deeper than `max_depth` levels is refused.
std::expected<boost::json::object, DecodeError> parse_body(std::string_view body, int max_depth);

// "python.123" -> ("python", 123): a lease or reservation id. Nullopt when
// malformed (the API answers that as an unknown lease, not a bad request).
std::optional<std::pair<std::string, std::uint64_t>> split_id(std::string_view text);

// POST /v1/pools/{pool}/leases
struct AcquireBody {
  int priority = kNormalPriority;                    // kLowestPriority .. kCriticalPriority
  std::optional<std::chrono::milliseconds> timeout;  // 0 .. kMaxTimeoutMs; absent: the runtime's
  std::chrono::milliseconds lease_timeout{0};        // 0 .. kMaxTimeoutMs; 0: the pool's
  std::string client_session;                        // at most kMaxIdLength; empty: none
  std::string owner;                                 // at most kMaxIdLength (auth = "none")
};
std::expected<AcquireBody, DecodeError> decode_acquire(const boost::json::object& body);

// POST /v1/pools/{pool}/execute: acquire, execute, release.
struct OneShotExecuteBody {
  int priority = kNormalPriority;
  std::optional<std::chrono::milliseconds> timeout;  // the acquire's, as AcquireBody's
  std::chrono::milliseconds execute_timeout{0};      // 0 .. kMaxTimeoutMs; 0: the pool's
  std::string client_session;
  std::string params = "null";  // compact JSON text for the worker; every number finite
};
std::expected<OneShotExecuteBody, DecodeError> decode_one_shot_execute(
    const boost::json::object& body);

// POST /v1/leases/{lease}/execute
struct LeaseExecuteBody {
  std::chrono::milliseconds timeout{0};  // 0 .. kMaxTimeoutMs; 0: the pool's execute_timeout
  std::string params = "null";
};
std::expected<LeaseExecuteBody, DecodeError> decode_lease_execute(const boost::json::object& body);

// DELETE /v1/leases/{lease}
struct ReleaseBody {
  bool broken = false;  // retire the session instead of reusing it
};
std::expected<ReleaseBody, DecodeError> decode_release(const boost::json::object& body);

// POST /v1/pools/{pool}/reservations
struct ReservationBody {
  std::chrono::milliseconds ttl = kDefaultReservationTtl;  // 1 .. kMaxTimeoutMs
  std::string owner;
};
std::expected<ReservationBody, DecodeError> decode_reservation(const boost::json::object& body);

// DELETE /v1/reservations/{reservation}
struct CancelReservationBody {
  std::string owner;
};
std::expected<CancelReservationBody, DecodeError> decode_cancel_reservation(
    const boost::json::object& body);

// POST /v1/pools/{pool}/scale: `target` is required.
struct ScaleBody {
  int target = 0;  // 0 .. kMaxScaleTarget
};
std::expected<ScaleBody, DecodeError> decode_scale(const boost::json::object& body);

// POST /v1/pools/{pool}/autoscale
struct AutoscaleBody {
  bool enabled = true;
};
std::expected<AutoscaleBody, DecodeError> decode_autoscale(const boost::json::object& body);

// PUT /v1/client-sessions/{id}
struct ClientSessionBody {
  std::string document;  // compact JSON text; empty when the body has none
};
std::expected<ClientSessionBody, DecodeError> decode_client_session(
    const boost::json::object& body);

// /v1/client-sessions/{id}: the id is 1 to kMaxIdLength bytes.
std::expected<void, DecodeError> check_client_session_id(std::string_view id);

// The pool a client session route names: ?pool=NAME, else `only_pool` (the
// daemon's pool when it has exactly one).
std::expected<std::string, DecodeError> client_session_pool(
    const Target& target, std::optional<std::string_view> only_pool);

}  // namespace poolkeeper::server
