// Log: where the runtime and drivers report what happened.
//
// A small seam so the library does not choose a logging library for its
// embedder: the daemon plugs in its structured logger; the default writes
// one JSON object per line to stderr. Fields are key/value strings; values
// never carry secrets.
//
// Thread-safety: write() may be called from any thread.
//
//   log.write(LogLevel::kWarn, "session exited", {{"pool", "py"}, {"why", why}});
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "poolkeeper/clock.h"

namespace poolkeeper::runtime {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

using LogField = std::pair<std::string_view, std::string_view>;

class Log {
 public:
  virtual ~Log() = default;
  virtual void write(LogLevel level, std::string_view message,
                     std::initializer_list<LogField> fields) = 0;
  virtual bool enabled(LogLevel level) const { return level >= LogLevel::kInfo; }
};

// A wall-clock time as UTC text with milliseconds: "2026-11-23T17:52:33.304Z".
std::string utc_text(WallTime t);

// JSON lines on stderr, info and above.
Log& stderr_log();
// Discards everything (tests, benchmarks).
Log& null_log();

}  // namespace poolkeeper::runtime
