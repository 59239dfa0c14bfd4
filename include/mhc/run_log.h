// A run's log, metrics.jsonl: one JSON line per optimizer step, written by the trainer and read by
// its resume (which cuts the log back to the checkpoint's step), by the collapse alarm's resumed
// count and by `mhc compare`. This unit alone knows the line's keys; scripts/plots.py is handed
// them (log_keys()).
#pragma once

#include <cstdint>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mhc::train {

// One step's line. Numbers that are not finite are written as null and read back as NaN.
struct StepRecord {
  int64_t step = 0;
  double loss = NAN, lr = 0, grad_norm = NAN, tokens_per_s = 0, step_ms = 0;
  bool skipped = false;         // the update was skipped: the loss or the gradient was not finite
  int64_t bad_steps = 0;        // skipped steps so far in the run
  std::optional<double> all_reduce_ms;  // with several ranks
  std::optional<double> val_loss;       // on evaluation steps
  // On diagnostic steps (mhc/diag.h): the diagnostics, their time, the collapse alarm's state.
  nlohmann::ordered_json diag, collapse;
  std::optional<double> diag_ms;

  nlohmann::ordered_json to_json() const;
  // Throws nlohmann::json::exception on a line that is not a step record.
  static StepRecord from_json(const nlohmann::ordered_json& line);
};

// The keys of a StepRecord's line, by role, for readers in other languages (scripts/plots.py).
nlohmann::ordered_json log_keys();

class RunLog {
 public:
  // Opens `path` for appending: emptied for a fresh run; for a resumed one, cut back to the lines
  // of steps <= `step` (the steps after the checkpoint are trained, and logged, again).
  RunLog(std::string path, bool resumed, int64_t step);
  // Throws std::runtime_error naming the file and the step when the line cannot be written (a full
  // disk must not lose metrics silently).
  void append(const StepRecord& record);
  // Every whole line of a log; a line cut by a crash is skipped. Throws std::runtime_error when
  // the file cannot be read.
  static std::vector<StepRecord> read(const std::string& path);

 private:
  std::string path_;
  std::ofstream out_;
};

// The collapse alarm's streak at the end of the log at `path` (0 without diagnostics, or without a
// log): where a resumed run's alarm continues counting.
int64_t collapse_streak(const std::string& path);

}  // namespace mhc::train
