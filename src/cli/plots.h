// The plots of `mhc analyze` and `mhc compare` are drawn by scripts/plots.py (matplotlib), from the
// JSON and metrics.jsonl files the commands write: plotting never runs inside the training loop.
#pragma once

#include <string>
#include <vector>

namespace mhc::cli {

// Runs `python3 scripts/plots.py --log-keys JSON ARGS…`, the keys of metrics.jsonl from the run log
// (mhc/run_log.h) that defines them (python: $MHC_PYTHON, by default the Python the build was
// configured with, the project environment's, which has matplotlib once scripts/setup.sh ran).
// Throws std::runtime_error naming the command when it cannot start or fails.
void run_plots(const std::vector<std::string>& args);

}  // namespace mhc::cli
