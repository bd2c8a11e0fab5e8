// The fake paid-session provider (tests/fakes/remote_provider.py) as a child
// process of a test: its port read from its "listening on" line, its control
// and billing routes, its log kept. Restartable on the same port and state
// file (a provider that went away and came back).
//
// Thread-safety: owned by one test; a reader thread collects its log.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/http_client.h"
#include "drivers/process/spawn.h"
#include "testing/wait.h"

namespace poolkeeper::testing {

inline constexpr const char* kFakeProviderKey = "fake-provider-key-0123";

struct FakeProviderOptions {
  std::string state_file{};  // --state: sessions survive a restart
  std::string tls_cert{};    // --tls-cert/--tls-key: https
  std::string tls_key{};
};

class FakeProvider {
 public:
  explicit FakeProvider(FakeProviderOptions options = {}) : options_(std::move(options)) { start(0); }
  ~FakeProvider() { stop(SIGKILL); }
  FakeProvider(const FakeProvider&) = delete;
  FakeProvider& operator=(const FakeProvider&) = delete;

  std::uint16_t port() const { return port_; }
  std::string url() const {
    return std::string(options_.tls_cert.empty() ? "http" : "https") + "://127.0.0.1:" + std::to_string(port_);
  }
  bool running() const { return child_.pid > 0; }

  // POST /_fake/control with these settings; the settings in force.
  boost::json::value control(const boost::json::object& settings) { return call("POST", "/_fake/control", boost::json::serialize(settings)); }
  // GET /_fake/billing.
  boost::json::value billing() { return call("GET", "/_fake/billing"); }
  std::int64_t open_sessions() {
    auto b = billing();
    return b.is_object() ? b.at("open").as_int64() : -1;
  }

  // Stops it (SIGTERM: it saves and exits; SIGKILL: at once) and waits.
  void stop(int sig = SIGTERM) {
    if (child_.pid <= 0) return;
    ::kill(child_.pid, sig);
    int status = 0;
    ::waitpid(child_.pid, &status, 0);
    if (reader_.joinable()) reader_.join();
    ::close(child_.pidfd);
    child_ = {};
    client_.reset();
  }
  // Starts it again on the same port (and state file).
  void restart() {
    stop();
    start(port_);
  }

  std::string log() {
    std::lock_guard lock(mu_);
    return log_;
  }

 private:
  void start(std::uint16_t port) {
    drivers::SpawnOptions o;
    o.argv = {"python3", "-B", std::string(POOLKEEPER_SOURCE_DIR) + "/tests/fakes/remote_provider.py",
              "--port", std::to_string(port), "--api-key", kFakeProviderKey};
    if (!options_.state_file.empty()) o.argv.insert(o.argv.end(), {"--state", options_.state_file});
    if (!options_.tls_cert.empty()) {
      o.argv.insert(o.argv.end(), {"--tls-cert", options_.tls_cert, "--tls-key", options_.tls_key});
    }
    o.environment = drivers::worker_environment({"PATH", "HOME", "LANG"}, {});
    auto child = drivers::spawn(o);
    if (!child) return;
    child_ = *child;
    ::close(child_.stdin_fd);
    // "listening on 127.0.0.1:PORT\n" on stdout, then nothing more.
    std::string line;
    char c = 0;
    while (::read(child_.stdout_fd, &c, 1) == 1 && c != '\n') line += c;
    ::close(child_.stdout_fd);
    reader_ = std::thread([this, fd = child_.stderr_fd] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) {
        std::lock_guard lock(mu_);
        log_.append(buf, static_cast<std::size_t>(n));
      }
      ::close(fd);
    });
    const std::string prefix = "listening on 127.0.0.1:";
    if (line.starts_with(prefix)) port_ = static_cast<std::uint16_t>(std::stoi(line.substr(prefix.size())));
    if (options_.tls_cert.empty()) client_.emplace("http://127.0.0.1:" + std::to_string(port_));
  }

  boost::json::value call(const std::string& method, const std::string& target, const std::string& body = {}) {
    if (!client_) return {};  // https: control through the test's own client
    auto r = client_->call(method, target, body);
    if (!r || r->status != 200) return {};
    boost::json::error_code ec;
    auto v = boost::json::parse(r->body, ec);
    return ec ? boost::json::value() : v;
  }

  FakeProviderOptions options_;
  drivers::Child child_{};
  std::uint16_t port_ = 0;
  std::optional<cli::HttpClient> client_;
  std::thread reader_;
  std::mutex mu_;
  std::string log_;
};

}  // namespace poolkeeper::testing
