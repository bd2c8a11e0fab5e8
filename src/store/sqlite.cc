#include "store/sqlite.h"

#include <sqlite3.h>

#include <utility>

namespace poolkeeper::store {

bool SqliteError::is_io() const {
  switch (code_ & 0xFF) {
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
      return true;
    default:
      return false;
  }
}

void check(sqlite3* db, int code, std::string_view doing) {
  if (code == SQLITE_OK || code == SQLITE_ROW || code == SQLITE_DONE) return;
  std::string what(doing);
  what += ": ";
  what += (db != nullptr && sqlite3_extended_errcode(db) == code) ? sqlite3_errmsg(db)
                                                                   : sqlite3_errstr(code);
  throw SqliteError(code, what);
}

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db) {
  check(db_,
        sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                           &stmt_, nullptr),
        "prepare");
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::bind(int index, std::int64_t value) {
  check(db_, sqlite3_bind_int64(stmt_, index, value), "bind");
  return *this;
}

Statement& Statement::bind(int index, std::string_view value) {
  check(db_,
        sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
        "bind");
  return *this;
}

Statement& Statement::bind(int index, double value) {
  check(db_, sqlite3_bind_double(stmt_, index, value), "bind");
  return *this;
}

Statement& Statement::bind_null(int index) {
  check(db_, sqlite3_bind_null(stmt_, index), "bind");
  return *this;
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const int extended = sqlite3_extended_errcode(db_);
  std::string what = std::string("step: ") + sqlite3_errmsg(db_);
  sqlite3_reset(stmt_);
  throw SqliteError(extended, what);
}

void Statement::run() {
  while (step()) {
  }
  reset();
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::int64_t Statement::integer(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::real(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::text(int column) const {
  const auto* p = sqlite3_column_text(stmt_, column);
  if (p == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(p),
                     static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)));
}

bool Statement::is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

Db Db::open(const std::string& path, const Options& options) {
  sqlite3* db = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | (options.create ? SQLITE_OPEN_CREATE : 0) |
                    SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags,
                                 options.vfs.empty() ? nullptr : options.vfs.c_str());
  if (rc != SQLITE_OK) {
    std::string what = "open " + path + ": " + (db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    throw SqliteError(rc, what);
  }
  sqlite3_extended_result_codes(db, 1);
  return Db(db);
}

Db::Db(Db&& other) noexcept : db_(std::exchange(other.db_, nullptr)), cache_(std::move(other.cache_)) {}

Db& Db::operator=(Db&& other) noexcept {
  if (this != &other) {
    close();
    db_ = std::exchange(other.db_, nullptr);
    cache_ = std::move(other.cache_);
  }
  return *this;
}

Db::~Db() { close(); }

void Db::close() {
  cache_.clear();  // statements first: a connection with live statements does not close
  if (db_ != nullptr) sqlite3_close_v2(db_);
  db_ = nullptr;
}

void Db::exec(std::string_view sql) {
  const std::string text(sql);
  char* message = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string what = "exec: " + std::string(message != nullptr ? message : sqlite3_errstr(rc));
    sqlite3_free(message);
    throw SqliteError(sqlite3_extended_errcode(db_), what);
  }
}

Statement& Db::prepare(const std::string& sql) {
  auto it = cache_.find(sql);
  if (it == cache_.end()) it = cache_.emplace(sql, std::make_unique<Statement>(db_, sql)).first;
  it->second->reset();
  return *it->second;
}

std::optional<std::int64_t> Db::query_integer(const std::string& sql) {
  Statement& s = prepare(sql);
  std::optional<std::int64_t> v;
  if (s.step()) v = s.integer(0);
  s.reset();
  return v;
}

std::int64_t Db::changes() const { return sqlite3_changes64(db_); }

}  // namespace poolkeeper::store
