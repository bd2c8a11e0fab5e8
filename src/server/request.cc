#include "server/request.h"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <boost/json/value_stack.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace poolkeeper::server {
namespace {

namespace json = boost::json;
using std::chrono::milliseconds;

std::unexpected<DecodeError> refuse(std::string message) {
  return std::unexpected(DecodeError{.status = 400, .message = std::move(message)});
}

// Builds the value as Boost.JSON's own parser does, and refuses an object
// that repeats a key: JSON leaves such an object's meaning open (Boost.JSON
// keeps the last value, other parsers the first), so a body that holds one is
// answered with 400 rather than read one way of several.
constexpr std::size_t kShownKeyLength = 64;

// The longest prefix of UTF-8 text s of at most n bytes that ends on a
// character boundary.
std::string_view utf8_prefix(std::string_view s, std::size_t n) {
  if (s.size() <= n) return s;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

class BodyBuilder {
 public:
  static constexpr std::size_t max_object_size = json::object::max_size();
  static constexpr std::size_t max_array_size = json::array::max_size();
  static constexpr std::size_t max_key_size = json::string::max_size();
  static constexpr std::size_t max_string_size = json::string::max_size();

  BodyBuilder() { stack_.reset(); }

  const std::optional<std::string>& duplicate() const { return duplicate_; }
  json::value release() { return stack_.release(); }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    if (open_ == keys_.size()) keys_.emplace_back();
    keys_[open_++].clear();
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code& ec) {
    std::vector<std::string>& keys = keys_[--open_];
    std::ranges::sort(keys);
    if (auto twin = std::ranges::adjacent_find(keys); twin != keys.end()) {
      duplicate_ = *twin;
      ec = json::error::syntax;
      return false;
    }
    stack_.push_object(n);
    return true;
  }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t n, json::error_code&) {
    stack_.push_array(n);
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    stack_.push_chars(s);
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    key_.append(s.data(), s.size());
    keys_[open_ - 1].push_back(std::move(key_));
    key_.clear();
    stack_.push_key(s);
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    stack_.push_chars(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    stack_.push_string(s);
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t i, json::string_view, json::error_code&) {
    stack_.push_int64(i);
    return true;
  }
  bool on_uint64(std::uint64_t u, json::string_view, json::error_code&) {
    stack_.push_uint64(u);
    return true;
  }
  bool on_double(double d, json::string_view, json::error_code&) {
    stack_.push_double(d);
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    stack_.push_bool(b);
    return true;
  }
  bool on_null(json::error_code&) {
    stack_.push_null();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  json::value_stack stack_;
  std::vector<std::vector<std::string>> keys_;  // the keys of each open object
  std::size_t open_ = 0;
  std::string key_;
  std::optional<std::string> duplicate_;
};

// Whether text is UTF-8 (RFC 3629): no overlong forms, no surrogates,
// nothing above U+10FFFF.
bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t more = 0;
    unsigned char lo = 0x80;  // the range of the byte after the lead
    unsigned char hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      more = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      more = 2;
      if (lead == 0xE0) lo = 0xA0;
      if (lead == 0xED) hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      more = 3;
      if (lead == 0xF0) lo = 0x90;
      if (lead == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (s.size() - i - 1 < more) return false;
    for (std::size_t k = 1; k <= more; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return false;
    }
    i += more + 1;
  }
  return true;
}

// "%41" decoding of one path segment; nullopt when malformed or not UTF-8
// (ids and names from the target are echoed in JSON, which must be UTF-8).
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    unsigned v = 0;  // unsigned: "%-1" is not a byte
    const auto [end, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (ec != std::errc() || end != s.data() + i + 3) return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  if (!is_utf8(out)) return std::nullopt;
  return out;
}

// Whether every number in a value is finite (iteratively: the depth is the
// caller's limit, not the stack's).
bool finite(const json::value& root) {
  std::vector<const json::value*> pending{&root};
  while (!pending.empty()) {
    const json::value* v = pending.back();
    pending.pop_back();
    if (v->is_double()) {
      if (!std::isfinite(v->get_double())) return false;
    } else if (v->is_array()) {
      for (const json::value& e : v->get_array()) pending.push_back(&e);
    } else if (v->is_object()) {
      for (const auto& kv : v->get_object()) pending.push_back(&kv.value());
    }
  }
  return true;
}

// Typed, bounded fields of a request body; each error names the field.
struct Fields {
  const json::object& o;

  std::expected<std::int64_t, DecodeError> integer(std::string_view key, std::int64_t dflt,
                                                   std::int64_t min, std::int64_t max) const {
    const json::value* v = o.if_contains(key);
    if (v == nullptr || v->is_null()) return dflt;
    std::int64_t n = 0;
    if (v->is_int64()) {
      n = v->get_int64();
    } else if (v->is_uint64()) {
      n = std::numeric_limits<std::int64_t>::max();
    } else {
      return refuse(std::string(key) + ": must be an integer");
    }
    if (n < min || n > max) {
      return refuse(std::string(key) + ": must be between " + std::to_string(min) + " and " +
                    std::to_string(max));
    }
    return n;
  }

  std::expected<std::string, DecodeError> string(std::string_view key, std::size_t max_len) const {
    const json::value* v = o.if_contains(key);
    if (v == nullptr || v->is_null()) return std::string();
    if (!v->is_string()) return refuse(std::string(key) + ": must be a string");
    if (v->get_string().size() > max_len) {
      return refuse(std::string(key) + ": longer than " + std::to_string(max_len) + " characters");
    }
    return std::string(v->get_string());
  }

  std::expected<bool, DecodeError> boolean(std::string_view key, bool dflt) const {
    const json::value* v = o.if_contains(key);
    if (v == nullptr || v->is_null()) return dflt;
    if (!v->is_bool()) return refuse(std::string(key) + ": must be true or false");
    return v->get_bool();
  }

  // The acquire's wait: absent leaves the runtime's default in charge.
  std::expected<std::optional<milliseconds>, DecodeError> acquire_timeout() const {
    const json::value* v = o.if_contains("timeout_ms");
    if (v == nullptr || v->is_null()) return std::nullopt;
    auto n = integer("timeout_ms", 0, 0, kMaxTimeoutMs);
    if (!n) return std::unexpected(std::move(n.error()));
    return milliseconds(*n);
  }

  // A JSON value for the worker or the store, as compact text (`absent` when
  // missing). A number beyond a double's range parses as infinity and would be
  // written as "Infinity", which is not JSON: it is refused here, by name,
  // rather than by the worker or when the document is read back.
  std::expected<std::string, DecodeError> json_text(std::string_view key,
                                                    std::string_view absent) const {
    const json::value* v = o.if_contains(key);
    if (v == nullptr) return std::string(absent);
    if (!finite(*v)) return refuse(std::string(key) + ": a number is out of range");
    return json::serialize(*v);
  }
};

}  // namespace

std::expected<Target, DecodeError> parse_target(std::string_view target) {
  auto invalid = [] { return refuse("the request target is not a valid path"); };
  Target t;
  const std::size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  if (path.empty() || path.front() != '/') return invalid();
  path.remove_prefix(1);
  while (!path.empty()) {
    const std::size_t slash = path.find('/');
    auto seg = percent_decode(path.substr(0, slash));
    if (!seg) return invalid();
    t.path.push_back(std::move(*seg));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
    if (path.empty()) t.path.emplace_back();  // a trailing slash
  }
  if (q != std::string_view::npos) {
    std::string_view rest = target.substr(q + 1);
    while (!rest.empty()) {
      const std::size_t amp = rest.find('&');
      const std::string_view kv = rest.substr(0, amp);
      const std::size_t eq = kv.find('=');
      auto k = percent_decode(kv.substr(0, eq));
      auto v = percent_decode(eq == std::string_view::npos ? std::string_view() : kv.substr(eq + 1));
      if (!k || !v) return invalid();
      t.query[*k] = *v;
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
  }
  return t;
}

std::expected<json::object, DecodeError> parse_body(std::string_view body, int max_depth) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return json::object();
  json::parse_options o;
  o.max_depth = static_cast<std::size_t>(max_depth);
  json::basic_parser<BodyBuilder> parser(o);
  json::error_code ec;
  const std::size_t used = parser.write_some(false, body.data(), body.size(), ec);
  if (const auto& key = parser.handler().duplicate()) {
    const std::string_view shown = utf8_prefix(*key, kShownKeyLength);
    return refuse("the JSON body repeats the key \"" + std::string(shown) +
                  (shown.size() < key->size() ? "...\"" : "\"") + " in one object");
  }
  if (ec == json::error::too_deep) {
    return refuse("the JSON body nests deeper than " + std::to_string(max_depth) + " levels");
  }
  if (!ec && used < body.size()) ec = json::error::extra_data;
  if (ec) return refuse("the body is not valid JSON: " + ec.message());
  json::value v = parser.handler().release();
  if (!v.is_object()) return refuse("the body must be a JSON object");
  return std::move(v.get_object());
}

std::optional<std::pair<std::string, std::uint64_t>> split_id(std::string_view text) {
  const std::size_t dot = text.rfind('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  std::uint64_t id = 0;
  const std::string_view digits = text.substr(dot + 1);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty()) return std::nullopt;
  return std::make_pair(std::string(text.substr(0, dot)), id);
}

std::expected<AcquireBody, DecodeError> decode_acquire(const json::object& body) {
  const Fields f{body};
  auto priority = f.integer("priority", kNormalPriority, kLowestPriority, kCriticalPriority);
  if (!priority) return std::unexpected(priority.error());
  auto timeout = f.acquire_timeout();
  if (!timeout) return std::unexpected(timeout.error());
  auto lease_timeout = f.integer("lease_timeout_ms", 0, 0, kMaxTimeoutMs);
  if (!lease_timeout) return std::unexpected(lease_timeout.error());
  auto client_session = f.string("client_session", kMaxIdLength);
  if (!client_session) return std::unexpected(client_session.error());
  auto owner = f.string("owner", kMaxIdLength);
  if (!owner) return std::unexpected(owner.error());
  return AcquireBody{.priority = static_cast<int>(*priority),
                     .timeout = *timeout,
                     .lease_timeout = milliseconds(*lease_timeout),
                     .client_session = std::move(*client_session),
                     .owner = std::move(*owner)};
}

std::expected<OneShotExecuteBody, DecodeError> decode_one_shot_execute(const json::object& body) {
  const Fields f{body};
  auto priority = f.integer("priority", kNormalPriority, kLowestPriority, kCriticalPriority);
  if (!priority) return std::unexpected(priority.error());
  auto timeout = f.acquire_timeout();
  if (!timeout) return std::unexpected(timeout.error());
  auto execute_timeout = f.integer("execute_timeout_ms", 0, 0, kMaxTimeoutMs);
  if (!execute_timeout) return std::unexpected(execute_timeout.error());
  auto client_session = f.string("client_session", kMaxIdLength);
  if (!client_session) return std::unexpected(client_session.error());
  auto params = f.json_text("params", "null");
  if (!params) return std::unexpected(params.error());
  return OneShotExecuteBody{.priority = static_cast<int>(*priority),
                            .timeout = *timeout,
                            .execute_timeout = milliseconds(*execute_timeout),
                            .client_session = std::move(*client_session),
                            .params = std::move(*params)};
}

std::expected<LeaseExecuteBody, DecodeError> decode_lease_execute(const json::object& body) {
  const Fields f{body};
  auto timeout = f.integer("timeout_ms", 0, 0, kMaxTimeoutMs);
  if (!timeout) return std::unexpected(timeout.error());
  auto params = f.json_text("params", "null");
  if (!params) return std::unexpected(params.error());
  return LeaseExecuteBody{.timeout = milliseconds(*timeout), .params = std::move(*params)};
}

std::expected<ReleaseBody, DecodeError> decode_release(const json::object& body) {
  auto broken = Fields{body}.boolean("broken", false);
  if (!broken) return std::unexpected(broken.error());
  return ReleaseBody{.broken = *broken};
}

std::expected<ReservationBody, DecodeError> decode_reservation(const json::object& body) {
  const Fields f{body};
  auto ttl = f.integer("ttl_ms", kDefaultReservationTtl.count(), 1, kMaxTimeoutMs);
  if (!ttl) return std::unexpected(ttl.error());
  auto owner = f.string("owner", kMaxIdLength);
  if (!owner) return std::unexpected(owner.error());
  return ReservationBody{.ttl = milliseconds(*ttl), .owner = std::move(*owner)};
}

std::expected<CancelReservationBody, DecodeError> decode_cancel_reservation(
    const json::object& body) {
  auto owner = Fields{body}.string("owner", kMaxIdLength);
  if (!owner) return std::unexpected(owner.error());
  return CancelReservationBody{.owner = std::move(*owner)};
}

std::expected<ScaleBody, DecodeError> decode_scale(const json::object& body) {
  auto target = Fields{body}.integer("target", -1, 0, kMaxScaleTarget);
  if (!target) return std::unexpected(target.error());
  if (*target < 0) return refuse("target: is required");
  return ScaleBody{.target = static_cast<int>(*target)};
}

std::expected<AutoscaleBody, DecodeError> decode_autoscale(const json::object& body) {
  auto enabled = Fields{body}.boolean("enabled", true);
  if (!enabled) return std::unexpected(enabled.error());
  return AutoscaleBody{.enabled = *enabled};
}

std::expected<ClientSessionBody, DecodeError> decode_client_session(const json::object& body) {
  auto document = Fields{body}.json_text("document", "");
  if (!document) return std::unexpected(document.error());
  return ClientSessionBody{.document = std::move(*document)};
}

std::expected<void, DecodeError> check_client_session_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) {
    return refuse("a client session id is 1 to " + std::to_string(kMaxIdLength) + " characters");
  }
  return {};
}

std::expected<std::string, DecodeError> client_session_pool(
    const Target& target, std::optional<std::string_view> only_pool) {
  if (auto it = target.query.find("pool"); it != target.query.end()) return it->second;
  if (only_pool) return std::string(*only_pool);
  return refuse("pool: name the pool (?pool=NAME) when the daemon has more than one");
}

}  // namespace poolkeeper::server
