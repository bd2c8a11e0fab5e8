// poolkeeper-echo-worker: the smallest useful worker, for scale tests and
// benchmarks. It speaks the worker protocol (docs/worker-protocol.md) on
// stdin/stdout: prints `ready`, answers `ping` with "pong", `reset` with
// null, and `execute` with its params unchanged.
//
// It relies on the request shape poolkeeper sends (one JSON object per line)
// and skips over JSON values without building them, so a round trip costs two
// small syscalls. Standard library only.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <string_view>

namespace {

// Skips one JSON value starting at s[i] (after whitespace); returns the index
// after it, or npos when the text is cut or malformed.
std::size_t skip_value(std::string_view s, std::size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  if (i >= s.size()) return std::string_view::npos;
  if (s[i] == '"') {
    for (++i; i < s.size(); ++i) {
      if (s[i] == '\\') {
        ++i;
      } else if (s[i] == '"') {
        return i + 1;
      }
    }
    return std::string_view::npos;
  }
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    for (; i < s.size(); ++i) {
      const char c = s[i];
      if (c == '"') {
        i = skip_value(s, i);
        if (i == std::string_view::npos) return i;
        --i;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth == 0) return i + 1;
      }
    }
    return std::string_view::npos;
  }
  while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;  // number, literal
  return i;
}

// The raw text of a top-level member of a JSON object, or empty.
std::string_view member(std::string_view obj, std::string_view key) {
  std::size_t i = obj.find('{');
  if (i == std::string_view::npos) return {};
  ++i;
  while (i < obj.size()) {
    while (i < obj.size() && (obj[i] == ' ' || obj[i] == ',' || obj[i] == '\t')) ++i;
    if (i >= obj.size() || obj[i] != '"') return {};
    const std::size_t key_end = skip_value(obj, i);
    if (key_end == std::string_view::npos) return {};
    const std::string_view k = obj.substr(i + 1, key_end - i - 2);
    i = obj.find(':', key_end);
    if (i == std::string_view::npos) return {};
    const std::size_t start = i + 1;
    const std::size_t end = skip_value(obj, start);
    if (end == std::string_view::npos) return {};
    if (k == key) {
      std::string_view v = obj.substr(start, end - start);
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      return v;
    }
    i = end;
  }
  return {};
}

bool write_all(std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(1, s.data(), s.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

int main() {
  if (!write_all("{\"jsonrpc\":\"2.0\",\"method\":\"ready\"}\n")) return 1;
  std::string buf;
  std::string out;
  char chunk[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(0, chunk, sizeof chunk);
    if (n == 0) return 0;  // stdin closed: stop
    if (n < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    buf.append(chunk, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (std::size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      const std::string_view line(buf.data() + start, nl - start);
      const std::string_view id = member(line, "id");
      const std::string_view method = member(line, "method");
      if (id.empty()) continue;  // a notification: nothing to answer
      out.assign("{\"jsonrpc\":\"2.0\",\"id\":").append(id);
      if (method == "\"execute\"") {
        const std::string_view params = member(line, "params");
        out.append(",\"result\":").append(params.empty() ? "null" : params);
      } else if (method == "\"ping\"") {
        out.append(",\"result\":\"pong\"");
      } else if (method == "\"reset\"") {
        out.append(",\"result\":null");
      } else {
        out.append(",\"error\":{\"code\":-32601,\"message\":\"method not found\"}");
      }
      out.append("}\n");
      if (!write_all(out)) return 1;
    }
    buf.erase(0, start);
  }
}
