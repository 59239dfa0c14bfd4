// The `mhc` executable: sets up the environment of the thread pools, then loads the tool itself
// (libmhc_cli.so, beside this file) and runs it.
//
// libgomp (LibTorch's and our kernels' threads) and OpenBLAS (LibTorch's matmuls) each keep a pool
// of threads that spin after their work; OpenBLAS spins for ~2^28 cycles. On a few cores the two
// pools steal each other's cores: a training step of the tiny preset took 700 ms instead of 320 ms
// on 2 cores. Both libraries read their settings only when they are loaded, so they must be in
// the environment before LibTorch is — hence this launcher, which links nothing but libc. The same
// holds for glog, through which c10d logs its own copy of every error the tool already reports in
// one line (a failed rendezvous, a dead rank).
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);  // the minimum: 2^4 cycles of spinning (never over the user's)
  setenv("GOMP_SPINCOUNT", "20000", 0);       // tens of µs instead of libgomp's 300000 spins
  setenv("GLOG_minloglevel", "3", 0);         // glog: fatal only (the tool reports errors itself)

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
