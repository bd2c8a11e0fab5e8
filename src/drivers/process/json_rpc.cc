#include "drivers/process/json_rpc.h"

#include <boost/json.hpp>

namespace poolkeeper::drivers {
namespace json = boost::json;

namespace {

json::parse_options options(int max_depth) {
  json::parse_options o;
  o.max_depth = static_cast<std::size_t>(max_depth);
  o.allow_invalid_utf8 = false;
  o.allow_comments = false;
  o.allow_trailing_commas = false;
  return o;
}

}  // namespace

std::expected<WorkerMessage, std::string> parse_worker_line(std::string_view line) {
  json::error_code ec;
  unsigned char scratch[4096];  // small messages parse without touching the heap
  json::monotonic_resource mr(scratch, sizeof scratch);
  json::value v = json::parse(line, ec, &mr, options(256));
  if (ec) return std::unexpected("invalid JSON: " + ec.message());
  if (!v.is_object()) return std::unexpected(std::string("not a JSON object"));
  const json::object& o = v.get_object();
  if (const json::value* version = o.if_contains("jsonrpc");
      version != nullptr && !(version->is_string() && version->get_string() == "2.0")) {
    return std::unexpected(std::string("jsonrpc is not \"2.0\""));
  }
  WorkerMessage m;
  if (const json::value* method = o.if_contains("method"); method != nullptr) {
    if (!method->is_string()) return std::unexpected(std::string("method is not a string"));
    if (o.contains("id")) return std::unexpected(std::string("workers may not send requests"));
    m.kind = WorkerMessage::Kind::kNotification;
    m.method = std::string(method->get_string());
    return m;
  }
  const json::value* id = o.if_contains("id");
  if (id == nullptr || !id->is_int64()) {
    if (id != nullptr && id->is_uint64()) return std::unexpected(std::string("id out of range"));
    return std::unexpected(std::string("a response without an integer id"));
  }
  const json::value* result = o.if_contains("result");
  const json::value* error = o.if_contains("error");
  if ((result == nullptr) == (error == nullptr)) {
    return std::unexpected(std::string("a response needs exactly one of result and error"));
  }
  if (error != nullptr && !error->is_object()) {
    return std::unexpected(std::string("error is not an object"));
  }
  m.kind = WorkerMessage::Kind::kResponse;
  m.id = id->get_int64();
  m.ok = result != nullptr;
  m.body = json::serialize(result != nullptr ? *result : *error);
  return m;
}

std::optional<std::int64_t> error_code_of(std::string_view error_json) {
  json::error_code ec;
  json::monotonic_resource mr;
  json::value v = json::parse(error_json, ec, &mr, options(64));
  if (ec || !v.is_object()) return std::nullopt;
  const json::value* code = v.get_object().if_contains("code");
  if (code == nullptr || !code->is_int64()) return std::nullopt;
  return code->get_int64();
}

std::expected<std::string, std::string> one_line_json(std::string_view text, int max_depth) {
  json::error_code ec;
  unsigned char scratch[4096];
  json::monotonic_resource mr(scratch, sizeof scratch);
  json::value v = json::parse(text, ec, &mr, options(max_depth));
  if (ec) return std::unexpected("invalid JSON: " + ec.message());
  // Valid JSON has raw line breaks only as whitespace between tokens.
  if (text.find_first_of("\r\n") == std::string_view::npos) return std::string(text);
  return json::serialize(v);
}

std::string request_line(std::int64_t id, std::string_view method, std::string_view params,
                         std::string_view client_session) {
  std::string line;
  line.reserve(64 + params.size() + client_session.size());
  line += R"({"jsonrpc":"2.0","id":)";
  line += std::to_string(id);
  line += R"(,"method":)";
  line += json::serialize(json::string_view(method.data(), method.size()));
  if (!params.empty()) {
    line += R"(,"params":)";
    line += params;
  }
  if (!client_session.empty()) {
    line += R"(,"client_session":)";
    line += json::serialize(json::string_view(client_session.data(), client_session.size()));
  }
  line += "}\n";
  return line;
}

}  // namespace poolkeeper::drivers
