// Diagnostics of the connections (DESIGN.md §5). Signal gain: how far each sublayer's residual map
// H_res, and the product of all of them from a sublayer to the last, are from preserving the
// signal's norm. Stream use: whether the n streams carry n different signals or collapse into one,
// with an alarm that says so during training.
//
//   forward gain  of a matrix H: max_i |Σ_j H[i,j]|   (max absolute row sum)
//   backward gain of a matrix H: max_j |Σ_i H[i,j]|   (max absolute column sum)
//   composite map from sublayer l: P_l = H_res^(L-1) ⋯ H_res^(l)   (per token)
//
// Everything is per token, on a fixed probe batch, without autograd; statistics over tokens are
// reported as both max and mean. Sublayers are counted separately: sublayer 2b is block b's
// attention, 2b+1 its MLP. Sums and products run in float64 so that the diagnostics' own rounding
// stays far below the effects they measure (1e-4 claims on products of 48 matrices).
//
// Stream diagnostics, per token, of a connection's input state x [n, C] (stream x_i = row i) and
// its coefficients; each is then the mean over the probe tokens:
//   share of stream i      s_i = ||x_i||² / Σ_j ||x_j||²  (reported: max_i and min_i of the mean
//                          share, so 1/n and 1/n for streams of equal energy, 1 and 0 for one stream)
//   effective rank         exp(−Σ_k p_k ln p_k), p_k = σ_k / Σ_j σ_j over the singular values of x
//                          (Roy & Vetterli, 2007): 1 for n identical (or proportional) streams, n for
//                          n orthogonal streams of equal norm, in between otherwise
//   distance of H_res      ||H_res − I||_F from the identity and ||H_res − J/n||_F from the uniform
//                          mixing J/n (J all ones); the two references are sqrt(n − 1) apart
//   entropy of H_pre, H_post   −Σ_i q_i ln q_i, q_i = |h_i| / Σ_j |h_j|, in nats: ln n when every
//                          stream is read (written) with the same weight, 0 when only one is. The
//                          absolute value because HC's coefficients may be negative.
// Sublayer 0's input is the n copies of the embedding: effective rank 1 and equal shares by
// construction, whatever the variant.
//
// Spectrum (DESIGN.md §5, §11): σ_max and σ_min of H_res and of P_l per token. Row and column sums
// judge a doubly stochastic map but misread an orthogonal one (its abs row sums reach √n while
// every singular value is 1); products of doubly stochastic maps keep σ_max = 1 and drive σ_min
// towards 0 (towards J/n, the streams' differences averaged away), products of orthogonal ones keep
// both at 1. Beside them, the orthogonality error max |H_resᵀH_res − I| (0 for jpmhc to rounding).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "mhc/data.h"
#include "mhc/model.h"

namespace mhc::diag {

// H [..., n, n] -> [...]: the gains of each matrix, as float64.
torch::Tensor forward_gain(const torch::Tensor& H);
torch::Tensor backward_gain(const torch::Tensor& H);
// H[l] [N, n, n] for l = 0..L-1 -> P[l] = H[L-1] ⋯ H[l] [N, n, n], float64.
std::vector<torch::Tensor> composite_maps(const std::vector<torch::Tensor>& H);

// x [..., n, C] -> [..., n]: each stream's share s_i of the state's squared norm (a zero state: 0).
torch::Tensor stream_shares(const torch::Tensor& x);
// x [..., n, C] -> [...]: the effective rank of each n×C state, from the eigenvalues λ_k = σ_k² of
// its Gram matrix x·xᵀ (n×n, cheaper than an SVD of n×C); eigenvalues within the Gram matrix's
// rounding (n·ε·λ_max, float64) count as 0, so that identical streams give 1 and not 1 + 1e-7. A
// state with a non-finite entry gets NaN.
torch::Tensor effective_rank(const torch::Tensor& x);
// H, reference [..., n, n] -> [...]: the Frobenius norm of H − reference.
torch::Tensor frobenius_distance(const torch::Tensor& H, const torch::Tensor& reference);
// h [..., n] -> [...]: the entropy of |h| normalised to sum to 1, in nats (0 ln 0 = 0).
torch::Tensor coefficient_entropy(const torch::Tensor& h);

struct Stat {
  double max = 0, mean = 0, min = 0;  // over the probe tokens
};
Stat over_tokens(const torch::Tensor& per_token);

// Distance from the doubly stochastic matrices, worst case over tokens: max |row sum − 1|,
// max |column sum − 1|, and the smallest entry (negative entries are outside the polytope).
struct StochasticError {
  double row = 0, column = 0, min_entry = 0;
};
StochasticError stochastic_error(const torch::Tensor& H);

// H [..., n, n] -> [..., n]: singular values, descending, as float64.
torch::Tensor singular_values(const torch::Tensor& H);
// H [..., n, n] -> [...]: max |HᵀH − I|, float64.
torch::Tensor orthogonality_error(const torch::Tensor& H);

struct SublayerDiagnostics {
  std::string name;  // "attn 3", "mlp 3"
  int64_t streams = 0;  // n
  Stat forward_gain, backward_gain;                      // of H_res^(l)
  Stat composite_forward_gain, composite_backward_gain;  // of P_l
  Stat sigma_max, sigma_min;                             // of H_res^(l)
  Stat composite_sigma_max, composite_sigma_min;         // of P_l
  double orthogonality_error = 0;                        // of H_res^(l), max over tokens
  StochasticError error;
  double pre_min = 0, pre_max = 0, post_min = 0, post_max = 0;  // ranges of H_pre, H_post
  // Stream diagnostics (defined above), means over probe tokens.
  double share_max = 0, share_min = 0;  // of the streams' mean shares
  double effective_rank = 0;
  double identity_distance = 0, uniform_distance = 0;  // of H_res
  double pre_entropy = 0, post_entropy = 0;
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
//    "row_error", "col_error", "min_entry", "pre_min", "pre_max", "post_min", "post_max",
//    "share_max", "share_min", "effective_rank", "h_res_to_identity", "h_res_to_uniform",
//    "pre_entropy", "post_entropy", "sigma_max_max", "sigma_min_min", "composite_sigma_max_max",
//    "composite_sigma_max_mean", "composite_sigma_min_min", "composite_sigma_min_mean", "orth_error"}
nlohmann::ordered_json to_json(const std::vector<SublayerDiagnostics>& diagnostics);

// The per-sublayer tables `mhc analyze` prints: signal gains, spectra, then stream diagnostics.
std::string table(const std::vector<SublayerDiagnostics>& diagnostics);

// ---- The collapse alarm ----
// One diagnostic's verdict on the whole stack: the mean over sublayers 1 … L−1 (sublayer 0's input
// is equal copies by construction; with one sublayer, that one) of the effective rank and of the
// largest share.
struct StreamSummary {
  int64_t streams = 1;
  double effective_rank = 1, largest_share = 1;
};
StreamSummary summarize_streams(const std::vector<SublayerDiagnostics>& diagnostics);

// The streams count as collapsed when the summary's effective rank is below `rank` or its largest
// share above `share`; the alarm fires when that holds for `after` diagnostics in a row. Defaults:
//   rank 1.2   A state of one direction plus a second one whose singular value is 4.7% of the first
//              (0.22% of the energy) has effective rank 1.2: below it the n streams carry one signal
//              up to deviations of a few percent, whatever its scale. Measured (docs/stability.md):
//              mHC stays at 1.55-2.2 over training at both presets; HC's streams start as exact
//              copies and stay at 1.02-1.21, so the alarm fires on HC runs — that is the finding,
//              not noise.
//   share 0.9  One stream holds 90% of the energy and the other n − 1 share the rest: at n = 4 that
//              stream has 5.2x the norm of each other one (balanced: 1/n = 0.25), and the threshold
//              still means something at n = 2 (a 3:1 norm ratio). Measured: at most 0.59 (mHC, tiny).
//   after 5    Five diagnostics (50 steps at the default --diag-every 10): one noisy probe does not
//              fire it, and a collapse of the kind the papers report lasts for the whole run.
// With one stream there is nothing to collapse: it never fires.
struct CollapseThresholds {
  double rank = 1.2, share = 0.9;
  int64_t after = 5;
};
bool collapsed(const StreamSummary& summary, const CollapseThresholds& thresholds);

class CollapseAlarm {
 public:
  // `streak`: the collapsed diagnostics in a row so far (a resumed run continues its count).
  explicit CollapseAlarm(const CollapseThresholds& thresholds, int64_t streak = 0);
  // Counts one diagnostic; true when it is the one that completes `after` in a row, the moment to
  // warn (once per episode: the streak must be broken before it warns again).
  bool observe(const StreamSummary& summary);
  int64_t streak() const { return streak_; }
  bool firing() const { return streak_ >= thresholds_.after; }
  // The last summary and the alarm's state, as logged in metrics.jsonl under "collapse":
  //   {"effective_rank": …, "largest_share": …, "streak": k, "alarm": true|false}
  nlohmann::ordered_json to_json() const;
  // The streak in such a logged value (0 for null): where a resumed run's alarm continues counting.
  static int64_t logged_streak(const nlohmann::ordered_json& logged);
  // The one-line training-log warning for the last summary, at `step`.
  std::string warning(int64_t step) const;

 private:
  CollapseThresholds thresholds_;
  int64_t streak_;
  StreamSummary last_;
};

// For each mHC (or mhc-v4) sublayer of the model, the doubly-stochastic error max(row, column) of H_res
// recomputed from the recorded inputs with t Sinkhorn–Knopp iterations, for each t in `iterations`:
// result[l][k] (worst token). Other variants have no iteration count: their rows hold the error of
// their own H_res, repeated.
std::vector<std::vector<double>> sinkhorn_errors(GPT& model, const std::vector<SublayerRecord>& records,
                                                 const std::vector<int64_t>& iterations);

}  // namespace mhc::diag
