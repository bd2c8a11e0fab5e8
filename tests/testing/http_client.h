// A blocking HTTP/1.1 client for end-to-end tests of the daemon (Beast,
// keep-alive), and raw sockets for tests that misbehave on purpose.
//
// Thread-safety: one client per thread.
//
//   HttpClient c(port);
//   HttpResult r = c.request("POST", "/v1/pools/py/leases", R"({"timeout_ms":100})", token);
#pragma once

#include <signal.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace poolkeeper::testing {

struct HttpResult {
  int status = 0;  // 0: no answer (the connection closed)
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
  explicit HttpClient(std::uint16_t port) : port_(port), socket_(io_) {
    // A daemon that closes a connection must fail a write, not kill the test.
    ::signal(SIGPIPE, SIG_IGN);
  }

  HttpResult request(const std::string& method, const std::string& target,
                     const std::string& body = {}, const std::string& token = {}) {
    namespace http = boost::beast::http;
    if (!socket_.is_open() && !connect()) return {};
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    req.keep_alive(true);
    boost::system::error_code ec;
    http::write(socket_, req, ec);
    HttpResult r;
    if (ec) {
      socket_.close(ec);
      return r;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    http::read(socket_, buffer_, parser, ec);
    if (ec) {
      socket_.close(ec);
      return r;
    }
    auto res = parser.release();
    r.status = static_cast<int>(res.result_int());
    r.body = res.body();
    for (const auto& f : res) r.headers[std::string(f.name_string())] = std::string(f.value());
    if (!res.keep_alive()) socket_.close(ec);
    return r;
  }

  boost::asio::ip::tcp::socket& socket() {
    if (!socket_.is_open()) connect();
    return socket_;
  }
  void close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

 private:
  bool connect() {
    boost::system::error_code ec;
    socket_.connect({boost::asio::ip::make_address("127.0.0.1"), port_}, ec);
    buffer_.clear();
    if (ec) socket_.close(ec);
    return socket_.is_open();
  }

  std::uint16_t port_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
  boost::beast::flat_buffer buffer_;
};

}  // namespace poolkeeper::testing
