#include "store/store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <future>

#include "poolkeeper/clock.h"
#include "store/sqlite.h"

namespace poolkeeper::store {
namespace {

// Forward migrations: kMigrations[v - 1] takes a file from version v - 1 to
// v. Never edit one that has shipped; add the next.
constexpr const char* kMigrations[] = {
    // 1: the session lifecycle, the usage and cost ledger, the audit log.
    R"sql(
CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER,
  pid INTEGER NOT NULL
);
CREATE TABLE sessions (
  run INTEGER NOT NULL,
  pool TEXT NOT NULL,
  session INTEGER NOT NULL,
  external_id TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  closed_ms INTEGER,
  reason TEXT,
  uses INTEGER NOT NULL DEFAULT 0,
  cost_micros INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (run, pool, session)
);
CREATE INDEX sessions_open ON sessions (run) WHERE closed_ms IS NULL;
CREATE INDEX sessions_closed ON sessions (closed_ms) WHERE closed_ms IS NOT NULL;
CREATE TABLE leases (
  id INTEGER PRIMARY KEY,
  run INTEGER NOT NULL,
  pool TEXT NOT NULL,
  session INTEGER NOT NULL,
  lease INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  cost_micros INTEGER NOT NULL
);
CREATE INDEX leases_ended ON leases (ended_ms);
CREATE TABLE charges (
  id INTEGER PRIMARY KEY,
  run INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  day INTEGER NOT NULL,
  pool TEXT NOT NULL,
  tenant TEXT NOT NULL,
  session INTEGER NOT NULL,
  kind TEXT NOT NULL,
  micros INTEGER NOT NULL
);
CREATE INDEX charges_at ON charges (at_ms);
CREATE TABLE daily_costs (
  day INTEGER NOT NULL,
  pool TEXT NOT NULL,
  tenant TEXT NOT NULL,
  kind TEXT NOT NULL,
  micros INTEGER NOT NULL,
  count INTEGER NOT NULL,
  PRIMARY KEY (day, pool, tenant, kind)
) WITHOUT ROWID;
CREATE TABLE audit (
  id INTEGER PRIMARY KEY,
  at_ms INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  pool TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms);
)sql",
    // 2: client sessions survive a restart; scale events and alert history.
    R"sql(
CREATE TABLE client_sessions (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  pool TEXT NOT NULL,
  document TEXT NOT NULL,
  updated_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL
);
CREATE INDEX client_sessions_expiry ON client_sessions (expires_ms);
CREATE TABLE scale_events (
  id INTEGER PRIMARY KEY,
  at_ms INTEGER NOT NULL,
  pool TEXT NOT NULL,
  from_size INTEGER NOT NULL,
  to_size INTEGER NOT NULL,
  reason TEXT NOT NULL,
  actor TEXT NOT NULL
);
CREATE INDEX scale_events_at ON scale_events (at_ms);
CREATE TABLE alerts (
  id INTEGER PRIMARY KEY,
  at_ms INTEGER NOT NULL,
  rule TEXT NOT NULL,
  pool TEXT NOT NULL,
  state TEXT NOT NULL,
  value REAL NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX alerts_at ON alerts (at_ms);
)sql",
    // 3: a session's charges found without a scan (reconciliation at start).
    R"sql(
CREATE INDEX charges_session ON charges (run, pool, session);
)sql",
    // 4: the file's own name, which its daemon's paid sessions carry at their
    // provider (so a sweep after a crash finds them and only them).
    R"sql(
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(8))));
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion);

// Detail tables and the column retention reads. Sessions go only once
// closed; client sessions when they expire (not by age).
struct Retained {
  const char* table;
  const char* column;
};
constexpr Retained kRetained[] = {
    {"sessions", "closed_ms"}, {"leases", "ended_ms"},     {"charges", "at_ms"},
    {"audit", "at_ms"},        {"scale_events", "at_ms"}, {"alerts", "at_ms"},
};
constexpr int kDeleteChunk = 1000;
constexpr int kChunksPerRun = 100;  // at most this many chunks per table per maintenance run

Error unavailable(const SqliteError& e) {
  return Error(ErrorCode::kStoreUnavailable, std::string("the store could not commit: ") + e.what(),
               std::chrono::milliseconds(1000));
}

void answer(const Done& done, std::expected<void, Error> r) {
  if (!done) return;
  try {
    done(std::move(r));
  } catch (...) {
    // A callback's failure is its own; the store's thread goes on.
  }
}

std::int64_t as_i64(std::uint64_t v) { return static_cast<std::int64_t>(v); }

constexpr int kBusyTimeoutMs = 5000;
constexpr std::size_t kKeptFailures = 4096;

// Copies the WAL into the file and truncates it. It never waits: a reader
// still on an old snapshot keeps the frames it needs (SQLITE_BUSY), and the
// next checkpoint takes them.
void checkpoint(Db& db) {
  sqlite3_busy_timeout(db.handle(), 0);
  sqlite3_wal_checkpoint_v2(db.handle(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
  sqlite3_busy_timeout(db.handle(), kBusyTimeoutMs);
}

}  // namespace

std::int64_t utc_day(std::int64_t unix_ms) {
  constexpr std::int64_t kDayMs = 86'400'000;
  return unix_ms >= 0 ? unix_ms / kDayMs : -((-unix_ms + kDayMs - 1) / kDayMs);
}

std::expected<std::unique_ptr<Store>, Error> Store::open(StoreOptions options) {
  if (!options.now_ms) options.now_ms = wall_ms;
  if (options.schema_version < 1 || options.schema_version > kSchemaVersion) {
    return std::unexpected(Error(ErrorCode::kInvalidArgument, "schema_version: no such version"));
  }
  try {
    auto db = std::make_unique<Db>(Db::open(options.path, {.vfs = options.vfs, .create = true}));
    sqlite3_busy_timeout(db->handle(), kBusyTimeoutMs);
    Statement& wal = db->prepare("PRAGMA journal_mode = WAL");
    const bool in_wal = wal.step() && wal.text(0) == "wal";
    wal.reset();
    if (!in_wal) {
      return std::unexpected(Error(ErrorCode::kStoreUnavailable,
                                   "store " + options.path + ": the file cannot use WAL mode"));
    }
    // FULL: every commit reaches the disk before it is acknowledged. NORMAL
    // (in WAL mode): a commit survives the process, not the machine.
    db->exec(options.sync_to_disk ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
    db->exec("PRAGMA journal_size_limit = 67108864");
    const int found = static_cast<int>(db->query_integer("PRAGMA user_version").value_or(0));
    if (found > kSchemaVersion) {
      return std::unexpected(Error(
          ErrorCode::kStoreUnavailable,
          "store " + options.path + ": written by a newer poolkeeper (schema " +
              std::to_string(found) + "; this one knows up to " + std::to_string(kSchemaVersion) +
              ")"));
    }
    int version = found;
    for (int v = found + 1; v <= options.schema_version; ++v) {
      db->exec("BEGIN IMMEDIATE");
      try {
        db->exec(kMigrations[v - 1]);
        db->exec("PRAGMA user_version = " + std::to_string(v));
        db->exec("COMMIT");
      } catch (...) {
        try {
          db->exec("ROLLBACK");
        } catch (const SqliteError&) {
        }
        throw;
      }
      version = v;
    }
    std::string instance;
    if (version >= 4) {
      Statement& q = db->prepare("SELECT value FROM meta WHERE key = 'instance'");
      if (q.step()) instance = q.text(0);
      q.reset();
    }
    Statement& run = db->prepare("INSERT INTO runs (started_ms, pid) VALUES (?, ?)");
    run.bind(1, options.now_ms()).bind(2, std::int64_t{::getpid()}).run();
    const std::int64_t run_id = sqlite3_last_insert_rowid(db->handle());
    auto store = std::unique_ptr<Store>(new Store(std::move(options), std::move(db), run_id, version));
    store->instance_ = std::move(instance);
    return store;
  } catch (const SqliteError& e) {
    return std::unexpected(
        Error(ErrorCode::kStoreUnavailable, "store " + options.path + ": " + e.what()));
  }
}

Store::Store(StoreOptions options, std::unique_ptr<Db> db, std::int64_t run, int version)
    : options_(std::move(options)), db_(std::move(db)), run_(run), version_(version) {
  thread_ = std::thread([this] { loop(); });
}

Store::~Store() { close(); }

void Store::close() {
  {
    std::lock_guard lock(mu_);
    if (closing_) {
      if (!thread_.joinable()) return;
    }
    closing_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Store::write(std::vector<Record> records, Done done) {
  if (records.empty()) {
    answer(done, {});
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (!closing_) {
      jobs_.push_back(
          Job{.records = std::move(records), .fn = {}, .done = std::move(done), .seq = next_seq_++});
      wake_.notify_one();
      return;
    }
  }
  answer(done, std::unexpected(Error(ErrorCode::kShutdown, "the store is closed")));
}

std::uint64_t Store::mark() const {
  std::lock_guard lock(mu_);
  return next_seq_ - 1;
}

void Store::sync(std::uint64_t since, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!closing_) {
      // A barrier rides along with the writes around it (it does not end a
      // transaction's batch), and is answered once the batch is committed.
      jobs_.push_back(Job{.records = {},
                          .fn = {},
                          .done = std::move(done),
                          .seq = next_seq_++,
                          .barrier = true,
                          .since = since});
      ++barriers_queued_;
      wake_.notify_one();
      return;
    }
  }
  answer(done, std::unexpected(Error(ErrorCode::kShutdown, "the store is closed")));
}

void Store::query(std::function<void(Db&)> fn, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!closing_) {
      jobs_.push_back(Job{.records = {}, .fn = std::move(fn), .done = std::move(done), .seq = next_seq_++});
      wake_.notify_one();
      return;
    }
  }
  answer(done, std::unexpected(Error(ErrorCode::kShutdown, "the store is closed")));
}

std::expected<void, Error> Store::outcome(const Job& barrier) const {
  std::lock_guard lock(mu_);
  auto it = failed_.upper_bound(barrier.since);
  if (it != failed_.end() && it->first < barrier.seq) return std::unexpected(it->second);
  return {};
}

void Store::loop() {
  for (;;) {
    std::vector<Job> batch;
    // Barriers with no write queued before them: every write they wait for
    // is done (the thread takes jobs in order), so they are answered now
    // rather than after the next commit.
    std::vector<Job> ready;
    {
      std::unique_lock lock(mu_);
      wake_.wait_for(lock, std::min<std::chrono::milliseconds>(options_.maintenance_every,
                                                               std::chrono::seconds(10)),
                     [&] { return closing_ || !jobs_.empty(); });
      if (jobs_.empty() && closing_) break;
      while (!jobs_.empty() && jobs_.front().barrier) {
        --barriers_queued_;
        ready.push_back(std::move(jobs_.front()));
        jobs_.pop_front();
      }
      auto is_query = [](const Job& j) { return j.records.empty() && !j.barrier; };
      if (!jobs_.empty() && !is_query(jobs_.front())) {
        // Every write queued now goes into one transaction, with the
        // barriers queued among them.
        std::size_t records = 0;
        bool waited = false;
        for (;;) {
          while (!jobs_.empty() && !is_query(jobs_.front()) &&
                 (records == 0 || records + jobs_.front().records.size() <= options_.max_batch)) {
            records += jobs_.front().records.size();
            if (jobs_.front().barrier) --barriers_queued_;
            batch.push_back(std::move(jobs_.front()));
            jobs_.pop_front();
          }
          const bool awaited = std::any_of(batch.begin(), batch.end(), [](const Job& j) { return j.barrier; });
          // Nobody waits on these writes: a moment for more to share the commit.
          if (waited || awaited || closing_ || options_.linger.count() <= 0 ||
              records >= options_.max_batch || (!jobs_.empty() && is_query(jobs_.front()))) {
            break;
          }
          waited = true;
          wake_.wait_for(lock, options_.linger, [&] { return closing_ || barriers_queued_ > 0; });
        }
      } else if (!jobs_.empty()) {
        batch.push_back(std::move(jobs_.front()));
        jobs_.pop_front();
      }
    }
    for (const Job& b : ready) answer(b.done, outcome(b));
    if (!batch.empty() && batch.front().records.empty() && !batch.front().barrier) {
      Job& q = batch.front();
      try {
        q.fn(*db_);
        answer(q.done, {});
      } catch (const SqliteError& e) {
        answer(q.done, std::unexpected(Error(e.is_io() ? ErrorCode::kStoreUnavailable
                                                       : ErrorCode::kInternal,
                                             std::string("store query: ") + e.what())));
      } catch (const std::exception& e) {
        answer(q.done, std::unexpected(Error(ErrorCode::kInternal, e.what())));
      }
    } else if (!batch.empty()) {
      std::vector<Job> writes, barriers;
      for (Job& j : batch) (j.barrier ? barriers : writes).push_back(std::move(j));
      if (!writes.empty()) commit(writes);
      for (const Job& b : barriers) answer(b.done, outcome(b));
    }
    if (options_.now_ms() >= next_maintenance_ms_) run_maintenance(*db_);
  }
  // Closing: the run ends cleanly and the WAL is folded into the file.
  try {
    Statement& end = db_->prepare("UPDATE runs SET ended_ms = ? WHERE id = ?");
    end.bind(1, options_.now_ms()).bind(2, run_).run();
    checkpoint(*db_);
  } catch (const SqliteError&) {
    // The next start sees this run without an end, as after a crash.
  }
  db_.reset();
}

void Store::roll_back() {
  if (sqlite3_get_autocommit(db_->handle())) return;
  try {
    db_->exec("ROLLBACK");
  } catch (const std::exception&) {
    // Nothing more to undo.
  }
}

void Store::fail(const std::vector<Job>& batch, const Error& error) {
  {
    std::lock_guard lock(mu_);
    ++stats_.failed_batches;
    for (const Job& j : batch) failed_.emplace(j.seq, error);
    while (failed_.size() > kKeptFailures) failed_.erase(failed_.begin());
  }
  for (const Job& j : batch) answer(j.done, std::unexpected(error));
}

void Store::commit(std::vector<Job>& batch) {
  std::int64_t records = 0;
  for (const Job& j : batch) records += static_cast<std::int64_t>(j.records.size());
  try {
    db_->exec("BEGIN IMMEDIATE");
    for (const Job& j : batch) {
      for (const Record& r : j.records) apply(*db_, r);
    }
    db_->exec("COMMIT");
  } catch (const SqliteError& e) {
    roll_back();
    if (!e.is_io() && batch.size() > 1) {
      // One writer's bad record must not fail the others: each alone.
      for (Job& j : batch) {
        std::vector<Job> one;
        one.push_back(std::move(j));
        commit(one);
      }
      return;
    }
    fail(batch, e.is_io() ? unavailable(e)
                          : Error(ErrorCode::kInternal,
                                  std::string("the store refused the records: ") + e.what()));
    return;
  } catch (const std::exception& e) {
    // Out of memory, most likely: nothing of the batch is written, and each
    // writer and waiter hears so (rather than the store's thread ending the
    // process).
    roll_back();
    fail(batch, Error(ErrorCode::kInternal, std::string("store commit: ") + e.what()));
    return;
  }
  {
    std::lock_guard lock(mu_);
    ++stats_.batches;
    stats_.records += records;
    stats_.largest_batch = std::max(stats_.largest_batch, records);
  }
  for (const Job& j : batch) answer(j.done, {});
}

void Store::apply(Db& db, const Record& record) {
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, SessionOpened>) {
          db.prepare(
                "INSERT INTO sessions (run, pool, session, external_id, created_ms) "
                "VALUES (?, ?, ?, ?, ?)")
              .bind(1, run_)
              .bind(2, r.pool)
              .bind(3, as_i64(r.session))
              .bind(4, r.external_id)
              .bind(5, r.at_ms)
              .run();
        } else if constexpr (std::is_same_v<T, SessionSwept>) {
          db.prepare(
                "INSERT OR IGNORE INTO sessions (run, pool, session, external_id, created_ms, "
                "closed_ms, reason, cost_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
              .bind(1, r.run)
              .bind(2, r.pool)
              .bind(3, as_i64(r.session))
              .bind(4, r.external_id)
              .bind(5, r.created_ms)
              .bind(6, r.closed_ms)
              .bind(7, r.reason)
              .bind(8, r.cost_micros)
              .run();
        } else if constexpr (std::is_same_v<T, SessionClosed> || std::is_same_v<T, SessionReconciled>) {
          std::int64_t run = run_;
          std::int64_t uses = -1;  // kept as it is
          if constexpr (std::is_same_v<T, SessionReconciled>) {
            run = r.run;
          } else {
            uses = r.uses;
          }
          db.prepare(
                "UPDATE sessions SET closed_ms = ?, reason = ?, cost_micros = ?, "
                "uses = CASE WHEN ? < 0 THEN uses ELSE ? END "
                "WHERE run = ? AND pool = ? AND session = ? AND closed_ms IS NULL")
              .bind(1, r.at_ms)
              .bind(2, r.reason)
              .bind(3, r.cost_micros)
              .bind(4, uses)
              .bind(5, uses)
              .bind(6, run)
              .bind(7, r.pool)
              .bind(8, as_i64(r.session))
              .run();
        } else if constexpr (std::is_same_v<T, LeaseEnded>) {
          db.prepare(
                "INSERT INTO leases (run, pool, session, lease, tenant, started_ms, ended_ms, "
                "outcome, cost_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
              .bind(1, run_)
              .bind(2, r.pool)
              .bind(3, as_i64(r.session))
              .bind(4, as_i64(r.lease))
              .bind(5, r.tenant)
              .bind(6, r.started_ms)
              .bind(7, r.ended_ms)
              .bind(8, r.outcome)
              .bind(9, r.cost_micros)
              .run();
        } else if constexpr (std::is_same_v<T, Charge>) {
          db.prepare(
                "INSERT INTO charges (run, at_ms, day, pool, tenant, session, kind, micros) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
              .bind(1, run_)
              .bind(2, r.at_ms)
              .bind(3, r.day)
              .bind(4, r.pool)
              .bind(5, r.tenant)
              .bind(6, as_i64(r.session))
              .bind(7, r.kind)
              .bind(8, r.micros)
              .run();
          db.prepare(
                "INSERT INTO daily_costs (day, pool, tenant, kind, micros, count) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (day, pool, tenant, kind) "
                "DO UPDATE SET micros = micros + excluded.micros, count = count + 1")
              .bind(1, r.day)
              .bind(2, r.pool)
              .bind(3, r.tenant)
              .bind(4, r.kind)
              .bind(5, r.micros)
              .run();
        } else if constexpr (std::is_same_v<T, AuditEntry>) {
          db.prepare(
                "INSERT INTO audit (at_ms, actor, action, pool, detail) VALUES (?, ?, ?, ?, ?)")
              .bind(1, r.at_ms)
              .bind(2, r.actor)
              .bind(3, r.action)
              .bind(4, r.pool)
              .bind(5, r.detail.empty() ? std::string_view("{}") : std::string_view(r.detail))
              .run();
        } else if constexpr (std::is_same_v<T, ClientSessionSaved>) {
          db.prepare(
                "INSERT INTO client_sessions (id, tenant, pool, document, updated_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, "
                "pool = excluded.pool, document = excluded.document, "
                "updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms")
              .bind(1, r.id)
              .bind(2, r.tenant)
              .bind(3, r.pool)
              .bind(4, r.document)
              .bind(5, r.updated_ms)
              .bind(6, r.expires_ms)
              .run();
        } else if constexpr (std::is_same_v<T, ClientSessionRemoved>) {
          db.prepare("DELETE FROM client_sessions WHERE id = ?").bind(1, r.id).run();
        } else if constexpr (std::is_same_v<T, ScaleEvent>) {
          db.prepare(
                "INSERT INTO scale_events (at_ms, pool, from_size, to_size, reason, actor) "
                "VALUES (?, ?, ?, ?, ?, ?)")
              .bind(1, r.at_ms)
              .bind(2, r.pool)
              .bind(3, r.from)
              .bind(4, r.to)
              .bind(5, r.reason)
              .bind(6, r.actor)
              .run();
        } else if constexpr (std::is_same_v<T, AlertRecord>) {
          db.prepare(
                "INSERT INTO alerts (at_ms, rule, pool, state, value, message) "
                "VALUES (?, ?, ?, ?, ?, ?)")
              .bind(1, r.at_ms)
              .bind(2, r.rule)
              .bind(3, r.pool)
              .bind(4, r.state)
              .bind(5, r.value)
              .bind(6, r.message)
              .run();
        }
      },
      record);
}

void Store::run_maintenance(Db& db) {
  const std::int64_t now = options_.now_ms();
  next_maintenance_ms_ = now + options_.maintenance_every.count();
  std::int64_t deleted = 0;
  try {
    const std::int64_t cutoff = now - options_.retention.count();
    for (const Retained& t : kRetained) {
      if (version_ < 2 && (std::string_view(t.table) == "scale_events" ||
                           std::string_view(t.table) == "alerts")) {
        continue;
      }
      const std::string sql = std::string("DELETE FROM ") + t.table + " WHERE rowid IN (SELECT rowid FROM " +
                              t.table + " WHERE " + t.column + " < ? LIMIT " +
                              std::to_string(kDeleteChunk) + ")";
      for (int chunk = 0; chunk < kChunksPerRun; ++chunk) {
        db.prepare(sql).bind(1, cutoff).run();
        const std::int64_t n = db.changes();
        deleted += n;
        if (n < kDeleteChunk) break;
      }
    }
    if (version_ >= 2) {
      db.prepare("DELETE FROM client_sessions WHERE expires_ms <= ?").bind(1, now).run();
      deleted += db.changes();
    }
    db.prepare("DELETE FROM daily_costs WHERE day < ?")
        .bind(1, utc_day(now - options_.daily_retention.count()))
        .run();
    deleted += db.changes();
    checkpoint(db);
  } catch (const SqliteError&) {
    // Retention is retried at the next run; writes report their own errors.
  }
  std::lock_guard lock(mu_);
  stats_.retention_deleted += deleted;
  ++stats_.checkpoints;
}

std::expected<void, Error> Store::wait(std::function<void(Db&)> fn) {
  std::promise<std::expected<void, Error>> done;
  auto result = done.get_future();
  query(std::move(fn), [&done](std::expected<void, Error> r) { done.set_value(std::move(r)); });
  return result.get();
}

std::expected<void, Error> Store::write_sync(std::vector<Record> records) {
  std::promise<std::expected<void, Error>> done;
  auto result = done.get_future();
  write(std::move(records), [&done](std::expected<void, Error> r) { done.set_value(std::move(r)); });
  return result.get();
}

std::expected<std::vector<OpenSession>, Error> Store::open_sessions_from_earlier_runs() {
  std::vector<OpenSession> out;
  auto r = wait([&](Db& db) {
    Statement& s = db.prepare(
        "SELECT s.run, s.pool, s.session, s.external_id, s.created_ms, "
        "coalesce(sum(c.micros), 0), coalesce(max(c.at_ms), s.created_ms) "
        "FROM sessions s LEFT JOIN charges c "
        "ON c.run = s.run AND c.pool = s.pool AND c.session = s.session "
        "WHERE s.closed_ms IS NULL AND s.run < ? "
        "GROUP BY s.run, s.pool, s.session ORDER BY s.run, s.pool, s.session");
    s.bind(1, run_);
    while (s.step()) {
      out.push_back(OpenSession{.run = s.integer(0),
                                .pool = s.text(1),
                                .session = static_cast<std::uint64_t>(s.integer(2)),
                                .external_id = s.text(3),
                                .created_ms = s.integer(4),
                                .charged_micros = s.integer(5),
                                .last_charge_ms = s.integer(6)});
    }
    s.reset();
  });
  if (!r) return std::unexpected(r.error());
  return out;
}

std::expected<std::vector<DailyCost>, Error> Store::daily_costs(std::int64_t from_day,
                                                               std::int64_t to_day) {
  std::vector<DailyCost> out;
  auto r = wait([&](Db& db) {
    Statement& s = db.prepare(
        "SELECT day, pool, tenant, kind, micros, count FROM daily_costs "
        "WHERE day BETWEEN ? AND ? ORDER BY day, pool, tenant, kind");
    s.bind(1, from_day).bind(2, to_day);
    while (s.step()) {
      out.push_back(DailyCost{.day = s.integer(0),
                              .pool = s.text(1),
                              .tenant = s.text(2),
                              .kind = s.text(3),
                              .micros = s.integer(4),
                              .count = s.integer(5)});
    }
    s.reset();
  });
  if (!r) return std::unexpected(r.error());
  return out;
}

std::expected<std::vector<PoolActivity>, Error> Store::activity(std::int64_t from_ms, std::int64_t to_ms) {
  std::map<std::string, PoolActivity> by_pool;
  auto r = wait([&](Db& db) {
    Statement& created = db.prepare(
        "SELECT pool, count(*) FROM sessions WHERE created_ms >= ? AND created_ms < ? "
        "AND reason IS NOT 'swept' GROUP BY pool");  // as the ledger counts them
    created.bind(1, from_ms).bind(2, to_ms);
    while (created.step()) by_pool[created.text(0)].sessions_created = created.integer(1);
    created.reset();
    // Rows written before outcomes were kept say 'released' for a lease its
    // holder gave back.
    Statement& leases = db.prepare(
        "SELECT pool, count(*), sum(outcome IN ('ok', 'released')), sum(ended_ms - started_ms) FROM leases "
        "WHERE ended_ms >= ? AND ended_ms < ? GROUP BY pool");
    leases.bind(1, from_ms).bind(2, to_ms);
    while (leases.step()) {
      PoolActivity& a = by_pool[leases.text(0)];
      a.leases = leases.integer(1);
      a.leases_ok = leases.integer(2);
      a.lease_ms = leases.integer(3);
    }
    leases.reset();
  });
  if (!r) return std::unexpected(r.error());
  std::vector<PoolActivity> out;
  for (auto& [pool, a] : by_pool) {
    a.pool = pool;
    out.push_back(std::move(a));
  }
  return out;
}

std::expected<std::vector<AlertRecord>, Error> Store::recent_alerts(std::size_t limit) {
  std::vector<AlertRecord> out;
  auto r = wait([&](Db& db) {
    Statement& s = db.prepare(
        "SELECT at_ms, rule, pool, state, value, message FROM alerts ORDER BY id DESC LIMIT ?");
    s.bind(1, static_cast<std::int64_t>(limit));
    while (s.step()) {
      out.push_back(AlertRecord{.at_ms = s.integer(0),
                                .rule = s.text(1),
                                .pool = s.text(2),
                                .state = s.text(3),
                                .value = s.real(4),
                                .message = s.text(5)});
    }
    s.reset();
  });
  if (!r) return std::unexpected(r.error());
  std::reverse(out.begin(), out.end());  // oldest first
  return out;
}

std::expected<std::vector<ClientSessionSaved>, Error> Store::client_sessions() {
  std::vector<ClientSessionSaved> out;
  const std::int64_t now = options_.now_ms();
  auto r = wait([&](Db& db) {
    Statement& s = db.prepare(
        "SELECT id, tenant, pool, document, updated_ms, expires_ms FROM client_sessions "
        "WHERE expires_ms > ? ORDER BY id");
    s.bind(1, now);
    while (s.step()) {
      out.push_back(ClientSessionSaved{.id = s.text(0),
                                       .tenant = s.text(1),
                                       .pool = s.text(2),
                                       .document = s.text(3),
                                       .updated_ms = s.integer(4),
                                       .expires_ms = s.integer(5)});
    }
    s.reset();
  });
  if (!r) return std::unexpected(r.error());
  return out;
}

std::expected<void, Error> Store::maintain() {
  return wait([this](Db& db) { run_maintenance(db); });
}

StoreStats Store::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace poolkeeper::store
