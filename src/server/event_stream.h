// Streams a subscription's events to a client: Server-Sent Events on the
// HTTP connection (GET /v1/events), or WebSocket messages once the request
// has been upgraded (/v1/ws). docs/events.md has the formats.
//
// Each event is written as it arrives; a quiet stream gets a heartbeat
// (an SSE comment, a WebSocket ping). The stream ends when the client goes
// away, a write does not complete within the write timeout, or the
// subscription ends (the client fell too far behind, the daemon stops):
// then what was queued is flushed and the reason is sent last (an SSE
// `stream_closed` event, a WebSocket close frame with the reason).
//
// Beast's WebSocket stays inside event_stream.cc.
//
// Thread-safety: each call runs on its connection's strand.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <memory>
#include <string>

#include "monitor/event_bus.h"
#include "poolkeeper/clock.h"

namespace poolkeeper::server {

struct StreamSettings {
  Duration heartbeat = std::chrono::seconds(15);
  Duration write_timeout = std::chrono::seconds(30);
  Duration close_timeout = std::chrono::seconds(2);  // the last write, and a WebSocket's close handshake
  // The socket's kernel send buffer: bounded, so that a client that stops
  // reading is seen by its queue in the bus (which says why) rather than
  // hidden for megabytes behind the kernel's automatic sizing.
  int send_buffer = 64 * 1024;
};

// SSE on `stream` (the response's headers included); returns why it ended.
boost::asio::awaitable<std::string> stream_sse(boost::beast::tcp_stream& stream, unsigned version,
                                               std::shared_ptr<monitor::Subscription> events,
                                               StreamSettings settings);

// Accepts the WebSocket upgrade in `request` and streams; returns why it ended.
boost::asio::awaitable<std::string> stream_websocket(boost::beast::tcp_stream stream,
                                                     boost::beast::http::request<boost::beast::http::string_body> request,
                                                     std::shared_ptr<monitor::Subscription> events,
                                                     StreamSettings settings);

}  // namespace poolkeeper::server
