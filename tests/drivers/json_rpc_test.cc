// The worker protocol's message parsing and request lines.
#include "drivers/process/json_rpc.h"

#include <gtest/gtest.h>

#include <string>

namespace poolkeeper::drivers {
namespace {

// Verifies that results and errors are recognised and passed on as compact JSON.
TEST(JsonRpcTest, ParsesResponses) {
  auto r = parse_worker_line(R"({"jsonrpc":"2.0","id":7,"result":{"a": [1, 2]}})");
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(r->kind, WorkerMessage::Kind::kResponse);
  EXPECT_EQ(r->id, 7);
  EXPECT_TRUE(r->ok);
  EXPECT_EQ(r->body, R"({"a":[1,2]})");

  auto e = parse_worker_line(R"({"id":8,"error":{"code":-32000,"message":"boom"}})");
  ASSERT_TRUE(e.has_value()) << e.error();
  EXPECT_FALSE(e->ok);
  EXPECT_EQ(e->body, R"({"code":-32000,"message":"boom"})");

  auto n = parse_worker_line(R"({"jsonrpc":"2.0","method":"ready"})");
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(n->kind, WorkerMessage::Kind::kNotification);
  EXPECT_EQ(n->method, "ready");
}

// Verifies that each kind of bad worker output is refused with a reason.
TEST(JsonRpcTest, RefusesBadOutput) {
  const char* bad[] = {
      "this is not json",
      "[1,2,3]",
      R"({"jsonrpc":"2.0","id":1,"result":"\xff\xfe"})",
      R"({"jsonrpc":"1.0","id":1,"result":1})",
      R"({"id":"seven","result":1})",
      R"({"id":1.5,"result":1})",
      R"({"id":1})",
      R"({"id":1,"result":1,"error":{}})",
      R"({"id":1,"error":"text"})",
      R"({"id":1,"method":"execute"})",
      R"({"id":18446744073709551615,"result":1})",
      R"({"id":1,"result":1} trailing)",
  };
  for (const char* line : bad) {
    auto r = parse_worker_line(line);
    EXPECT_FALSE(r.has_value()) << line;
    if (!r) {
      EXPECT_FALSE(r.error().empty());
    }
  }
}

// Verifies that request lines are single-line JSON with params and client session.
TEST(JsonRpcTest, BuildsRequestLines) {
  EXPECT_EQ(request_line(3, "ping", {}), "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}\n");
  auto params = one_line_json("{\n  \"code\": \"print(1)\\n\"\n}");
  ASSERT_TRUE(params.has_value());
  const std::string line = request_line(4, "execute", *params, "user \"42\"");
  EXPECT_EQ(line,
            "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"execute\",\"params\":{\"code\":"
            "\"print(1)\\n\"},\"client_session\":\"user \\\"42\\\"\"}\n");
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto back = parse_worker_line(R"({"id":4,"result":)" + *params + "}");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->body, *params);
}

// Verifies that one_line_json refuses invalid JSON and nesting past the
// limit, keeps one-line text as it is and compacts text that spans lines.
TEST(JsonRpcTest, OneLineJsonValidates) {
  EXPECT_FALSE(one_line_json("{").has_value());
  EXPECT_FALSE(one_line_json("").has_value());
  EXPECT_FALSE(one_line_json("{\"a\":1} {").has_value());
  EXPECT_FALSE(one_line_json("\"\xff\"").has_value());
  EXPECT_TRUE(one_line_json("[[[[1]]]]", 4).has_value());
  EXPECT_FALSE(one_line_json("[[[[[1]]]]]", 4).has_value());
  EXPECT_EQ(*one_line_json(" {\"a\": [1, 2]} "), " {\"a\": [1, 2]} ");
  EXPECT_EQ(*one_line_json("{\"a\":\r\n [1,\n 2]}"), "{\"a\":[1,2]}");
}

}  // namespace
}  // namespace poolkeeper::drivers
