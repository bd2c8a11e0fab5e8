// HttpServer: HTTP/1.1 with keep-alive over Boost.Beast, in front of an Api.
//
// One coroutine per connection, on its own strand. Each request is bounded
// before it is read: headers above max_header get 431, a declared body above
// max_body gets 413 without being read, malformed requests get 400, and a
// client that does not send its headers within header_timeout (or leaves a
// keep-alive connection idle past idle_timeout) is disconnected. While a
// request is being handled, the connection is watched: a client that goes
// away cancels its request (a waiting acquire leaves the queue). One log line
// per request: method, route, status, tenant, latency; never a token.
//
// Beast and the sockets stay inside http_server.cc.
//
// Thread-safety: listen() and start() once, from one thread; stop() from any
// thread; the io_context may run on several threads.
//
//   HttpServer server(io.get_executor(), options, api, log);
//   auto port = server.listen();   // the bound port (useful with port 0)
//   server.start();
#pragma once

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>

#include "poolkeeper/error.h"
#include "runtime/log.h"
#include "server/api.h"
#include "server/config.h"

namespace poolkeeper::server {

class HttpServer {
 public:
  HttpServer(boost::asio::any_io_executor executor, const ServerConfig& config, Api& api,
             runtime::Log& log);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; returns the port (the chosen one when configured 0).
  std::expected<std::uint16_t, Error> listen();
  // Starts accepting connections.
  void start();
  // Stops accepting and closes idle connections; requests in progress finish
  // and their connections close after the response.
  void stop();
  // Connections open now.
  std::size_t connections() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace poolkeeper::server
