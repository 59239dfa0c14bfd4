// File helpers every writer in mhc shares: nothing is ever half-written (write to a temporary
// name in the same folder, flush to disk, rename), and content digests come from OpenSSL.
#pragma once

#include <cstdint>
#include <string>

namespace mhc {

// Reads a file the user named (a corpus file, a --config): only a regular file, of at most
// max_bytes, so a device (/dev/zero) cannot exhaust memory and a FIFO without a writer cannot hang
// the run. Throws std::invalid_argument "<what> <path> is a FIFO (named pipe), not a regular file",
// "<what> <path> is larger than the <max_bytes> limit" or "cannot read <what> <path>: <reason>".
std::string read_input_file(const std::string& path, const std::string& what, int64_t max_bytes);
// "512 MiB", "1 KiB", "100 bytes": a byte count as limits are stated in messages.
std::string byte_count_text(int64_t bytes);
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
