// Signal-gain diagnostics (DESIGN.md §5): how far each sublayer's residual map H_res, and the
// product of all of them from a sublayer to the last, are from preserving the signal's norm.
//
//   forward gain  of a matrix H: max_i |Σ_j H[i,j]|   (max absolute row sum)
//   backward gain of a matrix H: max_j |Σ_i H[i,j]|   (max absolute column sum)
//   composite map from sublayer l: P_l = H_res^(L-1) ⋯ H_res^(l)   (per token)
//
// Everything is per token, on a fixed probe batch, without autograd; statistics over tokens are
// reported as both max and mean. Sublayers are counted separately: sublayer 2b is block b's
// attention, 2b+1 its MLP. Sums and products run in float64 so that the diagnostics' own rounding
// stays far below the effects they measure (1e-4 claims on products of 48 matrices).
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "mhc/data.h"
#include "mhc/model.h"

namespace mhc::diag {

// H [..., n, n] -> [...]: the gains of each matrix, as float64.
torch::Tensor forward_gain(const torch::Tensor& H);
torch::Tensor backward_gain(const torch::Tensor& H);
// H[l] [N, n, n] for l = 0..L-1 -> P[l] = H[L-1] ⋯ H[l] [N, n, n], float64.
std::vector<torch::Tensor> composite_maps(const std::vector<torch::Tensor>& H);

struct Stat {
  double max = 0, mean = 0;  // over the probe tokens
};
Stat over_tokens(const torch::Tensor& per_token);

// Distance from the doubly stochastic matrices, worst case over tokens: max |row sum − 1|,
// max |column sum − 1|, and the smallest entry (negative entries are outside the polytope).
struct StochasticError {
  double row = 0, column = 0, min_entry = 0;
};
StochasticError stochastic_error(const torch::Tensor& H);

struct SublayerDiagnostics {
  std::string name;  // "attn 3", "mlp 3"
  Stat forward_gain, backward_gain;                      // of H_res^(l)
  Stat composite_forward_gain, composite_backward_gain;  // of P_l
  StochasticError error;
  double pre_min = 0, pre_max = 0, post_min = 0, post_max = 0;  // ranges of H_pre, H_post
};

// The diagnostics of every sublayer from its recorded coefficients (GPT::forward's record).
std::vector<SublayerDiagnostics> diagnose(const std::vector<SublayerRecord>& records);

// Runs the model on the probe tokens [B, T] (no autograd) and diagnoses its connections; empty for
// the plain residual, which has none.
std::vector<SublayerDiagnostics> probe(GPT& model, const torch::Tensor& tokens);

// The fixed probe batch: the first `windows` windows of the validation split, in order.
torch::Tensor probe_tokens(const data::WindowSampler& validation, int64_t windows);

// Column-wise JSON (one array per quantity, indexed by sublayer), as logged in metrics.jsonl under
// "diag" and read by scripts/plots.py:
//   {"sublayer": [...], "fwd_gain_max": [...], "fwd_gain_mean": [...], "bwd_gain_max": [...], …,
//    "composite_fwd_max", "composite_fwd_mean", "composite_bwd_max", "composite_bwd_mean",
//    "row_error", "col_error", "min_entry", "pre_min", "pre_max", "post_min", "post_max"}
std::string to_json(const std::vector<SublayerDiagnostics>& diagnostics);

// The per-sublayer table `mhc analyze` prints.
std::string table(const std::vector<SublayerDiagnostics>& diagnostics);

// For each mHC sublayer of the model, the doubly-stochastic error max(row, column) of H_res
// recomputed from the recorded inputs with t Sinkhorn–Knopp iterations, for each t in `iterations`:
// result[l][k] (worst token). Other variants have no iteration count: their rows hold the error of
// their own H_res, repeated.
std::vector<std::vector<double>> sinkhorn_errors(GPT& model, const std::vector<SublayerRecord>& records,
                                                 const std::vector<int64_t>& iterations);

}  // namespace mhc::diag
