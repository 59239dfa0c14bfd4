// Atomic file writes and SHA-256 digests (see mhc/files.h).
#include "mhc/files.h"

#include <fcntl.h>
#include <sys/file.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

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
