// HttpClient: the CLI's blocking HTTP/1.1 client for the daemon's API (one
// keep-alive connection; http:// only). Beast stays inside http_client.cc.
//
// Thread-safety: one thread at a time.
//
//   cli::HttpClient c("http://127.0.0.1:8470", token);
//   auto r = c.call("GET", "/v1/pools");
//   if (!r) std::cerr << r.error() << "\n";   // could not reach the daemon
#pragma once

#include <expected>
#include <memory>
#include <string>

namespace poolkeeper::cli {

struct HttpReply {
  int status = 0;
  std::string body;
};

class HttpClient {
 public:
  // `url` is "http://HOST:PORT"; an empty token sends no Authorization.
  HttpClient(std::string url, std::string token);
  ~HttpClient();

  // The daemon's answer, or why it could not be reached.
  std::expected<HttpReply, std::string> call(const std::string& method, const std::string& target,
                                             const std::string& body = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace poolkeeper::cli
