// The training run: one optimizer step (train_step, shared with `mhc bench train`), and the run
// itself — set-up, resume, the steps, and after each evaluation, diagnostics, metrics and
// checkpoints (src/train/trainer.cpp) — reading its settings once into TrainingOptions.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "mhc/diag.h"
#include "mhc/distributed.h"
#include "mhc/optimizer.h"
#include "mhc/pipeline.h"
#include "mhc/settings.h"

namespace mhc::train {

// One optimizer step: `accum` micro-batches from next_batch (forward, backward), the global
// gradient norm, clipping, AdamW. A non-finite loss or norm skips the update (grads are zeroed
// either way). An update that overflows a parameter is not checked here (that would cost a pass
// over the weights every step): the next loss is then non-finite, and save_checkpoint refuses to
// write the weights.
struct StepResult {
  double loss, grad_norm;
  bool finite;
  double all_reduce_seconds = 0;  // waiting for and exchanging gradients with the other ranks
};
// With a group of several ranks, the gradients and the loss are averaged over them before the norm
// (one flattened all-reduce), so every rank takes the same step.
StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<torch::Tensor()>& micro_batch_loss, int64_t accum, double clip, double lr,
                      dist::Group* group = nullptr);
// The same step with the micro-batches' passes given whole: `accumulate` runs them, leaving the
// gradients in the parameters, and returns the summed loss. `replicas` (data parallelism) averages
// the gradients and the loss; then `combine`, if given, turns this rank's loss and squared gradient
// norm into the whole model's (a pipeline's stages each hold a part: mhc/pipeline.h).
StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<double()>& accumulate, double clip, double lr, dist::Group* replicas,
                      const std::function<void(double& loss, double& squares)>& combine = {});

// The settings a run reads, each once, in range (Settings' readers check them).
struct TrainingOptions {
  std::string out, device_name, dtype_name;
  torch::Device device = torch::kCPU;
  int threads;
  int64_t steps, batch, accum, warmup, seed, seq_len;
  double lr, min_lr, clip;
  AdamW::Options adam;
  int64_t eval_every, eval_batches, diag_every, diag_batch, ckpt_every, keep, stop_after, max_bad_steps, sample_tokens;
  diag::CollapseThresholds collapse;
  double dist_timeout_seconds;
  int64_t pipeline_stages;
  Schedule schedule;
  torch::ScalarType wire_dtype;
  static TrainingOptions read(const Settings& settings);
  // The last step this launch trains: --stop-after, or --steps.
  int64_t last_step() const { return stop_after > 0 ? std::min(stop_after, steps) : steps; }
};

// Trains as the settings say, writing into settings "out"; resume_from (a checkpoint file, or
// empty) continues that run exactly. Returns the process exit status. Bad settings throw
// std::invalid_argument; a run of non-finite steps throws std::runtime_error.
//
// With an environment of several ranks (mhc/distributed.h) every rank runs this: rank 0's
// parameters are broadcast, each rank trains on its share of every global batch (--batch /
// WORLD_SIZE windows) and the gradients are averaged, so the run is the single-process run with
// the same --batch up to summation order, and its checkpoints resume on any world size. Rank 0
// alone logs, evaluates, samples and checkpoints.
int run_training(const Settings& settings, const std::string& resume_from, const dist::Environment& environment = {});

}  // namespace mhc::train
