// Atomic file writes and SHA-256 digests (see mhc/files.h).
#include "mhc/files.h"

#include <fcntl.h>
#include <sys/file.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace mhc {

namespace {

// What a path that is not a regular file is, for messages.
const char* file_type_name(mode_t mode) {
  if (S_ISDIR(mode)) return "folder";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}


[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) fail("cannot open", path);
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("cannot sync", path);
  }
  ::close(fd);
}

std::string folder_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

constexpr const char* kTemporaryInfix = ".tmp.";

std::string temporary_name(const std::string& path) { return path + kTemporaryInfix + std::to_string(::getpid()); }

}  // namespace

std::string byte_count_text(int64_t bytes) {
  static const std::pair<const char*, int64_t> units[] = {{"GiB", int64_t{1} << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}};
  for (const auto& [unit, size] : units)
    if (bytes >= size) {
      std::ostringstream s;
      s.precision(bytes % size == 0 ? 0 : 1);
      s << std::fixed << static_cast<double>(bytes) / static_cast<double>(size) << " " << unit;
      return s.str();
    }
  return std::to_string(bytes) + " bytes";
}

std::string read_input_file(const std::string& path, const std::string& what, int64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one; the
  // type is then taken from what was opened (fstat), so no swap after a check can get past it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw std::invalid_argument("cannot read " + what + " " + path + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::invalid_argument("cannot read " + what + " " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw std::invalid_argument(what + " " + path + " is a " + file_type_name(st.st_mode) + ", not a regular file");
  const std::string too_large = what + " " + path + " is larger than the " + byte_count_text(max_bytes) + " limit";
  if (st.st_size > max_bytes) throw std::invalid_argument(too_large);
  // Read to the end, not to st_size: the file may be growing; one byte past the limit is enough to refuse.
  std::string bytes(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t done = 0;
  for (;;) {
    if (done == bytes.size()) {
      if (static_cast<int64_t>(done) > max_bytes) throw std::invalid_argument(too_large);
      bytes.resize(std::min<size_t>(std::max<size_t>(2 * done, 4096), static_cast<size_t>(max_bytes) + 1));
    }
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::invalid_argument("cannot read " + what + " " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = temporary_name(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create", tmp);
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("cannot write", tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("cannot sync", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    fail("cannot rename onto", path);
  }
  fsync_path(folder_of(path), O_RDONLY | O_DIRECTORY);
}

void point_symlink_atomic(const std::string& link, const std::string& target) {
  const std::string tmp = temporary_name(link);
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) != 0) fail("cannot create symlink", tmp);
  if (std::rename(tmp.c_str(), link.c_str()) != 0) fail("cannot rename onto", link);
  fsync_path(folder_of(link), O_RDONLY | O_DIRECTORY);
}

std::string temporary_target(const std::string& name) {
  const size_t infix = name.rfind(kTemporaryInfix);
  if (infix == std::string::npos || infix == 0) return "";
  const std::string pid = name.substr(infix + std::strlen(kTemporaryInfix));
  if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) return "";
  return name.substr(0, infix);
}

FolderLock::FolderLock(const std::string& folder) {
  const std::string path = (fs::path(folder) / "lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open", path);
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[32] = {};
    const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    if (error != EWOULDBLOCK) {
      errno = error;
      fail("cannot lock", path);
    }
    const std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown";
    throw std::invalid_argument(folder + " is in use by process " + pid + " (it holds " + path + ")");
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    ::close(fd_);
    fail("cannot write", path);
  }
}

FolderLock::~FolderLock() { ::close(fd_); }  // closing releases the lock

void ensure_writable_dir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !fs::is_directory(path) || ::access(path.c_str(), W_OK) != 0)
    throw std::invalid_argument("output folder " + path + " is not writable" + (ec ? ": " + ec.message() : ""));
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL: cannot start a SHA-256 digest");
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t size) {
  if (EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, size) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 update failed");
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), digest, &size) != 1)
    throw std::runtime_error("OpenSSL: SHA-256 final failed");
  static const char* hexdigits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) out += hexdigits[digest[i] >> 4], out += hexdigits[digest[i] & 15];
  return out;
}

}  // namespace mhc
