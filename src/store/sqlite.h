// A thin RAII layer over the SQLite C API for the store: one connection
// (Db), prepared statements (Statement) cached by their SQL text, and
// SqliteError thrown for any result that is not a success.
//
// Exceptions stay inside src/store: the store's thread catches them at its
// boundary and answers with an Error value.
//
// Thread-safety: a Db and its statements are used by one thread at a time.
//
//   Db db = Db::open("poolkeeper.db", {});
//   db.exec("PRAGMA journal_mode=WAL");
//   Statement& insert = db.prepare("INSERT INTO audit(at_ms, action) VALUES (?, ?)");
//   insert.bind(1, at).bind(2, "scale").run();
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

struct sqlite3;
struct sqlite3_stmt;

namespace poolkeeper::store {

class SqliteError : public std::runtime_error {
 public:
  SqliteError(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }  // the extended result code
  // An I/O error, a full disk, a locked or corrupt file: the file system's
  // trouble, not a statement's.
  bool is_io() const;

 private:
  int code_;
};

class Statement {
 public:
  Statement(sqlite3* db, std::string_view sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Parameters are numbered from 1. Text is copied.
  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, double value);
  Statement& bind_null(int index);
  Statement& bind(int index, const std::optional<std::int64_t>& value) {
    return value ? bind(index, *value) : bind_null(index);
  }

  // Steps once: true when a row is ready to read.
  bool step();
  // Runs to completion (for statements that return no rows) and resets.
  void run();
  // Resets for the next use and clears the bindings.
  void reset();

  // Columns are numbered from 0.
  std::int64_t integer(int column) const;
  double real(int column) const;
  std::string text(int column) const;
  bool is_null(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

class Db {
 public:
  struct Options {
    std::string vfs{};  // empty: SQLite's default
    bool create = true;
  };
  static Db open(const std::string& path, const Options& options);

  Db(Db&&) noexcept;
  Db& operator=(Db&&) noexcept;
  ~Db();

  // Runs SQL without results (several statements allowed).
  void exec(std::string_view sql);
  // A cached statement for sql, reset and ready to bind.
  Statement& prepare(const std::string& sql);
  // The single integer a query returns (e.g. a PRAGMA); nullopt without a row.
  std::optional<std::int64_t> query_integer(const std::string& sql);
  std::int64_t changes() const;
  sqlite3* handle() const { return db_; }

 private:
  explicit Db(sqlite3* db) : db_(db) {}
  void close();

  sqlite3* db_ = nullptr;
  std::map<std::string, std::unique_ptr<Statement>, std::less<>> cache_;
};

// Throws SqliteError for any code other than SQLITE_OK, SQLITE_ROW, SQLITE_DONE.
void check(sqlite3* db, int code, std::string_view doing);

}  // namespace poolkeeper::store
