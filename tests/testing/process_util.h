// Helpers for tests that run real worker processes: descriptor counts, child
// processes and zombies, process liveness, and an io_context on its own thread.
//
// Thread-safety: free functions read /proc; IoThread is owned by one test.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace poolkeeper::testing {

// Descriptors open in this process.
inline int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
    --n;  // the directory's own descriptor
  }
  return n;
}

struct ProcState {
  pid_t pid = 0;
  pid_t ppid = 0;
  char state = '?';
};

inline std::optional<ProcState> proc_state(pid_t pid) {
  // Plain read(2): the process may vanish while it is read (ESRCH).
  std::string s;
  const int fd = ::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  const std::size_t close = s.rfind(')');
  if (close == std::string::npos || close + 4 > s.size()) return std::nullopt;
  std::istringstream rest(s.substr(close + 2));
  ProcState p;
  p.pid = pid;
  rest >> p.state >> p.ppid;
  return p;
}

// This process's children (zombies included).
inline std::vector<ProcState> children() {
  std::vector<ProcState> out;
  const pid_t self = ::getpid();
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      const pid_t pid = std::atoi(e->d_name);
      if (pid <= 0) continue;
      auto p = proc_state(pid);
      if (p && p->ppid == self) out.push_back(*p);
    }
    ::closedir(d);
  }
  return out;
}

inline int zombie_children() {
  int n = 0;
  for (const ProcState& p : children()) n += p.state == 'Z';
  return n;
}

// Alive and not a zombie.
inline bool process_alive(pid_t pid) {
  auto p = proc_state(pid);
  return p.has_value() && p->state != 'Z' && p->state != 'X';
}

// An io_context run by one thread for the life of the object (workers are
// spawned from that thread, which PR_SET_PDEATHSIG ties them to).
class IoThread {
 public:
  IoThread() : work_(io_.get_executor()), thread_([this] { io_.run(); }) {}
  ~IoThread() { stop(); }
  boost::asio::io_context& io() { return io_; }
  boost::asio::any_io_executor executor() { return io_.get_executor(); }
  // Lets run() return once nothing is left to do, and joins the thread.
  void stop() {
    if (!thread_.joinable()) return;
    work_.reset();
    thread_.join();
  }

 private:
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread thread_;
};

}  // namespace poolkeeper::testing
