// The remote driver against the fake paid provider (a real HTTP server on
// loopback, in its own process): create, status, delete, retries, sweeps,
// reconciliation, the API key, https with a certificate, and what it does
// when the provider fails, is slow, loses sessions or answers garbage.
#include "drivers/remote/remote_driver.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "drivers/remote/rest_client.h"
#include "testing/fake_provider.h"
#include "testing/wait.h"

namespace poolkeeper::drivers {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using runtime::DriverSession;
using testing::FakeProvider;
using testing::kLongWait;

constexpr const char* kKeyVariable = "POOLKEEPER_TEST_PROVIDER_KEY";

class MemoryLog final : public runtime::Log {
 public:
  void write(runtime::LogLevel, std::string_view msg, std::initializer_list<runtime::LogField> fields) override {
    std::lock_guard lock(mu_);
    std::string line(msg);
    for (const auto& [k, v] : fields) line += " " + std::string(k) + "=" + std::string(v);
    text_ += line + "\n";
  }
  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::string text_;
};

class RemoteDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(fake_.port(), 0) << fake_.log();
    ::setenv(kKeyVariable, testing::kFakeProviderKey, 1);
  }

  RemoteConfig config() {
    RemoteConfig c;
    c.endpoint = fake_.url() + "/v1/sessions";
    c.create_body = R"({"platform": "chrome", "metadata": {"poolkeeper": "{tag}"}})";
    c.api_key_env = kKeyVariable;
    c.list_url = c.endpoint;
    c.request_timeout = 5s;
    c.retry_backoff = 10ms;
    c.retry_backoff_max = 50ms;
    c.poll_interval = 20ms;
    return c;
  }

  std::unique_ptr<RemoteDriver> driver(RemoteConfig c, std::string instance = "inst1", std::string run = "5") {
    auto d = RemoteDriver::create(std::move(c), "browsers", std::move(instance), std::move(run), &log_);
    EXPECT_TRUE(d.has_value()) << (d ? "" : d.error().message);
    if (!d) return nullptr;
    (*d)->set_sweep_hook([this](const std::vector<SweptSession>& s) { charged_.insert(charged_.end(), s.begin(), s.end()); });
    return std::move(*d);
  }

  // Starts a coroutine on the test's io_context: its result lands in the
  // slot returned once pump() has run it to the end.
  template <class T>
  std::shared_ptr<std::optional<T>> spawn(asio::awaitable<T> a) {
    auto slot = std::make_shared<std::optional<T>>();
    asio::co_spawn(io_, std::move(a), [slot](std::exception_ptr e, T v) {
      if (e) std::rethrow_exception(e);
      slot->emplace(std::move(v));
    });
    return slot;
  }
  // Runs a coroutine on the test's io_context to completion.
  template <class T>
  T run(asio::awaitable<T> a) {
    std::shared_ptr<std::optional<T>> result = spawn(std::move(a));
    pump([&] { return result->has_value(); });
    EXPECT_TRUE(result->has_value()) << "the call did not complete";
    if (!result->has_value()) std::abort();
    return std::move(**result);
  }
  void run(asio::awaitable<void> a) {
    bool done = false;
    asio::co_spawn(io_, std::move(a), [&](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
      done = true;
    });
    pump([&] { return done; });
    ASSERT_TRUE(done);
  }
  // Runs the io_context until `pred` holds (or a long deadline).
  template <class Pred>
  bool pump(Pred pred, Duration timeout = std::chrono::seconds(60)) {
    const TimePoint deadline = testing::real_now() + timeout;
    while (!pred() && testing::real_now() < deadline) {
      io_.restart();
      io_.run_for(5ms);
    }
    return pred();
  }

  std::shared_ptr<DriverSession> start(RemoteDriver& d, SessionId id) {
    auto s = run(d.start(id));
    EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message);
    return s ? *s : nullptr;
  }

  json::array sessions() {
    auto b = fake_.billing();
    return b.is_object() ? b.at("sessions").as_array() : json::array();
  }
  std::int64_t requests(const char* kind) { return fake_.billing().at("requests").at(kind).as_int64(); }

  FakeProvider fake_;
  asio::io_context io_;
  MemoryLog log_;
  std::vector<SweptSession> charged_;  // what the drivers' sweep hooks were handed
};

TEST_F(RemoteDriverTest, StartsChecksAndStopsAPaidSession) {
  auto d = driver(config());
  auto s = start(*d, 7);
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(fake_.open_sessions(), 1);
  const json::value seen = sessions().at(0);
  EXPECT_EQ(s->external_id(), seen.at("id").as_string());
  EXPECT_EQ(s->connect(), "ws://127.0.0.1:" + std::to_string(fake_.port()) + "/devtools/" + s->external_id());
  EXPECT_EQ(s->describe(), "remote " + s->external_id());
  EXPECT_EQ(seen.at("platform").as_string(), "chrome");
  EXPECT_EQ(d->tag_of(7), "inst1/browsers/5/7");

  auto checked = run(s->check(5s));
  EXPECT_TRUE(checked.has_value()) << checked.error().message;
  auto executed = run(s->execute({}));
  ASSERT_FALSE(executed.has_value());
  EXPECT_EQ(executed.error().code, ErrorCode::kNotSupported);

  std::optional<std::string> ended;
  asio::co_spawn(io_, s->wait_ended(), [&](std::exception_ptr, std::string why) { ended = why; });
  run(s->stop(StopReason::kIdleTimeout));
  EXPECT_TRUE(pump([&] { return ended.has_value(); }));
  EXPECT_EQ(ended, "stopped");
  EXPECT_EQ(fake_.open_sessions(), 0);
  EXPECT_EQ(sessions().at(0).at("lost").as_bool(), false);
  // The key went to the provider but never to the log.
  EXPECT_EQ(log_.text().find(testing::kFakeProviderKey), std::string::npos);
}

TEST_F(RemoteDriverTest, TheTagCarriesThePoolAndSessionAndIsJsonEscaped) {
  auto d = driver(config(), "we\"ird");
  auto s = start(*d, 12);
  ASSERT_NE(s, nullptr);
  cli::HttpClient api(fake_.url());
  api.set_token(testing::kFakeProviderKey);
  auto listed = json::parse(api.call("GET", "/v1/sessions")->body);
  EXPECT_EQ(listed.at("data").at(0).at("metadata").at("poolkeeper").as_string(), "we\"ird/browsers/5/12");
  run(s->stop(StopReason::kShutdown));
}

TEST_F(RemoteDriverTest, AWrongKeyFailsTheStartWithoutShowingTheKey) {
  ::setenv(kKeyVariable, "not-the-key-9876", 1);
  auto d = driver(config());
  auto s = run(d->start(1));
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, ErrorCode::kSessionStartFailed);
  EXPECT_NE(s.error().message.find("HTTP 401"), std::string::npos) << s.error().message;
  EXPECT_EQ(s.error().message.find("not-the-key-9876"), std::string::npos);
  EXPECT_EQ(log_.text().find("not-the-key-9876"), std::string::npos);
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, AMissingKeyVariableIsAConfigError) {
  ::unsetenv(kKeyVariable);
  auto d = RemoteDriver::create(config(), "browsers", "inst1", "5", &log_);
  ASSERT_FALSE(d.has_value());
  EXPECT_EQ(d.error().code, ErrorCode::kInvalidConfig);
  EXPECT_NE(d.error().message.find(kKeyVariable), std::string::npos);
}

TEST_F(RemoteDriverTest, ACreateIsNeverRetriedButStatusAndDeleteAre) {
  auto d = driver(config());
  fake_.control({{"fail_next", 1}});
  auto failed = run(d->start(1));
  ASSERT_FALSE(failed.has_value());
  EXPECT_NE(failed.error().message.find("HTTP 500"), std::string::npos) << failed.error().message;
  EXPECT_EQ(requests("create"), 0);  // the injected failure did nothing at the provider
  EXPECT_EQ(fake_.billing().at("failed_requests").as_int64(), 1);

  auto s = start(*d, 2);
  ASSERT_NE(s, nullptr);
  fake_.control({{"fail_next", 2}});
  EXPECT_TRUE(run(s->check(5s)).has_value() == false);  // a check is not retried: the core scores it
  fake_.control({{"fail_next", 2}, {"fail_status", 503}});
  run(s->stop(StopReason::kShutdown));
  EXPECT_EQ(fake_.open_sessions(), 0);
  EXPECT_EQ(requests("delete"), 1);
  EXPECT_EQ(fake_.billing().at("failed_requests").as_int64(), 1 + 1 + 2);
}

TEST_F(RemoteDriverTest, AStopOutlastsAProviderThatIsDownForAWhile) {
  auto d = driver(config());
  auto s = start(*d, 1);
  ASSERT_NE(s, nullptr);
  fake_.control({{"fail_rate", 1}});
  bool stopped = false;
  asio::co_spawn(io_, s->stop(StopReason::kShutdown), [&](std::exception_ptr) { stopped = true; });
  // Many rounds of retries fail; the stop keeps going.
  ASSERT_TRUE(pump([&] { return fake_.billing().at("failed_requests").as_int64() >= 12; }));
  EXPECT_FALSE(stopped);
  EXPECT_NE(log_.text().find("cannot delete a remote session; it may still be billed"), std::string::npos);
  fake_.control({{"fail_rate", 0}});
  ASSERT_TRUE(pump([&] { return stopped; }));
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, ALostSessionEndsOnItsOwnAtTheNextCheck) {
  auto d = driver(config());
  auto s = start(*d, 1);
  ASSERT_NE(s, nullptr);
  std::optional<std::string> ended;
  asio::co_spawn(io_, s->wait_ended(), [&](std::exception_ptr, std::string why) { ended = why; });
  fake_.control({{"lose", s->external_id()}});
  auto checked = run(s->check(5s));
  ASSERT_FALSE(checked.has_value());
  EXPECT_EQ(checked.error().code, ErrorCode::kSessionLost);
  ASSERT_TRUE(pump([&] { return ended.has_value(); }));
  EXPECT_EQ(ended, "the provider reports it stopped");
  const std::int64_t deletes = requests("delete");
  run(s->stop(StopReason::kUnhealthy));  // nothing left to delete
  EXPECT_EQ(requests("delete"), deletes);
}

TEST_F(RemoteDriverTest, AFailedCheckIsNotAnEnd) {
  auto d = driver(config());
  auto s = start(*d, 1);
  ASSERT_NE(s, nullptr);
  fake_.control({{"delay_ms", 2000}});
  auto slow = run(s->check(100ms));
  ASSERT_FALSE(slow.has_value());
  EXPECT_EQ(slow.error().code, ErrorCode::kExecuteTimeout);
  EXPECT_NE(slow.error().message.find("no answer within 100 ms"), std::string::npos) << slow.error().message;
  fake_.control({{"delay_ms", 0}});
  EXPECT_TRUE(run(s->check(5s)).has_value());
  run(s->stop(StopReason::kShutdown));
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, APendingSessionIsPolledUntilItRuns) {
  auto d = driver(config());
  fake_.control({{"ready_after_s", 5}});
  auto started = spawn(d->start(1));
  ASSERT_TRUE(pump([&] { return requests("get") >= 3; }));  // polling while "starting"
  EXPECT_FALSE(started->has_value());
  fake_.control({{"advance_s", 6}});
  ASSERT_TRUE(pump([&] { return started->has_value(); }));
  ASSERT_TRUE(started->value().has_value()) << started->value().error().message;
  run((*started)->value()->stop(StopReason::kShutdown));

  // One that never gets there within start_timeout is deleted, not leaked.
  // No pool holds it, so the driver charges it: through the sweep hook.
  auto c = config();
  c.start_timeout = 300ms;
  auto impatient = driver(c);
  fake_.control({{"ready_after_s", 3600}});
  const std::int64_t before = wall_ms();
  auto late = run(impatient->start(2));
  ASSERT_FALSE(late.has_value());
  EXPECT_NE(late.error().message.find("not running within 300 ms (still starting)"), std::string::npos)
      << late.error().message;
  EXPECT_TRUE(pump([&] { return fake_.open_sessions() == 0 && !charged_.empty(); }));
  ASSERT_EQ(charged_.size(), 1u);
  EXPECT_TRUE(charged_[0].abandoned);
  EXPECT_EQ(charged_[0].external_id, sessions().at(1).at("id").as_string());
  EXPECT_EQ(std::make_pair(charged_[0].run, charged_[0].session), std::make_pair(std::int64_t{5}, SessionId{2}));
  ASSERT_TRUE(charged_[0].created_ms.has_value());
  EXPECT_GE(*charged_[0].created_ms, before);
  // It gives up once the next poll (20 ms) would pass start_timeout (and
  // both times are wall clock milliseconds, truncated).
  EXPECT_GE(charged_[0].deleted_ms, *charged_[0].created_ms + 300 - 20 - 5);
  // A sweep leaves it: it is charged already.
  auto swept = run(impatient->sweep());
  ASSERT_TRUE(swept.has_value()) << swept.error().message;
  EXPECT_TRUE(swept->empty());
}

TEST_F(RemoteDriverTest, AnAnswerWithoutWhatIsNeededFailsTheStartAndLeaksNothing) {
  auto c = config();
  c.connect_path = "data.websocket";
  auto d = driver(c);
  auto s = run(d->start(1));
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find("no connect URL at \"data.websocket\""), std::string::npos) << s.error().message;
  EXPECT_TRUE(pump([&] { return fake_.open_sessions() == 0; }));  // deleted

  auto lost = config();
  lost.id_path = "data.session_id";
  auto d2 = driver(lost);
  auto s2 = run(d2->start(2));
  ASSERT_FALSE(s2.has_value());
  EXPECT_NE(s2.error().message.find("no session id at \"data.session_id\""), std::string::npos);
  // No id to delete it by: the sweep finds it by its tag.
  auto swept = run(d2->sweep());
  ASSERT_TRUE(swept.has_value()) << swept.error().message;
  ASSERT_EQ(swept->size(), 1u);
  EXPECT_EQ((*swept)[0].session, SessionId{2});
  EXPECT_FALSE((*swept)[0].abandoned);
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, ACreateWhoseAnswerNeverCameIsSweptAfterwards) {
  auto c = config();
  c.request_timeout = 300ms;
  auto d = driver(c);
  fake_.control({{"delay_ms", 1500}});  // the create takes effect, its answer comes too late
  auto s = run(d->start(1));
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message.find("it may have been created; it will be swept"), std::string::npos)
      << s.error().message;
  fake_.control({{"delay_ms", 0}});
  // The sweep finds what the create made (once the provider made it) and deletes it.
  EXPECT_TRUE(pump([&] { return log_.text().find("deleted an orphaned remote session") != std::string::npos; }))
      << log_.text();
  EXPECT_EQ(requests("create"), 1);
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, ASweepDeletesOnlyThisPoolsSessionsThatNoOneHereHolds) {
  auto d = driver(config());
  auto live = start(*d, 1);
  ASSERT_NE(live, nullptr);
  // Sessions made by others: an earlier run of this daemon (one with the
  // same session number as the live one), another pool, another daemon, and
  // one without a tag.
  cli::HttpClient api(fake_.url());
  api.set_token(testing::kFakeProviderKey);
  for (const char* tag : {"inst1/browsers/5/99", "inst1/browsers/4/1", "inst1/other/5/3", "inst2/browsers/5/4", ""}) {
    json::object body{{"metadata", tag[0] ? json::object{{"poolkeeper", tag}} : json::object{}}};
    ASSERT_EQ(api.call("POST", "/v1/sessions", json::serialize(body))->status, 201);
  }
  auto swept = run(d->sweep());
  ASSERT_TRUE(swept.has_value()) << swept.error().message;
  ASSERT_EQ(swept->size(), 2u);
  for (const auto& s : sessions()) {
    const bool stopped = !s.at("stopped_at").is_null();
    const std::string id(s.at("id").as_string());
    EXPECT_EQ(stopped, id == (*swept)[0].external_id || id == (*swept)[1].external_id) << s;
  }
  EXPECT_EQ(fake_.open_sessions(), 4);
  EXPECT_EQ(live->external_id(), std::string(sessions().at(0).at("id").as_string()));
  EXPECT_TRUE(sessions().at(0).at("stopped_at").is_null());
  // Who made each (from its tag) and when (the provider's created_at).
  ASSERT_EQ(charged_.size(), 2u);
  EXPECT_EQ(std::make_pair(charged_[0].run, charged_[0].session), std::make_pair(std::int64_t{5}, SessionId{99}));
  EXPECT_EQ(std::make_pair(charged_[1].run, charged_[1].session), std::make_pair(std::int64_t{4}, SessionId{1}));
  const json::array all = sessions();
  for (std::size_t i = 0; i < 2; ++i) {
    const json::value& s = all.at(i + 1);
    EXPECT_EQ(charged_[i].external_id, s.at("id").as_string());
    ASSERT_TRUE(charged_[i].created_ms.has_value());
    EXPECT_NEAR(static_cast<double>(*charged_[i].created_ms), s.at("created_at").as_double() * 1000, 1.0);
    EXPECT_GE(charged_[i].deleted_ms, *charged_[i].created_ms);
  }
  run(live->stop(StopReason::kShutdown));
}

// A sweep whose listing saw a session of this run running, answered after
// the pool closed it: the pool's close charged it, so the sweep leaves it.
TEST_F(RemoteDriverTest, ASweepNeverTakesASessionThisRunHeldThoughItClosedMeanwhile) {
  auto d = driver(config());
  auto s = start(*d, 1);
  ASSERT_NE(s, nullptr);
  fake_.control({{"delay_ms", 5000}});  // the listing is taken now, answered late
  auto swept = spawn(d->sweep());
  ASSERT_TRUE(pump([&] { return requests("list") == 1; }));
  fake_.control({{"delay_ms", 0}});
  run(s->stop(StopReason::kIdleTimeout));
  s.reset();
  ASSERT_FALSE(swept->has_value());  // the close was over first
  ASSERT_TRUE(pump([&] { return swept->has_value(); }));
  ASSERT_TRUE(swept->value().has_value()) << swept->value().error().message;
  EXPECT_TRUE(swept->value()->empty());
  EXPECT_TRUE(charged_.empty());
  EXPECT_EQ(requests("delete"), 1);
}

// Two sweeps that list the same orphan delete and charge it once; a session
// left to reconciliation is no sweep's.
TEST_F(RemoteDriverTest, AnOrphanIsSweptOnceAndReconciliationsSessionsNever) {
  auto d = driver(config());
  cli::HttpClient api(fake_.url());
  api.set_token(testing::kFakeProviderKey);
  std::vector<std::string> ids;
  for (const char* tag : {"inst1/browsers/4/1", "inst1/browsers/4/2"}) {
    auto made = api.call("POST", "/v1/sessions", json::serialize(json::object{{"metadata", {{"poolkeeper", tag}}}}));
    ASSERT_EQ(made->status, 201);
    ids.emplace_back(json::parse(made->body).at("data").at("id").as_string());
  }
  d->leave_to_reconciliation({ids[1]});
  fake_.control({{"delay_ms", 1500}});  // both listings are taken before either deletes
  const auto sweeps = {spawn(d->sweep()), spawn(d->sweep())};
  ASSERT_TRUE(pump([&] { return requests("list") == 2; }));
  fake_.control({{"delay_ms", 0}});
  ASSERT_TRUE(pump([&] { return std::ranges::all_of(sweeps, [](const auto& r) { return r->has_value(); }); }));
  std::size_t deleted = 0;
  for (const auto& r : sweeps) {
    ASSERT_TRUE(r->value().has_value()) << r->value().error().message;
    deleted += r->value()->size();
  }
  EXPECT_EQ(deleted, 1u);
  ASSERT_EQ(charged_.size(), 1u);
  EXPECT_EQ(charged_[0].external_id, ids[0]);
  EXPECT_EQ(requests("delete"), 1);
  EXPECT_EQ(fake_.open_sessions(), 1);
  EXPECT_EQ(run(d->close_session(ids[1])).value(), RemoteClosed::kClosed);
  EXPECT_EQ(fake_.open_sessions(), 0);
}

TEST_F(RemoteDriverTest, CloseSessionClosesWhatRunsAndKnowsWhatIsGone) {
  auto d = driver(config());
  auto s = start(*d, 1);
  ASSERT_NE(s, nullptr);
  const std::string id = s->external_id();
  auto closed = run(d->close_session(id));
  ASSERT_TRUE(closed.has_value()) << closed.error().message;
  EXPECT_EQ(*closed, RemoteClosed::kClosed);
  EXPECT_EQ(fake_.open_sessions(), 0);
  EXPECT_EQ(run(d->close_session(id)).value(), RemoteClosed::kWasGone);
  EXPECT_EQ(run(d->close_session("sess_unknown")).value(), RemoteClosed::kWasGone);
  // Unreachable: an error, nothing assumed.
  fake_.control({{"fail_rate", 1}});
  auto down = run(d->close_session(id));
  ASSERT_FALSE(down.has_value());
  fake_.control({{"fail_rate", 0}});
  run(s->stop(StopReason::kShutdown));
}

TEST(RemoteConfigTest, BadConfigsAreRefusedWithTheirKey) {
  auto base = [] {
    RemoteConfig c;
    c.endpoint = "http://127.0.0.1:1/v1/sessions";
    return c;
  };
  EXPECT_TRUE(validate_remote_config(base()).has_value());
  struct Case {
    std::function<void(RemoteConfig&)> change;
    std::string says;
  };
  const std::vector<Case> cases = {
      {[](RemoteConfig& c) { c.endpoint = ""; }, "endpoint: is required"},
      {[](RemoteConfig& c) { c.endpoint = "ftp://x"; }, "endpoint: \"ftp://x\" is not an http"},
      {[](RemoteConfig& c) { c.endpoint = "http://h:99999/"; }, "port must be 1 to 65535"},
      {[](RemoteConfig& c) { c.session_url = "{endpoint}/x"; }, "session_url: must contain {id}"},
      {[](RemoteConfig& c) { c.create_body = "[1]"; }, "create_body: must be a JSON object"},
      {[](RemoteConfig& c) { c.create_body = "{"; }, "create_body: must be a JSON object"},
      {[](RemoteConfig& c) { c.list_url = c.endpoint; }, "list_url: needs create_body to carry {tag}"},
      {[](RemoteConfig& c) { c.delete_method = "GET"; }, "delete_method"},
      {[](RemoteConfig& c) { c.id_path = ""; }, "id_path: is required"},
      {[](RemoteConfig& c) { c.running_status.clear(); }, "running_status"},
      {[](RemoteConfig& c) { c.auth_header = "X: y"; }, "auth_header"},
      {[](RemoteConfig& c) { c.request_timeout = Duration{0}; }, "request_timeout: must be positive"},
      {[](RemoteConfig& c) { c.retries = 21; }, "retries: must be 0 to 20"},
  };
  for (const Case& k : cases) {
    RemoteConfig c = base();
    k.change(c);
    auto ok = validate_remote_config(c);
    ASSERT_FALSE(ok.has_value()) << k.says;
    EXPECT_EQ(ok.error().code, ErrorCode::kInvalidConfig);
    EXPECT_NE(ok.error().message.find(k.says), std::string::npos) << ok.error().message;
  }
}

TEST(ProviderTimeTest, ReadsUtcIso8601) {
  EXPECT_EQ(provider_time_ms("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(provider_time_ms("2026-12-04T17:53:22.123Z"), 1796406802123);
  EXPECT_EQ(provider_time_ms("2026-12-04T17:53:22.5+00:00"), 1796406802500);
  EXPECT_EQ(provider_time_ms("2024-02-29T00:00:00Z"), 1709164800000);
  for (const char* bad : {"", "2026-12-04", "2026-12-04T17:53:22", "2026-12-04T17:53:22+01:00",
                          "2026-02-30T00:00:00Z", "2026-12-04T25:00:00Z", "yesterday"}) {
    EXPECT_FALSE(provider_time_ms(bad).has_value()) << bad;
  }
}

TEST(UrlTest, ParsesWhatProvidersUse) {
  auto u = parse_url("https://api.example.com/v1/sessions?x=1");
  ASSERT_TRUE(u.has_value());
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->host, "api.example.com");
  EXPECT_EQ(u->port, "443");
  EXPECT_EQ(u->target, "/v1/sessions?x=1");
  u = parse_url("http://[::1]:8080");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "8080");
  EXPECT_EQ(u->target, "/");
  EXPECT_FALSE(parse_url("http://user:pw@host/").has_value());
  EXPECT_FALSE(parse_url("http://host/a b").has_value());
  EXPECT_FALSE(parse_url("http://:80/").has_value());
}

// https: a provider with a certificate the driver is told to trust, and one
// it is not.
TEST(RemoteTlsTest, HttpsVerifiesTheProvidersCertificate) {
  const std::string dir = ::testing::TempDir() + "/poolkeeper-tls-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string cert = dir + "/cert.pem", key = dir + "/key.pem";
  const std::string make = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                           "-addext subjectAltName=IP:127.0.0.1 -keyout " + key + " -out " + cert +
                           " >/dev/null 2>&1";
  ASSERT_EQ(std::system(make.c_str()), 0);
  FakeProvider fake({.tls_cert = cert, .tls_key = key});
  ASSERT_NE(fake.port(), 0) << fake.log();
  ::setenv(kKeyVariable, testing::kFakeProviderKey, 1);
  asio::io_context io;
  auto run_start = [&](RemoteDriver& d) {
    std::optional<std::expected<std::shared_ptr<DriverSession>, Error>> r;
    asio::co_spawn(io, d.start(1), [&](std::exception_ptr, auto v) { r = std::move(v); });
    io.run_for(60s);
    io.restart();
    return std::move(*r);
  };
  RemoteConfig c;
  c.endpoint = fake.url() + "/v1/sessions";
  c.api_key_env = kKeyVariable;
  c.retry_backoff = 10ms;
  c.retry_backoff_max = 50ms;
  MemoryLog log;
  {
    auto untrusting = RemoteDriver::create(c, "p", "i", "1", &log);
    ASSERT_TRUE(untrusting.has_value()) << untrusting.error().message;
    auto r = run_start(**untrusting);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message.find("certificate verify failed"), std::string::npos) << r.error().message;
  }
  c.ca_file = cert;
  auto created = RemoteDriver::create(c, "p", "i", "1", &log);
  ASSERT_TRUE(created.has_value()) << created.error().message;
  auto& trusting = *created;
  auto r = run_start(*trusting);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_TRUE((*r)->connect().starts_with("wss://127.0.0.1:"));
  const std::string id = (*r)->external_id();
  bool stopped = false;
  asio::co_spawn(io, (*r)->stop(StopReason::kShutdown), [&](std::exception_ptr) { stopped = true; });
  io.run_for(60s);
  EXPECT_TRUE(stopped);
  std::optional<std::expected<RemoteClosed, Error>> again;
  io.restart();
  asio::co_spawn(io, trusting->close_session(id), [&](std::exception_ptr, auto v) { again = std::move(v); });
  io.run_for(60s);
  ASSERT_TRUE(again && again->has_value());
  EXPECT_EQ(**again, RemoteClosed::kWasGone);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace poolkeeper::drivers
