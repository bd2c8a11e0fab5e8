// A SQLite VFS for tests that makes the file system fail on demand: it wraps
// SQLite's default VFS under the name "faulty" and, when told, answers
// writes and syncs with an I/O error or a full disk. The file underneath is
// a real file; only the failures are made up.
//
//   FaultyVfs::install();
//   auto store = Store::open({.path = path, .vfs = FaultyVfs::kName});
//   FaultyVfs::fail(FaultyVfs::Fault::kDiskFull);   // every write fails now
//   FaultyVfs::heal();                              // and works again
#pragma once

namespace poolkeeper::testing {

class FaultyVfs {
 public:
  static constexpr const char* kName = "faulty";
  enum class Fault { kIoError, kDiskFull };

  // Registers the VFS (once; later calls do nothing).
  static void install();
  // From now on, after `after` more successful writes or syncs, the next
  // `count` ones fail with `fault` (count < 0: all of them).
  static void fail(Fault fault, int after = 0, int count = -1);
  static void heal();
  // Failures injected since install().
  static int failures();
};

}  // namespace poolkeeper::testing
