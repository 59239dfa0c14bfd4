// The residual family and the shapes of each variant's parameters.
//
// Every variant is one sublayer update (DESIGN.md §1):
//     h = H_pre·x,   y = F(h),   x_next = H_res·x + H_post^T·y
// and differs only in how the per-token coefficients are made (DESIGN.md §2). The three learned
// tensors of every variant share one layout so that one op signature serves all of them:
//     phi   [K, m]   projection weights, columns ordered [pre | post | res]
//     bias  [B]      static coefficients / logit biases, ordered [pre | post | res]
//     alpha [A]      scalar gains
// This header is framework-free: the CPU and CUDA kernels include it.
#pragma once

#include <cstdint>
#include <string>

namespace mhc {

enum class Variant : int {
  residual = 0,  // n = 1, H_pre = H_post = H_res = 1; no parameters
  hc = 1,        // Hyper-Connections: static + tanh-gated dynamic, unconstrained
  mhc = 2,       // DeepSeek mHC: sigmoid pre/post, Sinkhorn–Knopp H_res
  mhc_lite = 3,  // mHC-lite: sigmoid pre/post, H_res a softmax mixture of the n! permutations
  kromhc = 4,    // KromHC: sigmoid pre/post, H_res a Kronecker product of small mHC-lite factors
  ihc = 5,       // identity-HC: sigmoid pre/post, H_res = I (the no-mixing ablation)
  mhc_v4 = 6,    // DeepSeek-V4's released mHC: mhc with V4's eps terms (DESIGN.md §9)
  jpmhc = 7,     // JPmHC: softmax pre/post over a LayerNorm read, H_res orthogonal (Cayley map; DESIGN.md §11)
  gomhc = 8,     // go-mHC: sigmoid pre/post, H_res orthostochastic (squared Cayley entries; DESIGN.md §11)
};

constexpr int kMaxStreams = 16;       // HC, mHC, KromHC, identity-HC
constexpr int kMaxStreamsLite = 5;    // mHC-lite: 5! = 120 permutation matrices
// The CUDA kernels take n ≤ 8: their per-token loops are compile-time per n (registers, not local
// memory), and n = 9..16 would double the instantiations and take ptxas past 6 minutes on a
// 2-core build machine. Larger n runs on the CPU; the ops refuse it on CUDA in one line.
constexpr int kMaxStreamsCuda = 8;
constexpr int kMaxSinkhornIters = 100;
constexpr int kMaxCayleyDim = 16;    // the Cayley map's d: n for jpmhc, n·s for gomhc
constexpr int kMaxCayleyIters = 8;   // jpmhc's fixed-point steps (the paper takes 2)
constexpr double kRmsEps = 1e-6;
constexpr double kDeepSeekV4Eps = 1e-6;  // V4's hc_eps (DESIGN.md §9)

// Parses "residual", "hc", "mhc", "mhc-v4" (also "mhc_v4"), "mhc-lite" (also "mhc_lite"), "kromhc",
// "ihc", "jpmhc", "gomhc"; throws std::invalid_argument naming the value and the accepted list.
Variant parse_variant(const std::string& name);
const char* variant_name(Variant variant);
const char* variant_names();  // "residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc"

// The options of the orthogonal variants (DESIGN.md §11); every other variant has none. Each
// variant reads only its own, and a variant given another's is refused.
struct VariantOptions {
  int block_size = 2;         // gomhc: s ∈ {1, 2}, the side of the blocks O's squares are averaged over
  int cayley_iters = 0;       // jpmhc: 0 = the exact Cayley map, s in [1, kMaxCayleyIters] = the paper's s steps
  double cayley_scale = 0.1;  // jpmhc: β in B = (β/2)·(H̃_res − H̃_resᵀ)
  bool operator==(const VariantOptions& o) const {
    return block_size == o.block_size && cayley_iters == o.cayley_iters && cayley_scale == o.cayley_scale;
  }
};

// A variant with its options, as the ops' `variant` argument carries them: the name, then any option
// away from its default as ":key=value" ("gomhc:block_size=1", "jpmhc:cayley_iters=2:cayley_scale=0.05";
// colons, so that a comma-separated list of variants on a command line can hold specs). The string
// keeps the op schema one string for every variant, so Python, torch.compile's fake kernels and
// DTensor see no new arguments.
struct VariantSpec {
  Variant variant;
  VariantOptions options;
};
// Throws std::invalid_argument naming a bad name, key or value and what is accepted.
VariantSpec parse_variant_spec(const std::string& spec);
std::string variant_spec(Variant variant, const VariantOptions& options = {});
// Checks each option against its range for `variant` (and that it is that variant's own).
void check_variant_options(Variant variant, const VariantOptions& options);

// n! for n ≤ kMaxStreamsLite.
int factorial(int n);

// Parameter shapes of one sublayer's connection with n streams of width C.
struct Layout {
  int64_t proj_rows;     // K: rows of phi = length of the vector each projection reads
  int64_t proj_cols;     // m: columns of phi
  int64_t bias_size;     // B
  int64_t alpha_size;    // A
  int64_t proj_per_token;  // projections one token makes (n for HC: one per stream; 1 otherwise)
  int64_t res_size;      // logits behind H_res: n*n, n! (mHC-lite), Σ f_k! (KromHC), 0 (identity-HC),
                         // d(d−1)/2 (go-mHC, d = n·s)
  // The read is a LayerNorm (jpmhc: the mean subtracted, r the standard deviation) rather than an
  // RMSNorm (r the root mean square).
  bool centred = false;
};

// Throws std::invalid_argument when n is outside the range the variant supports.
Layout layout(Variant variant, int64_t n, int64_t C, const VariantOptions& options = {});

// Checks n (and names what is accepted); throws std::invalid_argument.
void check_streams(Variant variant, int64_t n, const VariantOptions& options = {});

// The Sinkhorn–Knopp iteration counts t a variant takes, [min, max], and why min is above 0 (null
// where it is not): mhc-v4 needs t ≥ 1, its softmax being the first normalisation; every other
// variant takes t in [0, kMaxSinkhornIters] (and those without Sinkhorn–Knopp ignore it).
struct SinkhornIters {
  int64_t min, max;
  const char* why_min;
};
SinkhornIters sinkhorn_iters_range(Variant variant);

// Checks t against sinkhorn_iters_range(variant); throws std::invalid_argument naming t and the
// range ("mhc-v4 needs sinkhorn_iters in [1, 100] (its softmax is the first normalisation), got 0").
void check_sinkhorn_iters(Variant variant, int64_t t);

// The expected shapes of phi, bias and alpha in words, for error messages ("[n*C, 2n + n*n] for mhc").
struct ShapeNames {
  const char* phi;
  const char* bias;
  const char* alpha;
};
ShapeNames shape_names(Variant variant);

// DESIGN.md §2's initial bias [B] and alpha [A] (as layout() sizes them) for a sublayer whose
// leading stream is `lead` (its index mod n): stream_logit and res_off_logit are the magnitudes of
// the σ variants' initial logits; HC's are fixed. phi starts at zero for every variant.
void initial_bias_and_alpha(Variant variant, int64_t n, int64_t lead, double stream_logit, double res_off_logit, float* bias,
                            float* alpha, const VariantOptions& options = {});

}  // namespace mhc
