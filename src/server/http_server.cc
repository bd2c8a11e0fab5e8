#include "server/http_server.h"

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <array>
#include <cerrno>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "server/event_stream.h"

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;

constexpr auto kWriteTimeout = 30s;
constexpr auto kBodyTimeout = 60s;

bool request_upgrades(const http::request<http::string_body>& req) {
  return beast::iequals(req[http::field::upgrade], "websocket");
}

std::string route_of(std::string_view target) { return std::string(target.substr(0, target.find('?'))); }

http::response<http::string_body> http_response(Response r, unsigned version, bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), version};
  res.set(http::field::server, "poolkeeper");
  res.set(http::field::content_type, r.content_type);
  if (r.retry_after_seconds > 0) res.set(http::field::retry_after, std::to_string(r.retry_after_seconds));
  res.keep_alive(keep_alive);
  res.body() = std::move(r.body);
  res.prepare_payload();
  return res;
}

}  // namespace

struct HttpServer::State : std::enable_shared_from_this<HttpServer::State> {
  State(asio::any_io_executor ex, const ServerConfig& c, Api& a, runtime::Log& l)
      : executor(ex), acceptor(asio::make_strand(ex)), config(c), api(a), log(l) {}

  asio::any_io_executor executor;
  tcp::acceptor acceptor;
  ServerConfig config;
  Api& api;
  runtime::Log& log;
  std::atomic<bool> stopping{false};

  // Connections open now (accepted and not yet finished).
  std::atomic<std::size_t> open{0};
  // Connections waiting for their next request, so stop() can close them.
  std::mutex mu;
  std::unordered_map<std::uint64_t, tcp::socket*> idle;
  std::atomic<std::uint64_t> next_id{1};

  asio::awaitable<void> accept_loop() {
    auto self = shared_from_this();
    while (!stopping.load()) {
      auto connection_strand = asio::make_strand(executor);
      auto [ec, socket] = co_await acceptor.async_accept(connection_strand,
                                                         asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (stopping.load() || ec == asio::error::operation_aborted) break;
        // Out of descriptors or memory: back off instead of spinning.
        log.write(runtime::LogLevel::kWarn, "accept failed", {{"why", ec.message()}});
        asio::steady_timer t(acceptor.get_executor(), 100ms);
        (void)co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
        continue;
      }
      if (open.load() >= config.max_connections) {
        boost::system::error_code ignored;
        socket.close(ignored);  // over the limit: refused
        continue;
      }
      ++open;  // counted here, so a burst of accepts cannot pass the limit
      auto ex = socket.get_executor();
      asio::co_spawn(ex, serve(std::move(socket)), [self](std::exception_ptr e) {
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          self->log.write(runtime::LogLevel::kError, "connection failed", {{"what", x.what()}});
        } catch (...) {
          self->log.write(runtime::LogLevel::kError, "connection failed", {});
        }
      });
    }
  }

  std::size_t connections() const { return open.load(); }

  // While a connection waits for its next request it is idle: stop() may
  // cancel that wait. False when the server is stopping.
  bool enter_idle(std::uint64_t id, tcp::socket* s) {
    std::lock_guard lock(mu);
    if (stopping.load()) return false;
    idle[id] = s;
    return true;
  }
  void leave_idle(std::uint64_t id) {
    std::lock_guard lock(mu);
    idle.erase(id);
  }

  // Counts a connection down and forgets it, however its coroutine ends.
  struct Finished {
    State* state;
    std::uint64_t id;
    ~Finished() {
      state->leave_idle(id);
      --state->open;
    }
  };

  void stop() {
    stopping.store(true);
    asio::post(acceptor.get_executor(), [self = shared_from_this()] {
      boost::system::error_code ignored;
      self->acceptor.close(ignored);
    });
    std::lock_guard lock(mu);
    for (auto& [id, socket] : idle) {
      // Wake its read, on its own strand, so it sees `stopping`. The wait may
      // end first: it is looked up again there (its strand runs the end of
      // the wait and this in turn, never together).
      asio::post(socket->get_executor(), [self = shared_from_this(), id = id] {
        std::lock_guard again(self->mu);
        auto it = self->idle.find(id);
        if (it == self->idle.end()) return;
        boost::system::error_code ignored;
        it->second->cancel(ignored);
      });
    }
  }

  // Completes when the client has gone away (EOF or an error); pipelined
  // bytes are left in the socket for the next request. A readiness report
  // can be stale (the bytes it announced were already read): nothing to
  // peek then means the client is still there.
  static asio::awaitable<void> watch_gone(tcp::socket& socket) {
    for (;;) {
      auto [ec] = co_await socket.async_wait(tcp::socket::wait_read, asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;  // cancelled (the request finished) or the socket failed
      char c;
      const ssize_t n = ::recv(socket.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0) co_return;  // EOF: gone
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;  // stale
        co_return;  // reset: gone
      }
      break;  // a pipelined request: the client is still there
    }
    asio::steady_timer forever(socket.get_executor(), asio::steady_timer::time_point::max());
    (void)co_await forever.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  template <class Body>
  asio::awaitable<bool> send(beast::tcp_stream& stream, http::response<Body>& res) {
    stream.expires_after(kWriteTimeout);
    auto [ec, n] = co_await http::async_write(stream, res, asio::as_tuple(asio::use_awaitable));
    (void)n;
    co_return !ec;
  }

  // Answers a request that will not be read (too large, malformed) and
  // closes. What the client is still sending is read and dropped for a
  // moment (at most kLingerBytes): closing with unread input would reset
  // the connection and lose the answer before the client reads it.
  // `r` by value: a coroutine keeps its parameters, and a reference to a
  // temporary would dangle once the call's full expression ends.
  asio::awaitable<void> reply_and_close(beast::tcp_stream& stream, unsigned version, Response r) {
    auto res = http_response(std::move(r), version, /*keep_alive=*/false);
    auto sending = send(stream, res);
    if (!co_await std::move(sending)) co_return;
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    constexpr std::size_t kLingerBytes = 4u << 20;
    std::array<char, 16384> scratch;
    std::size_t dropped = 0;
    stream.expires_after(2s);
    while (dropped < kLingerBytes) {
      auto [ec, n] = co_await stream.async_read_some(asio::buffer(scratch), asio::as_tuple(asio::use_awaitable));
      if (ec) break;
      dropped += n;
    }
  }

  Response too_large() const {
    return error_response(413, "body_too_large",
                          "the body is larger than " + std::to_string(config.max_body) + " bytes");
  }

  asio::awaitable<void> serve(tcp::socket socket) {
    auto self = shared_from_this();
    beast::tcp_stream stream(std::move(socket));
    const Finished finished{this, next_id++};
    beast::flat_buffer buffer(std::max<std::size_t>(config.max_header, 8192));
    for (bool first = true;; first = false) {
      // Between requests: wait for the first byte of the next one (a new
      // connection gets header_timeout for it, a kept-alive one idle_timeout).
      if (buffer.size() == 0) {
        if (!enter_idle(finished.id, &stream.socket())) break;
        stream.expires_after(first ? config.header_timeout : config.idle_timeout);
        auto [ec, n] = co_await stream.async_read_some(buffer.prepare(1024), asio::as_tuple(asio::use_awaitable));
        leave_idle(finished.id);
        if (ec) break;  // closed, idle too long, or stopping
        buffer.commit(n);
      }
      const TimePoint started = real_clock().now();
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(config.max_header));
      parser.body_limit(config.max_body);
      stream.expires_after(config.header_timeout);
      auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser,
                                                        asio::as_tuple(asio::use_awaitable));
      (void)hn;
      if (hec) {
        std::optional<Response> answer;
        if (hec == http::error::body_limit) {
          answer = too_large();  // a declared length over the limit: refused without reading it
        } else if (hec == http::error::header_limit) {
          answer = error_response(431, "header_too_large",
                                  "request headers are larger than " + std::to_string(config.max_header) +
                                      " bytes");
        } else if (hec != beast::error::timeout && hec != http::error::end_of_stream &&
                   hec != asio::error::eof && hec != asio::error::connection_reset &&
                   hec != asio::error::operation_aborted) {
          answer = error_response(400, "bad_request", "malformed request: " + hec.message());
        }
        if (answer) {
          auto replying = reply_and_close(stream, 11, std::move(*answer));
          co_await std::move(replying);
        }
        break;
      }
      const unsigned version = parser.get().version();
      stream.expires_after(kBodyTimeout);
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
      (void)bn;
      if (bec) {
        if (bec == http::error::body_limit) {  // a chunked body over the limit
          auto replying = reply_and_close(stream, version, too_large());
          co_await std::move(replying);
        }
        break;
      }
      stream.expires_never();
      http::request<http::string_body> req = parser.release();
      const bool upgrade = request_upgrades(req);
      Request request{.method = std::string(req.method_string()),
                      .target = std::string(req.target()),
                      .authorization = std::string(req[http::field::authorization]),
                      .body = std::move(req.body()),
                      .last_event_id = std::string(req["Last-Event-ID"]),
                      .websocket = upgrade};
      // The request runs until it answers or the client goes away (which
      // cancels it: a waiting acquire leaves its queue).
      auto handling = api.handle(std::move(request));
      auto watching = watch_gone(stream.socket());
      auto racing = std::move(handling) || std::move(watching);
      auto outcome = co_await std::move(racing);
      if (outcome.index() == 1) {
        log.write(runtime::LogLevel::kInfo, "request",
                  {{"method", std::string_view(req.method_string())},
                   {"route", route_of(req.target())},
                   {"status", "499"},
                   {"why", "the client went away"}});
        break;
      }
      Response r = std::get<0>(std::move(outcome));
      const bool again = req.keep_alive() && !stopping.load();
      const std::string latency = std::to_string(
          std::chrono::duration_cast<std::chrono::microseconds>(real_clock().now() - started).count());
      log.write(runtime::LogLevel::kInfo, "request",
                {{"method", std::string_view(req.method_string())},
                 {"route", route_of(req.target())},
                 {"status", std::to_string(r.status)},
                 {"tenant", r.tenant},
                 {"latency_us", latency}});
      if (r.events) {
        // An event stream: the connection is the stream's until it ends.
        const StreamSettings settings{.heartbeat = config.event_heartbeat, .write_timeout = kWriteTimeout};
        std::string why;
        if (upgrade) {
          auto streaming = stream_websocket(std::move(stream), std::move(req), std::move(r.events), settings);
          why = co_await std::move(streaming);
          log.write(runtime::LogLevel::kInfo, "event stream ended", {{"via", "websocket"}, {"why", why}});
          co_return;  // the socket went with the WebSocket
        }
        auto streaming = stream_sse(stream, version, std::move(r.events), settings);
        auto watching = watch_gone(stream.socket());
        auto racing = std::move(streaming) || std::move(watching);
        auto outcome = co_await std::move(racing);
        why = outcome.index() == 0 ? std::get<0>(std::move(outcome)) : "the client went away";
        log.write(runtime::LogLevel::kInfo, "event stream ended", {{"via", "sse"}, {"why", why}});
        break;
      }
      std::function<void()> undelivered = std::move(r.undelivered);
      auto res = http_response(std::move(r), version, again);
      auto sending = send(stream, res);
      const bool sent = co_await std::move(sending);
      if (!sent && undelivered) undelivered();
      if (!sent || !again) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.socket().close(ignored);
  }
};

HttpServer::HttpServer(asio::any_io_executor executor, const ServerConfig& config, Api& api,
                       runtime::Log& log)
    : state_(std::make_shared<State>(executor, config, api, log)) {}

HttpServer::~HttpServer() { stop(); }

std::expected<std::uint16_t, Error> HttpServer::listen() {
  boost::system::error_code ec;
  const std::string host = state_->config.host == "localhost" ? "127.0.0.1" : state_->config.host;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig,
                                 "server.listen: \"" + state_->config.host + "\" is not an IP address"));
  }
  const tcp::endpoint endpoint(address, state_->config.port);
  tcp::acceptor& a = state_->acceptor;
  auto failed = [&](const char* step) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig,
                                 std::string("server.listen: cannot ") + step + " " + host + ":" +
                                     std::to_string(state_->config.port) + ": " + ec.message()));
  };
  if (a.open(endpoint.protocol(), ec); ec) return failed("open");
  if (a.set_option(asio::socket_base::reuse_address(true), ec); ec) return failed("set up");
  if (a.bind(endpoint, ec); ec) return failed("bind");
  if (a.listen(asio::socket_base::max_listen_connections, ec); ec) return failed("listen on");
  return a.local_endpoint().port();
}

void HttpServer::start() {
  asio::co_spawn(state_->acceptor.get_executor(), state_->accept_loop(), asio::detached);
}

void HttpServer::stop() { state_->stop(); }

std::size_t HttpServer::connections() const { return state_->connections(); }

}  // namespace poolkeeper::server
