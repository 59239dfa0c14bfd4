// A run folder's temporaries and the stop on signals (run_folder.h).
#include "run_folder.h"

#include <atomic>
#include <csignal>
#include <filesystem>

#include "mhc/checkpoint.h"
#include "mhc/files.h"

namespace fs = std::filesystem;

namespace mhc::train {

namespace {

std::atomic<int> stop_signal{0};
void request_stop(int signal) { stop_signal = signal; }

}  // namespace

void remove_temporaries(const std::string& out) {
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string target = temporary_target(e.path().filename().string());
    if (is_checkpoint_file_name(target) || target == kLatestCheckpoint || target == "config.json" || target == "metrics.jsonl")
      fs::remove(e.path());
  }
}

StopOnSignals::StopOnSignals() {
  stop_signal = 0;
  previous_int_ = std::signal(SIGINT, request_stop);
  previous_term_ = std::signal(SIGTERM, request_stop);
}

StopOnSignals::~StopOnSignals() { std::signal(SIGINT, previous_int_), std::signal(SIGTERM, previous_term_); }

bool StopOnSignals::signalled_here() const { return stop_signal != 0; }

int StopOnSignals::signal() const { return stop_signal.load(); }

bool StopOnSignals::requested(dist::Group& group) const {
  bool stopping = signalled_here();
  if (group.world_size() > 1) {
    const torch::Tensor stop = torch::tensor({stopping ? 1 : 0}, torch::kInt);
    group.sum({stop});
    stopping = stop.item<int>() != 0;
  }
  return stopping;
}

}  // namespace mhc::train
