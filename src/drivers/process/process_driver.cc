#include "drivers/process/process_driver.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_set>
#include <utility>
#include <vector>

#include "drivers/process/json_rpc.h"
#include "drivers/process/line_buffer.h"
#include "drivers/process/proc_stats.h"
#include "drivers/process/spawn.h"
#include "runtime/completion.h"
#include "runtime/text.h"

namespace poolkeeper::drivers {
namespace {

namespace asio = boost::asio;
using runtime::DriverSession;
using runtime::ExecuteReply;
using runtime::ExecuteRequest;
using runtime::Log;
using runtime::LogLevel;
using runtime::Usage;
using runtime::excerpt;
using runtime::ms_text;
using namespace std::chrono_literals;

constexpr int kMethodNotFound = -32601;
constexpr std::size_t kRecentStderr = 10;
constexpr std::size_t kAbandonedIds = 256;

std::string exit_text(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return "exited with code " + std::to_string(info.si_status);
  const char* abbrev = ::sigabbrev_np(info.si_status);
  return std::string(info.si_code == CLD_DUMPED ? "dumped core on signal " : "was killed by signal ") +
         std::to_string(info.si_status) + (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : "");
}

using Reply = std::expected<ExecuteReply, Error>;

// A coroutine waiting for a worker's answer: resumed on its own executor.
using Waiting = runtime::Completion<Reply>;

class Session;

// The live sessions on one io_context. If the io_context is destroyed while
// sessions live (a daemon torn down without a shutdown), their coroutines may
// keep them alive in cycles that only the io_context's teardown breaks; this
// service kills and reaps every worker and closes its pipes when the
// io_context shuts down, and drops the requests still waiting, so no process,
// zombie or descriptor outlives the io_context.
class LiveSessions final : public asio::execution_context::service {
 public:
  using key_type = LiveSessions;
  static inline asio::execution_context::id id;  // NOLINT: Asio's service key

  explicit LiveSessions(asio::execution_context& context) : service(context) {}

  void add(Session* s) {
    std::lock_guard lock(mu_);
    sessions_.insert(s);
  }
  void remove(Session* s) {
    std::lock_guard lock(mu_);
    sessions_.erase(s);
  }
  void shutdown() override;

 private:
  std::mutex mu_;
  std::unordered_set<Session*> sessions_;
};

class Session final : public DriverSession, public std::enable_shared_from_this<Session> {
 public:
  Session(asio::any_io_executor ex, std::shared_ptr<const ProcessConfig> config, Log* log,
          std::string pool, SessionId id, const Child& child)
      : ex_(ex),
        shared_config_(std::move(config)),
        config_(*shared_config_),
        log_(log),
        pool_(std::move(pool)),
        id_(id),
        pid_(child.pid),
        in_(ex, child.stdin_fd),
        out_(ex, child.stdout_fd),
        err_(ex, child.stderr_fd),
        pidfd_(ex, child.pidfd),
        lines_(config_.max_line, LineBuffer::kFail),
        err_lines_(config_.stderr_line_max, LineBuffer::kTruncate),
        ready_timer_(ex),
        drain_timer_(ex),
        deadline_timer_(ex, TimePoint::max()),
        live_(asio::use_service<LiveSessions>(asio::query(ex, asio::execution::context))) {
    // Non-blocking on our ends only; the child's ends are other descriptions.
    in_.non_blocking(true);
    out_.non_blocking(true);
    err_.non_blocking(true);
  }

  ~Session() override {
    live_.remove(this);
    // Dropped without a stop: never leave a process or a zombie behind.
    kill_and_reap();
  }

  void begin() {
    auto self = shared_from_this();
    live_.add(this);  // constructed: the service may reach it from now on
    asio::co_spawn(ex_, read_stdout(), asio::detached);
    asio::co_spawn(ex_, read_stderr(), asio::detached);
    asio::co_spawn(ex_, watch_exit(), asio::detached);
    asio::co_spawn(ex_, watch_deadlines(), asio::detached);
  }

  // The io_context is going away (LiveSessions::shutdown): the worker is
  // killed and reaped, its pipes closed; the requests still waiting are
  // handed back to be dropped.
  std::vector<Waiting> abandon() {
    std::vector<Waiting> out;
    for (Pending& p : pending_) out.push_back(std::move(p.resume));
    pending_.clear();
    failure_ = "was dropped with its io_context";
    kill_and_reap();
    close_all();
    return out;
  }

  // Until `ready`, a ping's answer, the end, or the start timeout.
  asio::awaitable<std::expected<void, Error>> wait_ready() {
    auto self = shared_from_this();
    asio::co_spawn(
        ex_,
        [](std::shared_ptr<Session> s) -> asio::awaitable<void> {
          auto r = co_await s->request("ping", {}, {}, s->config_.start_timeout);
          if (r && r->ok) s->mark_ready();
        }(self),
        asio::detached);
    ready_timer_.expires_after(config_.start_timeout);
    if (!ready_ && failure_.empty()) {
      (void)co_await ready_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (ready_ && failure_.empty()) co_return std::expected<void, Error>{};
    std::string why;
    if (failure_.empty()) {
      why = "not ready within the start timeout (" + ms_text(config_.start_timeout) + ")";
    } else {
      co_await wait_exit_for(1s);  // its last words on stderr make the message useful
      why = "the worker " + (ended_ ? ended_reason_ : failure_) + " before it was ready";
    }
    if (!recent_stderr_.empty()) {
      why += "; stderr: ";
      for (std::size_t i = 0; i < recent_stderr_.size(); ++i) {
        if (i > 0) why += " | ";
        why += recent_stderr_[i];
      }
    }
    co_return std::unexpected(Error(ErrorCode::kSessionStartFailed, why));
  }

  asio::awaitable<std::expected<void, Error>> check(Duration timeout) override {
    auto self = shared_from_this();
    auto r = co_await request("ping", {}, {}, timeout);
    if (!r) co_return std::unexpected(r.error());
    if (!r->ok) {
      co_return std::unexpected(
          Error(ErrorCode::kProtocolError, "ping answered with an error: " + excerpt(r->json, 200)));
    }
    co_return std::expected<void, Error>{};
  }

  asio::awaitable<std::expected<void, Error>> reset() override {
    auto self = shared_from_this();
    auto r = co_await request("reset", {}, {}, config_.reset_timeout);
    if (!r) co_return std::unexpected(r.error());
    if (!r->ok && error_code_of(r->json) != kMethodNotFound) {
      co_return std::unexpected(
          Error(ErrorCode::kProtocolError, "reset failed: " + excerpt(r->json, 200)));
    }
    co_return std::expected<void, Error>{};
  }

  asio::awaitable<std::expected<ExecuteReply, Error>> execute(ExecuteRequest req) override {
    auto self = shared_from_this();
    auto params = one_line_json(req.params.empty() ? std::string_view("null") : req.params);
    if (!params) {
      co_return std::unexpected(Error(ErrorCode::kInvalidArgument, "params: " + params.error()));
    }
    const Duration timeout = req.timeout.count() > 0 ? req.timeout : config_.execute_timeout;
    auto r = co_await request("execute", *params, req.client_session, timeout);
    if (!r && r.error().code == ErrorCode::kExecuteTimeout) {
      // Busy with work nobody waits for: the session goes.
      fail(ErrorCode::kExecuteTimeout, "did not answer an execute within " + ms_text(timeout),
           /*kill=*/true);
    }
    co_return r;
  }

  asio::awaitable<void> stop(StopReason reason) override {
    auto self = shared_from_this();
    stopping_ = true;
    (void)reason;
    if (!ended_) {
      close_stdin();
      if (!co_await wait_exit_for(config_.stop_grace)) {
        signal_group(SIGTERM);
        signal_group(SIGCONT);  // a stopped worker must run to handle SIGTERM
        if (!co_await wait_exit_for(config_.kill_after)) {
          signal_group(SIGKILL);
          if (!co_await wait_exit_for(30s)) {
            log_->write(LogLevel::kError, "worker survived SIGKILL for 30 s",
                        {{"pool", pool_}, {"pid", std::to_string(pid_)}});
          }
        }
      }
    }
  }

  asio::awaitable<std::string> wait_ended() override {
    auto self = shared_from_this();
    while (!ended_) {
      asio::steady_timer t(ex_, asio::steady_timer::time_point::max());
      exit_waiters_.push_back(&t);
      (void)co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
      std::erase(exit_waiters_, &t);
    }
    co_return ended_reason_;
  }

  Usage sample(TimePoint now) override {
    if (ended_) return usage_;
    const TreeUsage u = tree_usage(pid_);
    if (u.processes == 0) return usage_;
    usage_.rss_bytes = u.rss_bytes;
    usage_.processes = u.processes;
    usage_.cpu_seconds = static_cast<double>(u.cpu_ns) / 1e9;
    if (last_sample_ != TimePoint{} && now > last_sample_) {
      const double wall = static_cast<double>((now - last_sample_).count());
      usage_.cpu_percent = std::max(0.0, static_cast<double>(u.cpu_ns - last_cpu_ns_) / wall * 100.0);
    }
    last_sample_ = now;
    last_cpu_ns_ = u.cpu_ns;
    return usage_;
  }

  Usage usage() const override { return usage_; }
  std::string connect() const override { return {}; }
  std::string describe() const override { return "pid " + std::to_string(pid_); }

 private:
  struct Pending {
    std::int64_t id = 0;
    TimePoint deadline{};
    std::string_view method;  // a literal
    Duration timeout{};
    Waiting resume;
  };

  void mark_ready() {
    ready_ = true;
    ready_timer_.cancel();
  }

  // Sends one request and waits for its answer or its deadline. Answers
  // resume the waiting coroutine directly from the reader (no timer per
  // request, no extra trip through the scheduler).
  asio::awaitable<Reply> request(std::string_view method, std::string_view params,
                                 std::string_view client_session, Duration timeout) {
    auto self = shared_from_this();
    if (!failure_.empty()) co_return std::unexpected(Error(failure_code_, failure_));
    const std::int64_t id = next_id_++;
    const TimePoint deadline = deadline_after(real_clock().now(), timeout);
    std::string line = request_line(id, method, params, client_session);
    auto answered = asio::async_initiate<const asio::use_awaitable_t<>&, void(Reply)>(
        [this, id, deadline, method, timeout, &line](auto handler) {
          pending_.push_back(Pending{.id = id,
                                     .deadline = deadline,
                                     .method = method,
                                     .timeout = timeout,
                                     .resume = Waiting(std::move(handler), ex_)});
          if (deadline < deadline_timer_.expiry()) deadline_timer_.expires_at(deadline);
          send(std::move(line));
        },
        asio::use_awaitable);
    co_return co_await std::move(answered);
  }

  // Fails the requests whose deadline has passed. The timer is left armed for
  // a stale time when nothing waits: a request re-arms it only when its
  // deadline comes sooner, so most requests never touch it.
  asio::awaitable<void> watch_deadlines() {
    auto self = shared_from_this();
    while (!ended_) {
      (void)co_await deadline_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ended_) break;
      const TimePoint t = real_clock().now();
      if (deadline_timer_.expiry() > t) continue;  // re-armed sooner while we waited
      TimePoint next = TimePoint::max();
      std::vector<Pending> expired;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->deadline <= t) {
          expired.push_back(std::move(*it));
          it = pending_.erase(it);
        } else {
          next = std::min(next, it->deadline);
          ++it;
        }
      }
      deadline_timer_.expires_at(next);
      for (Pending& p : expired) {
        abandoned_.insert(p.id);
        abandoned_order_.push_back(p.id);
        if (abandoned_order_.size() > kAbandonedIds) {
          abandoned_.erase(abandoned_order_.front());
          abandoned_order_.pop_front();
        }
        p.resume(std::unexpected(Error(
            ErrorCode::kExecuteTimeout, std::string(p.method) + ": no answer within " + ms_text(p.timeout))));
      }
    }
  }

  void send(std::string line) {
    if (!in_.is_open()) return;
    if (!writing_) {
      // The pipe is usually free: write now, and queue only what did not fit.
      boost::system::error_code ec;
      const std::size_t n = in_.write_some(asio::buffer(line), ec);
      if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
        auto closing = pipe_closed("stopped reading its stdin (" + ec.message() + ")");
        asio::co_spawn(ex_, std::move(closing), asio::detached);
        return;
      }
      if (n == line.size()) return;
      line.erase(0, n);
    }
    write_queue_.push_back(std::move(line));
    if (writing_) return;
    writing_ = true;
    asio::co_spawn(ex_, write_loop(), asio::detached);
  }

  asio::awaitable<void> write_loop() {
    auto self = shared_from_this();
    while (!write_queue_.empty() && in_.is_open()) {
      auto [ec, n] = co_await asio::async_write(in_, asio::buffer(write_queue_.front()),
                                                asio::as_tuple(asio::use_awaitable));
      (void)n;
      if (ec) {
        write_queue_.clear();
        writing_ = false;
        if (ec != asio::error::operation_aborted) {
          auto closing = pipe_closed("stopped reading its stdin (" + ec.message() + ")");
          co_await std::move(closing);  // made first: g++ 12 and temporaries in co_await
        }
        co_return;
      }
      write_queue_.pop_front();
    }
    write_queue_.clear();
    writing_ = false;
  }

  asio::awaitable<void> read_stdout() {
    auto self = shared_from_this();
    std::vector<char> buf(64 * 1024);
    std::vector<std::pair<Waiting, Reply>> answered;  // by the lines of one read
    for (;;) {
      auto [ec, n] =
          co_await out_.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (ec != asio::error::operation_aborted) {
          out_eof_ = true;
          drain_timer_.cancel();
          auto closing = pipe_closed(ec == asio::error::eof ? "closed its stdout"
                                                            : "stdout failed: " + ec.message());
          co_await std::move(closing);
        }
        break;
      }
      const bool fits = lines_.feed(std::string_view(buf.data(), n),
                                    [&](std::string_view line, bool) { on_line(line, answered); });
      if (!fits) {
        fail(ErrorCode::kProtocolError,
             "wrote a line longer than max_line (" + std::to_string(config_.max_line) + " bytes)",
             /*kill=*/true);
      }
      // Resumed only now, with this reader's state consistent: a resumed
      // caller may send the next request (or stop the session) right away.
      for (auto& [resume, reply] : answered) resume.dispatch(std::move(reply));
      answered.clear();
      if (!failure_.empty() || !out_.is_open()) break;
    }
    out_eof_ = true;
    drain_timer_.cancel();
  }

  // A line from the worker; an answer is added to `answered`, to be resumed
  // once the whole read has been handled.
  void on_line(std::string_view line, std::vector<std::pair<Waiting, Reply>>& answered) {
    if (!failure_.empty()) return;
    if (line.find_first_not_of(" \t") == std::string_view::npos) return;  // blank: harmless
    auto m = parse_worker_line(line);
    if (!m) {
      fail(ErrorCode::kProtocolError,
           "wrote invalid output: " + m.error() + " (\"" + excerpt(line) + "\")", /*kill=*/true);
      return;
    }
    if (m->kind == WorkerMessage::Kind::kNotification) {
      if (m->method == "ready") mark_ready();
      return;
    }
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [&](const Pending& p) { return p.id == m->id; });
    if (it == pending_.end()) {
      if (abandoned_.contains(m->id)) return;  // a late answer to a request that timed out
      fail(ErrorCode::kProtocolError, "answered an unknown id " + std::to_string(m->id),
           /*kill=*/true);
      return;
    }
    answered.emplace_back(std::move(it->resume), ExecuteReply{.ok = m->ok, .json = std::move(m->body)});
    pending_.erase(it);
  }

  asio::awaitable<void> read_stderr() {
    auto self = shared_from_this();
    std::vector<char> buf(16 * 1024);
    for (;;) {
      auto [ec, n] =
          co_await err_.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
      if (ec) break;
      err_lines_.feed(std::string_view(buf.data(), n),
                      [&](std::string_view line, bool truncated) { on_stderr(line, truncated); });
    }
    err_eof_ = true;
    drain_timer_.cancel();
  }

  void on_stderr(std::string_view line, bool truncated) {
    std::string kept(line.substr(0, 512));
    if (truncated || line.size() > 512) kept += " [cut]";
    recent_stderr_.push_back(kept);
    if (recent_stderr_.size() > kRecentStderr) recent_stderr_.pop_front();
    const TimePoint t = real_clock().now();
    if (t - stderr_window_ >= 1s) {
      if (stderr_suppressed_ > 0) {
        log_->write(LogLevel::kWarn, "worker stderr lines dropped",
                    {{"pool", pool_}, {"pid", std::to_string(pid_)},
                     {"count", std::to_string(stderr_suppressed_)}});
      }
      stderr_window_ = t;
      stderr_in_window_ = 0;
      stderr_suppressed_ = 0;
    }
    if (stderr_in_window_++ < config_.stderr_lines_per_second) {
      log_->write(LogLevel::kInfo, "worker stderr",
                  {{"pool", pool_}, {"pid", std::to_string(pid_)}, {"line", line},
                   {"truncated", truncated ? "true" : "false"}});
    } else {
      ++stderr_suppressed_;
    }
  }

  // The child exited (the pidfd is readable): reap it once its output is read.
  asio::awaitable<void> watch_exit() {
    auto self = shared_from_this();
    auto [ec] = co_await pidfd_.async_wait(asio::posix::descriptor_base::wait_read,
                                           asio::as_tuple(asio::use_awaitable));
    (void)ec;
    // What is left of its process group goes too; the unreaped leader keeps
    // the group id from being reused until then.
    ::kill(-pid_, SIGKILL);
    // Read what it wrote last (a traceback), but never wait long on pipes a
    // stray descendant may hold open.
    const TimePoint drain_until = real_clock().now() + 200ms;
    while ((!out_eof_ || !err_eof_) && real_clock().now() < drain_until) {
      drain_timer_.expires_at(drain_until);
      (void)co_await drain_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    siginfo_t info{};
    int rc;
    do {
      rc = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_.native_handle()),
                    &info, WEXITED);
    } while (rc < 0 && errno == EINTR);
    ended_ = true;  // reaped: no signal to its group from here on
    const std::string status = rc == 0 ? exit_text(info) : std::string("exited");
    if (failure_.empty()) {
      fail(ErrorCode::kSessionLost, status, /*kill=*/false);
      ended_reason_ = status;
    } else {
      ended_reason_ = failure_ + " (" + status + ")";
    }
    close_all();
    ready_timer_.cancel();
    deadline_timer_.cancel();
    for (asio::steady_timer* t : exit_waiters_) t->cancel();
  }

  // The session is broken: its requests fail now and it ends.
  void fail(ErrorCode code, std::string why, bool kill) {
    if (!failure_.empty()) return;
    failure_ = why;
    failure_code_ = code;
    if (!stopping_) {
      log_->write(LogLevel::kWarn, "worker failed",
                  {{"pool", pool_}, {"session", std::to_string(id_)},
                   {"pid", std::to_string(pid_)}, {"why", why}});
    }
    std::vector<Pending> pending = std::move(pending_);
    pending_.clear();
    for (Pending& p : pending) p.resume(std::unexpected(Error(code, "the worker " + why)));
    ready_timer_.cancel();
    if (kill) {
      signal_group(SIGKILL);
    } else if (!stopping_) {
      // It closed a pipe or stopped reading: it should be exiting; make sure.
      asio::co_spawn(
          ex_,
          [](std::shared_ptr<Session> s) -> asio::awaitable<void> {
            if (!co_await s->wait_exit_for(s->config_.stop_grace)) s->signal_group(SIGKILL);
          }(shared_from_this()),
          asio::detached);
    }
  }

  // A pipe to the worker broke. Usually the worker is exiting: wait briefly
  // so its requests fail with how it ended ("killed by signal 9"), not with
  // the pipe; a worker still alive after that is broken and killed.
  asio::awaitable<void> pipe_closed(std::string why) {
    auto self = shared_from_this();
    if (!co_await wait_exit_for(200ms)) fail(ErrorCode::kSessionLost, std::move(why), /*kill=*/true);
  }

  // True once the child has been reaped, waiting at most `d`.
  asio::awaitable<bool> wait_exit_for(Duration d) {
    auto self = shared_from_this();
    if (ended_) co_return true;
    asio::steady_timer t(ex_);
    t.expires_after(d);
    exit_waiters_.push_back(&t);
    (void)co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
    std::erase(exit_waiters_, &t);
    co_return ended_;
  }

  // Kills the worker's group and reaps it, blocking: for teardown only.
  void kill_and_reap() {
    if (ended_) return;
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    // Asio made the pidfd non-blocking, where waitid fails with EAGAIN
    // until the process has exited.
    const int fd = pidfd_.native_handle();
    if (const int flags = ::fcntl(fd, F_GETFL); flags >= 0 && (flags & O_NONBLOCK) != 0) {
      ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    }
    siginfo_t info{};
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(fd), &info, WEXITED) < 0 &&
           errno == EINTR) {
    }
    ended_ = true;
  }

  void signal_group(int sig) {
    if (ended_) return;  // the group id may belong to someone else now
    ::kill(-pid_, sig);
  }

  void close_stdin() {
    boost::system::error_code ec;
    if (in_.is_open()) in_.close(ec);
  }

  void close_all() {
    boost::system::error_code ec;
    if (in_.is_open()) in_.close(ec);
    if (out_.is_open()) out_.close(ec);
    if (err_.is_open()) err_.close(ec);
    if (pidfd_.is_open()) pidfd_.close(ec);
  }

  asio::any_io_executor ex_;
  std::shared_ptr<const ProcessConfig> shared_config_;  // sessions may outlive the driver
  const ProcessConfig& config_;
  Log* log_;
  std::string pool_;
  SessionId id_;
  pid_t pid_;
  asio::posix::stream_descriptor in_, out_, err_, pidfd_;
  LineBuffer lines_;
  LineBuffer err_lines_;
  asio::steady_timer ready_timer_;
  asio::steady_timer drain_timer_;
  asio::steady_timer deadline_timer_;  // the soonest deadline (or a stale one)
  LiveSessions& live_;

  std::vector<Pending> pending_;  // in flight; few, so a vector
  std::int64_t next_id_ = 1;
  std::unordered_set<std::int64_t> abandoned_;
  std::deque<std::int64_t> abandoned_order_;
  std::deque<std::string> write_queue_;
  bool writing_ = false;

  bool ready_ = false;
  bool stopping_ = false;
  bool out_eof_ = false;
  bool err_eof_ = false;
  bool ended_ = false;  // reaped: the group id may belong to someone else now
  std::string failure_;
  ErrorCode failure_code_ = ErrorCode::kSessionLost;
  std::string ended_reason_;
  std::vector<asio::steady_timer*> exit_waiters_;

  std::deque<std::string> recent_stderr_;
  TimePoint stderr_window_{};
  int stderr_in_window_ = 0;
  int stderr_suppressed_ = 0;

  Usage usage_;
  TimePoint last_sample_{};
  std::int64_t last_cpu_ns_ = 0;
};

void LiveSessions::shutdown() {
  std::vector<Waiting> doomed;
  {
    std::lock_guard lock(mu_);
    for (Session* s : sessions_) {
      for (Waiting& r : s->abandon()) doomed.push_back(std::move(r));
    }
  }
  // Dropping the handlers hands each coroutine's teardown to its executor;
  // the io_context's later shutdown steps destroy those, freeing the
  // sessions the coroutines held (which remove themselves).
  doomed.clear();
}

std::vector<ResourceLimit> limits_of(const ProcessConfig& c) {
  std::vector<ResourceLimit> l;
  auto add = [&](int resource, std::int64_t v) {
    if (v > 0) l.push_back({resource, static_cast<rlim_t>(v)});
  };
  add(RLIMIT_AS, c.limit_address_space);
  add(RLIMIT_CPU, c.limit_cpu_seconds);
  add(RLIMIT_NOFILE, c.limit_open_files);
  add(RLIMIT_NPROC, c.limit_processes);
  return l;
}

// Once per process: writes to a worker that died must fail with EPIPE, not
// kill the daemon; and each worker holds four of the daemon's descriptors.
void prepare_daemon_process() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction old {};
    if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
      ::signal(SIGPIPE, SIG_IGN);
    }
    struct rlimit nofile {};
    if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = nofile.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &nofile);
    }
  });
}

}  // namespace

std::expected<void, Error> validate_process_config(const ProcessConfig& c) {
  auto bad = [](std::string key, std::string why) {
    return std::unexpected(Error(ErrorCode::kInvalidConfig, key + ": " + why));
  };
  if (c.command.empty() || c.command[0].empty()) return bad("command", "must name a program");
  if (c.max_line < 1024) return bad("max_line", "must be at least 1024 bytes");
  if (c.stderr_line_max < 80) return bad("stderr_line_max", "must be at least 80 bytes");
  if (c.start_timeout.count() <= 0) return bad("start_timeout", "must be positive");
  if (c.check_timeout.count() <= 0) return bad("check_timeout", "must be positive");
  if (c.execute_timeout.count() <= 0) return bad("execute_timeout", "must be positive");
  if (c.reset_timeout.count() <= 0) return bad("reset_timeout", "must be positive");
  if (c.stop_grace.count() < 0) return bad("stop_grace", "must not be negative");
  if (c.kill_after.count() < 0) return bad("kill_after", "must not be negative");
  if (c.sample_interval.count() < 0) return bad("sample_interval", "must not be negative");
  for (const std::string& kv : c.env) {
    if (kv.find('=') == std::string::npos || kv.front() == '=') {
      return bad("env", "\"" + kv + "\" is not NAME=value");
    }
  }
  return {};
}

std::expected<std::unique_ptr<ProcessDriver>, Error> ProcessDriver::create(ProcessConfig config,
                                                                           std::string pool,
                                                                           runtime::Log* log) {
  if (auto ok = validate_process_config(config); !ok) return std::unexpected(ok.error());
  prepare_daemon_process();
  return std::unique_ptr<ProcessDriver>(new ProcessDriver(std::move(config), std::move(pool), log));
}

ProcessDriver::ProcessDriver(ProcessConfig config, std::string pool, runtime::Log* log)
    : config_(std::move(config)),
      pool_(std::move(pool)),
      log_(log != nullptr ? log : &runtime::stderr_log()),
      environment_(worker_environment(config_.env_allow, config_.env)),
      shared_config_(std::make_shared<const ProcessConfig>(config_)) {}

std::string ProcessDriver::describe() const {
  std::string s = "process:";
  for (const std::string& a : config_.command) s += " " + a;
  return s;
}

Duration ProcessDriver::sample_interval() const { return config_.sample_interval; }

runtime::asio::awaitable<std::expected<std::shared_ptr<runtime::DriverSession>, Error>>
ProcessDriver::start(SessionId id) {
  auto ex = co_await asio::this_coro::executor;
  SpawnOptions o;
  o.argv = config_.command;
  o.working_dir = config_.working_dir;
  o.environment = environment_;
  o.limits = limits_of(config_);
  o.kill_with_parent = config_.kill_with_daemon;
  spawns_.fetch_add(1, std::memory_order_relaxed);
  auto child = spawn(o);
  if (!child) co_return std::unexpected(child.error());
  auto session = std::make_shared<Session>(ex, shared_config_, log_, pool_, id, *child);
  session->begin();
  auto ready = co_await session->wait_ready();
  if (!ready) {
    co_await session->stop(StopReason::kStartFailed);
    co_return std::unexpected(ready.error());
  }
  co_return std::shared_ptr<runtime::DriverSession>(std::move(session));
}

}  // namespace poolkeeper::drivers
