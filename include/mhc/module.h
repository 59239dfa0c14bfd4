// torch::nn::Module front end of the residual family: owns one sublayer's connection parameters
// with the initialisation of DESIGN.md §2 and exposes pre/post, so a model can wrap any sublayer F:
//
//     auto hc = mhc::HyperConnection(mhc::HyperConnectionOptions(mhc::Variant::mhc, 4, 512).sublayer_index(l));
//     auto mix = hc->pre(x);                     // x [..., n, C]  ->  mix.h [..., C]
//     auto x_next = hc->post(x, F(mix.h), mix);  // [..., n, C]
//
// One class serves every variant: the variants differ only in the shapes and initial values of
// (phi, bias, alpha), which initial_parameters() makes, and in the kernel the ops run.
#pragma once

#include <functional>
#include <string>

#include <torch/torch.h>

#include "mhc/ops.h"
#include "mhc/recompute.h"
#include "mhc/variant.h"

namespace mhc {

// Initial logit biases of mHC and mHC-lite. "paper" (the mHC-lite authors' choice) breaks the
// symmetry between the n identical streams: b_pre = b_post = +stream_logit on stream l mod n and
// −stream_logit elsewhere; H_res logits 0 on the diagonal / identity, res_off_logit elsewhere.
// "zero" makes mHC exactly a pre-norm residual at step 0 (H_res = J/n), but nothing then breaks
// the streams' symmetry. HC always starts from its paper's static init.
struct BiasInit {
  double stream_logit = 1.0;
  double res_off_logit = -8.0;
  // Throws std::invalid_argument naming the value and the accepted names.
  static BiasInit named(const std::string& name);
};

struct HyperConnectionOptions {
  HyperConnectionOptions(Variant variant, int64_t streams, int64_t dim) : variant_(variant), streams_(streams), dim_(dim) {}
  TORCH_ARG(Variant, variant);
  TORCH_ARG(int64_t, streams);
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, sublayer_index) = 0;  // l: attention and MLP sublayers are counted separately
  TORCH_ARG(int64_t, sinkhorn_iters) = 20;
  TORCH_ARG(VariantOptions, variant_options) = {};  // jpmhc's and gomhc's (mhc/variant.h)
  TORCH_ARG(BiasInit, bias_init) = {};
  TORCH_ARG(bool, use_reference) = false;  // run the plain-LibTorch reference instead of the fused ops
};

struct Parameters {
  torch::Tensor phi, bias, alpha;
};

// Throws std::invalid_argument naming the first option out of its range: n for the variant, C and
// the sublayer index (negative would favour no stream), sinkhorn_iters.
void check(const HyperConnectionOptions& options);

// The DESIGN.md §2 initial values (float32, CPU) of checked options.
Parameters initial_parameters(const HyperConnectionOptions& options);

class HyperConnectionImpl : public torch::nn::Module {
 public:
  explicit HyperConnectionImpl(const HyperConnectionOptions& options);

  // x [..., n, C] -> h [..., C], the coefficients ([..., n], [..., n], [..., n, n]) and x_post, x
  // as post should read it: passed to post instead of x, its gradient joins the one through pre
  // inside pre's backward kernel (one pass over dx fewer; the values are the same).
  PreOutput pre(const torch::Tensor& x);
  // x [..., n, C] (best: mix.x_post, or mix.x_next where mix came from boundary), y [..., C], the
  // coefficients mix from pre(x) or boundary -> x_next [..., n, C].
  torch::Tensor post(const torch::Tensor& x, const torch::Tensor& y, const PreOutput& mix);
  // This connection's pre of the state the sublayer before it makes, post(x, y, before's H_post and
  // H_res), as one op (mhc::boundary): x [..., n, C] (best: what that sublayer's post would read,
  // before.x_post or before.x_next), y [..., C] that sublayer's output -> this sublayer's h and
  // coefficients, and x_next [..., n, C], the state itself, which this sublayer's post then reads.
  PreOutput boundary(const torch::Tensor& x, const torch::Tensor& y, const PreOutput& before);
  // post(x, sublayer(pre(x).h), …): one whole sublayer update; stores the coefficients it used in
  // *mix when given (the diagnostics read them).
  torch::Tensor forward(const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& sublayer,
                        PreOutput* mix = nullptr);

  const HyperConnectionOptions& options() const { return options_; }
  // Empty for the plain residual, which has no parameters.
  torch::Tensor phi, bias, alpha;

 private:
  // The op's flat [N, …] outputs viewed with x's leading dims.
  static PreOutput shaped_like(const PreOutput& flat, const torch::Tensor& x);
  HyperConnectionOptions options_;
};
TORCH_MODULE(HyperConnection);

// A sublayer F: h [..., C] -> y [..., C].
using Sublayer = std::function<torch::Tensor(const torch::Tensor&)>;

// One sublayer's connection input x [..., n, C] and the coefficients pre(x) made, as a stack
// records them for the diagnostics (mhc/diag.h).
struct SublayerRecord {
  torch::Tensor x;
  PreOutput mix;
};

// x_{l+1} = connections[l]->forward(x_l, sublayers[l]) for l = 0 … L−1, with the recomputation
// policy of mhc/recompute.h applied to groups of group_size(recompute, n, L) sublayers. Between two
// sublayers the post of the first and the pre of the second run as one op (HyperConnection::boundary;
// within each recomputed segment for `blocks`). With no
// connections it is the plain residual x_{l+1} = x_l + F_l(x_l) on x [..., 1, C], with no op at
// all (`streams` then has nothing to free and is a no-op; `blocks` still checkpoints). With
// `record`, every sublayer's input and coefficients are appended to it and nothing is recomputed:
// the record holds the states.
torch::Tensor forward_stack(const std::vector<HyperConnection>& connections, const std::vector<Sublayer>& sublayers,
                            const torch::Tensor& x, const RecomputeOptions& recompute = {},
                            std::vector<SublayerRecord>* record = nullptr);

// L sublayers' connections as one module (children "0" … "L−1", connection l built with
// sublayer_index l), for models that keep their sublayers elsewhere:
//
//     auto stack = mhc::HyperConnectionStack(mhc::HyperConnectionOptions(mhc::Variant::mhc, 4, 512), 2 * blocks);
//     x = stack->forward(x, {attention_0, mlp_0, attention_1, …}, {mhc::Recompute::streams});
class HyperConnectionStackImpl : public torch::nn::Module {
 public:
  HyperConnectionStackImpl(const HyperConnectionOptions& options, int64_t sublayers);
  torch::Tensor forward(const torch::Tensor& x, const std::vector<Sublayer>& sublayers,
                        const RecomputeOptions& recompute = {}, std::vector<SublayerRecord>* record = nullptr);
  std::vector<HyperConnection> connections;
};
TORCH_MODULE(HyperConnectionStack);

// [..., C] -> [..., n, C]: n copies (the model's x_0). [..., n, C] -> [..., C]: the sum of streams.
torch::Tensor expand_streams(const torch::Tensor& e, int64_t n);
torch::Tensor reduce_streams(const torch::Tensor& x);

// DeepSeek-V4's end of the stream stack (DESIGN.md §9), in place of reduce_streams before the final
// norm: out = Σ_j w_j·x_j with per-token weights w = σ(α·(v·φ)/r + b) + eps, v = vec(x),
// r = sqrt(mean(v²) + 1e-6), eps = kDeepSeekV4Eps. φ [n·C, n] is V4's hc_head_fn transposed, b [n]
// hc_head_base, α [1] hc_head_scale. It starts at φ = 0, b = 0, α = 0.01: w = 1/2 + eps for every
// stream, the plain sum scaled by a constant that the final RMSNorm removes. Plain LibTorch ops
// (one [n·C] × [n] product per token; autograd gives the backward); math in float32 under bf16.
// Python's mhc.HyperHead runs the same functions as ops (torch.ops.mhc.hyper_head_initial_parameters,
// hyper_head_weights, hyper_head).
class HyperHeadImpl : public torch::nn::Module {
 public:
  HyperHeadImpl(int64_t streams, int64_t dim);
  // x [..., n, C] -> [..., C]
  torch::Tensor forward(const torch::Tensor& x);
  // The weights w [..., n] (for diagnostics).
  torch::Tensor weights(const torch::Tensor& x);
  torch::Tensor phi, bias, alpha;
};
TORCH_MODULE(HyperHead);

}  // namespace mhc
