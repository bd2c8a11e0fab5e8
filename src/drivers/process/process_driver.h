// ProcessDriver: sessions that are worker processes speaking the worker
// protocol (docs/worker-protocol.md) over their stdin and stdout.
//
// Each session is one child started by spawn() (own process group, only the
// configured environment, resource limits, fds 0-2 only). The driver reads
// the worker's stdout and stderr without blocking a thread, matches responses
// to requests by id with per-request timeouts, watches the child through a
// pidfd and reaps it, samples the process tree's memory and CPU from /proc,
// and stops workers in steps: close stdin, SIGTERM to the group, SIGKILL.
//
// A worker that breaks the protocol (invalid JSON or UTF-8, an unknown id, a
// line over max_line) or dies fails its requests in flight at once and ends;
// the runner then replaces it. Creating a driver changes two things in the
// daemon process: SIGPIPE is ignored (writes to a dead worker fail with EPIPE
// instead of killing the daemon) and the soft open-files limit is raised to
// the hard limit (each worker holds four descriptors).
//
// Thread-safety: as Driver; sessions live on their pool's strand.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <vector>

#include "runtime/driver.h"
#include "runtime/log.h"

namespace poolkeeper::drivers {

struct ProcessConfig {
  std::vector<std::string> command;  // argv; argv[0] is looked up in PATH
  std::string working_dir;           // empty: the daemon's
  // Variables passed through from the daemon's environment; nothing else is.
  std::vector<std::string> env_allow = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"};
  std::vector<std::string> env;      // "NAME=value", set on top

  // Resource limits set in the worker before exec (0: not set).
  std::int64_t limit_address_space = 0;  // bytes (RLIMIT_AS)
  std::int64_t limit_cpu_seconds = 0;    // RLIMIT_CPU: the kernel kills the worker past it
  std::int64_t limit_open_files = 0;     // RLIMIT_NOFILE
  std::int64_t limit_processes = 0;      // RLIMIT_NPROC (per user; not enforced for root)

  // How often usage is read from /proc (0: never). The pool's max_memory,
  // max_cpu_percent and max_cpu_time judge it.
  Duration sample_interval = std::chrono::seconds(1);

  // Protocol.
  Duration start_timeout = std::chrono::seconds(30);   // until `ready` or a ping's answer
  Duration check_timeout = std::chrono::seconds(5);
  Duration execute_timeout = std::chrono::seconds(60);  // unless the request sets one
  Duration reset_timeout = std::chrono::seconds(5);
  bool reset_on_release = false;
  std::size_t max_line = 16u << 20;
  std::size_t stderr_line_max = 4096;       // longer stderr lines are cut
  int stderr_lines_per_second = 100;        // to the log; the rest are counted

  // Stop.
  Duration stop_grace = std::chrono::seconds(2);  // after closing stdin, before SIGTERM
  Duration kill_after = std::chrono::seconds(2);  // after SIGTERM, before SIGKILL
  bool kill_with_daemon = true;                   // PR_SET_PDEATHSIG

  bool operator==(const ProcessConfig&) const = default;
};

std::expected<void, Error> validate_process_config(const ProcessConfig& config);

class ProcessDriver final : public runtime::Driver {
 public:
  // `log` must outlive the driver (nullptr: stderr_log()).
  static std::expected<std::unique_ptr<ProcessDriver>, Error> create(ProcessConfig config,
                                                                     std::string pool,
                                                                     runtime::Log* log = nullptr);

  runtime::asio::awaitable<std::expected<std::shared_ptr<runtime::DriverSession>, Error>> start(
      SessionId id) override;
  std::string describe() const override;
  Duration check_timeout() const override { return config_.check_timeout; }
  bool reset_on_release() const override { return config_.reset_on_release; }
  Duration sample_interval() const override;

  const ProcessConfig& config() const { return config_; }
  // Processes spawned so far (including those that failed to start).
  std::uint64_t spawns() const { return spawns_.load(std::memory_order_relaxed); }

 private:
  ProcessDriver(ProcessConfig config, std::string pool, runtime::Log* log);

  ProcessConfig config_;
  std::string pool_;
  runtime::Log* log_;
  std::vector<std::string> environment_;
  std::shared_ptr<const ProcessConfig> shared_config_;
  std::atomic<std::uint64_t> spawns_{0};
};

}  // namespace poolkeeper::drivers
