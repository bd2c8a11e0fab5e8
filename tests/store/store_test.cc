// The store against real SQLite files in a temporary directory; I/O errors
// and a full disk come from a VFS over the real one (testing/faulty_vfs.h).
#include "store/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <latch>
#include <thread>

#include "store/sqlite.h"
#include "testing/faulty_vfs.h"

namespace poolkeeper::store {
namespace {

namespace fs = std::filesystem;
using testing::FaultyVfs;
using namespace std::chrono_literals;

constexpr std::int64_t kDayMs = 86'400'000;
constexpr std::int64_t kStart = 1'780'000'000'000;  // 2026-05-28, a UNIX time in ms

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FaultyVfs::install();
    FaultyVfs::heal();
    char dir[] = "/tmp/poolkeeper-store-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = (dir_ / "pk.db").string();
  }
  void TearDown() override {
    FaultyVfs::heal();
    fs::remove_all(dir_);
  }

  StoreOptions options() {
    return StoreOptions{.path = path_, .vfs = FaultyVfs::kName, .now_ms = [this] { return now_.load(); }};
  }
  std::unique_ptr<Store> open(StoreOptions o) {
    auto s = Store::open(std::move(o));
    EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message);
    return s ? std::move(*s) : nullptr;
  }
  std::unique_ptr<Store> open() { return open(options()); }

  // A second, independent connection to the file: what another process sees.
  std::int64_t count(const std::string& sql) {
    Db db = Db::open(path_, {});
    return db.query_integer(sql).value_or(-1);
  }

  fs::path dir_;
  std::string path_;
  std::atomic<std::int64_t> now_{kStart};
};

// Holds the store's thread until release(), so that writes queued meanwhile
// go into one transaction.
class Gate {
 public:
  explicit Gate(Store& s) {
    s.query([this](Db&) { open_.wait(); }, [](std::expected<void, Error>) {});
  }
  void release() { open_.count_down(); }

 private:
  std::latch open_{1};
};

// Verifies that a new file is created in WAL mode at the current schema, with
// this run recorded.
TEST_F(StoreTest, CreatesTheFileAtTheCurrentSchema) {
  auto s = open();
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->schema_version(), kSchemaVersion);
  EXPECT_GT(s->run_id(), 0);
  EXPECT_EQ(count("PRAGMA user_version"), kSchemaVersion);
  Db db = Db::open(path_, {});
  Statement& mode = db.prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.step());
  EXPECT_EQ(mode.text(0), "wal");
  mode.reset();
  EXPECT_EQ(count("SELECT count(*) FROM runs WHERE ended_ms IS NULL"), 1);
  const std::string instance = s->instance_id();
  EXPECT_EQ(instance.size(), 16u);
  EXPECT_EQ(instance.find_first_not_of("0123456789abcdef"), std::string::npos) << instance;
  s->close();
  // The file keeps its name across opens; another file has another.
  EXPECT_EQ(open()->instance_id(), instance);
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
  EXPECT_NE(open()->instance_id(), instance);
  EXPECT_EQ(count("SELECT count(*) FROM runs WHERE ended_ms = " + std::to_string(kStart)), 1);
}

// Verifies that a write is in the file, seen by another connection, by the
// time its callback runs.
TEST_F(StoreTest, AcknowledgedWritesAreCommitted) {
  auto s = open();
  std::promise<std::int64_t> seen;
  s->write({SessionOpened{.pool = "p", .session = 1, .external_id = "x", .at_ms = kStart},
            AuditEntry{.at_ms = kStart, .actor = "admin", .action = "scale", .pool = "p"}},
           [&](std::expected<void, Error> r) {
             EXPECT_TRUE(r.has_value());
             seen.set_value(count("SELECT count(*) FROM sessions") +
                            count("SELECT count(*) FROM audit WHERE detail = '{}'"));
           });
  EXPECT_EQ(seen.get_future().get(), 2);
}

// Verifies group commit: writes queued while a transaction is busy go into
// the next one together, each acknowledged once; max_batch caps a transaction.
TEST_F(StoreTest, QueuedWritesShareOneTransaction) {
  StoreOptions o = options();
  o.max_batch = 600;
  auto s = open(o);
  Gate gate(*s);
  std::atomic<int> ok{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 250; ++i) {
        s->write({AuditEntry{.at_ms = kStart, .actor = std::to_string(t), .action = "lease"}},
                 [&](std::expected<void, Error> r) { ok += r.has_value() ? 1 : 0; });
      }
    });
  }
  for (auto& w : writers) w.join();
  gate.release();
  ASSERT_TRUE(s->daily_costs(0, 0).has_value());  // a query after them: they are done
  EXPECT_EQ(ok.load(), 1000);
  EXPECT_EQ(count("SELECT count(*) FROM audit"), 1000);
  const StoreStats st = s->stats();
  EXPECT_EQ(st.records, 1000);
  EXPECT_EQ(st.batches, 2);  // 600 + 400
  EXPECT_EQ(st.largest_batch, 600);
}

// Verifies that charges add up exactly into the day's totals per pool,
// tenant and kind.
TEST_F(StoreTest, ChargesAddUpIntoDailyTotals) {
  auto s = open();
  const std::int64_t day = utc_day(kStart);
  std::vector<Record> records;
  for (int i = 0; i < 100; ++i) {
    records.push_back(Charge{.at_ms = kStart, .day = day, .pool = "p", .tenant = "a", .session = 1,
                             .kind = "alive", .micros = 1'388 + i});
  }
  records.push_back(Charge{.at_ms = kStart, .day = day + 1, .pool = "p", .tenant = "a", .session = 1,
                           .kind = "alive", .micros = 7});
  records.push_back(Charge{.at_ms = kStart, .day = day, .pool = "p", .tenant = "b", .session = 2,
                           .kind = "created", .micros = 10'000});
  ASSERT_TRUE(s->write_sync(std::move(records)).has_value());
  auto totals = s->daily_costs(day, day + 1);
  ASSERT_TRUE(totals.has_value());
  ASSERT_EQ(totals->size(), 3u);
  EXPECT_EQ((*totals)[0].tenant, "a");
  EXPECT_EQ((*totals)[0].micros, 100 * 1'388 + 99 * 100 / 2);
  EXPECT_EQ((*totals)[0].count, 100);
  EXPECT_EQ((*totals)[1].kind, "created");
  EXPECT_EQ((*totals)[1].micros, 10'000);
  EXPECT_EQ((*totals)[2].day, day + 1);
  EXPECT_EQ((*totals)[2].micros, 7);
  EXPECT_EQ(count("SELECT sum(micros) FROM charges"), 100 * 1'388 + 4'950 + 7 + 10'000);
}

// Verifies the UTC day of a time, also before 1970.
TEST(UtcDayTest, FloorsToTheDay) {
  EXPECT_EQ(utc_day(0), 0);
  EXPECT_EQ(utc_day(kDayMs - 1), 0);
  EXPECT_EQ(utc_day(kDayMs), 1);
  EXPECT_EQ(utc_day(-1), -1);
  EXPECT_EQ(utc_day(-kDayMs), -1);
  EXPECT_EQ(utc_day(-kDayMs - 1), -2);
}

// Verifies that an I/O error or a full disk at any point of a commit fails
// the whole batch with store_unavailable, keeps everything acknowledged
// before, leaves the file intact, and that the store works again once the
// file system does.
TEST_F(StoreTest, FailedCommitsLoseNothingAcknowledgedAndRecover) {
  auto s = open();
  std::int64_t acknowledged = 0;
  for (FaultyVfs::Fault fault : {FaultyVfs::Fault::kIoError, FaultyVfs::Fault::kDiskFull}) {
    for (int after = 0; after < 12; ++after) {
      std::vector<Record> batch;
      for (int i = 0; i < 50; ++i) {
        batch.push_back(AuditEntry{.at_ms = kStart, .actor = "t", .action = "lease",
                                   .detail = std::string(200, 'x')});
      }
      FaultyVfs::fail(fault, after, 1);
      auto r = s->write_sync(batch);
      FaultyVfs::heal();
      if (r) {
        acknowledged += 50;  // the fault came after the commit's last write
      } else {
        EXPECT_EQ(r.error().code, ErrorCode::kStoreUnavailable) << r.error().message;
        EXPECT_GT(r.error().retry_after.count(), 0);
      }
      EXPECT_EQ(count("SELECT count(*) FROM audit"), acknowledged) << "after " << after;
      ASSERT_TRUE(s->write_sync(batch).has_value()) << "recovers";
      acknowledged += 50;
    }
  }
  EXPECT_GT(FaultyVfs::failures(), 0);
  EXPECT_GT(s->stats().failed_batches, 0);
  s->close();
  Db db = Db::open(path_, {});
  Statement& check = db.prepare("PRAGMA integrity_check");
  ASSERT_TRUE(check.step());
  EXPECT_EQ(check.text(0), "ok");
  check.reset();
  EXPECT_EQ(db.query_integer("SELECT count(*) FROM audit"), acknowledged);
}

// Verifies sync(): it answers after the writes queued before it, with the
// failure of any write queued after its mark.
TEST_F(StoreTest, SyncReportsFailuresSinceItsMark) {
  auto s = open();
  auto sync = [&](std::uint64_t since) {
    std::promise<std::expected<void, Error>> done;
    s->sync(since, [&](std::expected<void, Error> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  const std::uint64_t before = s->mark();
  FaultyVfs::fail(FaultyVfs::Fault::kDiskFull);
  EXPECT_FALSE(s->write_sync({AuditEntry{.at_ms = kStart, .action = "lost"}}).has_value());
  FaultyVfs::heal();
  auto failed = sync(before);
  ASSERT_FALSE(failed.has_value());
  EXPECT_EQ(failed.error().code, ErrorCode::kStoreUnavailable);
  const std::uint64_t after = s->mark();
  Gate gate(*s);
  std::atomic<bool> written{false};
  s->write({AuditEntry{.at_ms = kStart, .action = "kept"}},
           [&](std::expected<void, Error> r) { written = r.has_value(); });
  std::promise<std::expected<void, Error>> synced;
  s->sync(after, [&](std::expected<void, Error> r) {
    EXPECT_TRUE(written.load()) << "the write queued before the sync is done first";
    synced.set_value(std::move(r));
  });
  gate.release();
  EXPECT_TRUE(synced.get_future().get().has_value());
  EXPECT_EQ(count("SELECT count(*) FROM audit"), 1);
}

// Verifies that a record the schema refuses fails only its own write, not the
// writes that shared its transaction.
TEST_F(StoreTest, ARefusedRecordFailsOnlyItsOwnWrite) {
  auto s = open();
  ASSERT_TRUE(s->write_sync({SessionOpened{.pool = "p", .session = 1, .at_ms = kStart}}).has_value());
  Gate gate(*s);
  std::promise<std::expected<void, Error>> first, duplicate, last;
  s->write({AuditEntry{.at_ms = kStart, .action = "a"}},
           [&](std::expected<void, Error> r) { first.set_value(r); });
  s->write({SessionOpened{.pool = "p", .session = 1, .at_ms = kStart}},
           [&](std::expected<void, Error> r) { duplicate.set_value(r); });
  s->write({AuditEntry{.at_ms = kStart, .action = "b"}},
           [&](std::expected<void, Error> r) { last.set_value(r); });
  gate.release();
  EXPECT_TRUE(first.get_future().get().has_value());
  auto d = duplicate.get_future().get();
  ASSERT_FALSE(d.has_value());
  EXPECT_EQ(d.error().code, ErrorCode::kInternal);
  EXPECT_NE(d.error().message.find("UNIQUE"), std::string::npos) << d.error().message;
  EXPECT_TRUE(last.get_future().get().has_value());
  EXPECT_EQ(count("SELECT count(*) FROM audit"), 2);
}

// Verifies that a file at schema 1 is migrated forward with its rows kept,
// and that a file from a newer schema is refused, untouched.
TEST_F(StoreTest, MigratesOlderFilesAndRefusesNewerOnes) {
  {
    StoreOptions o = options();
    o.schema_version = 1;
    auto s = open(o);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->schema_version(), 1);
    EXPECT_EQ(s->instance_id(), "");
    ASSERT_TRUE(s->write_sync({SessionOpened{.pool = "p", .session = 3, .at_ms = kStart},
                               Charge{.at_ms = kStart, .day = utc_day(kStart), .pool = "p", .kind = "created",
                                      .micros = 10}})
                    .has_value());
  }
  EXPECT_EQ(count("SELECT count(*) FROM sqlite_master WHERE name = 'client_sessions'"), 0);
  {
    auto s = open();
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->schema_version(), kSchemaVersion);
    EXPECT_EQ(s->instance_id().size(), 16u);
    EXPECT_EQ(count("SELECT count(*) FROM sessions WHERE session = 3"), 1);
    EXPECT_EQ(count("SELECT micros FROM daily_costs"), 10);
    ASSERT_TRUE(s->write_sync({ClientSessionSaved{.id = "c", .document = "{}", .expires_ms = kStart + 1}})
                    .has_value());
  }
  {
    Db db = Db::open(path_, {});
    db.exec("PRAGMA user_version = 99");
  }
  auto newer = Store::open(options());
  ASSERT_FALSE(newer.has_value());
  EXPECT_NE(newer.error().message.find("newer poolkeeper (schema 99"), std::string::npos)
      << newer.error().message;
  EXPECT_EQ(count("SELECT count(*) FROM runs"), 2) << "the refused open recorded nothing";
}

// Verifies that sessions an earlier run left open are found on the next
// start, and are gone from the list once reconciled.
TEST_F(StoreTest, FindsSessionsLeftOpenByEarlierRuns) {
  std::int64_t first_run = 0;
  {
    auto s = open();
    first_run = s->run_id();
    ASSERT_TRUE(s->write_sync({Charge{.at_ms = kStart + 5, .day = utc_day(kStart), .pool = "p", .session = 2,
                                      .kind = "created", .micros = 40},
                               Charge{.at_ms = kStart + 7, .day = utc_day(kStart), .pool = "p", .session = 2,
                                      .kind = "alive", .micros = 2},
                               SessionOpened{.pool = "p", .session = 1, .external_id = "a", .at_ms = kStart},
                               SessionOpened{.pool = "p", .session = 2, .external_id = "b", .at_ms = kStart},
                               SessionClosed{.pool = "p", .session = 1, .at_ms = kStart + 10,
                                             .reason = "idle", .uses = 3, .cost_micros = 50}})
                    .has_value());
    auto none = s->open_sessions_from_earlier_runs();
    ASSERT_TRUE(none.has_value());
    EXPECT_TRUE(none->empty()) << "this run's sessions are not an earlier run's";
  }
  auto s = open();
  EXPECT_GT(s->run_id(), first_run);
  auto open_ones = s->open_sessions_from_earlier_runs();
  ASSERT_TRUE(open_ones.has_value());
  ASSERT_EQ(open_ones->size(), 1u);
  EXPECT_EQ((*open_ones)[0].run, first_run);
  EXPECT_EQ((*open_ones)[0].external_id, "b");
  EXPECT_EQ((*open_ones)[0].created_ms, kStart);
  EXPECT_EQ((*open_ones)[0].charged_micros, 42);
  EXPECT_EQ((*open_ones)[0].last_charge_ms, kStart + 7);
  ASSERT_TRUE(s->write_sync({SessionReconciled{.run = first_run, .pool = "p", .session = 2,
                                               .at_ms = kStart + 99, .reason = "reconciled",
                                               .cost_micros = 70}})
                  .has_value());
  EXPECT_TRUE(s->open_sessions_from_earlier_runs()->empty());
  EXPECT_EQ(count("SELECT sum(cost_micros) FROM sessions"), 120);
  EXPECT_EQ(count("SELECT uses FROM sessions WHERE session = 1"), 3);
}

// Verifies retention: detail rows older than `retention` go, newer ones and
// open sessions stay, daily totals stay until `daily_retention`, expired
// client sessions go.
TEST_F(StoreTest, RetentionDropsOldRowsOnly) {
  auto s = open();
  const std::int64_t old = kStart - 8 * kDayMs;
  const std::int64_t recent = kStart - 6 * kDayMs;
  std::vector<Record> rows;
  for (std::int64_t at : {old, recent}) {
    rows.push_back(LeaseEnded{.pool = "p", .session = 1, .lease = 1, .started_ms = at, .ended_ms = at});
    rows.push_back(AuditEntry{.at_ms = at, .action = "a"});
    rows.push_back(Charge{.at_ms = at, .day = utc_day(at), .pool = "p", .kind = "use", .micros = 1});
    rows.push_back(ScaleEvent{.at_ms = at, .pool = "p", .from = 1, .to = 2});
    rows.push_back(AlertRecord{.at_ms = at, .rule = "r", .state = "firing"});
  }
  rows.push_back(SessionOpened{.pool = "p", .session = 1, .at_ms = old - 30 * kDayMs});  // open: kept
  rows.push_back(SessionOpened{.pool = "p", .session = 2, .at_ms = old});
  rows.push_back(SessionClosed{.pool = "p", .session = 2, .at_ms = old});
  rows.push_back(Charge{.at_ms = old, .day = utc_day(kStart) - 500, .pool = "p", .kind = "use", .micros = 1});
  rows.push_back(ClientSessionSaved{.id = "gone", .document = "{}", .expires_ms = kStart});
  rows.push_back(ClientSessionSaved{.id = "kept", .document = "{}", .expires_ms = kStart + 1});
  ASSERT_TRUE(s->write_sync(std::move(rows)).has_value());
  ASSERT_TRUE(s->maintain().has_value());
  for (const char* table : {"leases", "audit", "charges", "scale_events", "alerts"}) {
    EXPECT_EQ(count(std::string("SELECT count(*) FROM ") + table), 1) << table;
  }
  EXPECT_EQ(count("SELECT count(*) FROM sessions"), 1);
  EXPECT_EQ(count("SELECT session FROM sessions"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM daily_costs"), 2) << "the 500-day-old total goes";
  auto clients = s->client_sessions();
  ASSERT_TRUE(clients.has_value());
  ASSERT_EQ(clients->size(), 1u);
  EXPECT_EQ((*clients)[0].id, "kept");
  // 5 old detail rows, the old total's own charge row, the closed session,
  // the old total, the expired client session.
  EXPECT_EQ(s->stats().retention_deleted, 5 + 1 + 1 + 1 + 1);
}

// Verifies that client sessions are saved, replaced and removed.
TEST_F(StoreTest, KeepsClientSessions) {
  auto s = open();
  ASSERT_TRUE(s->write_sync({ClientSessionSaved{.id = "t/c", .tenant = "t", .pool = "p",
                                                .document = R"({"a":1})", .updated_ms = kStart,
                                                .expires_ms = kStart + 1000},
                             ClientSessionSaved{.id = "t/c", .tenant = "t", .pool = "p",
                                                .document = R"({"a":2})", .updated_ms = kStart + 1,
                                                .expires_ms = kStart + 2000},
                             ClientSessionSaved{.id = "t/d", .document = "{}", .expires_ms = kStart + 10}})
                  .has_value());
  auto c = s->client_sessions();
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->size(), 2u);
  EXPECT_EQ((*c)[0].document, R"({"a":2})");
  EXPECT_EQ((*c)[0].expires_ms, kStart + 2000);
  ASSERT_TRUE(s->write_sync({ClientSessionRemoved{.id = "t/d"}}).has_value());
  EXPECT_EQ(s->client_sessions()->size(), 1u);
}

// Verifies that the WAL is truncated by maintenance, also after a reader held
// an old snapshot while it grew.
TEST_F(StoreTest, TheWalStaysBounded) {
  auto s = open();
  const fs::path wal = path_ + "-wal";
  auto fill = [&] {
    std::vector<Record> rows;
    for (int i = 0; i < 2000; ++i) {
      rows.push_back(AuditEntry{.at_ms = kStart, .action = "a", .detail = std::string(500, 'd')});
    }
    ASSERT_TRUE(s->write_sync(std::move(rows)).has_value());
  };
  {
    Db reader = Db::open(path_, {});
    reader.exec("BEGIN");
    EXPECT_EQ(reader.query_integer("SELECT count(*) FROM audit"), 0);
    fill();
    ASSERT_TRUE(s->maintain().has_value());
    EXPECT_GT(fs::file_size(wal), 1'000'000u) << "the reader's snapshot holds the WAL";
    EXPECT_EQ(reader.query_integer("SELECT count(*) FROM audit"), 0) << "and it still sees its snapshot";
    reader.exec("COMMIT");
  }
  fill();
  ASSERT_TRUE(s->maintain().has_value());
  EXPECT_EQ(fs::file_size(wal), 0u);
  EXPECT_EQ(count("SELECT count(*) FROM audit"), 4000);
}

// Verifies that a write after close is answered with shutdown, not lost silently.
TEST_F(StoreTest, WritesAfterCloseAreRefused) {
  auto s = open();
  s->close();
  auto r = s->write_sync({AuditEntry{.at_ms = kStart, .action = "late"}});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kShutdown);
  s->close();  // twice is fine
}

// Verifies that a file that cannot be opened is refused with its path.
TEST_F(StoreTest, RefusesAPathThatCannotBeOpened) {
  auto s = Store::open({.path = (dir_ / "missing" / "pk.db").string()});
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, ErrorCode::kStoreUnavailable);
  EXPECT_NE(s.error().message.find("missing/pk.db"), std::string::npos) << s.error().message;
}

}  // namespace
}  // namespace poolkeeper::store
