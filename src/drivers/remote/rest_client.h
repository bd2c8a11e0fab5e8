// RestClient: one HTTP/1.1 request at a time over http:// or https://, as a
// coroutine, for the remote driver's calls to a provider's REST API. Beast,
// Asio's SSL and OpenSSL stay inside rest_client.cc.
//
// Each call opens its own connection and closes it after the answer (a
// provider is called when a session starts, is checked or stops: seconds
// apart, not a hot path). https verifies the server's certificate against the
// system's trust store (or `ca_file`) and its host name, and sends SNI. A call
// ends by its timeout whatever it is waiting for (DNS, connect, TLS, write,
// read). An answer's body is capped (`max_body`): past it the call fails.
//
// Thread-safety: call() from any coroutine; the TLS context is shared
// read-only once created.
//
//   auto client = RestClient::create({});
//   auto r = co_await (*client)->call({.method = "GET", .url = "https://api.example.com/v1/x",
//                                      .headers = {{"Authorization", "Bearer ..."}}});
//   if (r && r->status == 200) ...
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <expected>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "poolkeeper/clock.h"

namespace poolkeeper::drivers {

struct Url {
  bool tls = false;
  std::string host;
  std::string port;    // "80" / "443" unless given
  std::string target;  // path and query, "/" at least
};

// "http://host[:port][/path]" or "https://..."; IPv6 hosts in brackets.
std::expected<Url, std::string> parse_url(std::string_view text);

struct RestRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers{};
  std::string body{};  // sent as application/json when not empty (or for POST)
  Duration timeout = std::chrono::seconds(10);
};

struct RestResponse {
  int status = 0;
  std::string body;
};

// Why a call failed, and whether the request may have reached the server.
struct RestError {
  std::string message;
  bool sent = false;       // the request was written (in whole or part): it may have taken effect
  bool timed_out = false;  // the call's timeout ended it
};

struct RestClientOptions {
  std::string ca_file{};  // PEM bundle trusted besides the system's; empty: the system's only
  std::size_t max_body = 1u << 20;
  std::string user_agent = "poolkeeper";
};

class RestClient {
 public:
  static std::expected<std::unique_ptr<RestClient>, std::string> create(RestClientOptions options);
  ~RestClient();
  RestClient(const RestClient&) = delete;
  RestClient& operator=(const RestClient&) = delete;

  boost::asio::awaitable<std::expected<RestResponse, RestError>> call(RestRequest request);

 private:
  struct Impl;
  explicit RestClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolkeeper::drivers
