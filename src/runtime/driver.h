// Driver: how the runtime makes, uses and stops sessions of one kind.
//
// A new kind of session (processes, browsers, remote providers) implements
// Driver and DriverSession in one folder under src/drivers/. Every call is a
// C++20 coroutine on the pool's strand: a driver never blocks a thread and
// never needs a lock for state it only touches from those coroutines. Drivers
// carry out; they decide nothing. The pool core says when to start, check or
// stop a session; a driver only reports how that went, reports sessions that
// end on their own (wait_ended), and measures their usage (sample).
//
// Thread-safety: all calls on the pool's strand (the executor the coroutine
// runs on), except describe(), which is const and safe anywhere.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>

#include "poolkeeper/clock.h"
#include "poolkeeper/error.h"
#include "poolkeeper/stats.h"

namespace poolkeeper::runtime {

namespace asio = boost::asio;

// A session's resource use; -1 where a driver does not measure it.
struct Usage {
  std::int64_t rss_bytes = -1;
  double cpu_percent = -1;   // over the last sampling interval; 100 = one core
  double cpu_seconds = -1;   // since the session started
  int processes = -1;        // processes in its tree
};

struct ExecuteRequest {
  std::string params{};          // JSON text (validated by the driver; put on one line if it spans lines)
  std::string client_session{};  // empty for none
  Duration timeout{0};         // 0: the driver's default
};

// What the session answered: its result or its error object, as compact JSON,
// passed back to the caller unchanged.
struct ExecuteReply {
  bool ok = true;
  std::string json{};
};

class DriverSession {
 public:
  virtual ~DriverSession() = default;

  // A health check with a deadline.
  virtual asio::awaitable<std::expected<void, Error>> check(Duration timeout) = 0;
  // Prepares the session for its next lease; a failure retires the session.
  virtual asio::awaitable<std::expected<void, Error>> reset() = 0;
  // Runs one request. Drivers without request/response return kNotSupported.
  virtual asio::awaitable<std::expected<ExecuteReply, Error>> execute(ExecuteRequest request) = 0;
  // Stops the session for good and returns when it is gone (no process, no
  // descriptor, nothing billed any more).
  virtual asio::awaitable<void> stop(StopReason reason) = 0;
  // Completes once the session has ended: on its own (the text says why) or
  // after stop().
  virtual asio::awaitable<std::string> wait_ended() = 0;
  // Measures the session now and returns its usage (the pool core decides
  // what is over a limit).
  virtual Usage sample(TimePoint now) = 0;
  // The last measured usage.
  virtual Usage usage() const = 0;
  // What a lease hands out to reach the session (an endpoint URL); empty when
  // the session is only used through execute.
  virtual std::string connect() const = 0;
  // One line for logs and the sessions view ("pid 1234").
  virtual std::string describe() const = 0;
  // The session's name outside the daemon (a provider's session id), kept in
  // the store so a session left open by a crash can be found again; empty
  // when nothing outlives the daemon.
  virtual std::string external_id() const { return {}; }
};

class Driver {
 public:
  virtual ~Driver() = default;
  // Creates one session and returns once it is ready for work, or why not.
  virtual asio::awaitable<std::expected<std::shared_ptr<DriverSession>, Error>> start(
      SessionId id) = 0;
  virtual std::string describe() const = 0;
  // Timeouts the runner applies to checks.
  virtual Duration check_timeout() const = 0;
  // When true the runner calls reset() on every clean release.
  virtual bool reset_on_release() const { return false; }
  // How often the runner samples usage; 0: never.
  virtual Duration sample_interval() const { return Duration{0}; }
};

}  // namespace poolkeeper::runtime
