#include "drivers/process/proc_stats.h"

#include <dirent.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <string_view>

namespace poolkeeper::drivers {
namespace {

// Reads a small /proc file whole; empty when it is gone.
std::string read_small(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string s;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    s.append(buf, static_cast<std::size_t>(n));
    if (s.size() > (1 << 20)) break;
  }
  ::close(fd);
  return s;
}

const long kTicksPerSecond = ::sysconf(_SC_CLK_TCK);
const long kPageSize = ::sysconf(_SC_PAGESIZE);

// Fields of /proc/<pid>/stat after the command name (which may hold spaces
// and parentheses, so it is skipped to the last ')').
bool stat_fields(pid_t pid, std::int64_t* cpu_ticks, std::int64_t* rss_pages) {
  const std::string s = read_small("/proc/" + std::to_string(pid) + "/stat");
  const std::size_t close = s.rfind(')');
  if (close == std::string::npos) return false;
  std::string_view rest(s);
  rest.remove_prefix(close + 2);  // ") "
  // rest starts at field 3 (state); utime is 14, stime 15, rss 24.
  std::int64_t values[25] = {};
  int field = 3;
  while (!rest.empty() && field <= 24) {
    const std::size_t sp = rest.find(' ');
    const std::string_view token = rest.substr(0, sp);
    if (field >= 4) std::from_chars(token.data(), token.data() + token.size(), values[field]);
    if (sp == std::string_view::npos) break;
    rest.remove_prefix(sp + 1);
    ++field;
  }
  if (field < 24) return false;
  *cpu_ticks = values[14] + values[15];
  *rss_pages = values[24];
  return true;
}

}  // namespace

std::vector<pid_t> process_tree(pid_t root, std::size_t limit) {
  std::vector<pid_t> tree;
  if (::kill(root, 0) != 0 && errno == ESRCH) return tree;
  tree.push_back(root);
  for (std::size_t i = 0; i < tree.size() && tree.size() < limit; ++i) {
    const std::string task_dir = "/proc/" + std::to_string(tree[i]) + "/task";
    DIR* d = ::opendir(task_dir.c_str());
    if (d == nullptr) continue;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const std::string children = read_small(task_dir + "/" + e->d_name + "/children");
      std::string_view rest(children);
      while (!rest.empty()) {
        const std::size_t sp = rest.find(' ');
        const std::string_view token = rest.substr(0, sp);
        pid_t child = 0;
        if (std::from_chars(token.data(), token.data() + token.size(), child).ec == std::errc() &&
            child > 0 && tree.size() < limit) {
          tree.push_back(child);
        }
        if (sp == std::string_view::npos) break;
        rest.remove_prefix(sp + 1);
      }
    }
    ::closedir(d);
  }
  return tree;
}

TreeUsage tree_usage(pid_t root) {
  TreeUsage u;
  for (pid_t pid : process_tree(root)) {
    std::int64_t ticks = 0, pages = 0;
    if (!stat_fields(pid, &ticks, &pages)) continue;
    ++u.processes;
    u.rss_bytes += pages * kPageSize;
    u.cpu_ns += ticks * (1'000'000'000 / kTicksPerSecond);
  }
  return u;
}

}  // namespace poolkeeper::drivers
