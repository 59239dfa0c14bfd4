// `mhc launch --nproc N -- COMMAND …`: torchrun's job on one machine without Python. It starts
// N copies of this executable running `mhc COMMAND …`, each with the environment torchrun gives
// its workers (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forwards
// SIGINT/SIGTERM to them, and returns the first non-zero exit status (0 when every rank succeeds).
// As soon as one rank fails the others get SIGTERM, then SIGKILL after a grace period, as under
// torchrun: without their peer they could only wait for --dist-timeout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>

#include "args.h"
#include "commands.h"

extern char** environ;

namespace mhc::cli {

namespace {

// Set for the ranks to the launcher's PID: the parent whose death they follow.
constexpr const char* kLauncherPidVariable = "MHC_LAUNCHER_PID";

using Clock = std::chrono::steady_clock;

// Long enough for a rank to write its error, short enough not to look hung.
constexpr std::chrono::seconds kStopGrace{5};

void signal_all(const std::map<pid_t, int>& running, int signal) {
  for (const auto& [pid, rank] : running) ::kill(pid, signal);
}

// A port nobody listens on now: bind port 0 and ask which one the kernel chose.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    throw std::runtime_error(std::string("mhc launch: cannot find a free port: ") + std::strerror(errno));
  ::close(fd);
  return ntohs(address.sin_port);
}

// The environment every rank shares: the launcher's, with the rendezvous of the job.
std::map<std::string, std::string> ranks_environment(int ranks, const std::string& master_addr, int port) {
  std::map<std::string, std::string> shared;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    shared[entry.substr(0, entry.find('='))] = entry.substr(entry.find('=') + 1);
  }
  shared["WORLD_SIZE"] = shared["LOCAL_WORLD_SIZE"] = std::to_string(ranks);
  shared["MASTER_ADDR"] = master_addr;
  shared["MASTER_PORT"] = std::to_string(port);
  shared.erase("TORCHELASTIC_USE_AGENT_STORE");  // rank 0 hosts the store here
  shared[kLauncherPidVariable] = std::to_string(::getpid());  // the ranks die with this process
  return shared;
}

// Starts `mhc COMMAND…` once per rank with its RANK and the signal mask `mask`: pid -> rank. When
// one cannot start, the others are stopped and std::runtime_error names the rank.
std::map<pid_t, int> start_ranks(int ranks, const std::map<std::string, std::string>& shared,
                                 const std::vector<std::string>& command, const sigset_t& mask) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setsigmask(&attributes, &mask);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
  std::map<pid_t, int> running;
  for (int rank = 0; rank < ranks; ++rank) {
    auto environment = shared;
    environment["RANK"] = environment["LOCAL_RANK"] = std::to_string(rank);
    std::vector<std::string> entries, arguments = {self};
    for (const auto& [k, v] : environment) entries.push_back(k + "=" + v);
    arguments.insert(arguments.end(), command.begin(), command.end());
    std::vector<char*> envp, args;
    for (auto& e : entries) envp.push_back(e.data());
    for (auto& x : arguments) args.push_back(x.data());
    envp.push_back(nullptr), args.push_back(nullptr);
    pid_t pid = 0;
    if (const int error = posix_spawn(&pid, self.c_str(), nullptr, &attributes, args.data(), envp.data()); error != 0) {
      signal_all(running, SIGTERM);
      posix_spawnattr_destroy(&attributes);
      throw std::runtime_error("mhc launch: cannot start rank " + std::to_string(rank) + ": " + std::strerror(error));
    }
    running[pid] = rank;
  }
  posix_spawnattr_destroy(&attributes);
  return running;
}

// Waits for every rank; the first to fail stops the others (SIGTERM, then SIGKILL after the grace),
// and SIGINT/SIGTERM to the launcher are passed on. Returns the first failure's status, or 0.
int wait_for_ranks(std::map<pid_t, int>& running, const sigset_t& watched) {
  int first_failure = 0;
  std::optional<Clock::time_point> kill_at;  // while the other ranks of a failed one are in their grace
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0) break;  // ECHILD: no rank left to wait for
    if (pid > 0) {
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      const int rank = running[pid];
      running.erase(pid);
      if (code != 0 && first_failure == 0) {
        first_failure = code;
        std::cerr << "mhc launch: rank " << rank << " exited with status " << code
                  << (running.empty() ? "" : "; stopping the other ranks") << std::endl;
        signal_all(running, SIGTERM);
        kill_at = Clock::now() + kStopGrace;
      }
      continue;
    }
    siginfo_t info;
    if (!kill_at) {
      if (const int signal = sigwaitinfo(&watched, &info); signal == SIGINT || signal == SIGTERM) signal_all(running, signal);
      continue;
    }
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(std::max(*kill_at - Clock::now(), Clock::duration::zero()));
    const timespec grace_left = {static_cast<time_t>(left.count() / 1000000000), static_cast<long>(left.count() % 1000000000)};
    if (sigtimedwait(&watched, &info, &grace_left) < 0 && errno == EAGAIN) {
      signal_all(running, SIGKILL);
      kill_at.reset();
    }
  }
  return first_failure;
}

}  // namespace

void die_with_launcher() {
  const char* launcher = std::getenv(kLauncherPidVariable);
  if (launcher == nullptr) return;
  // SIGTERM: the ranks stop together after the step (with a checkpoint) as on any stop request.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  // The launcher may have died before the line above: then the rank's parent is already another.
  if (std::to_string(::getppid()) != launcher) std::_Exit(128 + SIGTERM);
}

int launch(const std::vector<std::string>& argv) {
  const auto dashes = std::find(argv.begin(), argv.end(), "--");
  Args a("mhc launch",
         "Run `mhc COMMAND …` as N local ranks of one data-parallel job (what torchrun --no-python does):\n"
         "  mhc launch --nproc 2 -- train --preset small --threads 1");
  a.flag("nproc", "2", "ranks to start on this machine", IntegerRange{1, 1024})
      .flag("master-addr", "127.0.0.1", "the rendezvous host (rank 0 hosts the store)")
      .flag("master-port", "0", "the rendezvous port (0: a free one)", IntegerRange{0, 65535});
  if (!a.parse({argv.begin(), dashes})) return 0;
  const std::vector<std::string> command(dashes == argv.end() ? dashes : dashes + 1, argv.end());
  if (command.empty())
    throw std::invalid_argument("mhc launch: give the command after --, e.g. mhc launch --nproc 2 -- train --steps 100");
  // Training is the one command that several ranks run as one job. `mhc bench pipeline --stages S`
  // starts its own stages through this function, with the --result file it reads back; given by
  // hand (issue 35, item 21) it would run whole in every rank and fail only at the end.
  const bool stages_of_bench_pipeline = command.size() >= 2 && command[0] == "bench" && command[1] == "pipeline" &&
                                        std::find(command.begin(), command.end(), "--result") != command.end();
  if (command[0] != "train" && !stages_of_bench_pipeline)
    throw std::invalid_argument("mhc launch: the command after -- must be train, got '" + command[0] +
                                (command[0] == "bench" && command.size() >= 2 ? " " + command[1] : "") +
                                "' (mhc bench pipeline --stages S starts its own ranks)");
  const int ranks = static_cast<int>(a.integer("nproc"));
  const int port = a.integer("master-port") == 0 ? free_port() : static_cast<int>(a.integer("master-port"));
  const std::map<std::string, std::string> environment = ranks_environment(ranks, a.str("master-addr"), port);

  // The signals the launcher acts on stay blocked and are taken by sigwaitinfo/sigtimedwait, so
  // that none is lost between two checks; the ranks start with the mask the launcher had.
  sigset_t watched, previous;
  sigemptyset(&watched);
  for (const int signal : {SIGCHLD, SIGINT, SIGTERM}) sigaddset(&watched, signal);
  sigprocmask(SIG_BLOCK, &watched, &previous);
  std::map<pid_t, int> running;
  try {
    running = start_ranks(ranks, environment, command, previous);
  } catch (...) {
    sigprocmask(SIG_SETMASK, &previous, nullptr);
    throw;
  }
  const int first_failure = wait_for_ranks(running, watched);
  sigprocmask(SIG_SETMASK, &previous, nullptr);
  return first_failure;
}

}  // namespace mhc::cli
