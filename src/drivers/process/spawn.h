// spawn(): start a worker process the way poolkeeper wants it, and nothing more.
//
// The child gets: the resolved executable and argv; exactly the environment
// given (nothing inherited implicitly); the working directory; its own process
// group; resource limits (setrlimit before exec, so /proc/<pid>/limits shows
// them from the first instruction); default signal dispositions and an empty
// signal mask; pipes on fds 0, 1 and 2; no other descriptor (every fd above 2
// is marked close-on-exec in the child, whatever the parent opened); and, when
// asked, SIGKILL once the thread that spawned it exits (PR_SET_PDEATHSIG), so
// workers never outlive a daemon that was killed.
//
// Errors before exec (no such command, chdir or exec failing) come back as
// values with the errno text; the failed child is reaped before returning, so
// a failed spawn leaves no process and no descriptor behind.
//
// Thread-safety: spawn() may be called from any thread. It forks; the child
// runs only async-signal-safe calls before exec.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <expected>
#include <string>
#include <vector>

#include "poolkeeper/error.h"

namespace poolkeeper::drivers {

struct ResourceLimit {
  int resource = RLIMIT_NOFILE;  // RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_NPROC, ...
  rlim_t value = RLIM_INFINITY;  // soft and hard
};

struct SpawnOptions {
  std::vector<std::string> argv;         // argv[0] is looked up in PATH when it has no '/'
  std::string working_dir;               // empty: the daemon's
  std::vector<std::string> environment;  // "NAME=value", the child's whole environment
  std::vector<ResourceLimit> limits;
  bool kill_with_parent = true;          // PR_SET_PDEATHSIG(SIGKILL)
};

// A running child. The caller owns the descriptors (all close-on-exec in the
// parent) and must reap the child (waitid on the pidfd).
struct Child {
  pid_t pid = -1;
  int pidfd = -1;
  int stdin_fd = -1;   // write end
  int stdout_fd = -1;  // read end
  int stderr_fd = -1;  // read end
};

std::expected<Child, Error> spawn(const SpawnOptions& options);

// Looks `name` up in `path` (a PATH value) as execvp would; names with a '/'
// are returned as they are. Empty when nothing executable was found.
std::string find_executable(const std::string& name, const std::string& path);

// The environment for a worker: the daemon's variables named in `allow` (when
// set), then `set` ("NAME=value") on top.
std::vector<std::string> worker_environment(const std::vector<std::string>& allow,
                                            const std::vector<std::string>& set);

}  // namespace poolkeeper::drivers
