// LineBuffer: framing of worker output with a bound.
#include "drivers/process/line_buffer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace poolkeeper::drivers {
namespace {

struct Collected {
  std::vector<std::string> lines;
  std::vector<bool> truncated;
};

bool feed(LineBuffer& b, std::string_view data, Collected& c) {
  return b.feed(data, [&](std::string_view line, bool cut) {
    c.lines.emplace_back(line);
    c.truncated.push_back(cut);
  });
}

// Verifies that lines split across reads are joined and several lines in one read are split.
TEST(LineBufferTest, SplitsAndJoinsLines) {
  LineBuffer b(100, LineBuffer::kFail);
  Collected c;
  ASSERT_TRUE(feed(b, "ab", c));
  ASSERT_TRUE(feed(b, "c\nde\r\nf", c));
  ASSERT_TRUE(feed(b, "\n\n", c));
  EXPECT_EQ(c.lines, (std::vector<std::string>{"abc", "de", "f", ""}));
  EXPECT_EQ(b.pending(), 0u);
}

// Verifies that a line over the limit fails the buffer, with or without a newline, and frees it.
TEST(LineBufferTest, FailsOnLineOverLimit) {
  LineBuffer b(8, LineBuffer::kFail);
  Collected c;
  ASSERT_TRUE(feed(b, "12345678\n", c)) << "exactly the limit is fine";
  EXPECT_FALSE(feed(b, "123456789", c)) << "one byte more without a newline";
  EXPECT_TRUE(b.failed());
  EXPECT_EQ(b.pending(), 0u);
  EXPECT_FALSE(feed(b, "ok\n", c)) << "nothing is delivered after a failure";
  EXPECT_EQ(c.lines.size(), 1u);

  LineBuffer many(8, LineBuffer::kFail);
  Collected d;
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(feed(many, "a", d));
  EXPECT_FALSE(feed(many, "aa\n", d)) << "a line built from small reads counts as a whole";
}

// Verifies that memory stays bounded while a writer never sends a newline.
TEST(LineBufferTest, StaysBoundedWithoutNewline) {
  LineBuffer b(1 << 16, LineBuffer::kTruncate);
  Collected c;
  const std::string chunk(1 << 20, 'x');
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(feed(b, chunk, c));
    ASSERT_LE(b.pending(), std::size_t{1} << 16);
  }
  ASSERT_TRUE(feed(b, "tail\nnext\n", c));
  ASSERT_EQ(c.lines.size(), 2u);
  EXPECT_EQ(c.lines[0].size(), std::size_t{1} << 16);
  EXPECT_TRUE(c.truncated[0]);
  EXPECT_EQ(c.lines[1], "next");
  EXPECT_FALSE(c.truncated[1]);
}

}  // namespace
}  // namespace poolkeeper::drivers
