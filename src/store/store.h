// The durable store: one SQLite file in WAL mode that keeps the session
// lifecycle, the usage and cost ledger, daily cost totals, the audit log,
// client sessions, scale events and alert history.
//
// Writes are records handed to write() with a callback; one thread commits
// everything queued in one transaction (group commit) with synchronous=FULL,
// and only then calls each callback with success. A callback that gets an
// error (kStoreUnavailable: an I/O error, a full disk) knows its records were
// not written; nothing else in that transaction was either. The next batch
// tries again, so the store recovers when the file system does.
//
// Queries run on the same thread between batches, so they see every write
// acknowledged before them. Retention (detail rows older than `retention`,
// daily totals older than `daily_retention`) and WAL checkpoints run there
// too, in small transactions between batches.
//
// Every time is UNIX milliseconds (wall time), every amount integer
// micro-dollars. Days are UTC days since 1970-01-01.
//
// Thread-safety: all public methods may be called from any thread. Callbacks
// run on the store's thread: post them on to where they belong.
//
//   auto store = Store::open({.path = "poolkeeper.db"});
//   if (!store) fail(store.error().message);
//   (*store)->write({SessionOpened{.pool = "py", .session = 7, .at_ms = now}},
//                   [](std::expected<void, Error> r) { ... });
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "poolkeeper/error.h"

namespace poolkeeper::store {

class Db;

// The schema this build writes; older files are migrated forward on open.
inline constexpr int kSchemaVersion = 4;

struct SessionOpened {
  std::string pool;
  std::uint64_t session = 0;
  std::string external_id{};  // the provider's id of a remote session, a pid, ...
  std::int64_t at_ms = 0;
};

struct SessionClosed {
  std::string pool;
  std::uint64_t session = 0;
  std::int64_t at_ms = 0;
  std::string reason{};
  std::int64_t uses = 0;
  std::int64_t cost_micros = 0;  // the session's whole cost
};

// A session a crashed run left open, closed on a later start. `run` is the
// run that opened it (see OpenSession).
struct SessionReconciled {
  std::int64_t run = 0;
  std::string pool;
  std::uint64_t session = 0;
  std::int64_t at_ms = 0;
  std::string reason{};
  std::int64_t cost_micros = 0;
};

// A paid session no row knew of, deleted at its provider: one closed row.
// Found by a sweep (the run that made it died before writing it, or never
// heard the create's answer), or made for a start that failed. `run` and
// `session` come from the tag it carried; a row that exists stays.
struct SessionSwept {
  std::int64_t run = 0;
  std::string pool;
  std::uint64_t session = 0;
  std::string external_id;
  std::int64_t created_ms = 0;
  std::int64_t closed_ms = 0;
  std::int64_t cost_micros = 0;
  std::string reason = "swept";
};

struct LeaseEnded {
  std::string pool;
  std::uint64_t session = 0;
  std::uint64_t lease = 0;
  std::string tenant{};
  std::int64_t started_ms = 0;
  std::int64_t ended_ms = 0;
  std::string outcome{};  // ok, broken, error, reclaimed, ...
  std::int64_t cost_micros = 0;
};

// One line of the cost ledger; also added to the day's totals.
struct Charge {
  std::int64_t at_ms = 0;
  std::int64_t day = 0;  // the UTC day the amount belongs to
  std::string pool;
  std::string tenant{};
  std::uint64_t session = 0;
  std::string kind;  // created, alive, leased, use
  std::int64_t micros = 0;
};

struct AuditEntry {
  std::int64_t at_ms = 0;
  std::string actor{};   // a tenant, "admin", "daemon"
  std::string action;    // lease, release, scale, pause, cleanup, reload, ...
  std::string pool{};
  std::string detail{};  // JSON text
};

struct ClientSessionSaved {
  std::string id;  // scoped by tenant
  std::string tenant{};
  std::string pool{};
  std::string document{};  // JSON text
  std::int64_t updated_ms = 0;
  std::int64_t expires_ms = 0;
};

struct ClientSessionRemoved {
  std::string id;
};

struct ScaleEvent {
  std::int64_t at_ms = 0;
  std::string pool;
  std::int64_t from = 0;
  std::int64_t to = 0;
  std::string reason{};
  std::string actor{};
};

struct AlertRecord {
  std::int64_t at_ms = 0;
  std::string rule;
  std::string pool{};
  std::string state;  // pending, firing, resolved
  double value = 0;
  std::string message{};
};

using Record = std::variant<SessionOpened, SessionClosed, SessionReconciled, SessionSwept, LeaseEnded, Charge,
                            AuditEntry, ClientSessionSaved, ClientSessionRemoved, ScaleEvent,
                            AlertRecord>;

using Done = std::function<void(std::expected<void, Error>)>;

// A session still open in the file that an earlier run opened.
struct OpenSession {
  std::int64_t run = 0;
  std::string pool;
  std::uint64_t session = 0;
  std::string external_id;
  std::int64_t created_ms = 0;
  std::int64_t charged_micros = 0;  // its charges in the ledger
  std::int64_t last_charge_ms = 0;  // the latest of them (created_ms without any)
};

struct DailyCost {
  std::int64_t day = 0;
  std::string pool;
  std::string tenant;
  std::string kind;
  std::int64_t micros = 0;
  std::int64_t count = 0;
};

// A pool's activity over a stretch of time (a day so far): what the cost
// report's averages are taken over.
struct PoolActivity {
  std::string pool;
  std::int64_t sessions_created = 0;
  std::int64_t leases = 0;     // leases that ended
  std::int64_t leases_ok = 0;  // of them, given back as fine
  std::int64_t lease_ms = 0;   // their time leased
};

struct StoreStats {
  std::int64_t batches = 0;        // transactions committed for writes
  std::int64_t records = 0;        // records committed
  std::int64_t failed_batches = 0;
  std::int64_t largest_batch = 0;  // records in the largest transaction
  std::int64_t retention_deleted = 0;
  std::int64_t checkpoints = 0;
};

struct StoreOptions {
  std::string path = "poolkeeper.db";
  std::string vfs{};  // a registered SQLite VFS (tests inject faults with one)
  // true: a commit is on disk when it returns (survives a power loss);
  // false: it survives the daemon's crash but not the machine's (WAL with
  // synchronous=NORMAL), and costs no fsync per commit.
  bool sync_to_disk = true;
  std::chrono::milliseconds retention{std::chrono::hours(24 * 7)};
  std::chrono::milliseconds daily_retention{std::chrono::hours(24 * 400)};
  std::chrono::milliseconds maintenance_every{std::chrono::minutes(10)};
  std::size_t max_batch = 4096;  // records in one transaction at most
  // Writes nobody waits on (no sync() queued) wait this long for more to
  // share their commit.
  std::chrono::milliseconds linger{10};
  // The schema version to migrate to (tests build older files with it).
  int schema_version = kSchemaVersion;
  // Wall time in UNIX milliseconds; tests pass their own.
  std::function<std::int64_t()> now_ms{};
};

class Store {
 public:
  // Opens (creating when missing) and migrates the file, records this run
  // and starts the store's thread. A file from a newer schema is refused.
  static std::expected<std::unique_ptr<Store>, Error> open(StoreOptions options);

  // Commits what is queued, then stops the thread and closes the file;
  // writes after close() are answered with kShutdown.
  ~Store();
  void close();

  // Queues records for the next transaction; `done` runs once they are
  // committed, or with the error that kept them out.
  void write(std::vector<Record> records, Done done);

  // Runs fn on the store's thread with the connection, between batches; the
  // SqliteError it may throw is answered as an Error.
  void query(std::function<void(Db&)> fn, Done done);

  // A point in the queue: writes handed to write() before it have a lower
  // sequence number.
  std::uint64_t mark() const;
  // Answers once every write queued before now is done: with success when
  // none queued after `since` (a mark()) failed, else with that failure. A
  // request whose effects were written in between waits on this before it
  // answers, so what it acknowledges is on disk.
  void sync(std::uint64_t since, Done done);

  // Blocking conveniences (tests, the CLI, start-up): wait for the thread.
  std::expected<void, Error> write_sync(std::vector<Record> records);
  std::expected<std::vector<OpenSession>, Error> open_sessions_from_earlier_runs();
  std::expected<std::vector<DailyCost>, Error> daily_costs(std::int64_t from_day, std::int64_t to_day);
  std::expected<std::vector<ClientSessionSaved>, Error> client_sessions();
  // Per pool, the sessions created and the leases that ended in
  // [from_ms, to_ms).
  std::expected<std::vector<PoolActivity>, Error> activity(std::int64_t from_ms, std::int64_t to_ms);
  // The last `limit` alert changes, oldest first.
  std::expected<std::vector<AlertRecord>, Error> recent_alerts(std::size_t limit);

  // Runs retention and a checkpoint now (they also run every maintenance_every).
  std::expected<void, Error> maintain();

  std::int64_t run_id() const { return run_; }
  int schema_version() const { return version_; }
  // The file's random name (16 hex digits, made when it was created; empty
  // below schema 4).
  const std::string& instance_id() const { return instance_; }
  StoreStats stats() const;

 private:
  struct Job {
    std::vector<Record> records;  // a write when not empty
    std::function<void(Db&)> fn;  // else a query
    Done done;
    std::uint64_t seq = 0;
    bool barrier = false;     // a sync(): answered after the writes before it
    std::uint64_t since = 0;  // its mark
  };

  Store(StoreOptions options, std::unique_ptr<Db> db, std::int64_t run, int version);
  void loop();
  void commit(std::vector<Job>& batch);  // answers every write in it
  void roll_back();  // the open transaction, if any
  void fail(const std::vector<Job>& batch, const Error& error);
  // A barrier's answer: the failure of a write between its mark and it, if any.
  std::expected<void, Error> outcome(const Job& barrier) const;
  void apply(Db& db, const Record& r);
  void run_maintenance(Db& db);
  std::expected<void, Error> wait(std::function<void(Db&)> fn);

  StoreOptions options_;
  std::unique_ptr<Db> db_;  // used by the store's thread only
  std::int64_t run_ = 0;
  int version_ = 0;
  std::string instance_;
  std::int64_t next_maintenance_ms_ = 0;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool closing_ = false;
  std::uint64_t next_seq_ = 1;
  std::size_t barriers_queued_ = 0;
  // Sequence numbers of failed writes, the most recent kKeptFailures, with
  // the error of each.
  std::map<std::uint64_t, Error> failed_;
  StoreStats stats_;
  std::thread thread_;
};

// The UTC day of a UNIX time in milliseconds (floor, also before 1970).
std::int64_t utc_day(std::int64_t unix_ms);

}  // namespace poolkeeper::store
