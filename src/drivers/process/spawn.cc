#include "drivers/process/spawn.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

namespace poolkeeper::drivers {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

struct Pipe {
  int read = -1;
  int write = -1;
  ~Pipe() {
    close_fd(read);
    close_fd(write);
  }
};

bool make_pipe(Pipe& p) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  p.read = fds[0];
  p.write = fds[1];
  return true;
}

// In the child, between fork and exec: only async-signal-safe calls.
[[noreturn]] void child_exec(const char* path, char* const* argv, char* const* envp,
                             const char* dir, const SpawnOptions& o, int in, int out, int err,
                             int report, pid_t parent) {
  auto fail = [&](int step) {
    const int data[2] = {step, errno};
    (void)!::write(report, data, sizeof data);
    ::_exit(127);
  };
  if (o.kill_with_parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(1);
    if (::getppid() != parent) ::_exit(127);  // the parent is already gone
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::signal(sig, SIG_DFL);  // ignored signals (SIGPIPE) would survive exec
  }
  if (::setpgid(0, 0) != 0) fail(2);
  if (::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) fail(3);
  if (dir != nullptr && ::chdir(dir) != 0) fail(4);
  for (const ResourceLimit& l : o.limits) {
    const struct rlimit r = {l.value, l.value};
    if (::setrlimit(l.resource, &r) != 0) fail(5);
  }
  // Whatever else is open (descriptors another thread opened without
  // O_CLOEXEC) closes at exec; `report` is close-on-exec already.
  if (::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) != 0) fail(6);
  ::execve(path, argv, envp);
  fail(7);
  ::_exit(127);
}

constexpr const char* kSteps[] = {"",           "prctl(PR_SET_PDEATHSIG)", "setpgid",
                                  "dup2",       "chdir",                   "setrlimit",
                                  "close_range", "exec"};

}  // namespace

std::string find_executable(const std::string& name, const std::string& path) {
  if (name.empty()) return {};
  if (name.find('/') != std::string::npos) return name;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

std::vector<std::string> worker_environment(const std::vector<std::string>& allow,
                                            const std::vector<std::string>& set) {
  std::map<std::string, std::string> env;
  for (const std::string& name : allow) {
    if (const char* v = std::getenv(name.c_str()); v != nullptr) env[name] = v;
  }
  for (const std::string& kv : set) {
    const std::size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  std::vector<std::string> out;
  out.reserve(env.size());
  for (auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

std::expected<Child, Error> spawn(const SpawnOptions& o) {
  auto failed = [](std::string why) {
    return std::unexpected(Error(ErrorCode::kSessionStartFailed, std::move(why)));
  };
  if (o.argv.empty() || o.argv[0].empty()) return failed("no command given");

  // Look the command up where the child would: its own PATH, else the daemon's.
  std::string path_var;
  for (const std::string& kv : o.environment) {
    if (kv.starts_with("PATH=")) path_var = kv.substr(5);
  }
  if (path_var.empty()) {
    const char* p = std::getenv("PATH");
    path_var = p != nullptr ? p : "/usr/local/bin:/usr/bin:/bin";
  }
  const std::string exe = find_executable(o.argv[0], path_var);
  if (exe.empty()) return failed("command not found: " + o.argv[0]);

  // Everything the child needs is built before fork.
  std::vector<char*> argv;
  for (const std::string& a : o.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : o.environment) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const char* dir = o.working_dir.empty() ? nullptr : o.working_dir.c_str();

  Pipe in, out, err, report;
  if (!make_pipe(in) || !make_pipe(out) || !make_pipe(err) || !make_pipe(report)) {
    return failed("pipe: " + errno_text(errno));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return failed("fork: " + errno_text(errno));
  if (pid == 0) {
    child_exec(exe.c_str(), argv.data(), envp.data(), dir, o, in.read, out.write, err.write,
               report.write, parent);
  }
  // The pidfd first: from here on the child cannot be confused with another process.
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  const int pidfd_errno = errno;
  close_fd(report.write);
  close_fd(in.read);
  close_fd(out.write);
  close_fd(err.write);

  // The report pipe closes at exec (success) or carries the failing step.
  int data[2] = {0, 0};
  ssize_t n;
  do {
    n = ::read(report.read, data, sizeof data);
  } while (n < 0 && errno == EINTR);
  const int read_errno = errno;
  if (n != 0 || pidfd < 0) {
    // A failed step, an unreadable report or no pidfd: no child is kept.
    if (n <= 0) ::kill(pid, SIGKILL);
    if (pidfd >= 0) ::close(pidfd);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (n > 0) {
      const int step = data[0] >= 0 && data[0] < 8 ? data[0] : 0;
      return failed(std::string(kSteps[step]) + " failed for " + o.argv[0] + ": " +
                    errno_text(data[1]));
    }
    if (n < 0) return failed("reading the exec report: " + errno_text(read_errno));
    return failed("pidfd_open: " + errno_text(pidfd_errno));
  }
  Child c;
  c.pid = pid;
  c.pidfd = pidfd;
  c.stdin_fd = std::exchange(in.write, -1);
  c.stdout_fd = std::exchange(out.read, -1);
  c.stderr_fd = std::exchange(err.read, -1);
  return c;
}

}  // namespace poolkeeper::drivers
