// File helpers every writer in mhc shares: nothing is ever half-written (write to a temporary
// name in the same folder, flush to disk, rename), and content digests come from OpenSSL.
#pragma once

#include <string>

namespace mhc {

// Reads a whole file; throws std::invalid_argument naming the path when it cannot be read.
std::string read_file(const std::string& path);
// Writes `bytes` to path.tmp.<pid>, fsyncs, renames over `path` and fsyncs the folder, so a crash
// leaves either the old file or the new one. Throws std::runtime_error naming the path.
void write_file_atomic(const std::string& path, const std::string& bytes);
// Points the symlink `link` at `target` (a name in the same folder) atomically.
void point_symlink_atomic(const std::string& link, const std::string& target);
// The file name a temporary left by write_file_atomic or point_symlink_atomic (NAME.tmp.<pid>)
// stands for, or "" when `name` is not such a temporary.
std::string temporary_target(const std::string& name);
// An exclusive lock (flock) on FOLDER/lock, held for the object's life, so that two processes never
// write into one folder; the file records the holder's PID. Throws std::invalid_argument naming the
// holder when another process holds it.
class FolderLock {
 public:
  explicit FolderLock(const std::string& folder);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_;
};
// Creates the folder (and parents); throws std::invalid_argument if it cannot be created or written.
void ensure_writable_dir(const std::string& path);
// Lowercase hex SHA-256 (OpenSSL libcrypto) of the concatenated pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t size);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::string hex();

 private:
  void* ctx_;
};

}  // namespace mhc
