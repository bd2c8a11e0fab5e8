// HTTP for end-to-end tests of the daemon: the CLI's client (keep-alive,
// one token per request) with JSON helpers, and a raw connection for tests
// that misbehave on purpose.
//
// Thread-safety: one client per thread.
//
//   HttpClient c(port);
//   HttpResult r = c.request("POST", "/v1/pools/py/leases", R"({"timeout_ms":100})", token);
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <cstdint>
#include <map>
#include <string>

#include "cli/http_client.h"

namespace poolkeeper::testing {

struct HttpResult {
  int status = 0;  // 0: no answer (the connection failed)
  std::string body;
  std::map<std::string, std::string> headers;

  boost::json::value json() const {
    boost::json::error_code ec;
    boost::json::value v = boost::json::parse(body, ec);
    return ec ? boost::json::value() : v;
  }
  // The error code of an error answer ("acquire_timeout").
  std::string error_code() const {
    const auto v = json();
    if (!v.is_object() || !v.as_object().contains("error")) return {};
    return std::string(v.at("error").at("code").as_string());
  }
};

class HttpClient {
 public:
  explicit HttpClient(std::uint16_t port) : client_("http://127.0.0.1:" + std::to_string(port)) {}

  HttpResult request(const std::string& method, const std::string& target,
                     const std::string& body = {}, const std::string& token = {}) {
    client_.set_token(token);
    auto r = client_.call(method, target, body);
    if (!r) return {};
    return HttpResult{.status = r->status, .body = std::move(r->body), .headers = std::move(r->headers)};
  }

 private:
  cli::HttpClient client_;
};

// A plain TCP connection to the daemon, for bytes no client would send.
class RawConnection {
 public:
  explicit RawConnection(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  int fd() const { return fd_; }
  bool send_all(const std::string& bytes) {
    return fd_ >= 0 &&
           ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }

 private:
  int fd_;
};

}  // namespace poolkeeper::testing
