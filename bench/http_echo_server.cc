// http_echo_server: the HTTP floor for scripts/bench_http.sh (not a Google
// Benchmark). A bare Boost.Beast HTTP/1.1 keep-alive server written like the
// daemon's (src/server/http_server.cc: one coroutine per connection on its own
// strand, the same io_context thread count) but with nothing else: no
// routing, no timeouts, no logging, no watching for clients that go away.
// Every request, whatever its method and target, gets the same small JSON
// body, shaped like the daemon's answer to a lease.
//
//   http_echo_server [--port N]    (0, the default: any free port)
//
// Prints `port N` on stdout once it listens. SIGINT or SIGTERM stops it.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// The size and shape of the daemon's 201 answer to POST /v1/pools/echo/leases.
constexpr std::string_view kBody =
    R"({"lease":"echo.8c4e1f2a9b3d7065","pool":"echo","session":137,)"
    R"("expires_at":"2026-01-01T12:00:00.000Z","connect":"","owner":"bench-http-floor"})";

asio::awaitable<void> serve(tcp::socket socket) {
  beast::flat_buffer buffer(8192);
  for (;;) {
    http::request<http::string_body> req;
    auto [rec, rn] = co_await http::async_read(socket, buffer, req, asio::as_tuple(asio::use_awaitable));
    (void)rn;
    if (rec) break;  // closed, reset or malformed: nothing to answer
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::server, "http_echo_server");
    res.set(http::field::content_type, "application/json");
    res.keep_alive(req.keep_alive());
    res.body() = kBody;
    res.prepare_payload();
    auto [wec, wn] = co_await http::async_write(socket, res, asio::as_tuple(asio::use_awaitable));
    (void)wn;
    if (wec || !res.keep_alive()) break;
  }
  boost::system::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_send, ignored);
  socket.close(ignored);
}

asio::awaitable<void> accept_loop(tcp::acceptor& acceptor) {
  auto ex = co_await asio::this_coro::executor;
  for (;;) {
    auto [ec, socket] =
        co_await acceptor.async_accept(asio::make_strand(ex), asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      continue;  // out of descriptors and the like: try again
    }
    auto connection = socket.get_executor();
    asio::co_spawn(connection, serve(std::move(socket)), asio::detached);
  }
}

int usage() {
  std::fputs("usage: http_echo_server [--port N]\n", stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  unsigned short port = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--port" && i + 1 < argc) {
      const std::string_view v = argv[++i];
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), port);
      if (ec != std::errc() || end != v.data() + v.size()) return usage();
    } else {
      return usage();
    }
  }

  // The daemon's thread count (src/server/daemon.cc).
  const unsigned threads = std::max(2u, std::thread::hardware_concurrency());
  asio::io_context io(static_cast<int>(threads));

  tcp::acceptor acceptor(asio::make_strand(io));
  const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
  boost::system::error_code ec;
  if (acceptor.open(endpoint.protocol(), ec); !ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::fprintf(stderr, "http_echo_server: cannot listen on 127.0.0.1:%u: %s\n", port, ec.message().c_str());
    return 1;
  }
  std::printf("port %u\n", acceptor.local_endpoint().port());
  std::fflush(stdout);

  asio::co_spawn(acceptor.get_executor(), accept_loop(acceptor), asio::detached);

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) { io.stop(); });

  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool) t.join();
  return 0;
}
