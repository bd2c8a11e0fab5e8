// poolkeeper-test-worker: a worker for the process driver's tests that can be
// told to misbehave. Speaks the worker protocol; `execute` params pick what it
// does: {"op":"echo","value":...} (the default), "sleep", "crash", "kill_self",
// "garbage", "invalid_utf8", "unknown_id", "long_line", "no_newline",
// "close_stdout", "env", "fds", "limits", "pid", "spawn_child", "alloc",
// "spin" (burns "ms" of CPU time), "stderr". With "mark": PATH it first
// creates that file (the test then knows the request arrived). Command-line
// flags change how it starts and stops:
//   --exit-at-start N   exit with code N before anything else
//   --stderr-at-start T print T to stderr first
//   --no-ready          never print ready and never answer pings
//   --ignore-sigterm    ignore SIGTERM and end of input (only SIGKILL stops it)
//   --count-file F      append one line to F at start (counts spawns)
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace json = boost::json;

extern char** environ;

namespace {

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void reply(const json::value& id, const json::value& result) {
  json::object o{{"jsonrpc", "2.0"}, {"id", id}, {"result", result}};
  write_all(1, json::serialize(o) + "\n");
}

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

std::string read_file(const char* path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<char*> kept;  // memory allocated by "alloc", kept alive

void execute(const json::value& id, const json::value& params) {
  const json::object* p = params.if_object();
  const std::string op = p != nullptr && p->contains("op") ? std::string(p->at("op").as_string())
                                                           : std::string("echo");
  auto num = [&](const char* key, std::int64_t dflt) -> std::int64_t {
    if (p == nullptr || !p->contains(key)) return dflt;
    return p->at(key).to_number<std::int64_t>();
  };
  if (p != nullptr && p->contains("mark")) {
    // Tells the test this request arrived: an empty file at the given path.
    const int fd = ::open(std::string(p->at("mark").as_string()).c_str(),
                          O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
  }
  if (op == "echo") {
    reply(id, p != nullptr && p->contains("value") ? p->at("value") : params);
  } else if (op == "sleep") {
    std::this_thread::sleep_for(std::chrono::milliseconds(num("ms", 100)));
    reply(id, "slept");
  } else if (op == "crash") {
    ::_exit(static_cast<int>(num("code", 3)));
  } else if (op == "kill_self") {
    ::kill(::getpid(), SIGKILL);
    sleep_forever();
  } else if (op == "garbage") {
    write_all(1, "this is not json\n");
  } else if (op == "invalid_utf8") {
    write_all(1, "{\"jsonrpc\":\"2.0\",\"id\":" + json::serialize(id) +
                     ",\"result\":\"\xff\xfe\"}\n");
  } else if (op == "unknown_id") {
    write_all(1, "{\"jsonrpc\":\"2.0\",\"id\":987654,\"result\":1}\n");
  } else if (op == "long_line") {
    std::string s = "{\"jsonrpc\":\"2.0\",\"id\":" + json::serialize(id) + ",\"result\":\"";
    s.append(static_cast<std::size_t>(num("bytes", 1 << 20)), 'a');
    s += "\"}\n";
    write_all(1, s);
  } else if (op == "no_newline") {
    const std::string chunk(1 << 20, 'x');
    for (std::int64_t i = 0; i < num("mb", 100); ++i) {
      if (!write_all(1, chunk)) ::_exit(0);  // the daemon closed the pipe
    }
    sleep_forever();
  } else if (op == "close_stdout") {
    ::close(1);
    sleep_forever();
  } else if (op == "env") {
    json::array a;
    for (char** e = environ; *e != nullptr; ++e) a.emplace_back(*e);
    reply(id, a);
  } else if (op == "fds") {
    json::array a;
    if (DIR* d = ::opendir("/proc/self/fd")) {
      const int own = ::dirfd(d);
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.' || std::atoi(e->d_name) == own) continue;
        a.emplace_back(std::atoi(e->d_name));
      }
      ::closedir(d);
    }
    reply(id, a);
  } else if (op == "limits") {
    reply(id, json::value(read_file("/proc/self/limits")));
  } else if (op == "pid") {
    reply(id, json::object{{"pid", ::getpid()}, {"pgid", ::getpgid(0)}, {"cwd", [] {
                             char buf[4096];
                             return std::string(::getcwd(buf, sizeof buf) ? buf : "");
                           }()}});
  } else if (op == "spawn_child") {
    const pid_t child = ::fork();
    if (child == 0) sleep_forever();
    reply(id, json::object{{"child", child}});
  } else if (op == "alloc") {
    const std::size_t bytes = static_cast<std::size_t>(num("mb", 64)) << 20;
    char* m = static_cast<char*>(std::malloc(bytes));
    if (m != nullptr) {
      std::memset(m, 1, bytes);
      kept.push_back(m);
    }
    reply(id, m != nullptr);
  } else if (op == "spin") {
    // Burns CPU time, not wall time: on a busy machine the spin takes longer
    // but always uses what was asked for.
    auto cpu_ns = [] {
      timespec t{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
      return std::int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
    };
    const std::int64_t until = cpu_ns() + num("ms", 100) * 1'000'000;
    volatile std::uint64_t x = 0;
    while (cpu_ns() < until) x = x + 1;
    reply(id, "spun");
  } else if (op == "stderr") {
    const std::string line(static_cast<std::size_t>(num("bytes", 20)), 'e');
    for (std::int64_t i = 0; i < num("lines", 1); ++i) write_all(2, line + "\n");
    reply(id, "written");
  } else {
    write_all(1, json::serialize(json::object{
                     {"jsonrpc", "2.0"},
                     {"id", id},
                     {"error", {{"code", -32602}, {"message", "unknown op " + op}}}}) +
                     "\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool ready = true;
  bool ignore_term = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--exit-at-start" && i + 1 < argc) {
      ::_exit(std::atoi(argv[++i]));
    } else if (a == "--stderr-at-start" && i + 1 < argc) {
      write_all(2, std::string(argv[++i]) + "\n");
    } else if (a == "--no-ready") {
      ready = false;
    } else if (a == "--ignore-sigterm") {
      ignore_term = true;
      ::signal(SIGTERM, SIG_IGN);
    } else if (a == "--count-file" && i + 1 < argc) {
      const int fd = ::open(argv[++i], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      write_all(fd, "spawn\n");
      ::close(fd);
    }
  }
  if (!ready) sleep_forever();
  write_all(1, "{\"jsonrpc\":\"2.0\",\"method\":\"ready\"}\n");
  std::string buf;
  char chunk[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(0, chunk, sizeof chunk);
    if (n == 0) {
      if (ignore_term) sleep_forever();
      return 0;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    buf.append(chunk, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (std::size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      json::error_code ec;
      json::value v = json::parse(std::string_view(buf.data() + start, nl - start), ec);
      if (ec || !v.is_object()) continue;
      const json::object& o = v.get_object();
      if (!o.contains("id")) continue;
      const json::value& id = o.at("id");
      const std::string method = o.contains("method") ? std::string(o.at("method").as_string()) : "";
      if (method == "ping") {
        reply(id, "pong");
      } else if (method == "reset") {
        reply(id, nullptr);
      } else if (method == "execute") {
        json::value params = o.contains("params") ? o.at("params") : json::value(nullptr);
        if (o.contains("client_session") && params.is_object() &&
            params.get_object().contains("want_client_session")) {
          reply(id, o.at("client_session"));
          continue;
        }
        execute(id, params);
      }
    }
    buf.erase(0, start);
  }
}
