#include "runtime/log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

#include "poolkeeper/clock.h"

namespace poolkeeper::runtime {

std::string utc_text(WallTime t) {
  const auto ms = std::chrono::time_point_cast<std::chrono::milliseconds>(t);
  const std::time_t secs = std::chrono::system_clock::to_time_t(
      std::chrono::system_clock::time_point(std::chrono::duration_cast<std::chrono::seconds>(
          ms.time_since_epoch())));
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char text[96];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(((ms.time_since_epoch().count() % 1000) + 1000) % 1000));
  return text;
}

namespace {

void append_escaped(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

constexpr std::string_view kLevels[] = {"debug", "info", "warn", "error"};

class StderrLog final : public Log {
 public:
  void write(LogLevel level, std::string_view message,
             std::initializer_list<LogField> fields) override {
    if (!enabled(level)) return;
    std::string line = R"({"ts":")";
    line += utc_text(real_clock().wall_now());
    line += R"(","level":")";
    line += kLevels[static_cast<int>(level)];
    line += R"(","msg":)";
    append_escaped(line, message);
    for (const auto& [k, v] : fields) {
      line += ',';
      append_escaped(line, k);
      line += ':';
      append_escaped(line, v);
    }
    line += "}\n";
    std::lock_guard lock(mu_);
    (void)!::write(2, line.data(), line.size());
  }

 private:
  std::mutex mu_;
};

class NullLog final : public Log {
 public:
  void write(LogLevel, std::string_view, std::initializer_list<LogField>) override {}
  bool enabled(LogLevel) const override { return false; }
};

}  // namespace

Log& stderr_log() {
  static StderrLog log;
  return log;
}

Log& null_log() {
  static NullLog log;
  return log;
}

}  // namespace poolkeeper::runtime
