#include "server/event_stream.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>

#include <variant>

namespace poolkeeper::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using namespace asio::experimental::awaitable_operators;

// Wakes a stream waiting for events: the subscription's waker posts a
// cancel of the wait to the stream's strand. Taking the events and starting
// the wait happen in one step on that strand, so a wake is never lost: it
// runs either before the take (which then sees the events) or during the wait.
class Bell {
 public:
  Bell(asio::any_io_executor ex, monitor::Subscription& events)
      : timer_(std::make_shared<asio::steady_timer>(ex)), events_(events) {
    events.set_waker([weak = std::weak_ptr<asio::steady_timer>(timer_), ex] {
      asio::post(ex, [weak] {
        if (auto t = weak.lock()) t->cancel();
      });
    });
  }
  ~Bell() { events_.set_waker({}); }
  Bell(const Bell&) = delete;
  Bell& operator=(const Bell&) = delete;

  // True when woken (events arrived or the subscription ended); false when
  // `quiet` passed without either.
  asio::awaitable<bool> wait(Duration quiet) {
    timer_->expires_after(quiet);
    auto [ec] = co_await timer_->async_wait(asio::as_tuple(asio::use_awaitable));
    co_return ec == asio::error::operation_aborted;
  }

 private:
  std::shared_ptr<asio::steady_timer> timer_;
  monitor::Subscription& events_;
};

std::string closed_event(const std::string& why) {
  return "{\"type\":\"stream_closed\",\"reason\":" + boost::json::serialize(boost::json::string(why)) + "}";
}

std::string sse_text(const std::vector<monitor::LiveEvent>& batch) {
  std::string text;
  for (const monitor::LiveEvent& e : batch) {
    if (e.id != 0) text += "id: " + std::to_string(e.id) + "\n";
    text += "data: ";
    text += e.json;
    text += "\n\n";
  }
  return text;
}

}  // namespace

asio::awaitable<std::string> stream_sse(beast::tcp_stream& stream, unsigned version,
                                        std::shared_ptr<monitor::Subscription> events, StreamSettings settings) {
  boost::system::error_code ignored;
  stream.socket().set_option(asio::socket_base::send_buffer_size(settings.send_buffer), ignored);
  const bool chunked = version >= 11;  // HTTP/1.0: the body ends when the connection does
  http::response<http::empty_body> res{http::status::ok, version};
  res.set(http::field::server, "poolkeeper");
  res.set(http::field::content_type, "text/event-stream");
  res.set(http::field::cache_control, "no-cache");
  res.set("X-Accel-Buffering", "no");
  res.keep_alive(false);
  if (chunked) res.chunked(true);
  http::response_serializer<http::empty_body> serializer{res};
  stream.expires_after(settings.write_timeout);
  auto [hec, hn] = co_await http::async_write_header(stream, serializer, asio::as_tuple(asio::use_awaitable));
  (void)hn;
  if (hec) co_return "write failed: " + hec.message();

  // Every awaitable and its arguments are named before the co_await (g++ 12
  // may free a temporary in a co_await expression twice; docs/development.md).
  std::string failed;
  auto write = [&](std::string text, Duration limit) -> asio::awaitable<bool> {
    stream.expires_after(limit);
    boost::system::error_code ec;
    if (chunked) {
      const auto chunk = http::make_chunk(asio::buffer(text));
      auto writing = asio::async_write(stream, chunk, asio::as_tuple(asio::use_awaitable));
      std::tie(ec, std::ignore) = co_await std::move(writing);
    } else {
      auto writing = asio::async_write(stream, asio::buffer(text), asio::as_tuple(asio::use_awaitable));
      std::tie(ec, std::ignore) = co_await std::move(writing);
    }
    if (ec) failed = ec == beast::error::timeout ? "a write did not complete in time" : "write failed: " + ec.message();
    co_return !ec;
  };

  Bell bell(co_await asio::this_coro::executor, *events);
  auto opening = write("retry: 3000\n: poolkeeper events\n\n", settings.write_timeout);
  if (!co_await std::move(opening)) co_return failed;
  for (;;) {
    std::vector<monitor::LiveEvent> batch = events->take();
    if (!batch.empty()) {
      auto writing = write(sse_text(batch), settings.write_timeout);
      if (!co_await std::move(writing)) co_return failed;
      continue;
    }
    if (std::optional<std::string> why = events->ended()) {
      // What arrived before the end, then the reason, then the end of the
      // body, within a short limit: the daemon may be stopping.
      auto closing = write(sse_text(events->take()) + "data: " + closed_event(*why) + "\n\n", settings.close_timeout);
      if (co_await std::move(closing) && chunked) {
        stream.expires_after(settings.close_timeout);
        const auto last = http::make_chunk_last();
        auto ending = asio::async_write(stream, last, asio::as_tuple(asio::use_awaitable));
        (void)co_await std::move(ending);
      }
      co_return *why;
    }
    auto waiting = bell.wait(settings.heartbeat);
    if (!co_await std::move(waiting)) {
      auto beat = write(": ping\n\n", settings.write_timeout);
      if (!co_await std::move(beat)) co_return failed;
    }
  }
}

asio::awaitable<std::string> stream_websocket(beast::tcp_stream stream, http::request<http::string_body> request,
                                              std::shared_ptr<monitor::Subscription> events,
                                              StreamSettings settings) {
  stream.expires_never();  // the WebSocket keeps its own time
  boost::system::error_code ignored;
  stream.socket().set_option(asio::socket_base::send_buffer_size(settings.send_buffer), ignored);
  websocket::stream<beast::tcp_stream> ws(std::move(stream));
  websocket::stream_base::timeout timeout{};
  timeout.handshake_timeout = settings.write_timeout;
  timeout.idle_timeout = settings.heartbeat * 2;  // a ping after half of it; closed if nothing comes back
  timeout.keep_alive_pings = true;
  ws.set_option(timeout);
  ws.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "poolkeeper"); }));
  ws.read_message_max(64 * 1024);
  auto [aec] = co_await ws.async_accept(request, asio::as_tuple(asio::use_awaitable));
  if (aec) co_return "handshake failed: " + aec.message();
  ws.text(true);

  // The client has nothing to say: its messages are read and dropped, which
  // also answers its pings and sees its close.
  auto reading = [&]() -> asio::awaitable<std::string> {
    beast::flat_buffer buffer;
    for (;;) {
      auto [ec, n] = co_await ws.async_read(buffer, asio::as_tuple(asio::use_awaitable));
      (void)n;
      if (ec == websocket::error::closed) co_return "the client closed";
      if (ec == beast::error::timeout) co_return "the client stopped answering pings";
      if (ec) co_return "the client went away: " + ec.message();
      buffer.consume(buffer.size());
    }
  };
  auto writing = [&]() -> asio::awaitable<std::string> {
    Bell bell(co_await asio::this_coro::executor, *events);
    for (;;) {
      std::vector<monitor::LiveEvent> batch = events->take();
      std::optional<std::string> why;
      if (batch.empty()) {
        why = events->ended();
        if (why) batch = events->take();
      }
      for (const monitor::LiveEvent& e : batch) {
        auto writing = ws.async_write(asio::buffer(e.json), asio::as_tuple(asio::use_awaitable));
        auto [ec, n] = co_await std::move(writing);
        (void)n;
        if (ec) co_return "write failed: " + ec.message();
      }
      if (why) {
        const bool slow = why->starts_with("slow consumer");
        websocket::close_reason reason(slow ? websocket::close_code::policy_error : websocket::close_code::going_away,
                                       why->substr(0, 120));  // a close frame holds at most 123 bytes of reason
        // The client's answer to the close is waited for briefly: the daemon may be stopping.
        websocket::stream_base::timeout closing_timeout = timeout;
        closing_timeout.handshake_timeout = settings.close_timeout;
        ws.set_option(closing_timeout);
        auto closing = ws.async_close(reason, asio::as_tuple(asio::use_awaitable));
        (void)co_await std::move(closing);
        co_return *why;
      }
      if (batch.empty()) {
        auto waiting = bell.wait(settings.heartbeat);  // Beast sends the pings
        (void)co_await std::move(waiting);
      }
    }
  };
  auto racing = reading() || writing();
  auto outcome = co_await std::move(racing);
  co_return std::visit([](std::string& s) { return std::move(s); }, outcome);
}

}  // namespace poolkeeper::server
