// The HTTP API's request decoding without a daemon: targets, bodies and each
// route's fields, with the exact messages clients see.
#include "server/request.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace poolkeeper::server {
namespace {

namespace json = boost::json;
using std::chrono::milliseconds;

json::object object(std::string_view text) { return json::parse(text).as_object(); }

// The message of a refusal, or a note that there was none.
template <class T>
std::string refusal(const std::expected<T, DecodeError>& r) {
  if (r) return "(accepted)";
  EXPECT_EQ(r.error().status, 400);
  return r.error().message;
}

// Verifies that path segments are split and percent-decoded, keeping empty
// segments and a trailing slash.
TEST(ParseTargetTest, SplitsAndDecodesThePath) {
  auto t = parse_target("/v1/pools/%77");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->path, (std::vector<std::string>{"v1", "pools", "w"}));
  EXPECT_TRUE(t->query.empty());
  EXPECT_EQ(parse_target("/")->path, std::vector<std::string>{});
  EXPECT_EQ(parse_target("/health/")->path, (std::vector<std::string>{"health", ""}));
  EXPECT_EQ(parse_target("/a//b")->path, (std::vector<std::string>{"a", "", "b"}));
  // An encoded slash stays inside its segment.
  EXPECT_EQ(parse_target("/v1/client-sessions/a%2Fb%20c")->path,
            (std::vector<std::string>{"v1", "client-sessions", "a/b c"}));
  EXPECT_EQ(parse_target("/%e2%82%ac")->path, std::vector<std::string>{"\u20ac"});
}

// Verifies the query: decoded keys and values, a key without '=', '=' inside
// a value, and the last of a repeated key.
TEST(ParseTargetTest, DecodesTheQuery) {
  auto t = parse_target("/v1/client-sessions/x?pool=py%74hon&flag&k=a=b&pool2=1&pool2=2&");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->path, (std::vector<std::string>{"v1", "client-sessions", "x"}));
  const std::map<std::string, std::string, std::less<>> want{
      {"pool", "python"}, {"flag", ""}, {"k", "a=b"}, {"pool2", "2"}};
  EXPECT_EQ(t->query, want);
}

// Verifies that a target without a leading slash or with a malformed escape
// (short, not hex, signed) is refused with one message.
TEST(ParseTargetTest, RefusesMalformedTargets) {
  for (std::string_view bad : {"", "v1/pools", "?pool=x", "/%", "/%4", "/a%4?x", "/%zz", "/%-1",
                               "/%+1", "/% 1", "/ok?pool=%g0", "/ok?%=1"}) {
    EXPECT_EQ(refusal(parse_target(bad)), "the request target is not a valid path") << bad;
  }
}

// Verifies that percent-decoding yields UTF-8 only: ids and names from the
// path are echoed in JSON, which a byte like 0xFF would make unparseable.
TEST(ParseTargetTest, RefusesTextThatIsNotUtf8) {
  for (std::string_view bad : {"/v1/client-sessions/%FF", "/v1/pools/%C3", "/a%C0%AF",
                               "/%ED%A0%80", "/%F4%90%80%80", "/x?pool=%80", "/x?%FE=1",
                               "/v1/pools/\xff"}) {
    EXPECT_EQ(refusal(parse_target(bad)), "the request target is not a valid path") << bad;
  }
  auto t = parse_target("/%C3%A9t%C3%A9?pool=%F0%9F%90%8D");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->path, std::vector<std::string>{"\u00e9t\u00e9"});
  EXPECT_EQ(t->query.at("pool"), "\U0001F40D");
}

// Verifies that an empty or all-whitespace body is an empty object.
TEST(ParseBodyTest, EmptyBodyIsAnEmptyObject) {
  for (std::string_view empty : {"", " ", "\r\n\t "}) {
    auto o = parse_body(empty, 64);
    ASSERT_TRUE(o.has_value()) << refusal(o);
    EXPECT_TRUE(o->empty());
  }
  auto o = parse_body(R"( {"priority": 3} )", 64);
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->at("priority").as_int64(), 3);
}

// Verifies the messages for malformed JSON and for JSON that is not an object.
TEST(ParseBodyTest, RefusesWhatIsNotAJsonObject) {
  EXPECT_EQ(refusal(parse_body("{", 64)), "the body is not valid JSON: incomplete JSON");
  EXPECT_EQ(refusal(parse_body("{} {}", 64)), "the body is not valid JSON: extra data");
  EXPECT_EQ(refusal(parse_body("{\"a\": 1,}", 64)), "the body is not valid JSON: syntax error");
  EXPECT_EQ(refusal(parse_body("{\"a\": \"\xff\"}", 64)),
            "the body is not valid JSON: syntax error");
  for (std::string_view other : {"\"text\"", "[]", "1", "null", "true"}) {
    EXPECT_EQ(refusal(parse_body(other, 64)), "the body must be a JSON object") << other;
  }
}

// Verifies the nesting limit: the body object is the first level.
TEST(ParseBodyTest, RefusesNestingDeeperThanTheLimit) {
  auto nested = [](int arrays) {
    return "{\"params\": " + std::string(arrays, '[') + std::string(arrays, ']') + "}";
  };
  EXPECT_TRUE(parse_body(nested(63), 64).has_value());
  EXPECT_EQ(refusal(parse_body(nested(64), 64)), "the JSON body nests deeper than 64 levels");
  EXPECT_TRUE(parse_body(nested(1), 2).has_value());
  EXPECT_EQ(refusal(parse_body(nested(2), 2)), "the JSON body nests deeper than 2 levels");
  EXPECT_EQ(refusal(parse_body(std::string(100000, '['), 64)),
            "the JSON body nests deeper than 64 levels");
}

// Verifies that an object repeating a key is refused at any depth, naming the
// key (cut at a character boundary when long), and that equal keys in
// different objects are fine.
TEST(ParseBodyTest, RefusesAnObjectThatRepeatsAKey) {
  EXPECT_EQ(refusal(parse_body(R"({"priority": 1, "priority": 5})", 64)),
            "the JSON body repeats the key \"priority\" in one object");
  EXPECT_EQ(refusal(parse_body(R"({"document": {"a": [{"k": 1, "j": 2, "k": 3}]}})", 64)),
            "the JSON body repeats the key \"k\" in one object");
  // An escaped spelling is the same key.
  EXPECT_EQ(refusal(parse_body(R"({"a": 1, "\u0061": 2})", 64)),
            "the JSON body repeats the key \"a\" in one object");
  const std::string longkey = std::string(63, 'x') + "\u00e9" + "tail";
  EXPECT_EQ(refusal(parse_body("{\"" + longkey + "\": 1, \"" + longkey + "\": 2}", 64)),
            "the JSON body repeats the key \"" + std::string(63, 'x') + "...\" in one object");
  auto ok = parse_body(R"({"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}], "A": 4})", 64);
  ASSERT_TRUE(ok.has_value()) << refusal(ok);
  EXPECT_EQ(ok->size(), 3U);
  EXPECT_EQ(ok->at("b").as_array().at(1).as_object().at("a").as_int64(), 3);
}

// Verifies the acquire defaults, with null read as absent.
TEST(DecodeAcquireTest, DefaultsWhenFieldsAreAbsentOrNull) {
  for (std::string_view body : {"{}", R"({"priority": null, "timeout_ms": null,
        "lease_timeout_ms": null, "client_session": null, "owner": null})"}) {
    auto a = decode_acquire(object(body));
    ASSERT_TRUE(a.has_value()) << refusal(a);
    EXPECT_EQ(a->priority, kNormalPriority);
    EXPECT_FALSE(a->timeout.has_value());  // the runtime's default
    EXPECT_EQ(a->lease_timeout, milliseconds(0));
    EXPECT_EQ(a->client_session, "");
    EXPECT_EQ(a->owner, "");
  }
}

// Verifies every acquire field at its bounds, and that unknown fields are
// ignored.
TEST(DecodeAcquireTest, ReadsEveryField) {
  auto a = decode_acquire(object(R"({"priority": 9, "timeout_ms": 86400000, "lease_timeout_ms": 1,
      "client_session": "cs-1", "owner": "alice", "unknown": [1, {"x": 2}]})"));
  ASSERT_TRUE(a.has_value()) << refusal(a);
  EXPECT_EQ(a->priority, 9);
  EXPECT_EQ(a->timeout, milliseconds(86400000));
  EXPECT_EQ(a->lease_timeout, milliseconds(1));
  EXPECT_EQ(a->client_session, "cs-1");
  EXPECT_EQ(a->owner, "alice");
  a = decode_acquire(object(R"({"priority": 0, "timeout_ms": 0})"));
  ASSERT_TRUE(a.has_value()) << refusal(a);
  EXPECT_EQ(a->priority, 0);
  EXPECT_EQ(a->timeout, milliseconds(0));  // try once, not the default
  a = decode_acquire(object("{\"client_session\": \"" + std::string(256, 'c') + "\"}"));
  ASSERT_TRUE(a.has_value()) << refusal(a);
  EXPECT_EQ(a->client_session.size(), 256u);
}

// Verifies that each wrong type or range names its field, and that the first
// wrong field is the one reported.
TEST(DecodeAcquireTest, NamesTheWrongField) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"priority": 10})", "priority: must be between 0 and 9"},
      {R"({"priority": -1})", "priority: must be between 0 and 9"},
      {R"({"priority": "5"})", "priority: must be an integer"},
      {R"({"priority": 1.5})", "priority: must be an integer"},
      {R"({"priority": 5.0})", "priority: must be an integer"},
      {R"({"priority": true})", "priority: must be an integer"},
      {R"({"timeout_ms": 86400001})", "timeout_ms: must be between 0 and 86400000"},
      {R"({"timeout_ms": -1})", "timeout_ms: must be between 0 and 86400000"},
      {R"({"timeout_ms": 18446744073709551615})", "timeout_ms: must be between 0 and 86400000"},
      {R"({"timeout_ms": 99999999999999999999})", "timeout_ms: must be an integer"},
      {R"({"timeout_ms": [1]})", "timeout_ms: must be an integer"},
      {R"({"lease_timeout_ms": -5})", "lease_timeout_ms: must be between 0 and 86400000"},
      {R"({"lease_timeout_ms": {}})", "lease_timeout_ms: must be an integer"},
      {R"({"client_session": 7})", "client_session: must be a string"},
      {"{\"client_session\": \"" + std::string(257, 'c') + "\"}",
       "client_session: longer than 256 characters"},
      {R"({"owner": false})", "owner: must be a string"},
      {"{\"owner\": \"" + std::string(257, 'o') + "\"}", "owner: longer than 256 characters"},
      {R"({"owner": 1, "priority": 99, "timeout_ms": -1})", "priority: must be between 0 and 9"},
  };
  for (const auto& [body, message] : cases) {
    EXPECT_EQ(refusal(decode_acquire(object(body))), message) << body;
  }
}

// Verifies the one-shot execute: params as compact JSON ("null" when
// absent), its own execute timeout, and no owner field.
TEST(DecodeOneShotExecuteTest, ReadsParamsAndTimeouts) {
  auto e = decode_one_shot_execute(object(R"({"params": {"a": [1, 2.5, "x"]}, "priority": 2,
      "timeout_ms": 100, "execute_timeout_ms": 250, "client_session": "s", "owner": 7})"));
  ASSERT_TRUE(e.has_value()) << refusal(e);
  EXPECT_EQ(e->params, R"({"a":[1,2.5E0,"x"]})");
  EXPECT_EQ(e->priority, 2);
  EXPECT_EQ(e->timeout, milliseconds(100));
  EXPECT_EQ(e->execute_timeout, milliseconds(250));
  EXPECT_EQ(e->client_session, "s");
  e = decode_one_shot_execute(json::object());
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->params, "null");
  EXPECT_FALSE(e->timeout.has_value());
  EXPECT_EQ(e->execute_timeout, milliseconds(0));
  EXPECT_EQ(refusal(decode_one_shot_execute(object(R"({"execute_timeout_ms": 86400001})"))),
            "execute_timeout_ms: must be between 0 and 86400000");
  EXPECT_EQ(refusal(decode_one_shot_execute(object(R"({"client_session": ["s"]})"))),
            "client_session: must be a string");
  EXPECT_EQ(refusal(decode_one_shot_execute(object(R"({"priority": 10})"))),
            "priority: must be between 0 and 9");
}

// Verifies execute on a lease: timeout_ms is the execute timeout here.
TEST(DecodeLeaseExecuteTest, ReadsParamsAndTimeout) {
  auto e = decode_lease_execute(object(R"({"params": "text", "timeout_ms": 5})"));
  ASSERT_TRUE(e.has_value()) << refusal(e);
  EXPECT_EQ(e->params, R"("text")");
  EXPECT_EQ(e->timeout, milliseconds(5));
  e = decode_lease_execute(object(R"({"params": null})"));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->params, "null");
  EXPECT_EQ(e->timeout, milliseconds(0));
  EXPECT_EQ(refusal(decode_lease_execute(object(R"({"timeout_ms": "5"})"))),
            "timeout_ms: must be an integer");
  EXPECT_EQ(refusal(decode_lease_execute(object(R"({"timeout_ms": 86400001})"))),
            "timeout_ms: must be between 0 and 86400000");
}

// Verifies that a number beyond a double's range, which the parser reads as
// infinity and would write back as "Infinity" (not JSON), is refused where a
// JSON value is passed on as text.
TEST(DecodeLeaseExecuteTest, RefusesNumbersBeyondADouble) {
  EXPECT_EQ(refusal(decode_lease_execute(object(R"({"params": 1e400})"))),
            "params: a number is out of range");
  EXPECT_EQ(refusal(decode_lease_execute(object(R"({"params": {"a": [1, -1e999]}})"))),
            "params: a number is out of range");
  EXPECT_EQ(refusal(decode_one_shot_execute(object(R"({"params": [[1e309]]})"))),
            "params: a number is out of range");
  EXPECT_EQ(refusal(decode_client_session(object(R"({"document": {"n": 1E+400}})"))),
            "document: a number is out of range");
  // The largest double and numbers that only lose precision are fine.
  auto e = decode_lease_execute(
      object(R"({"params": [1.7976931348623157e308, 1e-400, 123456789012345678901]})"));
  ASSERT_TRUE(e.has_value()) << refusal(e);
  EXPECT_TRUE(json::parse(e->params).is_array());
  // Elsewhere such a number is only a wrong type, or ignored.
  EXPECT_EQ(refusal(decode_acquire(object(R"({"timeout_ms": 1e400})"))),
            "timeout_ms: must be an integer");
  EXPECT_TRUE(decode_acquire(object(R"({"unknown": 1e400})")).has_value());
}

// Verifies the release outcome.
TEST(DecodeReleaseTest, ReadsBroken) {
  EXPECT_FALSE(decode_release(json::object())->broken);
  EXPECT_FALSE(decode_release(object(R"({"broken": null})"))->broken);
  EXPECT_TRUE(decode_release(object(R"({"broken": true})"))->broken);
  EXPECT_FALSE(decode_release(object(R"({"broken": false})"))->broken);
  EXPECT_EQ(refusal(decode_release(object(R"({"broken": 1})"))), "broken: must be true or false");
  EXPECT_EQ(refusal(decode_release(object(R"({"broken": "true"})"))),
            "broken: must be true or false");
}

// Verifies a reservation's lifetime (an hour by default, never zero) and owner.
TEST(DecodeReservationTest, ReadsTtlAndOwner) {
  auto r = decode_reservation(json::object());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ttl, milliseconds(3600000));
  EXPECT_EQ(r->owner, "");
  r = decode_reservation(object(R"({"ttl_ms": 1, "owner": "bob"})"));
  ASSERT_TRUE(r.has_value()) << refusal(r);
  EXPECT_EQ(r->ttl, milliseconds(1));
  EXPECT_EQ(r->owner, "bob");
  EXPECT_EQ(refusal(decode_reservation(object(R"({"ttl_ms": 0})"))),
            "ttl_ms: must be between 1 and 86400000");
  EXPECT_EQ(refusal(decode_reservation(object(R"({"ttl_ms": 86400001})"))),
            "ttl_ms: must be between 1 and 86400000");
  EXPECT_EQ(refusal(decode_reservation(object(R"({"owner": {}})"))), "owner: must be a string");
  EXPECT_EQ(refusal(decode_cancel_reservation(object(R"({"owner": []})"))),
            "owner: must be a string");
  EXPECT_EQ(decode_cancel_reservation(object(R"({"owner": "bob", "ttl_ms": "x"})"))->owner, "bob");
}

// Verifies that the scale target is required and bounded.
TEST(DecodeScaleTest, RequiresABoundedTarget) {
  EXPECT_EQ(refusal(decode_scale(json::object())), "target: is required");
  EXPECT_EQ(refusal(decode_scale(object(R"({"target": null})"))), "target: is required");
  EXPECT_EQ(refusal(decode_scale(object(R"({"target": -1})"))),
            "target: must be between 0 and 100000");
  EXPECT_EQ(refusal(decode_scale(object(R"({"target": 100001})"))),
            "target: must be between 0 and 100000");
  EXPECT_EQ(refusal(decode_scale(object(R"({"target": "3"})"))), "target: must be an integer");
  EXPECT_EQ(decode_scale(object(R"({"target": 0})"))->target, 0);
  EXPECT_EQ(decode_scale(object(R"({"target": 100000})"))->target, 100000);
}

// Verifies the autoscale flag (on by default).
TEST(DecodeAutoscaleTest, ReadsEnabled) {
  EXPECT_TRUE(decode_autoscale(json::object())->enabled);
  EXPECT_FALSE(decode_autoscale(object(R"({"enabled": false})"))->enabled);
  EXPECT_EQ(refusal(decode_autoscale(object(R"({"enabled": "no"})"))),
            "enabled: must be true or false");
}

// Verifies the client session document: compact JSON, empty when absent.
TEST(DecodeClientSessionTest, ReadsTheDocument) {
  EXPECT_EQ(decode_client_session(json::object())->document, "");
  EXPECT_EQ(decode_client_session(object(R"({"document": null})"))->document, "null");
  EXPECT_EQ(decode_client_session(object(R"({"document": {"k": [true, "v"]}})"))->document,
            R"({"k":[true,"v"]})");
}

// Verifies the bounds of a client session id and the choice of its pool.
TEST(ClientSessionRouteTest, ChecksTheIdAndChoosesThePool) {
  EXPECT_EQ(refusal(check_client_session_id("")), "a client session id is 1 to 256 characters");
  EXPECT_EQ(refusal(check_client_session_id(std::string(257, 'x'))),
            "a client session id is 1 to 256 characters");
  EXPECT_TRUE(check_client_session_id("x").has_value());
  EXPECT_TRUE(check_client_session_id(std::string(256, 'x')).has_value());

  const Target named = *parse_target("/v1/client-sessions/x?pool=b");
  const Target unnamed = *parse_target("/v1/client-sessions/x");
  EXPECT_EQ(client_session_pool(named, std::nullopt).value_or("?"), "b");
  EXPECT_EQ(client_session_pool(named, "a").value_or("?"), "b");
  EXPECT_EQ(client_session_pool(unnamed, "a").value_or("?"), "a");
  EXPECT_EQ(refusal(client_session_pool(unnamed, std::nullopt)),
            "pool: name the pool (?pool=NAME) when the daemon has more than one");
}

// Verifies lease and reservation ids: the pool is everything before the last
// dot, the number is a whole unsigned 64-bit decimal.
TEST(SplitIdTest, SplitsPoolAndNumber) {
  EXPECT_EQ(split_id("python.123"), std::make_pair(std::string("python"), std::uint64_t{123}));
  EXPECT_EQ(split_id("a.b.7"), std::make_pair(std::string("a.b"), std::uint64_t{7}));
  EXPECT_EQ(split_id("p.18446744073709551615"),
            std::make_pair(std::string("p"), std::uint64_t{18446744073709551615u}));
  for (std::string_view bad : {"", "python", ".5", "python.", "python.x", "python.1x", "python.-1",
                               "python.+1", "python. 1", "p.18446744073709551616"}) {
    EXPECT_FALSE(split_id(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace poolkeeper::server
