// Starts scripts/plots.py (see plots.h) without a shell, so no path needs quoting.
#include "plots.h"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "mhc/run_log.h"

extern char** environ;

namespace mhc::cli {

void run_plots(const std::vector<std::string>& args) {
  const char* python = std::getenv("MHC_PYTHON");
  std::vector<std::string> command = {python && *python ? python : MHC_DEFAULT_PYTHON, MHC_PLOT_SCRIPT, "--log-keys",
                                      train::log_keys().dump()};
  command.insert(command.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : command) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string shown;
  for (const auto& a : command) shown += (shown.empty() ? "" : " ") + a;

  pid_t pid = 0;
  if (const int error = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ); error != 0)
    throw std::runtime_error("cannot start " + command[0] + " for the plots: " + std::strerror(error) +
                             " (set MHC_PYTHON to a python3 with matplotlib)");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  // plots.py's statuses (scripts/plots.py): 4, matplotlib missing; 3, a plot failed, its line above says why.
  throw std::runtime_error("plotting failed: `" + shown + "` exited with status " + std::to_string(code) +
                           (code == 4   ? " (matplotlib is missing there; scripts/setup.sh installs it in .venv)"
                            : code == 3 ? " (its line above says why)"
                                        : ""));
}

}  // namespace mhc::cli
