// LineBuffer: splits a byte stream (a worker's stdout or stderr) into lines,
// never holding more than a bound.
//
// Two policies for a line longer than `max_line`: kFail (the protocol stream:
// the buffer stops and reports it; the session is then replaced) and
// kTruncate (stderr: the line is cut at `max_line` and the rest dropped).
// Either way memory stays under `max_line` plus one read, however long the
// line or however long the writer goes without a newline.
//
// Thread-safety: none; one reader owns it.
//
//   LineBuffer lines(1 << 20, LineBuffer::kFail);
//   bool ok = lines.feed(chunk, [&](std::string_view line, bool truncated) { ... });
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace poolkeeper::drivers {

class LineBuffer {
 public:
  enum Policy { kFail, kTruncate };

  LineBuffer(std::size_t max_line, Policy policy) : max_line_(max_line), policy_(policy) {}

  // Feeds bytes; calls on_line(line, truncated) for each complete line, without
  // its '\n' (and a trailing '\r'). False once a line went over the limit
  // under kFail; nothing more is delivered after that.
  template <class OnLine>
  bool feed(std::string_view data, OnLine&& on_line) {
    if (failed_) return false;
    while (!data.empty()) {
      const std::size_t nl = data.find('\n');
      const std::string_view piece = nl == std::string_view::npos ? data : data.substr(0, nl);
      if (!append(piece)) return false;
      if (nl == std::string_view::npos) break;
      data.remove_prefix(nl + 1);
      std::string_view line = partial_;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      on_line(line, truncated_);
      partial_.clear();
      truncated_ = false;
    }
    return true;
  }

  // Bytes of an unfinished line held now.
  std::size_t pending() const { return partial_.size(); }
  bool failed() const { return failed_; }

 private:
  bool append(std::string_view piece) {
    if (partial_.size() + piece.size() <= max_line_) {
      partial_.append(piece);
      return true;
    }
    if (policy_ == kFail) {
      failed_ = true;
      partial_.clear();
      partial_.shrink_to_fit();
      return false;
    }
    partial_.append(piece.substr(0, max_line_ - partial_.size()));
    truncated_ = true;
    return true;
  }

  std::size_t max_line_;
  Policy policy_;
  std::string partial_;
  bool truncated_ = false;
  bool failed_ = false;
};

}  // namespace poolkeeper::drivers
