// The `mhc` executable: sets up the environment of the thread pools, then loads the tool itself
// (libmhc_cli.so, beside this file) and runs it.
//
// libgomp (LibTorch's and our kernels' threads) keeps a pool of threads that spin after their work,
// 300000 spins by default, stealing the cores of whatever runs next on a small machine. It reads
// its settings only when it is loaded, so they must be in the environment before LibTorch is —
// hence this launcher, which links nothing but libc. The same holds for c10's log level: c10d
// logs its own copy, with a C++ stack trace, of every error the tool already reports in one line
// (a failed rendezvous, a dead rank).
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  setenv("GOMP_SPINCOUNT", "20000", 0);      // tens of µs instead of libgomp's 300000 spins (never over the user's)
  setenv("TORCH_CPP_LOG_LEVEL", "FATAL", 0);  // c10's log: fatal only (the tool reports errors itself)

  char path[PATH_MAX];
  const ssize_t size = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (size <= 0) return std::perror("error: mhc cannot find itself (/proc/self/exe)"), 1;
  path[size] = '\0';
  char* slash = std::strrchr(path, '/');
  std::snprintf(slash + 1, sizeof(path) - static_cast<size_t>(slash + 1 - path), "libmhc_cli.so");
  void* tool = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
  if (!tool) return std::fprintf(stderr, "error: cannot load %s\n", dlerror()), 1;
  auto mhc_main = reinterpret_cast<int (*)(int, char**)>(dlsym(tool, "mhc_main"));
  if (!mhc_main) return std::fprintf(stderr, "error: %s has no mhc_main\n", path), 1;
  return mhc_main(argc, argv);
}
