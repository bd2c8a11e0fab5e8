// Daemon: the pools of a configuration, the API and the HTTP server, run
// until SIGTERM or SIGINT.
//
// On the first SIGTERM (or SIGINT) the daemon stops accepting connections,
// answers every waiting acquire (503, `shutdown`), lets leases in flight
// finish for up to server.shutdown_grace, stops every worker and returns 0.
// A second one exits at once (status 1; the kernel then kills the workers,
// which are tied to the daemon).
//
// Thread-safety: run() blocks the calling thread; one Daemon per process.
//
//   auto config = load_config(path, process_environment());
//   return poolkeeper::server::run_daemon(*config, poolkeeper::runtime::stderr_log());
#pragma once

#include "runtime/log.h"
#include "server/config.h"

namespace poolkeeper::server {

// Runs the daemon; returns the process exit status.
int run_daemon(const DaemonConfig& config, runtime::Log& log);

}  // namespace poolkeeper::server
