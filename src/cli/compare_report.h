// The report of `mhc compare`: what each run's metrics.jsonl says (losses, spikes, gains, stream
// use, throughput) and report.md, every number as its mean and spread over seeds.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mhc::cli {

struct Run {
  std::string name, variant, dir;
  int64_t seed_index = 0;
  // From metrics.jsonl:
  std::vector<double> losses;
  double final_val = NAN, best_val = NAN, max_grad_norm = 0;
  int64_t spikes = 0, skipped = 0;
  double tokens_per_s = 0, step_ms = 0;  // medians over steps
  double time_ratio = NAN;               // step_ms / the plain residual's with the same seed
  bool has_gains = false;
  double fwd_gain = NAN, fwd_deviation = NAN, bwd_gain = NAN, bwd_deviation = NAN, ds_error = NAN;
  // Stream use at the last diagnostic (mhc/diag.h): the collapse alarm's summary, and means over
  // sublayers; NaN for a run logged before these diagnostics existed.
  double effective_rank = NAN, largest_share = NAN, identity_distance = NAN, uniform_distance = NAN,
         pre_entropy = NAN, post_entropy = NAN;
  // Spectrum at the last diagnostic: the extreme singular values of the composite maps over every
  // sublayer and token, and the worst orthogonality error of a single H_res; NaN before they existed.
  double composite_sigma_max = NAN, composite_sigma_min = NAN, orthogonality_error = NAN;
  int64_t alarm_step = -1;  // the first step the collapse alarm was on; -1: never
};

// Fills the run's numbers from <dir>/metrics.jsonl; throws std::runtime_error when it is missing or
// holds no steps.
void read_metrics(Run& run);

// report.md: the tables of every variant (and, with seeds, of every run), the differences from the
// plain residual, the definitions and the plots. `command` is the command line, `threads` the
// threads the runs trained with.
std::string report(const std::vector<Run>& runs, const std::vector<std::string>& variants, size_t seeds,
                   const std::string& command, int threads);

}  // namespace mhc::cli
