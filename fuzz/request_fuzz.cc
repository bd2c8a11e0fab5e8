// libFuzzer target for the HTTP API's request decoding (src/server/request.h).
//
// An input is a request: its first line is the request target, the rest the
// body. The target goes through parse_target(), the body through parse_body()
// at the daemon's default depth, and the object, when there is one, through
// every route's decoder. Beyond the sanitizers' findings, a broken invariant
// aborts:
//   - a refusal is a 400 with a message naming what is wrong;
//   - decoded text (path segments, query, strings) is UTF-8 that JSON can
//     carry, and percent-encoding a decoded target gives the same target back;
//   - the depth limit is exact: a body n levels deep passes at n, not at n-1;
//   - a decoder that accepts returns values within its documented bounds and
//     equal to the body's, and JSON it passes on as text parses back to the
//     same value; one that refuses names a field the body really has;
//   - no exception escapes.
//
// Built and run by scripts/fuzz.sh; docs/development.md tells how to replay a
// crash.

// Boost.JSON is compiled here, not linked, so that its parser is instrumented
// too and the fuzzer sees its branches.
#include <boost/json/src.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/config.h"
#include "server/request.h"

namespace {

namespace json = boost::json;
using namespace poolkeeper;
using namespace poolkeeper::server;
using std::chrono::milliseconds;

[[noreturn]] void fail(int line, const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "request_fuzz.cc:%d: invariant broken: %s", line, what);
  if (!detail.empty()) std::fprintf(stderr, " (%.*s)", static_cast<int>(detail.size()), detail.data());
  std::fputc('\n', stderr);
  std::abort();
}
#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) fail(__LINE__, #cond); \
  } while (0)
#define FUZZ_CHECK_MSG(cond, detail)              \
  do {                                            \
    if (!(cond)) fail(__LINE__, #cond, (detail)); \
  } while (0)

// The daemon's default, so the fuzzer explores what a default daemon accepts.
const int kDepth = ServerConfig{}.max_json_depth;

json::parse_options deep_enough() {
  json::parse_options o;
  o.max_depth = static_cast<std::size_t>(kDepth) + 1;
  return o;
}

// A refusal: 400 and a message.
void check_refusal(const DecodeError& e) {
  FUZZ_CHECK(e.status == 400);
  FUZZ_CHECK(!e.message.empty());
}

// A decoder's refusal names one of the fields it reads, and the body has it.
void check_field_refusal(const DecodeError& e, const json::object& body,
                         std::initializer_list<std::string_view> fields) {
  check_refusal(e);
  const std::size_t colon = e.message.find(": ");
  FUZZ_CHECK_MSG(colon != std::string::npos, e.message);
  const std::string_view field = std::string_view(e.message).substr(0, colon);
  bool known = false;
  for (std::string_view f : fields) known = known || f == field;
  FUZZ_CHECK_MSG(known, e.message);
  // "target: is required" is the one refusal of an absent field.
  if (e.message != "target: is required") {
    const json::value* v = body.if_contains(field);
    FUZZ_CHECK_MSG(v != nullptr && !v->is_null(), e.message);
  }
}

// Text that JSON can carry: it survives a round trip as a JSON string.
bool carries_as_json(std::string_view s) {
  json::error_code ec;
  const json::value v = json::parse(json::serialize(json::string_view(s.data(), s.size())), ec);
  return !ec && v.is_string() && v.get_string() == json::string_view(s.data(), s.size());
}

// The same JSON value, but for doubles a few units in the last place apart:
// Boost.JSON 1.81 parses long decimals imprecisely, so a double written back
// (exactly, shortest form) can read as a neighbour. Recursion is bounded by
// the depth limit.
bool same_json(const json::value& a, const json::value& b) {
  if (a.is_double() && b.is_double()) {
    const double x = a.get_double();
    const double y = b.get_double();
    return x == y || std::fabs(x - y) <= 1e-14 * std::max(std::fabs(x), std::fabs(y));
  }
  if (a.kind() != b.kind()) return false;
  if (a.is_array()) {
    const json::array& p = a.get_array();
    const json::array& q = b.get_array();
    if (p.size() != q.size()) return false;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (!same_json(p[i], q[i])) return false;
    }
    return true;
  }
  if (a.is_object()) {
    const json::object& p = a.get_object();
    const json::object& q = b.get_object();
    if (p.size() != q.size()) return false;
    for (const auto& kv : p) {
      const json::value* other = q.if_contains(kv.key());
      if (other == nullptr || !same_json(kv.value(), *other)) return false;
    }
    return true;
  }
  return a == b;
}

// JSON text passed on (params, a document) parses back to the body's value.
void check_passed_on(const std::string& text, const json::value* original) {
  FUZZ_CHECK(text.find_first_of("\r\n") == std::string::npos);  // one JSON-RPC line
  json::error_code ec;
  const json::value back = json::parse(text, ec, {}, deep_enough());
  FUZZ_CHECK_MSG(!ec, text);
  FUZZ_CHECK_MSG(same_json(back, original == nullptr ? json::value(nullptr) : *original), text);
}

// A string field as decoded: the body's string, or empty when absent or null.
void check_string_field(const std::string& decoded, const json::object& body, std::string_view key) {
  FUZZ_CHECK(decoded.size() <= kMaxIdLength);
  const json::value* v = body.if_contains(key);
  if (v == nullptr || v->is_null()) {
    FUZZ_CHECK(decoded.empty());
  } else {
    FUZZ_CHECK(v->is_string() && v->get_string() == decoded);
  }
}

// An integer field as decoded: absent or null gives the default, else the body's value.
void check_integer_field(std::int64_t decoded, std::int64_t dflt, std::int64_t min, std::int64_t max,
                         const json::object& body, std::string_view key) {
  const json::value* v = body.if_contains(key);
  if (v == nullptr || v->is_null()) {
    FUZZ_CHECK(decoded == dflt);
    return;
  }
  FUZZ_CHECK(v->is_int64() && v->get_int64() == decoded);
  FUZZ_CHECK(decoded >= min && decoded <= max);
}

bool absent(const json::object& body, std::string_view key) {
  const json::value* v = body.if_contains(key);
  return v == nullptr || v->is_null();
}

// '%XX' for every byte but the unreserved ones (RFC 3986).
std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '-' ||
        b == '.' || b == '_' || b == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[b >> 4];
      out += kHex[b & 15];
    }
  }
  return out;
}

void fuzz_target(std::string_view text) {
  auto target = parse_target(text);
  if (!target) {
    check_refusal(target.error());
    return;
  }
  FUZZ_CHECK(!text.empty() && text.front() == '/');
  const std::string_view path = text.substr(0, text.find('?'));
  FUZZ_CHECK(target->path.size() <= static_cast<std::size_t>(std::count(path.begin(), path.end(), '/')));
  for (const std::string& seg : target->path) FUZZ_CHECK_MSG(carries_as_json(seg), seg);
  for (const auto& [k, v] : target->query) {
    FUZZ_CHECK_MSG(carries_as_json(k), k);
    FUZZ_CHECK_MSG(carries_as_json(v), v);
  }
  // Without escapes the segments are the path's own text.
  if (path.find('%') == std::string_view::npos) {
    std::string joined;
    for (const std::string& seg : target->path) joined += "/" + seg;
    if (target->path.empty()) joined = "/";
    FUZZ_CHECK(joined == path);
  }
  // Encoding what was decoded gives the same target back.
  std::string again;
  for (const std::string& seg : target->path) again += "/" + percent_encode(seg);
  if (target->path.empty()) again = "/";
  if (!target->query.empty()) {
    char sep = '?';
    for (const auto& [k, v] : target->query) {
      again += sep + percent_encode(k) + "=" + percent_encode(v);
      sep = '&';
    }
  }
  auto reparsed = parse_target(again);
  FUZZ_CHECK_MSG(reparsed.has_value(), again);
  FUZZ_CHECK_MSG(reparsed->path == target->path && reparsed->query == target->query, again);

  // The routes' use of a target: ids and the client session's pool.
  for (const std::string& seg : target->path) {
    if (auto id = split_id(seg)) {
      FUZZ_CHECK(!id->first.empty());
      FUZZ_CHECK(seg.starts_with(id->first + "."));
      FUZZ_CHECK(split_id(id->first + "." + std::to_string(id->second)) == id);
    }
    auto valid = check_client_session_id(seg);
    FUZZ_CHECK(valid.has_value() == (!seg.empty() && seg.size() <= kMaxIdLength));
    if (!valid) check_refusal(valid.error());
  }
  const auto named = target->query.find("pool");
  auto pool = client_session_pool(*target, std::nullopt);
  if (named == target->query.end()) {
    FUZZ_CHECK(!pool.has_value());
    check_refusal(pool.error());
    FUZZ_CHECK(client_session_pool(*target, "only").value_or("") == "only");
  } else {
    FUZZ_CHECK(pool.has_value() && *pool == named->second);
  }
}

// How many containers deep a body nests (the body itself is the first).
int depth_of(const json::object& body) {
  int deepest = 1;
  std::vector<std::pair<const json::value*, int>> stack;
  auto push_containers = [&stack](const json::value& v, int d) {
    if (v.is_object() || v.is_array()) stack.emplace_back(&v, d);
  };
  for (const auto& kv : body) push_containers(kv.value(), 2);
  while (!stack.empty()) {
    const auto [v, d] = stack.back();
    stack.pop_back();
    deepest = std::max(deepest, d);
    if (v->is_object()) {
      for (const auto& kv : v->get_object()) push_containers(kv.value(), d + 1);
    } else {
      for (const auto& e : v->get_array()) push_containers(e, d + 1);
    }
  }
  return deepest;
}

void fuzz_decoders(const json::object& body) {
  if (auto a = decode_acquire(body)) {
    check_integer_field(a->priority, kNormalPriority, kLowestPriority, kCriticalPriority, body,
                        "priority");
    FUZZ_CHECK(a->timeout.has_value() == !absent(body, "timeout_ms"));
    if (a->timeout) check_integer_field(a->timeout->count(), 0, 0, kMaxTimeoutMs, body, "timeout_ms");
    check_integer_field(a->lease_timeout.count(), 0, 0, kMaxTimeoutMs, body, "lease_timeout_ms");
    check_string_field(a->client_session, body, "client_session");
    check_string_field(a->owner, body, "owner");
  } else {
    check_field_refusal(a.error(), body,
                        {"priority", "timeout_ms", "lease_timeout_ms", "client_session", "owner"});
  }

  if (auto e = decode_one_shot_execute(body)) {
    check_integer_field(e->priority, kNormalPriority, kLowestPriority, kCriticalPriority, body,
                        "priority");
    FUZZ_CHECK(e->timeout.has_value() == !absent(body, "timeout_ms"));
    if (e->timeout) check_integer_field(e->timeout->count(), 0, 0, kMaxTimeoutMs, body, "timeout_ms");
    check_integer_field(e->execute_timeout.count(), 0, 0, kMaxTimeoutMs, body, "execute_timeout_ms");
    check_string_field(e->client_session, body, "client_session");
    check_passed_on(e->params, body.if_contains("params"));
  } else {
    check_field_refusal(e.error(), body,
                        {"priority", "timeout_ms", "execute_timeout_ms", "client_session", "params"});
  }

  if (auto e = decode_lease_execute(body)) {
    check_integer_field(e->timeout.count(), 0, 0, kMaxTimeoutMs, body, "timeout_ms");
    check_passed_on(e->params, body.if_contains("params"));
  } else {
    check_field_refusal(e.error(), body, {"timeout_ms", "params"});
  }

  if (auto r = decode_release(body)) {
    FUZZ_CHECK(r->broken == (!absent(body, "broken") && body.at("broken").as_bool()));
  } else {
    check_field_refusal(r.error(), body, {"broken"});
  }

  if (auto r = decode_reservation(body)) {
    check_integer_field(r->ttl.count(), kDefaultReservationTtl.count(), 1, kMaxTimeoutMs, body,
                        "ttl_ms");
    FUZZ_CHECK(r->ttl.count() >= 1 && r->ttl.count() <= kMaxTimeoutMs);
    check_string_field(r->owner, body, "owner");
  } else {
    check_field_refusal(r.error(), body, {"ttl_ms", "owner"});
  }

  if (auto c = decode_cancel_reservation(body)) {
    check_string_field(c->owner, body, "owner");
  } else {
    check_field_refusal(c.error(), body, {"owner"});
  }

  if (auto s = decode_scale(body)) {
    FUZZ_CHECK(!absent(body, "target"));
    check_integer_field(s->target, -1, 0, kMaxScaleTarget, body, "target");
  } else {
    check_field_refusal(s.error(), body, {"target"});
  }

  if (auto a = decode_autoscale(body)) {
    FUZZ_CHECK(a->enabled == (absent(body, "enabled") || body.at("enabled").as_bool()));
  } else {
    check_field_refusal(a.error(), body, {"enabled"});
  }

  if (auto c = decode_client_session(body)) {
    const json::value* doc = body.if_contains("document");
    FUZZ_CHECK(c->document.empty() == (doc == nullptr));
    if (doc != nullptr) check_passed_on(c->document, doc);
  } else {
    check_field_refusal(c.error(), body, {"document"});
  }
}

void fuzz_body(std::string_view text) {
  auto body = parse_body(text, kDepth);
  if (!body) {
    check_refusal(body.error());
    return;
  }
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) FUZZ_CHECK(body->empty());
  // The limit is exact: the body passes at its own depth and not one less.
  const int depth = depth_of(*body);
  FUZZ_CHECK(depth <= kDepth);
  FUZZ_CHECK(parse_body(text, depth).has_value());
  if (depth > 1) {
    auto shallower = parse_body(text, depth - 1);
    FUZZ_CHECK(!shallower.has_value());
    FUZZ_CHECK_MSG(shallower.error().message ==
                       "the JSON body nests deeper than " + std::to_string(depth - 1) + " levels",
                   shallower.error().message);
  }
  fuzz_decoders(*body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t newline = input.find('\n');
  const std::string_view target = input.substr(0, newline);
  const std::string_view body =
      newline == std::string_view::npos ? std::string_view() : input.substr(newline + 1);
  try {
    fuzz_target(target);
    fuzz_body(body);
  } catch (const std::exception& e) {
    fail(__LINE__, "an exception escaped", e.what());
  } catch (...) {
    fail(__LINE__, "an exception escaped");
  }
  return 0;
}
