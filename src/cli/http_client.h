// HttpClient: a blocking HTTP/1.1 client for the daemon's API (one
// keep-alive connection; http:// only), used by the CLI and the tests.
// Beast stays inside http_client.cc.
//
// A request on a kept-alive connection that the daemon closed meanwhile is
// sent again on a new connection only when it cannot have been handled: its
// write failed, or it is a GET and no byte of an answer came.
//
// Thread-safety: one thread at a time.
//
//   cli::HttpClient c("http://127.0.0.1:8470", token);
//   auto r = c.call("GET", "/v1/pools");
//   if (!r) std::cerr << r.error() << "\n";   // could not reach the daemon
#pragma once

#include <chrono>
#include <expected>
#include <map>
#include <memory>
#include <string>

namespace poolkeeper::cli {

struct HttpReply {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // as the daemon spelled them
};

class HttpClient {
 public:
  // `url` is "http://HOST:PORT"; an empty token sends no Authorization.
  HttpClient(std::string url, std::string token = {});
  ~HttpClient();

  // The daemon's answer, or why it could not be reached.
  std::expected<HttpReply, std::string> call(const std::string& method, const std::string& target,
                                             const std::string& body = {});
  void set_token(std::string token);
  // Each call's limit, from connecting to the last byte of the answer (0:
  // none). A call past it fails and its connection is closed; it is not
  // sent again, since the daemon may have handled it.
  void set_timeout(std::chrono::milliseconds timeout);
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolkeeper::cli
