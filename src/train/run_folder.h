// The care of a run folder while a run writes into it: what a killed run left behind is cleared,
// and SIGINT/SIGTERM ask every rank to stop after the same step (with a checkpoint).
#pragma once

#include <string>

#include "mhc/distributed.h"

namespace mhc::train {

// Removes what a run that was killed while writing into `out` left there (temporary files of its
// checkpoints, `latest`, config.json and metrics.jsonl).
void remove_temporaries(const std::string& out);

// SIGINT and SIGTERM are caught for the object's life (the previous handlers come back after):
// requested() then says a signal arrived here, or, with several ranks, at any rank.
class StopOnSignals {
 public:
  StopOnSignals();
  ~StopOnSignals();
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;
  // Whether this process was signalled (no communication).
  bool signalled_here() const;
  int signal() const;
  // Whether any rank of the group was: a collective, so every rank stops after the same step.
  bool requested(dist::Group& group) const;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

}  // namespace mhc::train
