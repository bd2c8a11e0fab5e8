#include "drivers/remote/remote_driver.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>

#include "drivers/remote/rest_client.h"
#include "runtime/text.h"

namespace poolkeeper::drivers {

namespace asio = boost::asio;
namespace json = boost::json;
using runtime::DriverSession;
using runtime::ExecuteReply;
using runtime::ExecuteRequest;
using runtime::Log;
using runtime::LogLevel;
using runtime::Usage;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

// The value at a dot path ("data.id", "data.0.id"), or null.
const json::value* at_path(const json::value& root, std::string_view path) {
  const json::value* v = &root;
  while (!path.empty()) {
    const std::size_t dot = path.find('.');
    const std::string_view key = path.substr(0, dot);
    path = dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
    if (const json::object* o = v->if_object()) {
      auto it = o->find(key);
      if (it == o->end()) return nullptr;
      v = &it->value();
    } else if (const json::array* a = v->if_array()) {
      std::size_t index = 0;
      if (key.empty() || !std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return nullptr;
      }
      for (char c : key) index = index * 10 + static_cast<std::size_t>(c - '0');
      if (index >= a->size()) return nullptr;
      v = &(*a)[index];
    } else {
      return nullptr;
    }
  }
  return v;
}

// A string or integer at a path, as text.
std::optional<std::string> text_at(const json::value& root, std::string_view path) {
  const json::value* v = at_path(root, path);
  if (v == nullptr) return std::nullopt;
  if (const json::string* s = v->if_string()) return std::string(*s);
  if (v->is_int64()) return std::to_string(v->get_int64());
  if (v->is_uint64()) return std::to_string(v->get_uint64());
  return std::nullopt;
}

// A JSON string's content without its quotes.
std::string json_escape(std::string_view s) {
  std::string quoted = json::serialize(json::string(s));
  return quoted.substr(1, quoted.size() - 2);
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

bool one_of(const std::vector<std::string>& list, std::string_view s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

bool retryable(int status) { return status == 408 || status == 429 || status >= 500; }

// UNIX seconds (a number) or "YYYY-MM-DDTHH:MM:SS[.fff]Z" as UNIX ms.
std::optional<std::int64_t> time_ms(const json::value* v) {
  if (v == nullptr) return std::nullopt;
  if (v->is_number()) {
    const double seconds = v->to_number<double>();
    if (!(seconds > 0 && seconds < 1e11)) return std::nullopt;
    return static_cast<std::int64_t>(seconds * 1000);
  }
  const json::string* s = v->if_string();
  if (s == nullptr) return std::nullopt;
  return provider_time_ms(std::string_view(*s));
}

}  // namespace

std::optional<std::int64_t> provider_time_ms(std::string_view iso) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, used = 0;
  const std::string text(iso);
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &used) != 6) {
    return std::nullopt;
  }
  std::int64_t ms = 0;
  std::size_t at = static_cast<std::size_t>(used);
  if (at < text.size() && text[at] == '.') {
    std::int64_t scale = 100;
    for (++at; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at) {
      ms += (text[at] - '0') * scale;
      scale /= 10;
    }
  }
  if (at >= text.size() || (text.substr(at) != "Z" && text.substr(at) != "+00:00")) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year(y), std::chrono::month(static_cast<unsigned>(mo)),
                                        std::chrono::day(static_cast<unsigned>(d))};
  if (!ymd.ok() || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  const std::int64_t days = std::chrono::sys_days(ymd).time_since_epoch().count();
  return ((days * 24 + h) * 60 + mi) * 60'000 + sec * 1000 + ms;
}

namespace {

}  // namespace

struct RemoteDriver::Shared {
  RemoteConfig config;
  std::string pool;
  std::string instance;
  std::string run;
  std::int64_t run_id = 0;  // `run` as the number tags carry
  Log* log = nullptr;
  std::unique_ptr<RestClient> client;
  std::string api_key;

  std::mutex mu;
  // This run's sessions, by the id in their tag: every id up to
  // `highest_started` went to start(), whose session is then held by the
  // pool, closed by it, or deleted and charged by start() itself; of those
  // only the ones in `unheld` (a create whose answer never came, or came
  // without an id) are a sweep's to take. An id above it is not this run's
  // doing, and a sweep takes it too.
  SessionId highest_started = 0;
  std::set<SessionId> unheld;
  // Provider ids no sweep takes: an earlier run's sessions reconciliation
  // closes, and those a sweep is deleting or has deleted (two sweeps that
  // list the same orphan charge it once).
  std::set<std::string> claimed;
  std::function<void(const std::vector<SweptSession>&)> on_swept;
  std::minstd_rand random{std::random_device{}()};

  void starting(SessionId id) {
    std::lock_guard lock(mu);
    highest_started = std::max(highest_started, id);
  }
  void lost_track_of(SessionId id) {
    std::lock_guard lock(mu);
    unheld.insert(id);
  }
  bool sweepable_here(SessionId id) {
    std::lock_guard lock(mu);
    return id > highest_started || unheld.contains(id);
  }
  bool claim(const std::string& external_id) {
    std::lock_guard lock(mu);
    return claimed.insert(external_id).second;
  }
  void unclaim(const std::string& external_id) {
    std::lock_guard lock(mu);
    claimed.erase(external_id);
  }
  // Hands deleted sessions nobody else charges to the hook.
  void charge(const std::vector<SweptSession>& deleted) {
    std::function<void(const std::vector<SweptSession>&)> hook;
    {
      std::lock_guard lock(mu);
      hook = on_swept;
    }
    if (hook && !deleted.empty()) hook(deleted);
  }
  // A sweep deleted it: one of this run's no longer needs sweeping.
  void swept(const SweptSession& o) {
    std::lock_guard lock(mu);
    if (o.run == run_id) unheld.erase(o.session);
  }

  std::string session_url(std::string_view external_id) const {
    return replace_all(replace_all(config.session_url, "{endpoint}", config.endpoint), "{id}",
                       runtime::percent_encode(external_id));
  }
  // Every session this daemon made for this pool carries ours() at its start.
  std::string ours() const { return instance + "/" + pool + "/"; }
  std::string tag_of(SessionId id) const { return ours() + run + "/" + std::to_string(id); }

  RestRequest request(std::string method, std::string url, Duration timeout) const {
    RestRequest r{.method = std::move(method), .url = std::move(url), .timeout = timeout};
    if (!api_key.empty()) {
      r.headers.emplace_back(config.auth_header,
                             config.auth_scheme.empty() ? api_key : config.auth_scheme + " " + api_key);
    }
    return r;
  }

  Duration backoff(int attempt) {
    Duration d = config.retry_backoff;
    for (int i = 0; i < attempt && d < config.retry_backoff_max; ++i) d *= 2;
    d = std::min(d, config.retry_backoff_max);
    std::lock_guard lock(mu);
    // Full jitter over the upper half: retries of many sessions spread out.
    const double f = 0.5 + 0.5 * std::uniform_real_distribution<double>(0, 1)(random);
    return std::chrono::duration_cast<Duration>(d * f);
  }

  // An idempotent call, retried on connection errors, timeouts, 408, 429 and
  // 5xx up to `retries` more times. The last outcome either way.
  asio::awaitable<std::expected<RestResponse, RestError>> idempotent(RestRequest req, int retries) {
    auto ex = co_await asio::this_coro::executor;
    for (int attempt = 0;; ++attempt) {
      auto calling = client->call(req);
      std::expected<RestResponse, RestError> r = co_await std::move(calling);
      if ((r && !retryable(r->status)) || attempt >= retries) co_return r;
      asio::steady_timer wait(ex, backoff(attempt));
      (void)co_await wait.async_wait(kTuple);
    }
  }

  static std::string failure(const std::expected<RestResponse, RestError>& r) {
    if (!r) return r.error().message;
    return "HTTP " + std::to_string(r->status) + (r->body.empty() ? "" : ": " + runtime::excerpt(r->body, 200));
  }

  // Deletes a session at the provider; true once it is gone there.
  asio::awaitable<std::expected<void, std::string>> delete_once(std::string external_id) {
    auto deleting = idempotent(request(config.delete_method, session_url(external_id), config.request_timeout),
                               config.retries);
    auto r = co_await std::move(deleting);
    if (r && ((r->status >= 200 && r->status < 300) || r->status == 404 || r->status == 410)) co_return std::expected<void, std::string>{};
    co_return std::unexpected(failure(r));
  }

  // Deletes until the provider confirms, however long that takes.
  asio::awaitable<void> delete_until_gone(std::string external_id) {
    auto ex = co_await asio::this_coro::executor;
    for (int round = 0;; ++round) {
      auto deleting = delete_once(external_id);
      auto done = co_await std::move(deleting);
      if (done) {
        if (round > 0) {
          log->write(LogLevel::kInfo, "remote session deleted after retries",
                     {{"pool", pool}, {"external_id", external_id}, {"rounds", std::to_string(round + 1)}});
        }
        co_return;
      }
      if ((round & (round + 1)) == 0) {  // rounds 0, 1, 3, 7, ...: do not flood the log
        log->write(LogLevel::kError, "cannot delete a remote session; it may still be billed",
                   {{"pool", pool}, {"external_id", external_id}, {"error", done.error()},
                    {"rounds", std::to_string(round + 1)}});
      }
      asio::steady_timer wait(ex, config.retry_backoff_max);
      (void)co_await wait.async_wait(kTuple);
    }
  }

  // The provider's view of one session: its status text, "" when it has no
  // status path, or nullopt when the provider does not know it (404/410).
  asio::awaitable<std::expected<std::optional<std::string>, Error>> status(std::string external_id,
                                                                            Duration timeout, int retries) {
    auto getting = idempotent(request("GET", session_url(external_id), timeout), retries);
    auto r = co_await std::move(getting);
    if (!r) {
      co_return std::unexpected(Error(r.error().timed_out ? ErrorCode::kExecuteTimeout
                                          : ErrorCode::kSessionLost,
                                      "status of " + external_id + ": " + r.error().message));
    }
    if (r->status == 404 || r->status == 410) co_return std::optional<std::string>{};
    if (r->status < 200 || r->status >= 300) {
      co_return std::unexpected(Error(ErrorCode::kProtocolError, "status of " + external_id + ": " + failure(r)));
    }
    if (config.status_path.empty()) co_return std::optional<std::string>{std::string()};
    boost::system::error_code ec;
    json::value body = json::parse(r->body, ec);
    std::optional<std::string> s = ec ? std::nullopt : text_at(body, config.status_path);
    if (!s) {
      co_return std::unexpected(Error(ErrorCode::kProtocolError, "status of " + external_id + ": no \"" +
                                                                     config.status_path + "\" in " +
                                                                     runtime::excerpt(r->body, 200)));
    }
    co_return s;
  }

  bool running(const std::string& status) const {
    return status.empty() || one_of(config.running_status, status);
  }
  bool pending(const std::string& status) const { return one_of(config.pending_status, status); }

  asio::awaitable<std::expected<std::vector<SweptSession>, Error>> sweep() {
    auto listing = idempotent(request("GET", config.list_url, config.request_timeout), config.retries);
    auto r = co_await std::move(listing);
    if (!r || r->status < 200 || r->status >= 300) {
      co_return std::unexpected(Error(ErrorCode::kSessionStartFailed, "cannot list sessions: " + failure(r)));
    }
    boost::system::error_code ec;
    json::value body = json::parse(r->body, ec);
    const json::value* list = ec ? nullptr : at_path(body, config.list_path);
    if (list == nullptr || !list->is_array()) {
      co_return std::unexpected(Error(ErrorCode::kProtocolError, "the session list has no array at \"" +
                                                                     config.list_path + "\": " + runtime::excerpt(r->body, 200)));
    }
    const std::string mine = ours() + run + "/";
    std::vector<SweptSession> orphans;
    for (const json::value& item : list->get_array()) {
      auto tag = text_at(item, config.item_tag_path);
      auto id = text_at(item, config.item_id_path);
      if (!tag || !id || !tag->starts_with(ours())) continue;
      if (!config.item_status_path.empty()) {
        auto s = text_at(item, config.item_status_path);
        if (!s || !(running(*s) || pending(*s))) continue;
      }
      // The rest of the tag: "<run>/<session>".
      SweptSession found{.external_id = *id};
      const std::string rest = tag->substr(ours().size());
      const std::size_t slash = rest.find('/');
      if (slash != std::string::npos) {
        char* end = nullptr;
        const std::string run_text = rest.substr(0, slash), session_text = rest.substr(slash + 1);
        const long long found_run = std::strtoll(run_text.c_str(), &end, 10);
        const bool run_ok = !run_text.empty() && *end == '\0';
        const unsigned long long found_session = std::strtoull(session_text.c_str(), &end, 10);
        if (run_ok && !session_text.empty() && *end == '\0') {
          found.run = found_run;
          found.session = found_session;
        }
      }
      if (tag->starts_with(mine) && found.session != 0 && !sweepable_here(found.session)) continue;
      if (!config.item_created_path.empty()) found.created_ms = time_ms(at_path(item, config.item_created_path));
      orphans.push_back(std::move(found));
    }
    std::vector<SweptSession> deleted;
    std::optional<Error> failed;
    for (SweptSession& o : orphans) {
      if (!claim(o.external_id)) continue;  // reconciliation's, or another sweep's
      auto deleting = delete_once(o.external_id);
      auto done = co_await std::move(deleting);
      if (!done) {
        unclaim(o.external_id);
        failed = Error(ErrorCode::kSessionStartFailed, "cannot delete orphaned session " + o.external_id + ": " + done.error());
        break;
      }
      o.deleted_ms = wall_ms();
      log->write(LogLevel::kWarn, "deleted an orphaned remote session",
                 {{"pool", pool}, {"external_id", o.external_id}});
      swept(o);
      deleted.push_back(std::move(o));
    }
    charge(deleted);
    if (failed) co_return std::unexpected(*failed);
    co_return deleted;
  }
};

namespace {

class RemoteSession final : public DriverSession, public std::enable_shared_from_this<RemoteSession> {
 public:
  RemoteSession(asio::any_io_executor ex, std::shared_ptr<RemoteDriver::Shared> shared, SessionId id,
                std::string external_id, std::string connect)
      : ex_(std::move(ex)),
        shared_(std::move(shared)),
        id_(id),
        external_id_(std::move(external_id)),
        connect_(std::move(connect)) {}

  ~RemoteSession() override {
    if (!deleted_ && !gone_) {
      // Dropped without a stop (a daemon torn down mid-way): the store still
      // shows it open, so the next start reconciles it.
      shared_->log->write(LogLevel::kError, "remote session dropped without a stop; it may still be billed",
                          {{"pool", shared_->pool}, {"external_id", external_id_}});
    }
  }

  asio::awaitable<std::expected<void, Error>> check(Duration timeout) override {
    auto self = shared_from_this();
    if (ended_) co_return std::unexpected(Error(ErrorCode::kSessionLost, ended_reason_));
    auto asking = shared_->status(external_id_, timeout, 0);
    auto s = co_await std::move(asking);
    if (!s) co_return std::unexpected(s.error());
    if (!s->has_value()) {
      gone_ = true;
      end("the provider no longer knows it");
    } else if (!shared_->running(**s) && !shared_->pending(**s)) {
      gone_ = true;
      end("the provider reports it " + **s);
    }
    if (ended_) co_return std::unexpected(Error(ErrorCode::kSessionLost, ended_reason_));
    co_return std::expected<void, Error>{};
  }

  asio::awaitable<std::expected<void, Error>> reset() override { co_return std::expected<void, Error>{}; }

  asio::awaitable<std::expected<ExecuteReply, Error>> execute(ExecuteRequest) override {
    co_return std::unexpected(Error(ErrorCode::kNotSupported,
                                    "remote sessions are used through their connect URL, not execute"));
  }

  asio::awaitable<void> stop(StopReason) override {
    auto self = shared_from_this();
    if (!gone_ && !deleted_) {
      auto deleting = shared_->delete_until_gone(external_id_);
      co_await std::move(deleting);
      deleted_ = true;
    }
    end("stopped");
  }

  asio::awaitable<std::string> wait_ended() override {
    auto self = shared_from_this();
    while (!ended_) {
      asio::steady_timer t(ex_, asio::steady_timer::time_point::max());
      waiters_.push_back(&t);
      (void)co_await t.async_wait(kTuple);
      std::erase(waiters_, &t);
    }
    co_return ended_reason_;
  }

  Usage sample(TimePoint) override { return {}; }
  Usage usage() const override { return {}; }
  std::string connect() const override { return connect_; }
  std::string describe() const override { return "remote " + external_id_; }
  std::string external_id() const override { return external_id_; }

 private:
  void end(std::string why) {
    if (ended_) return;
    ended_ = true;
    ended_reason_ = std::move(why);
    for (asio::steady_timer* t : waiters_) t->cancel();
  }

  asio::any_io_executor ex_;
  std::shared_ptr<RemoteDriver::Shared> shared_;
  SessionId id_;
  std::string external_id_;
  std::string connect_;
  bool ended_ = false;
  bool gone_ = false;     // the provider had already ended it
  bool deleted_ = false;  // we deleted it
  std::string ended_reason_;
  std::vector<asio::steady_timer*> waiters_;
};

}  // namespace

std::expected<void, Error> validate_remote_config(const RemoteConfig& c) {
  auto bad = [](std::string key, std::string why) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig, key + ": " + why));
  };
  if (c.endpoint.empty()) return bad("endpoint", "is required: the provider's URL that creates sessions");
  if (auto u = parse_url(c.endpoint); !u) return bad("endpoint", u.error());
  if (c.session_url.find("{id}") == std::string::npos) return bad("session_url", "must contain {id}");
  if (auto u = parse_url(replace_all(replace_all(c.session_url, "{endpoint}", c.endpoint), "{id}", "x")); !u) {
    return bad("session_url", u.error());
  }
  {
    boost::system::error_code ec;
    const std::string sample = replace_all(
        replace_all(replace_all(c.create_body, "{pool}", "p"), "{session}", "1"), "{tag}", "t");
    json::value v = json::parse(sample, ec);
    if (ec || !v.is_object()) {
      return bad("create_body", "must be a JSON object (with {pool}, {session} and {tag} filled in)");
    }
  }
  if (c.delete_method != "DELETE" && c.delete_method != "POST" && c.delete_method != "PATCH" &&
      c.delete_method != "PUT") {
    return bad("delete_method", "must be DELETE, POST, PATCH or PUT");
  }
  if (c.id_path.empty()) return bad("id_path", "is required");
  if (!c.list_url.empty()) {
    if (auto u = parse_url(c.list_url); !u) return bad("list_url", u.error());
    if (c.create_body.find("{tag}") == std::string::npos) {
      return bad("list_url", "needs create_body to carry {tag}: sweeps find this pool's sessions by it");
    }
    if (c.item_id_path.empty()) return bad("item_id_path", "is required with list_url");
    if (c.item_tag_path.empty()) return bad("item_tag_path", "is required with list_url");
  }
  if (c.running_status.empty()) return bad("running_status", "needs at least one status");
  if (c.auth_header.empty() || c.auth_header.find_first_of(":\r\n ") != std::string::npos) {
    return bad("auth_header", "must be a header name");
  }
  const std::pair<const char*, Duration> positive[] = {
      {"request_timeout", c.request_timeout}, {"start_timeout", c.start_timeout},
      {"check_timeout", c.check_timeout},     {"poll_interval", c.poll_interval},
      {"retry_backoff", c.retry_backoff}};
  for (const auto& [key, d] : positive) {
    if (d <= Duration{0}) return bad(key, "must be positive");
  }
  if (c.retry_backoff_max < c.retry_backoff) return bad("retry_backoff_max", "must be at least retry_backoff");
  if (c.retries < 0 || c.retries > 20) return bad("retries", "must be 0 to 20");
  if (c.max_answer < 1024) return bad("max_answer", "must be at least 1 KiB");
  return {};
}

RemoteDriver::RemoteDriver(RemoteConfig config, std::string pool, std::string instance, std::string run,
                           Log* log, std::unique_ptr<RestClient> client, std::string api_key)
    : config_(std::move(config)), shared_(std::make_shared<Shared>()) {
  shared_->config = config_;
  shared_->pool = std::move(pool);
  shared_->instance = std::move(instance);
  shared_->run_id = std::strtoll(run.c_str(), nullptr, 10);
  shared_->run = std::move(run);
  shared_->log = log != nullptr ? log : &runtime::stderr_log();
  shared_->client = std::move(client);
  shared_->api_key = std::move(api_key);
}

RemoteDriver::~RemoteDriver() = default;

std::expected<std::unique_ptr<RemoteDriver>, Error> RemoteDriver::create(RemoteConfig config, std::string pool,
                                                                         std::string instance, std::string run,
                                                                         Log* log) {
  if (auto ok = validate_remote_config(config); !ok) return std::unexpected(ok.error());
  std::string key;
  if (!config.api_key_env.empty()) {
    const char* value = std::getenv(config.api_key_env.c_str());
    if (value == nullptr) {
      return std::unexpected(
          Error(ErrorCode::kInvalidConfig, "api_key_env: the variable " + config.api_key_env + " is not set"));
    }
    key = value;
  }
  auto client = RestClient::create({.ca_file = config.ca_file, .max_body = config.max_answer});
  if (!client) return std::unexpected(Error(ErrorCode::kInvalidConfig, client.error()));
  return std::unique_ptr<RemoteDriver>(new RemoteDriver(std::move(config), std::move(pool),
                                                        std::move(instance), std::move(run), log,
                                                        std::move(*client), std::move(key)));
}

std::string RemoteDriver::describe() const { return "remote " + config_.endpoint; }
std::string RemoteDriver::tag_of(SessionId id) const { return shared_->tag_of(id); }

namespace {

// Sweeps once a create that may have made a session must be over, and again
// later for a provider that took longer to make it than we waited.
void sweep_later(const asio::any_io_executor& ex, std::shared_ptr<RemoteDriver::Shared> s) {
  asio::co_spawn(
      ex,
      [s = std::move(s)]() -> asio::awaitable<void> {
        for (const Duration after : {s->config.request_timeout, 9 * s->config.request_timeout}) {
          asio::steady_timer wait(co_await asio::this_coro::executor, after);
          (void)co_await wait.async_wait(kTuple);
          auto sweeping = s->sweep();
          auto swept = co_await std::move(sweeping);
          if (!swept) {
            s->log->write(LogLevel::kWarn, "a sweep after a create that may have made a session failed",
                          {{"pool", s->pool}, {"error", swept.error().message}});
          }
        }
      },
      asio::detached);
}

}  // namespace

asio::awaitable<std::expected<std::shared_ptr<DriverSession>, Error>> RemoteDriver::start(SessionId id) {
  std::shared_ptr<Shared> s = shared_;  // the driver may go while this runs
  auto ex = co_await asio::this_coro::executor;
  const TimePoint deadline = real_clock().now() + s->config.start_timeout;
  s->starting(id);
  auto fail = [&](std::string why) { return std::unexpected(Error(ErrorCode::kSessionStartFailed, std::move(why))); };

  RestRequest create = s->request("POST", s->config.endpoint, s->config.request_timeout);
  create.body = replace_all(replace_all(replace_all(s->config.create_body, "{pool}", json_escape(s->pool)),
                                        "{session}", std::to_string(id)),
                            "{tag}", json_escape(s->tag_of(id)));
  const std::int64_t sent_ms = wall_ms();
  auto creating = s->client->call(std::move(create));
  std::expected<RestResponse, RestError> r = co_await std::move(creating);
  if (!r || r->status < 200 || r->status >= 300) {
    const bool unknown = !r && r.error().sent;
    // Unanswered, or a server error: the provider may have made it, and
    // any sweep may take it.
    if (unknown || (r && r->status >= 500)) s->lost_track_of(id);
    if (unknown && !s->config.list_url.empty()) sweep_later(ex, s);
    co_return fail("create: " + Shared::failure(r) + (unknown ? " (it may have been created; it will be swept)" : ""));
  }
  boost::system::error_code ec;
  json::value body = json::parse(r->body, ec);
  std::optional<std::string> external = ec ? std::nullopt : text_at(body, s->config.id_path);
  if (!external || external->empty()) {
    // Made, but there is no id to delete it by: a sweep finds it by its tag.
    s->lost_track_of(id);
    if (!s->config.list_url.empty()) sweep_later(ex, s);
    co_return fail("create: no session id at \"" + s->config.id_path + "\" in " + runtime::excerpt(r->body, 200) +
                   (s->config.list_url.empty() ? "" : " (it will be swept)"));
  }
  // From here on a failure must delete what was made, and charge it (from
  // the create's sending until it is gone): no pool holds it, so nothing
  // else does.
  auto charge_abandoned = [s, id, sent_ms, external = *external] {
    s->charge({SweptSession{.external_id = external, .run = s->run_id, .session = id,
                            .created_ms = sent_ms, .deleted_ms = wall_ms(), .abandoned = true}});
  };
  auto abandon = [&](std::string why) {
    asio::co_spawn(
        ex,
        [s, charge_abandoned, external = *external]() -> asio::awaitable<void> {
          auto deleting = s->delete_until_gone(external);
          co_await std::move(deleting);
          charge_abandoned();
        },
        asio::detached);
    return fail(std::move(why) + " (session " + *external + " deleted)");
  };
  std::string connect;
  if (!s->config.connect_path.empty()) {
    auto c = text_at(body, s->config.connect_path);
    if (!c || c->empty()) {
      co_return abandon("create: no connect URL at \"" + s->config.connect_path + "\" in " + runtime::excerpt(r->body, 200));
    }
    connect = std::move(*c);
  }
  std::string status;
  if (!s->config.status_path.empty()) {
    if (auto st = text_at(body, s->config.status_path)) status = *st;
  }
  // Pending: poll until it runs.
  while (!s->running(status)) {
    if (!s->pending(status)) co_return abandon("the provider reports the new session " + status);
    if (real_clock().now() + s->config.poll_interval >= deadline) {
      co_return abandon("not running within " + runtime::ms_text(s->config.start_timeout) + " (still " + status + ")");
    }
    asio::steady_timer wait(ex, s->config.poll_interval);
    (void)co_await wait.async_wait(kTuple);
    auto asking = s->status(*external, s->config.request_timeout, s->config.retries);
    auto now = co_await std::move(asking);
    if (!now) co_return abandon(now.error().message);
    if (!now->has_value()) {  // made, then forgotten: charged up to now
      charge_abandoned();
      co_return fail("the provider lost the new session " + *external);
    }
    status = **now;
  }
  co_return std::make_shared<RemoteSession>(ex, s, id, std::move(*external), std::move(connect));
}

asio::awaitable<std::expected<RemoteClosed, Error>> RemoteDriver::close_session(std::string external_id) {
  std::shared_ptr<Shared> s = shared_;
  auto asking = s->status(external_id, s->config.request_timeout, s->config.retries);
  auto status = co_await std::move(asking);
  if (!status) co_return std::unexpected(status.error());
  if (!status->has_value() || !(s->running(**status) || s->pending(**status))) co_return RemoteClosed::kWasGone;
  auto deleting = s->delete_once(external_id);
  auto done = co_await std::move(deleting);
  if (!done) co_return std::unexpected(Error(ErrorCode::kSessionLost, "delete " + external_id + ": " + done.error()));
  co_return RemoteClosed::kClosed;
}

void RemoteDriver::leave_to_reconciliation(const std::vector<std::string>& external_ids) {
  std::lock_guard lock(shared_->mu);
  shared_->claimed.insert(external_ids.begin(), external_ids.end());
}

void RemoteDriver::set_sweep_hook(std::function<void(const std::vector<SweptSession>&)> hook) {
  std::lock_guard lock(shared_->mu);
  shared_->on_swept = std::move(hook);
}

asio::awaitable<std::expected<std::vector<SweptSession>, Error>> RemoteDriver::sweep() {
  std::shared_ptr<Shared> s = shared_;
  if (s->config.list_url.empty()) co_return std::vector<SweptSession>{};
  auto sweeping = s->sweep();
  co_return co_await std::move(sweeping);
}

}  // namespace poolkeeper::drivers
