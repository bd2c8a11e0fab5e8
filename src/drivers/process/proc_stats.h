// Memory and CPU of a process tree, read from /proc.
//
// A worker's usage is its own plus its descendants' (a CLI agent's tools, a
// Python worker's subprocesses): the tree is walked through
// /proc/<pid>/task/<tid>/children. RSS is summed; CPU time is user + system
// time of the live processes in the tree. Processes that vanish while being
// read are skipped.
//
// Thread-safety: pure functions over /proc.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

namespace poolkeeper::drivers {

struct TreeUsage {
  int processes = 0;             // 0: the root is gone
  std::int64_t rss_bytes = 0;
  std::int64_t cpu_ns = 0;       // user + system, summed over the tree
};

// The root and its descendants, root first (at most `limit` processes).
std::vector<pid_t> process_tree(pid_t root, std::size_t limit = 4096);

TreeUsage tree_usage(pid_t root);

}  // namespace poolkeeper::drivers
