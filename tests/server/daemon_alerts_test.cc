// Alerts through the daemon: a queue that backs up (seen on the queue
// endpoint, and in each grant's queue position) fires queue_length, which
// reaches a webhook (retried after the receiver fails once) and GET
// /v1/alerts; once the queue empties it resolves.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "testing/daemon_process.h"
#include "testing/http_client.h"
#include "testing/wait.h"

namespace poolkeeper::testing {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;

// A webhook receiver on loopback: answers each POST with the next status of
// `statuses` (then 200) and keeps the bodies it accepted.
class WebhookReceiver {
 public:
  explicit WebhookReceiver(std::vector<int> statuses) : statuses_(std::move(statuses)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 16);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~WebhookReceiver() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  int attempts() const { return attempts_.load(); }
  std::vector<json::object> accepted() {
    std::lock_guard lock(mu_);
    return accepted_;
  }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      handle(c);
      ::close(c);
    }
  }
  void handle(int c) {
    std::string in;
    char buf[4096];
    std::size_t body_at = std::string::npos, length = 0;
    const TimePoint deadline = real_now() + 10s;
    while (real_now() < deadline) {
      pollfd p{.fd = c, .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      in.append(buf, static_cast<std::size_t>(n));
      if (body_at == std::string::npos) {
        const auto end = in.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        body_at = end + 4;
        std::string head = in.substr(0, end);
        for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        const auto cl = head.find("content-length:");
        if (cl != std::string::npos) length = std::stoul(head.substr(cl + 15));
      }
      if (in.size() >= body_at + length) break;
    }
    const int n = attempts_++;
    const int status = n < static_cast<int>(statuses_.size()) ? statuses_[static_cast<std::size_t>(n)] : 200;
    if (status == 200) {
      std::lock_guard lock(mu_);
      accepted_.push_back(json::parse(in.substr(body_at, length)).as_object());
    }
    const std::string answer = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    (void)::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
  }

  std::vector<int> statuses_;
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> attempts_{0};
  std::mutex mu_;
  std::vector<json::object> accepted_;
  std::thread thread_;
};

// A pool of one session whose queue_length rule fires at once above
// `threshold`; `store` and `alerts_extra` are added to their sections and
// `pool_extra` to the pool's.
std::string config_text(const std::string& store, int threshold, const std::string& alerts_extra = {},
                        const std::string& pool_extra = {}) {
  return R"(
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "1s"

[store]
)" + store + R"(

[alerts]
interval = "200ms"
)" + alerts_extra + R"(

[alerts.rules.queue_length]
threshold = )" + std::to_string(threshold) + R"(
for = "0s"

[alerts.rules.utilization]
enabled = false

[alerts.rules.queue_wait]
enabled = false

[pools.p]
command = [")" + std::string(POOLKEEPER_TEST_WORKER) + R"("]
min = 1
max = 1
stop_grace = "200ms"
kill_after = "200ms"
)" + pool_extra + "\n";
}

TEST(DaemonAlertsTest, ABackedUpQueueFiresAWebhookAndResolvesOnceItEmpties) {
  WebhookReceiver receiver({500});  // the first delivery fails: retried
  DaemonProcess daemon(config_text("enabled = false", 5,
                                   "webhooks = [\"" + receiver.url() + "\"]\nwebhook_timeout = \"5s\"",
                                   "alert_thresholds = { queue_length = 2 }"));
  const std::uint16_t port = daemon.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
  HttpResult report = c.request("GET", "/v1/alerts");
  ASSERT_EQ(report.status, 200) << report.body;
  EXPECT_TRUE(report.json().at("active").as_array().empty());

  HttpResult held = c.request("POST", "/v1/pools/p/leases", R"({"timeout_ms": 30000})");
  ASSERT_EQ(held.status, 201) << held.body;
  // Three wait (above the pool's own threshold of 2; the rule's is 5).
  std::vector<std::jthread> waiters;  // joined however the test ends
  std::atomic<int> served{0};
  std::atomic<int> positions{0};  // the sum of the places they were queued at: 1 + 2 + 3
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([port, &served, &positions] {
      HttpClient w(port);
      HttpResult r = w.request("POST", "/v1/pools/p/leases", R"({"timeout_ms": 60000})");
      if (r.status != 201) return;
      positions += static_cast<int>(r.json().at("queue_position").as_int64());
      if (w.request("DELETE", "/v1/leases/" + std::string(r.json().at("lease").as_string())).status == 200) {
        ++served;
      }
    });
  }
  // The queue endpoint shows them in serving order.
  ASSERT_TRUE(wait_until([&] { return c.request("GET", "/v1/pools/p/queue").json().at("length") == 3; }, 30s));
  const json::value queue = c.request("GET", "/v1/pools/p/queue").json();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(queue.at("waiters").at(static_cast<std::size_t>(i)).at("position").as_int64(), i + 1) << queue;
    EXPECT_LE(queue.at("waiters").at(static_cast<std::size_t>(i)).at("deadline_in_ms").as_int64(), 60000);
  }
  ASSERT_TRUE(wait_until([&] { return receiver.accepted().size() == 1; }, 60s)) << receiver.attempts();
  const json::object fired = receiver.accepted()[0];
  EXPECT_EQ(fired.at("state").as_string(), "firing");
  EXPECT_EQ(fired.at("rule").as_string(), "queue_length");
  EXPECT_EQ(fired.at("subject").as_string(), "p");
  EXPECT_EQ(fired.at("value").to_number<double>(), 3);
  EXPECT_EQ(fired.at("threshold").to_number<double>(), 2);
  EXPECT_EQ(receiver.attempts(), 2);  // one 500, then delivered
  // Active (beside it, utilization may be pending: the one session is leased).
  const json::value firing = c.request("GET", "/v1/alerts").json();
  auto active_queue_alerts = [](const json::value& report) {
    std::vector<json::value> out;
    for (const json::value& a : report.at("active").as_array()) {
      if (a.at("rule") == "queue_length") out.push_back(a);
    }
    return out;
  };
  const auto queue_alerts = active_queue_alerts(firing);
  ASSERT_EQ(queue_alerts.size(), 1u) << firing;
  EXPECT_EQ(queue_alerts[0].at("state").as_string(), "firing");
  EXPECT_TRUE(daemon.logged("\"msg\":\"alert firing\""));

  // The queue empties: resolved, delivered too.
  ASSERT_EQ(c.request("DELETE", "/v1/leases/" + std::string(held.json().at("lease").as_string())).status, 200);
  for (auto& t : waiters) t.join();  // each was served once the held lease came back
  EXPECT_EQ(served.load(), 3);
  EXPECT_EQ(positions.load(), 6);
  ASSERT_TRUE(wait_until([&] { return receiver.accepted().size() == 2; }, 60s));
  EXPECT_EQ(receiver.accepted()[1].at("state").as_string(), "resolved");
  const json::value after = c.request("GET", "/v1/alerts").json();
  EXPECT_TRUE(active_queue_alerts(after).empty()) << after;
  ASSERT_EQ(after.at("history").as_array().size(), 2u) << after;
  EXPECT_EQ(after.at("history").at(0).at("state").as_string(), "resolved");  // newest first
  EXPECT_EQ(after.at("history").at(1).at("state").as_string(), "firing");
  // The receiver has it before the daemon has read the answer: waited for.
  EXPECT_TRUE(wait_until([&] {
    return c.request("GET", "/v1/alerts").json().at("webhooks").at("delivered").to_number<int>() == 2;
  }, 60s));
}

TEST(DaemonAlertsTest, TheHistoryIsKeptInTheStoreAcrossARestart) {
  std::string dir = ::testing::TempDir() + "/poolkeeper-alerts-XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string config = config_text("path = \"" + dir + "/poolkeeper.db\"", 0);
  auto history = [](HttpClient& c) { return c.request("GET", "/v1/alerts").json().at("history").as_array(); };
  {
    DaemonProcess daemon(config);
    const std::uint16_t port = daemon.port();
    ASSERT_NE(port, 0);
    HttpClient c(port);
    ASSERT_TRUE(wait_until([&] { return c.request("GET", "/health").status == 200; }, 30s));
    HttpResult held = c.request("POST", "/v1/pools/p/leases", R"({"timeout_ms": 30000})");
    ASSERT_EQ(held.status, 201) << held.body;
    std::jthread waiter([port] {
      HttpClient w(port);
      HttpResult r = w.request("POST", "/v1/pools/p/leases", R"({"timeout_ms": 60000})");
      if (r.status == 201) w.request("DELETE", "/v1/leases/" + std::string(r.json().at("lease").as_string()));
    });
    ASSERT_TRUE(wait_until([&] { return history(c).size() == 1; }, 60s));
    ASSERT_EQ(c.request("DELETE", "/v1/leases/" + std::string(held.json().at("lease").as_string())).status, 200);
    waiter.join();
    ASSERT_TRUE(wait_until([&] { return history(c).size() == 2; }, 60s));
    daemon.signal(SIGTERM);
    ASSERT_EQ(daemon.wait_exit(60s), 0);
  }
  DaemonProcess again(config);
  const std::uint16_t port = again.port();
  ASSERT_NE(port, 0);
  HttpClient c(port);
  const json::array kept = history(c);
  ASSERT_EQ(kept.size(), 2u) << json::serialize(kept);
  EXPECT_EQ(kept[0].at("state").as_string(), "resolved");  // newest first
  EXPECT_EQ(kept[1].at("state").as_string(), "firing");
  EXPECT_EQ(kept[1].at("rule").as_string(), "queue_length");
  EXPECT_EQ(kept[1].at("subject").as_string(), "p");
  EXPECT_TRUE(kept[1].at("threshold").is_null());  // the table keeps value and message
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait_exit(60s), 0);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

}  // namespace
}  // namespace poolkeeper::testing
