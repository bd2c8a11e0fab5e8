// Live events through the daemon: Server-Sent Events on /v1/events (resume
// with Last-Event-ID, filters, a slow consumer dropped while the pool goes
// on) and the same events over WebSocket on /v1/ws, closed with a reason
// when the daemon stops.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "testing/daemon_process.h"
#include "testing/daemon_tenants.h"
#include "testing/http_client.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;

std::string config_text(const std::string& server_extra = {}) {
  return R"(
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "1s"
)" + server_extra + R"(

[store]
enabled = false

[pools.p]
command = [")" + std::string(POOLKEEPER_TEST_WORKER) + R"("]
min = 1
max = 2
stop_grace = "200ms"
kill_after = "200ms"
)";
}

// A client of /v1/events on a plain socket: sends the request, reads the
// chunked body as it comes and splits it into events.
class SseClient {
 public:
  SseClient(std::uint16_t port, const std::string& target, const std::string& last_event_id = {},
            int receive_buffer = 0, const std::string& token = {})
      : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (receive_buffer > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: test\r\n";
    if (!last_event_id.empty()) request += "Last-Event-ID: " + last_event_id + "\r\n";
    if (!token.empty()) request += "Authorization: Bearer " + token + "\r\n";
    request += "\r\n";
    (void)::send(fd_, request.data(), request.size(), MSG_NOSIGNAL);
  }
  ~SseClient() { ::close(fd_); }
  SseClient(const SseClient&) = delete;
  SseClient& operator=(const SseClient&) = delete;

  // The status line and headers, once they arrived.
  std::string head(Duration timeout = 30s) {
    const TimePoint deadline = real_now() + timeout;
    while (head_.empty() && read_some(deadline)) {
    }
    return head_;
  }

  // The next event's JSON (comments and retry lines skipped), or nothing by
  // the deadline or at the end of the stream.
  std::optional<json::object> next(Duration timeout = 30s) {
    const TimePoint deadline = real_now() + timeout;
    for (;;) {
      const auto end = body_.find("\n\n");
      if (end != std::string::npos) {
        const std::string block = body_.substr(0, end);
        body_.erase(0, end + 2);
        for (std::size_t at = 0; at < block.size();) {
          std::size_t nl = block.find('\n', at);
          if (nl == std::string::npos) nl = block.size();
          const std::string line = block.substr(at, nl - at);
          if (line.starts_with("data: ")) return json::parse(line.substr(6)).as_object();
          at = nl + 1;
        }
        continue;
      }
      if (!read_some(deadline)) return std::nullopt;
    }
  }

  // True when the server ended the body (the last chunk) or closed.
  bool ended(Duration timeout = 30s) {
    const TimePoint deadline = real_now() + timeout;
    while (!finished_ && read_some(deadline)) {
    }
    return finished_;
  }

 private:
  // Reads what is there (waiting until the deadline); false at the end or the deadline.
  bool read_some(TimePoint deadline) {
    if (finished_) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - real_now()).count();
    if (left <= 0) return false;
    pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      finished_ = true;
      return false;
    }
    raw_.append(buf, static_cast<std::size_t>(n));
    if (head_.empty()) {
      const auto end = raw_.find("\r\n\r\n");
      if (end == std::string::npos) return true;
      head_ = raw_.substr(0, end + 4);
      raw_.erase(0, end + 4);
    }
    // De-chunk: "<hex size>\r\n<data>\r\n", a zero size last.
    for (;;) {
      const auto line_end = raw_.find("\r\n");
      if (line_end == std::string::npos) break;
      const std::size_t size = std::stoul(raw_.substr(0, line_end), nullptr, 16);
      if (size == 0) {
        finished_ = true;
        break;
      }
      if (raw_.size() < line_end + 2 + size + 2) break;
      body_ += raw_.substr(line_end + 2, size);
      raw_.erase(0, line_end + 2 + size + 2);
    }
    return true;
  }

  int fd_;
  std::string raw_, head_, body_;
  bool finished_ = false;
};

std::string acquire(HttpClient& c) {
  HttpResult r = c.request("POST", "/v1/pools/p/leases", R"({"timeout_ms": 30000})");
  EXPECT_EQ(r.status, 201) << r.body;
  return r.status == 201 ? std::string(r.json().at("lease").as_string()) : std::string();
}

std::int64_t metric(HttpClient& c, const std::string& name, const std::string& token = {}) {
  const std::string text = c.request("GET", "/metrics", {}, token).body;
  const auto at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + name.size() + 2));
}

TEST(DaemonEventsTest, StreamsLeasesAndResumesAfterTheLastIdSeen) {
  DaemonProcess daemon(config_text("status_interval = 0"));
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));

  std::uint64_t last_seen = 0;
  {
    SseClient sse(port, "/v1/events?pool=p&type=lease_*");
    const std::string head = sse.head();
    ASSERT_NE(head.find("200 OK"), std::string::npos) << head;
    EXPECT_NE(head.find("text/event-stream"), std::string::npos) << head;
    ASSERT_TRUE(wait_until([&] { return metric(c, "poolkeeper_event_subscribers") == 1; }, 30s));
    const std::string lease = acquire(c);
    ASSERT_EQ(c.request("DELETE", "/v1/leases/" + lease).status, 200);
    auto granted = sse.next();
    ASSERT_TRUE(granted);
    EXPECT_EQ(granted->at("type").as_string(), "lease_granted");
    EXPECT_EQ(granted->at("lease").as_string(), lease);
    EXPECT_EQ(granted->at("pool").as_string(), "p");
    auto released = sse.next();
    ASSERT_TRUE(released);
    EXPECT_EQ(released->at("type").as_string(), "lease_released");
    EXPECT_EQ(released->at("id").to_number<std::uint64_t>(), granted->at("id").to_number<std::uint64_t>() + 1);
    last_seen = released->at("id").to_number<std::uint64_t>();
  }
  // Away for a while: the next lease happens unseen.
  ASSERT_TRUE(wait_until([&] { return metric(c, "poolkeeper_event_subscribers") == 0; }, 30s));
  const std::string missed = acquire(c);
  ASSERT_EQ(c.request("DELETE", "/v1/leases/" + missed).status, 200);

  SseClient again(port, "/v1/events?pool=p&type=lease_*", std::to_string(last_seen));
  auto first = again.next();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->at("type").as_string(), "lease_granted");
  EXPECT_EQ(first->at("lease").as_string(), missed);
  EXPECT_GT(first->at("id").to_number<std::uint64_t>(), last_seen);
  auto second = again.next();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->at("type").as_string(), "lease_released");
}

TEST(DaemonEventsTest, BadFiltersAndIdsAreRefusedClearly) {
  DaemonProcess daemon(config_text());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  HttpResult bad_type = c.request("GET", "/v1/events?type=lease_granted,sesion_closed");
  EXPECT_EQ(bad_type.status, 400);
  EXPECT_NE(bad_type.body.find("sesion_closed"), std::string::npos) << bad_type.body;
  HttpResult bad_pool = c.request("GET", "/v1/events?pool=nope");
  EXPECT_EQ(bad_pool.status, 404);
  EXPECT_EQ(bad_pool.error_code(), "unknown_pool");
  HttpResult bad_id = c.request("GET", "/v1/events?last_event_id=12x");
  EXPECT_EQ(bad_id.status, 400) << bad_id.body;
  HttpResult not_ws = c.request("GET", "/v1/ws");
  EXPECT_EQ(not_ws.status, 426);
  EXPECT_EQ(not_ws.error_code(), "upgrade_required");
  EXPECT_EQ(c.request("POST", "/v1/events").status, 405);
}

TEST(DaemonEventsTest, ASlowConsumerIsDroppedWithTheReasonWhileThePoolGoesOn) {
  // Status snapshots every 5 ms fill a client that never reads.
  DaemonProcess daemon(config_text("status_interval = \"5ms\"\nevent_queue = 16"));
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));

  SseClient stalled(port, "/v1/events?type=pool_status", {}, /*receive_buffer=*/4096);
  ASSERT_TRUE(wait_until([&] { return metric(c, "poolkeeper_event_subscribers_dropped_total") == 1; }, 120s))
      << c.request("GET", "/metrics").body;
  // The pool never waited for it.
  const std::string lease = acquire(c);
  EXPECT_EQ(c.request("DELETE", "/v1/leases/" + lease).status, 200);

  // What it had queued comes out, then why it was dropped, then the end.
  std::optional<json::object> last;
  int snapshots = 0;
  while (auto e = stalled.next(60s)) {
    if (e->at("type") == "pool_status") ++snapshots;
    last = std::move(e);
  }
  ASSERT_TRUE(last);
  EXPECT_GT(snapshots, 16);
  EXPECT_EQ(last->at("type").as_string(), "stream_closed");
  EXPECT_NE(std::string(last->at("reason").as_string()).find("slow consumer"), std::string::npos) << *last;
  EXPECT_TRUE(stalled.ended());
  EXPECT_TRUE(wait_until([&] { return daemon.logged("slow consumer"); }, 30s));
}

TEST(DaemonEventsTest, WebSocketCarriesTheEventsAndClosesWithAReasonWhenTheDaemonStops) {
  DaemonProcess daemon(config_text("status_interval = 0"));
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));

  namespace asio = boost::asio;
  namespace websocket = boost::beast::websocket;
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), port});
  timeval tv{.tv_sec = 60, .tv_usec = 0};  // a hung read fails the test instead of hanging it
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  websocket::stream<asio::ip::tcp::socket> ws(std::move(socket));
  ws.handshake("127.0.0.1", "/v1/ws?type=lease_granted,session_closed");
  ASSERT_TRUE(wait_until([&] { return metric(c, "poolkeeper_event_subscribers") == 1; }, 30s));

  const std::string lease = acquire(c);
  boost::beast::flat_buffer buffer;
  ws.read(buffer);
  const json::object granted = json::parse(boost::beast::buffers_to_string(buffer.data())).as_object();
  buffer.consume(buffer.size());
  EXPECT_EQ(granted.at("type").as_string(), "lease_granted");
  EXPECT_EQ(granted.at("lease").as_string(), lease);
  ASSERT_EQ(c.request("DELETE", "/v1/leases/" + lease).status, 200);

  daemon.signal(SIGTERM);
  // The pool's last events (its session closing), then the close frame.
  std::vector<std::string> types;
  boost::system::error_code ec;
  for (;;) {
    ws.read(buffer, ec);
    if (ec) break;
    types.emplace_back(json::parse(boost::beast::buffers_to_string(buffer.data())).at("type").as_string());
    buffer.consume(buffer.size());
  }
  EXPECT_EQ(ec, websocket::error::closed) << ec.message();
  EXPECT_EQ(ws.reason().code, websocket::close_code::going_away);
  EXPECT_EQ(std::string(ws.reason().reason.c_str()), "the daemon is stopping");
  EXPECT_EQ(types, std::vector<std::string>{"session_closed"});
  EXPECT_EQ(daemon.wait_exit(60s), 0);
}

TEST(DaemonEventsTest, ATenantHearsOnlyItsOwnPools) {
  DaemonProcess daemon(R"(
[server]
listen = "127.0.0.1:0"
shutdown_grace = "1s"
status_interval = 0

[store]
enabled = false

[tenants.bob]
token_env = "BOB_TOKEN"
pools = ["a"]

[tenants.root]
token_env = "ROOT_TOKEN"
admin = true

[pools.a]
command = [")" + std::string(POOLKEEPER_TEST_WORKER) + R"("]
min = 1
max = 1

[pools.b]
command = [")" + std::string(POOLKEEPER_TEST_WORKER) + R"("]
min = 1
max = 1
)",
                       token_env());
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  EXPECT_EQ(c.request("GET", "/v1/events").status, 401);
  EXPECT_EQ(c.request("GET", "/v1/events?pool=b", {}, kBob).error_code(), "unknown_pool");

  SseClient bob(port, "/v1/events?type=lease_granted", {}, 0, kBob);
  ASSERT_NE(bob.head().find("200 OK"), std::string::npos);
  ASSERT_TRUE(wait_until([&] { return metric(c, "poolkeeper_event_subscribers", kRoot) == 1; }, 30s));
  HttpResult on_b = c.request("POST", "/v1/pools/b/leases", R"({"timeout_ms": 30000})", kRoot);
  ASSERT_EQ(on_b.status, 201) << on_b.body;
  HttpResult on_a = c.request("POST", "/v1/pools/a/leases", R"({"timeout_ms": 30000})", kRoot);
  ASSERT_EQ(on_a.status, 201) << on_a.body;
  auto first = bob.next();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->at("pool").as_string(), "a");  // pool b's lease came first, unseen
  EXPECT_EQ(first->at("lease").as_string(), on_a.json().at("lease").as_string());
}

}  // namespace
}  // namespace poolkeeper::testing
