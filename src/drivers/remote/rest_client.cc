#include "drivers/remote/rest_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <algorithm>
#include <optional>
#include <variant>

namespace poolkeeper::drivers {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using namespace asio::experimental::awaitable_operators;

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string ssl_error_text(const error_code& ec) {
  std::string text = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    // OpenSSL's reason string ("certificate verify failed") says more.
    if (const char* reason = ::ERR_reason_error_string(static_cast<unsigned long>(ec.value()))) {
      text = reason;
    }
  }
  return text;
}

}  // namespace

std::expected<Url, std::string> parse_url(std::string_view text) {
  Url url;
  std::string_view rest;
  if (text.starts_with("http://")) {
    rest = text.substr(7);
  } else if (text.starts_with("https://")) {
    url.tls = true;
    rest = text.substr(8);
  } else {
    return std::unexpected("\"" + std::string(text) + "\" is not an http:// or https:// URL");
  }
  const std::size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (url.target.front() == '?') url.target.insert(0, "/");
  if (authority.find('@') != std::string_view::npos) {
    return std::unexpected("\"" + std::string(text) + "\": credentials in a URL are not supported");
  }
  std::string_view port;
  if (authority.starts_with('[')) {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::unexpected("\"" + std::string(text) + "\": unclosed [");
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(':')) return std::unexpected("\"" + std::string(text) + "\": bad port");
      port = after.substr(1);
    }
  } else {
    const std::size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (url.host.empty()) return std::unexpected("\"" + std::string(text) + "\" has no host");
  if (!port.empty() || authority.ends_with(':')) {
    if (!all_digits(port) || port.size() > 5 || std::stoi(std::string(port)) == 0 ||
        std::stoi(std::string(port)) > 65535) {
      return std::unexpected("\"" + std::string(text) + "\": the port must be 1 to 65535");
    }
    url.port = std::string(port);
  } else {
    url.port = url.tls ? "443" : "80";
  }
  for (char c : url.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return std::unexpected("\"" + std::string(text) + "\": a URL may not hold spaces or control characters");
    }
  }
  return url;
}

struct RestClient::Impl {
  RestClientOptions options;
  std::optional<ssl::context> tls;

  // Writes the request and reads the answer on a connected stream (plain or TLS).
  template <class Stream>
  asio::awaitable<std::expected<RestResponse, RestError>> exchange(
      Stream& stream, const http::request<http::string_body>& req, const std::string& timed_out) {
    auto why = [&timed_out](const error_code& ec) {
      return ec == beast::error::timeout ? timed_out : ssl_error_text(ec);
    };
    auto [wec, written] = co_await http::async_write(stream, req, kTuple);
    (void)written;
    if (wec) {
      co_return std::unexpected(
          RestError{"cannot send the request: " + why(wec), true, wec == beast::error::timeout});
    }
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(options.max_body);
    parser.header_limit(64 * 1024);
    auto [rec, read] = co_await http::async_read(stream, buffer, parser, kTuple);
    (void)read;
    if (rec == http::error::body_limit) {
      co_return std::unexpected(RestError{
          "the answer's body is over " + std::to_string(options.max_body) + " bytes", true});
    }
    if (rec) co_return std::unexpected(RestError{"no answer: " + why(rec), true, rec == beast::error::timeout});
    auto res = parser.release();
    co_return RestResponse{.status = static_cast<int>(res.result_int()), .body = std::move(res.body())};
  }
};

RestClient::RestClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RestClient::~RestClient() = default;

std::expected<std::unique_ptr<RestClient>, std::string> RestClient::create(RestClientOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  try {
    impl->tls.emplace(ssl::context::tls_client);
    impl->tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                           ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                           ssl::context::no_tlsv1_1);
    impl->tls->set_default_verify_paths();
    if (!impl->options.ca_file.empty()) impl->tls->load_verify_file(impl->options.ca_file);
    impl->tls->set_verify_mode(ssl::verify_peer);
  } catch (const boost::system::system_error& e) {
    return std::unexpected("cannot set up TLS" +
                           (impl->options.ca_file.empty() ? std::string()
                                                          : " with ca_file " + impl->options.ca_file) +
                           ": " + ssl_error_text(e.code()));
  }
  return std::unique_ptr<RestClient>(new RestClient(std::move(impl)));
}

asio::awaitable<std::expected<RestResponse, RestError>> RestClient::call(RestRequest request) {
  auto url = parse_url(request.url);
  if (!url) co_return std::unexpected(RestError{url.error(), false});
  auto ex = co_await asio::this_coro::executor;
  const auto deadline = std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          (real_clock().now() + request.timeout).time_since_epoch()));
  const std::string timed_out =
      "no answer within " +
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(request.timeout).count()) +
      " ms";

  // DNS has no deadline of its own: race it against one.
  tcp::resolver resolver(ex);
  asio::steady_timer timer(ex, deadline);
  auto resolving = resolver.async_resolve(url->host, url->port, kTuple);
  auto expiring = timer.async_wait(kTuple);
  auto raced = co_await (std::move(resolving) || std::move(expiring));
  if (raced.index() == 1) {
    co_return std::unexpected(RestError{"cannot resolve " + url->host + ": " + timed_out, false, true});
  }
  auto [rec, endpoints] = std::get<0>(std::move(raced));
  if (rec) co_return std::unexpected(RestError{"cannot resolve " + url->host + ": " + rec.message(), false});

  http::request<http::string_body> req{http::string_to_verb(request.method), url->target, 11};
  if (req.method() == http::verb::unknown) {
    co_return std::unexpected(RestError{"unknown HTTP method " + request.method, false});
  }
  const bool default_port = url->port == (url->tls ? "443" : "80");
  req.set(http::field::host, default_port ? url->host : url->host + ":" + url->port);
  req.set(http::field::user_agent, impl_->options.user_agent);
  req.set(http::field::accept, "application/json");
  req.set(http::field::connection, "close");
  for (const auto& [name, value] : request.headers) req.set(name, value);
  if (!request.body.empty() || req.method() == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = std::move(request.body);
  }
  req.prepare_payload();

  beast::tcp_stream tcp_stream(ex);
  tcp_stream.expires_at(deadline);
  auto [cec, endpoint] = co_await tcp_stream.async_connect(endpoints, kTuple);
  (void)endpoint;
  if (cec == beast::error::timeout) {
    co_return std::unexpected(
        RestError{"cannot connect to " + url->host + ":" + url->port + ": " + timed_out, false, true});
  }
  if (cec) {
    co_return std::unexpected(RestError{"cannot connect to " + url->host + ":" + url->port + ": " + cec.message(), false});
  }

  std::expected<RestResponse, RestError> result;
  if (!url->tls) {
    result = co_await impl_->exchange(tcp_stream, req, timed_out);
    error_code ignored;
    tcp_stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  } else {
    beast::ssl_stream<beast::tcp_stream> tls_stream(std::move(tcp_stream), *impl_->tls);
    if (!::SSL_set_tlsext_host_name(tls_stream.native_handle(), url->host.c_str())) {
      co_return std::unexpected(RestError{"cannot set the TLS server name " + url->host, false});
    }
    tls_stream.set_verify_callback(ssl::host_name_verification(url->host));
    auto [hec] = co_await tls_stream.async_handshake(ssl::stream_base::client, kTuple);
    if (hec) {
      co_return std::unexpected(RestError{
          "TLS handshake with " + url->host + " failed: " +
              (hec == beast::error::timeout ? timed_out : ssl_error_text(hec)),
          false, hec == beast::error::timeout});
    }
    result = co_await impl_->exchange(tls_stream, req, timed_out);
    error_code ignored;
    beast::get_lowest_layer(tls_stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
  }
  co_return result;
}

}  // namespace poolkeeper::drivers
