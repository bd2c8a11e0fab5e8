// The real daemon (`poolkeeper serve`) as a child process of a test: a config
// written to a temporary file, the port it chose (port 0) read from its
// "listening" log line, its log lines kept, signals, and its exit status.
//
// Thread-safety: owned by one test; a reader thread collects the log lines.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <filesystem>
#include <thread>
#include <vector>

#include "drivers/process/spawn.h"
#include "testing/wait.h"

namespace poolkeeper::testing {

class DaemonProcess {
 public:
  // Starts `poolkeeper serve` on `config_text` (TOML) with these extra
  // environment variables ("NAME=value").
  // The config is written into a directory of its own, so what the daemon
  // keeps next to it (the store's default file) is its own too.
  DaemonProcess(const std::string& config_text, std::vector<std::string> env = {}) {
    std::string dir = ::testing::TempDir() + "/poolkeeper-daemon-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) return;
    dir_ = dir;
    config_path_ = dir_ + "/poolkeeper.toml";
    std::ofstream(config_path_) << config_text;
    drivers::SpawnOptions o;
    o.argv = {POOLKEEPER_BINARY, "serve", "--config", config_path_};
    o.environment = drivers::worker_environment({"PATH", "HOME", "LANG"}, env);
    auto child = drivers::spawn(o);
    if (!child) return;
    child_ = *child;
    ::close(child_.stdin_fd);
    ::close(child_.stdout_fd);
    reader_ = std::thread([this] { read_log(); });
  }

  ~DaemonProcess() {
    if (child_.pid > 0 && !exit_status_) {
      ::kill(child_.pid, SIGKILL);
      wait_exit(std::chrono::seconds(30));
    }
    if (reader_.joinable()) reader_.join();
    if (child_.pidfd >= 0) ::close(child_.pidfd);
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  // The directory that holds the config (and the store's default file).
  const std::string& dir() const { return dir_; }

  // The port from the "listening" line (0 when it never came).
  std::uint16_t port(Duration timeout = std::chrono::seconds(30)) {
    std::uint16_t p = 0;
    wait_until(
        [&] {
          std::lock_guard lock(mu_);
          for (const std::string& line : lines_) {
            if (line.find("\"msg\":\"listening\"") == std::string::npos) continue;
            const std::string address(
                boost::json::parse(line).at("address").as_string());
            p = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
            return true;
          }
          return exited();
        },
        timeout);
    return p;
  }

  pid_t pid() const { return child_.pid; }
  // Replaces the config file (a reload reads it on SIGHUP).
  void rewrite_config(const std::string& config_text) {
    const std::string tmp = config_path_ + ".new";
    std::ofstream(tmp) << config_text;
    std::rename(tmp.c_str(), config_path_.c_str());
  }
  void signal(int sig) {
    if (child_.pid > 0) ::kill(child_.pid, sig);  // never kill(-1, ...)
  }

  // The exit status once it has exited within `timeout` (-1: killed by a signal).
  // Once it has exited, every line it wrote has been read.
  std::optional<int> wait_exit(Duration timeout) {
    wait_until([&] { return exited(); }, timeout);
    if (exit_status_ && reader_.joinable()) reader_.join();  // its stderr ends with it
    return exit_status_;
  }

  std::vector<std::string> log_lines() {
    std::lock_guard lock(mu_);
    return lines_;
  }
  bool logged(const std::string& text) {
    std::lock_guard lock(mu_);
    for (const std::string& l : lines_) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }

 private:
  bool exited() {
    if (exit_status_) return true;
    if (child_.pid <= 0) return true;  // never started
    int status = 0;
    if (::waitpid(child_.pid, &status, WNOHANG) == child_.pid) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return true;
    }
    return false;
  }

  void read_log() {
    std::string partial;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(child_.stderr_fd, buf, sizeof buf);
      if (n <= 0) break;
      partial.append(buf, static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = partial.find('\n')) != std::string::npos) {
        std::lock_guard lock(mu_);
        lines_.push_back(partial.substr(0, nl));
        partial.erase(0, nl + 1);
      }
    }
    ::close(child_.stderr_fd);
  }

  std::string dir_;
  std::string config_path_;
  drivers::Child child_{};
  std::thread reader_;
  std::mutex mu_;
  std::vector<std::string> lines_;
  std::optional<int> exit_status_;
};

}  // namespace poolkeeper::testing
