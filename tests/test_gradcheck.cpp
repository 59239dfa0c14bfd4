// Double-precision gradient check of the fused backward (the kernels instantiated for double):
// every analytic gradient element against a central finite difference of the same fused forward,
// with torch.autograd.gradcheck's defaults (eps 1e-6, atol 1e-5, rtol 1e-3). This checks the fused
// backward against the fused forward itself, independently of the reference.
#include "helpers.h"

namespace mhc::test {
namespace {

// A scalar of every output of one sublayer, so that each output's gradient path is exercised.
double scalar_loss(const Inputs& in, Variant variant, int64_t t, const VariantOptions& options) {
  torch::NoGradGuard no_grad;
  const PreOutput mix = mhc::pre(in.x, in.phi, in.bias, in.alpha, variant, t, options);
  const Tensor y = torch::tanh(mix.h * in.w_branch);
  const Tensor out = mhc::post(in.x, y, mix.H_post, mix.H_res);
  return ((out * in.dout).sum() + (mix.H_pre * in.dH_pre).sum()).item<double>();
}

// logit_scale multiplies the biases (the logits' static part): sharper softmaxes and larger skew
// matrices for the orthogonal variants. C is each stream's width.
void gradcheck(Variant variant, int64_t n, int64_t t, Scenario scenario = Scenario::random,
               const VariantOptions& options = {}, double logit_scale = 1, int64_t C = 5) {
  const int64_t N = 3;
  Inputs in = make_inputs(variant, N, n, C, scenario, 99, options);
  if (logit_scale != 1) in.bias = (in.bias.detach() * logit_scale).requires_grad_(true);
  const Outputs analytic = run_sublayer(in, variant, t, /*fused=*/true, options);
  const std::vector<std::pair<std::string, const Tensor*>> params = {
      {"dx", &in.x}, {"dphi", &in.phi}, {"dbias", &in.bias}, {"dalpha", &in.alpha}};
  const double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
  for (const auto& [name, param] : params) {
    if (param->numel() == 0) continue;
    auto it = std::find(analytic.names.begin(), analytic.names.end(), name);
    ASSERT_NE(it, analytic.names.end());
    const Tensor grad = analytic.values[it - analytic.names.begin()].reshape(-1);
    Tensor flat = param->detach().view(-1);  // shares storage with the input
    for (int64_t e = 0; e < flat.numel(); ++e) {
      const double saved = flat[e].item<double>();
      flat[e] = saved + eps;
      const double up = scalar_loss(in, variant, t, options);
      flat[e] = saved - eps;
      const double down = scalar_loss(in, variant, t, options);
      flat[e] = saved;
      const double numeric = (up - down) / (2 * eps), a = grad[e].item<double>();
      ASSERT_LE(std::abs(a - numeric), atol + rtol * std::abs(numeric))
          << variant_spec(variant, options) << " n=" << n << " t=" << t << " logits x" << logit_scale << ": " << name << "[" << e << "] analytic " << a
          << " vs numeric " << numeric;
    }
  }
}

TEST(Gradcheck, Residual) { gradcheck(Variant::residual, 1, 0); }

TEST(Gradcheck, HC) {
  for (int64_t n : {1, 2, 4}) gradcheck(Variant::hc, n, 0);
}

TEST(Gradcheck, MHC) {
  for (int64_t n : {1, 2, 4}) gradcheck(Variant::mhc, n, 20);
  gradcheck(Variant::mhc, 8, 5);
  gradcheck(Variant::mhc, 3, 0);
  // ±80 logits: Sinkhorn–Knopp on logarithms (the spread is past the linear domain's exact range).
  for (int64_t n : {2, 4}) gradcheck(Variant::mhc, n, 20, Scenario::large_logits);
}

// V4's eps terms at ordinary and ±80 logits (the floor keeps the linear iteration exact at both).
TEST(Gradcheck, MHCV4) {
  for (int64_t n : {1, 2, 4}) gradcheck(Variant::mhc_v4, n, 20);
  gradcheck(Variant::mhc_v4, 4, 1);
  for (int64_t n : {2, 4}) gradcheck(Variant::mhc_v4, n, 20, Scenario::large_logits);
}

TEST(Gradcheck, MHCLite) {
  for (int64_t n : {1, 2, 4, 5}) gradcheck(Variant::mhc_lite, n, 0);
}

TEST(Gradcheck, MHCSixteenStreams) { gradcheck(Variant::mhc, 16, 3); }

// Every factorisation shape: one 2, one 3, 2⊗2, 2⊗3, 2⊗2⊗2, 3⊗3, 2⊗2⊗3, 2⊗2⊗2⊗2; and ±80 logits.
TEST(Gradcheck, KromHC) {
  for (int64_t n : {2, 3, 4, 6, 8, 9, 12, 16}) gradcheck(Variant::kromhc, n, 0);
  for (int64_t n : {4, 6}) gradcheck(Variant::kromhc, n, 0, Scenario::large_logits);
}

TEST(Gradcheck, IdentityHC) {
  for (int64_t n : {1, 2, 4}) gradcheck(Variant::ihc, n, 0);
}

// The orthogonal variants at every accepted n, with their logits as drawn, ×10 and ×80 (the skew
// matrix then has entries of tens: far from the identity, where the Cayley map turns fastest).
// Past 4 streams each is one value wide: phi has 3n³·C entries, each checked by two forwards.
int64_t gradcheck_width(int64_t n) { return n <= 4 ? 5 : 1; }

TEST(Gradcheck, JPmHC) {
  for (int64_t n = 1; n <= kMaxCayleyDim; ++n)
    for (double scale : {1.0, 10.0, 80.0})
      gradcheck(Variant::jpmhc, n, 0, Scenario::random, {}, scale, gradcheck_width(n));
  VariantOptions paper;
  paper.cayley_iters = 2;
  for (int64_t n : {2, 4, 8}) gradcheck(Variant::jpmhc, n, 0, Scenario::random, paper);
}

TEST(Gradcheck, GoMHC) {
  for (int block : {1, 2}) {
    VariantOptions o;
    o.block_size = block;
    for (int64_t n = 1; n * block <= kMaxCayleyDim; ++n)
      for (double scale : {1.0, 10.0, 80.0})
        gradcheck(Variant::gomhc, n, 0, Scenario::random, o, scale, gradcheck_width(n));
  }
}

}  // namespace
}  // namespace mhc::test
