#include "testing/faulty_vfs.h"

#include <sqlite3.h>

#include <atomic>
#include <mutex>

namespace poolkeeper::testing {
namespace {

struct FaultyFile {
  sqlite3_file base;
  sqlite3_file* real;  // the default VFS's file, allocated right after this struct
};

std::mutex mu;
bool armed = false;
FaultyVfs::Fault fault = FaultyVfs::Fault::kIoError;
int passes_left = 0;
int fails_left = 0;
std::atomic<int> injected{0};
sqlite3_vfs* root = nullptr;
sqlite3_vfs faulty{};

// Whether this write or sync fails, and with which code.
int injected_code(int io_code) {
  std::lock_guard lock(mu);
  if (!armed) return SQLITE_OK;
  if (passes_left > 0) {
    --passes_left;
    return SQLITE_OK;
  }
  if (fails_left == 0) return SQLITE_OK;
  if (fails_left > 0) --fails_left;
  ++injected;
  return fault == FaultyVfs::Fault::kDiskFull ? SQLITE_FULL : io_code;
}

sqlite3_file* real(sqlite3_file* f) { return reinterpret_cast<FaultyFile*>(f)->real; }

int x_close(sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); }
int x_read(sqlite3_file* f, void* p, int n, sqlite3_int64 off) {
  return real(f)->pMethods->xRead(real(f), p, n, off);
}
int x_write(sqlite3_file* f, const void* p, int n, sqlite3_int64 off) {
  if (int rc = injected_code(SQLITE_IOERR_WRITE); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xWrite(real(f), p, n, off);
}
int x_truncate(sqlite3_file* f, sqlite3_int64 size) {
  return real(f)->pMethods->xTruncate(real(f), size);
}
int x_sync(sqlite3_file* f, int flags) {
  if (int rc = injected_code(SQLITE_IOERR_FSYNC); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xSync(real(f), flags);
}
int x_file_size(sqlite3_file* f, sqlite3_int64* size) {
  return real(f)->pMethods->xFileSize(real(f), size);
}
int x_lock(sqlite3_file* f, int level) { return real(f)->pMethods->xLock(real(f), level); }
int x_unlock(sqlite3_file* f, int level) { return real(f)->pMethods->xUnlock(real(f), level); }
int x_check_reserved(sqlite3_file* f, int* out) {
  return real(f)->pMethods->xCheckReservedLock(real(f), out);
}
int x_file_control(sqlite3_file* f, int op, void* arg) {
  return real(f)->pMethods->xFileControl(real(f), op, arg);
}
int x_sector_size(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }
int x_device_characteristics(sqlite3_file* f) {
  return real(f)->pMethods->xDeviceCharacteristics(real(f));
}
int x_shm_map(sqlite3_file* f, int page, int size, int extend, void volatile** out) {
  return real(f)->pMethods->xShmMap(real(f), page, size, extend, out);
}
int x_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
}
void x_shm_barrier(sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); }
int x_shm_unmap(sqlite3_file* f, int remove) { return real(f)->pMethods->xShmUnmap(real(f), remove); }
int x_fetch(sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
  return real(f)->pMethods->xFetch(real(f), off, n, out);
}
int x_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  return real(f)->pMethods->xUnfetch(real(f), off, p);
}

const sqlite3_io_methods methods = {
    3,           x_close,      x_read,        x_write,         x_truncate,
    x_sync,      x_file_size,  x_lock,        x_unlock,        x_check_reserved,
    x_file_control, x_sector_size, x_device_characteristics, x_shm_map, x_shm_lock,
    x_shm_barrier, x_shm_unmap, x_fetch,      x_unfetch,
};

int x_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  auto* f = reinterpret_cast<FaultyFile*>(file);
  f->base.pMethods = nullptr;
  f->real = reinterpret_cast<sqlite3_file*>(f + 1);
  const int rc = root->xOpen(root, name, f->real, flags, out_flags);
  if (rc == SQLITE_OK) f->base.pMethods = &methods;
  return rc;
}
int x_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  return root->xDelete(root, name, sync_dir);
}
int x_access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return root->xAccess(root, name, flags, out);
}
int x_full_pathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return root->xFullPathname(root, name, n, out);
}
void* x_dl_open(sqlite3_vfs*, const char* name) { return root->xDlOpen(root, name); }
void x_dl_error(sqlite3_vfs*, int n, char* out) { root->xDlError(root, n, out); }
void (*x_dl_sym(sqlite3_vfs*, void* h, const char* sym))() { return root->xDlSym(root, h, sym); }
void x_dl_close(sqlite3_vfs*, void* h) { root->xDlClose(root, h); }
int x_randomness(sqlite3_vfs*, int n, char* out) { return root->xRandomness(root, n, out); }
int x_sleep(sqlite3_vfs*, int us) { return root->xSleep(root, us); }
int x_current_time(sqlite3_vfs*, double* out) { return root->xCurrentTime(root, out); }
int x_get_last_error(sqlite3_vfs*, int n, char* out) { return root->xGetLastError(root, n, out); }
int x_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) {
  return root->xCurrentTimeInt64(root, out);
}

}  // namespace

void FaultyVfs::install() {
  static std::once_flag once;
  std::call_once(once, [] {
    root = sqlite3_vfs_find(nullptr);
    faulty.iVersion = 2;
    faulty.szOsFile = static_cast<int>(sizeof(FaultyFile)) + root->szOsFile;
    faulty.mxPathname = root->mxPathname;
    faulty.zName = kName;
    faulty.xOpen = x_open;
    faulty.xDelete = x_delete;
    faulty.xAccess = x_access;
    faulty.xFullPathname = x_full_pathname;
    faulty.xDlOpen = x_dl_open;
    faulty.xDlError = x_dl_error;
    faulty.xDlSym = x_dl_sym;
    faulty.xDlClose = x_dl_close;
    faulty.xRandomness = x_randomness;
    faulty.xSleep = x_sleep;
    faulty.xCurrentTime = x_current_time;
    faulty.xGetLastError = x_get_last_error;
    faulty.xCurrentTimeInt64 = x_current_time_int64;
    sqlite3_vfs_register(&faulty, 0);
  });
}

void FaultyVfs::fail(Fault f, int after, int count) {
  std::lock_guard lock(mu);
  armed = true;
  fault = f;
  passes_left = after;
  fails_left = count;
}

void FaultyVfs::heal() {
  std::lock_guard lock(mu);
  armed = false;
}

int FaultyVfs::failures() { return injected.load(); }

}  // namespace poolkeeper::testing
