#include "cli/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>

#include "poolkeeper/clock.h"

namespace poolkeeper::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct HttpClient::Impl {
  std::string host;
  std::string port;
  std::string token;
  asio::io_context io;
  tcp::socket socket{io};
  beast::flat_buffer buffer;
  std::string url;

  std::chrono::milliseconds timeout{0};  // per call; 0: none
  TimePoint deadline{};

  std::string timed_out() const {
    return "no answer within " + std::to_string(timeout.count()) + " ms";
  }

  // Runs the operation just started until it completes (true) or the call's
  // deadline passes (false: the connection is closed, the operation ends).
  bool run(const bool& done) {
    io.restart();
    if (timeout.count() == 0) {
      io.run();
    } else {
      const Duration left = deadline - real_clock().now();
      if (left > Duration{0}) io.run_for(left);
    }
    if (done) return true;
    boost::system::error_code ignored;
    socket.close(ignored);
    io.restart();
    io.run();  // the cancelled operation's handler
    return false;
  }

  std::expected<void, std::string> connect() {
    boost::system::error_code ec;
    tcp::resolver resolver(io);
    auto endpoints = resolver.resolve(host, port, ec);
    if (ec) return std::unexpected("cannot resolve " + host + ": " + ec.message());
    bool done = false;
    asio::async_connect(socket, endpoints, [&](boost::system::error_code e, const tcp::endpoint&) {
      ec = e;
      done = true;
    });
    if (!run(done)) return std::unexpected("cannot reach the daemon at " + url + ": " + timed_out());
    if (ec) return std::unexpected("cannot reach the daemon at " + url + ": " + ec.message());
    buffer.clear();
    return {};
  }

  // One attempt; `retry` says whether sending it again is safe.
  std::expected<HttpReply, std::string> once(const std::string& method, const std::string& target,
                                             const std::string& body, bool& retry) {
    retry = false;
    if (!socket.is_open()) {
      if (auto ok = connect(); !ok) return std::unexpected(ok.error());
    }
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, host);
    req.set(http::field::user_agent, "poolkeeper-cli");
    if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    req.keep_alive(true);
    boost::system::error_code ec;
    bool done = false;
    http::async_write(socket, req, [&](boost::system::error_code e, std::size_t) {
      ec = e;
      done = true;
    });
    if (!run(done)) return std::unexpected(timed_out());  // may have been handled: no retry
    if (ec) {
      socket.close(ec);
      retry = true;  // not sent: nothing was handled
      return std::unexpected("the connection failed: " + ec.message());
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    done = false;
    http::async_read(socket, buffer, parser, [&](boost::system::error_code e, std::size_t) {
      ec = e;
      done = true;
    });
    if (!run(done)) return std::unexpected(timed_out());
    if (ec) {
      retry = method == "GET" && !parser.got_some();
      socket.close(ec);
      return std::unexpected("the connection failed: " + ec.message());
    }
    auto res = parser.release();
    if (!res.keep_alive()) socket.close(ec);
    HttpReply reply{.status = static_cast<int>(res.result_int()), .body = std::move(res.body()), .headers = {}};
    for (const auto& f : res) reply.headers[std::string(f.name_string())] = std::string(f.value());
    return reply;
  }
};

HttpClient::HttpClient(std::string url, std::string token) : impl_(std::make_unique<Impl>()) {
  impl_->url = url;
  impl_->token = std::move(token);
  std::string rest = url.starts_with("http://") ? url.substr(7) : url;
  rest = rest.substr(0, rest.find('/'));
  const std::size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    impl_->host = rest.substr(0, colon);
    impl_->port = rest.substr(colon + 1);
  } else if (colon != std::string::npos && rest.rfind(']') < colon) {
    impl_->host = rest.substr(1, rest.rfind(']') - 1);
    impl_->port = rest.substr(colon + 1);
  } else {
    impl_->host = rest;
    impl_->port = "80";
  }
}

HttpClient::~HttpClient() = default;

std::expected<HttpReply, std::string> HttpClient::call(const std::string& method,
                                                       const std::string& target,
                                                       const std::string& body) {
  impl_->deadline = real_clock().now() + impl_->timeout;
  const bool reused = impl_->socket.is_open();
  bool retry = false;
  auto r = impl_->once(method, target, body, retry);
  if (!r && reused && retry) r = impl_->once(method, target, body, retry);
  return r;
}

void HttpClient::set_token(std::string token) { impl_->token = std::move(token); }

void HttpClient::set_timeout(std::chrono::milliseconds timeout) { impl_->timeout = timeout; }

void HttpClient::close() {
  boost::system::error_code ec;
  impl_->socket.close(ec);
}

}  // namespace poolkeeper::cli
