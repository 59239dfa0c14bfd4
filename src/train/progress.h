// The training log a person reads: one line per step on a pipe, an updating bar with the ETA on a
// terminal, and notes (an alarm, the result) that never cut into the bar.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace mhc::train {

class Progress {
 public:
  explicit Progress(int64_t total_steps);
  struct Step {
    int64_t step;
    double loss;
    std::optional<double> val_loss;
    double grad_norm, lr, step_ms, tokens_per_s, eta_seconds;
    bool skipped;
  };
  void step(const Step& s);
  void note(const std::string& line);

 private:
  int64_t total_;
  bool tty_;
};

}  // namespace mhc::train
