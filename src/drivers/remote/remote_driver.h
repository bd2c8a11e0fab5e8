// RemoteDriver: sessions that live at a paid provider (cloud browsers and the
// like), created, checked and deleted through the provider's REST API.
//
// start() POSTs `create_body` to `endpoint` and reads the session's id and
// connect URL from the answer by JSON paths ("data.id", "data.cdp_url"); a
// status other than a running one is polled until running (or start_timeout).
// check() GETs `session_url`; a session the provider reports gone (404, or a
// status that is neither running nor pending) has ended on its own and the
// pool replaces it. stop() DELETEs it and returns only once the provider has
// confirmed (retrying with backoff as long as it takes: a paid session is
// never dropped silently). A lease hands out the connect URL; execute is not
// supported. Idempotent calls (GET, DELETE) are retried with jittered
// exponential backoff on connection errors, timeouts, 429 and 5xx; a create
// is never retried (it may have taken effect): the pool's start backoff
// decides when to try again.
//
// Leaks: a create whose answer never came may still have made a session. With
// `list_url` set, every session is created carrying a tag ("{tag}" in
// create_body: "<instance>/<pool>/<run>/<session id>"), and sweep() deletes
// the provider's running sessions that carry this daemon's and pool's tag but
// that no one here answers for (see sweep()). The daemon sweeps at start
// (after a crash) and the driver sweeps after each such unanswered create.
// close_session() closes one session by its provider id (restart
// reconciliation). A session a failed start made is deleted by start() and
// charged through the sweep hook.
//
// The API key is read once from the environment variable `api_key_env` and
// sent as "<auth_header>: <auth_scheme> <key>"; it is never logged.
//
// Thread-safety: as Driver; sessions live on their pool's strand, sweep() and
// close_session() run on any executor and share nothing mutable with them
// but what decides a sweep's sessions (locked).
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/driver.h"
#include "runtime/log.h"

namespace poolkeeper::drivers {

class RestClient;

struct RemoteConfig {
  // Where sessions are created (POST) and listed (GET, for sweeps).
  std::string endpoint;
  // One session's URL; {endpoint} and {id} (URL-encoded) are filled in.
  std::string session_url = "{endpoint}/{id}";
  // The create request's body: JSON text in which {pool}, {session} and {tag}
  // are filled in (JSON-escaped).
  std::string create_body = "{}";
  std::string delete_method = "DELETE";

  // The API key: an environment variable's name; empty: no key is sent.
  std::string api_key_env;
  std::string auth_header = "Authorization";
  std::string auth_scheme = "Bearer";  // empty: the key alone

  // Where the answers keep things: dot paths, array elements by index ("data.0.id").
  std::string id_path = "data.id";
  std::string connect_path = "data.cdp_url";  // empty: leases hand out no URL
  std::string status_path = "data.status";    // empty: a created session is running
  std::vector<std::string> running_status = {"running"};
  std::vector<std::string> pending_status = {"pending", "starting", "creating", "queued"};

  // Sweeps: the list of sessions (empty: no sweeps) and, in each item, its id,
  // status and tag.
  std::string list_url;
  std::string list_path = "data";
  std::string item_id_path = "id";
  std::string item_status_path = "status";
  std::string item_tag_path = "metadata.poolkeeper";
  // When it was created: UNIX seconds (a number) or UTC ISO 8601 text
  // ("2026-12-04T17:53:22.123Z"); empty or absent: unknown.
  std::string item_created_path = "created_at";

  std::string ca_file;  // PEM CAs trusted for https besides the system's

  Duration request_timeout = std::chrono::seconds(10);  // each call
  Duration start_timeout = std::chrono::seconds(60);    // a create until running
  Duration check_timeout = std::chrono::seconds(10);
  Duration poll_interval = std::chrono::milliseconds(500);  // while pending
  int retries = 4;                                          // idempotent calls
  Duration retry_backoff = std::chrono::milliseconds(250);  // doubles up to retry_backoff_max
  Duration retry_backoff_max = std::chrono::seconds(30);
  std::size_t max_answer = 1u << 20;  // bytes

  bool operator==(const RemoteConfig&) const = default;
};

// The keys' values alone (create() also needs api_key_env to be set).
std::expected<void, Error> validate_remote_config(const RemoteConfig& config);

// A provider's UTC time in ISO 8601 ("2026-12-04T17:53:22.123Z", "+00:00")
// as UNIX milliseconds; nullopt for anything else.
std::optional<std::int64_t> provider_time_ms(std::string_view iso);

// A session a sweep deleted: who made it (from its tag) and when.
struct SweptSession {
  std::string external_id;
  std::int64_t run = 0;         // from its tag (0: not readable)
  SessionId session = 0;        // from its tag
  std::optional<std::int64_t> created_ms{};  // UNIX ms, when the provider says
  std::int64_t deleted_ms = 0;  // UNIX ms
  // Not a sweep's: made for a start that then failed (no connect URL, never
  // running), deleted by start(); created_ms is when its create was sent.
  bool abandoned = false;
};

// What reconciliation found for one session.
enum class RemoteClosed : std::uint8_t {
  kClosed,      // it was running; now deleted
  kWasGone,     // the provider no longer had it running
};

class RemoteDriver final : public runtime::Driver {
 public:
  // `instance` names this daemon's sessions at the provider (stable across
  // restarts: the store's instance id) and `run` this run of it. `log` must
  // outlive the driver.
  static std::expected<std::unique_ptr<RemoteDriver>, Error> create(RemoteConfig config,
                                                                    std::string pool,
                                                                    std::string instance,
                                                                    std::string run,
                                                                    runtime::Log* log = nullptr);
  ~RemoteDriver() override;

  runtime::asio::awaitable<std::expected<std::shared_ptr<runtime::DriverSession>, Error>> start(
      SessionId id) override;
  std::string describe() const override;
  Duration check_timeout() const override { return config_.check_timeout; }

  // Closes one session by the provider's id: its status, then a delete when
  // it still runs (retried).
  runtime::asio::awaitable<std::expected<RemoteClosed, Error>> close_session(std::string external_id);
  // Deletes the provider's running sessions tagged as this pool's that no
  // one here answers for and returns them (each also goes to the sweep hook):
  // an earlier run's (but those left to reconciliation), and this run's
  // whose create went unanswered or came back without an id. A session this
  // run started and holds, closed or abandoned is never a sweep's, nor one
  // another sweep has taken. Needs list_url.
  runtime::asio::awaitable<std::expected<std::vector<SweptSession>, Error>> sweep();
  // Sessions of an earlier run that close_session() will close: sweeps leave
  // them. Call before the pool starts.
  void leave_to_reconciliation(const std::vector<std::string>& external_ids);
  // Called with the sessions no pool holds that were deleted (the daemon
  // charges them): what every sweep deleted, and each session a failed
  // start made (`abandoned`), from the deleting coroutine; set before the
  // pool starts.
  void set_sweep_hook(std::function<void(const std::vector<SweptSession>&)> hook);
  bool can_sweep() const { return !config_.list_url.empty(); }

  const RemoteConfig& config() const { return config_; }
  // The tag a session of this pool carries.
  std::string tag_of(SessionId id) const;

  struct Shared;  // what sessions share with the driver

 private:
  RemoteDriver(RemoteConfig config, std::string pool, std::string instance, std::string run,
               runtime::Log* log, std::unique_ptr<RestClient> client, std::string api_key);

  RemoteConfig config_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace poolkeeper::drivers
