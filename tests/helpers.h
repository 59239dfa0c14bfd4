// Shared pieces of the op tests: input generators for every variant and scenario, the sublayer
// used to compose pre and post, and the precision-derived comparison.
//
// Tolerances are derived, not guessed (the flash-attention habit): the fused fp32 result is
// compared with the reference evaluated in fp64, and may differ from it by at most a small multiple
// of the fp32 *reference's* own distance to fp64 on the same inputs — that distance is exactly
// what fp32 rounding does to this computation — plus a few fp32 ulps of the result's scale, for
// outputs the fp32 reference happens to get exactly right, plus the smallest normal fp32 number
// (±80 logits push some gradients into the subnormal range, where fp32 has no relative precision).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>
#include <vector>

#include "mhc/module.h"
#include "mhc/ops.h"

namespace mhc::test {

using torch::Tensor;

enum class Scenario { random, large_logits, zero_rows };

inline const char* scenario_name(Scenario s) {
  return s == Scenario::random ? "random" : s == Scenario::large_logits ? "large_logits" : "zero_rows";
}

// Tokens [t0, t1) of a per-token tensor (dim 0), a leaf of its own that requires grad as t does.
inline Tensor token_rows(const Tensor& t, int64_t t0, int64_t t1) {
  return t.detach().slice(0, t0, t1).clone().requires_grad_(t.requires_grad());
}

struct Inputs {
  Tensor x, phi, bias, alpha;  // the op's inputs
  Tensor w_branch;             // [C] weights of the sublayer F(h) = tanh(h ⊙ w)
  Tensor dout, dH_pre;         // upstream gradients of x_next and of H_pre

  // The same numbers in `storage` on `device`: everything float32 or float64, or bfloat16 storage —
  // x, the sublayer's weight and dout in bf16, the parameters and dH_pre in float32 (mhc/ops.h).
  Inputs to(torch::ScalarType storage, torch::Device device = torch::kCPU) const {
    const auto coefficients = coefficient_dtype(storage);
    auto c = [&](const Tensor& t, torch::ScalarType d) {
      return t.to(device, d).detach().requires_grad_(t.requires_grad());
    };
    return {c(x, storage),        c(phi, coefficients),   c(bias, coefficients),        c(alpha, coefficients),
            c(w_branch, storage), c(dout, storage),       c(dH_pre, coefficients)};
  }
  // Tokens [t0, t1) of the per-token tensors (x, dout, dH_pre), the same parameters.
  Inputs tokens(int64_t t0, int64_t t1) const {
    return {token_rows(x, t0, t1), phi, bias, alpha, w_branch, token_rows(dout, t0, t1), token_rows(dH_pre, t0, t1)};
  }
  // x, phi, the sublayer's weight and dout rounded to bf16 values (still float64), so that a
  // bf16-storage run and its fp64 reference start from exactly the same numbers.
  Inputs rounded_to_bf16() const {
    auto r = [](const Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_(t.requires_grad()); };
    return {r(x), r(phi), bias, alpha, r(w_branch), r(dout), dH_pre};
  }
};

// Where the fused-op tests run: the CPU always; CUDA where LibTorch has it and a GPU is visible.
inline bool usable(torch::Device device) { return device.is_cpu() || torch::cuda::is_available(); }
#define MHC_SKIP_UNLESS_USABLE(device) \
  if (!usable(device)) GTEST_SKIP() << "no CUDA GPU usable here (a CPU-only LibTorch, or no GPU visible)"

// Inputs in float64 (cast down for fp32 runs, so both precisions see the same numbers).
inline Inputs make_inputs(Variant variant, int64_t N, int64_t n, int64_t C, Scenario scenario, uint64_t seed,
                          const VariantOptions& options = {}) {
  torch::manual_seed(seed);
  const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  const Layout l = layout(variant, n, C, options);
  Tensor x = torch::randn({N, n, C}, f64);
  Tensor phi = torch::randn({l.proj_rows, l.proj_cols}, f64) / std::sqrt(double(std::max<int64_t>(l.proj_rows, 1)));
  Tensor bias = torch::randn({l.bias_size}, f64);
  Tensor alpha = torch::rand({l.alpha_size}, f64) + 0.5;  // O(1) gains: the dynamic paths matter
  if (scenario == Scenario::large_logits) {
    // Logits of ±80 before exp/softmax/sigmoid/tanh: biases at ±80 with O(1) dynamic parts.
    bias = 80 * (2 * torch::randint(0, 2, {l.bias_size}, f64) - 1);
  }
  if (scenario == Scenario::zero_rows) x.index_put_({torch::indexing::Slice(0, N, 3)}, 0.0);  // every 3rd token is all zeros
  Inputs in{x, phi, bias, alpha, torch::randn({C}, f64), torch::randn({N, n, C}, f64), torch::randn({N, n}, f64)};
  for (Tensor* t : {&in.x, &in.phi, &in.bias, &in.alpha, &in.w_branch}) t->requires_grad_(true);
  return in;
}

struct Outputs {
  std::vector<std::string> names;
  std::vector<Tensor> values;  // forward outputs, then gradients
};

// Output i of runs on consecutive chunks of tokens, joined along the tokens: what one run on all of
// them gives for a per-token output.
inline Tensor joined(const std::vector<Outputs>& parts, size_t i) {
  std::vector<Tensor> pieces;
  for (const Outputs& part : parts) pieces.push_back(part.values[i]);
  return torch::cat(pieces);
}

// One sublayer, pre → F → post, forward and backward, by the fused ops or the reference.
// Also exercises a gradient flowing into H_pre directly (as a diagnostic loss would).
inline Outputs run_sublayer(const Inputs& in, Variant variant, int64_t t, bool fused, const VariantOptions& options = {}) {
  for (const Tensor* p : {&in.x, &in.phi, &in.bias, &in.alpha, &in.w_branch})
    if (p->grad().defined()) p->mutable_grad() = Tensor();
  // The fused sublayer as the module runs it: pre_joint, and post reading its x_post (x's two
  // gradients summed inside pre's backward kernel). FusedOps.PreJointIsPreThenPost checks it
  // against the public pair pre + post(x).
  const PreOutput mix = fused ? mhc::pre_joint(in.x, in.phi, in.bias, in.alpha, variant, t, options)
                              : reference::pre(in.x, in.phi, in.bias, in.alpha, variant, t, options);
  const Tensor y = torch::tanh(mix.h * in.w_branch);
  const Tensor out =
      fused ? mhc::post(mix.x_post, y, mix.H_post, mix.H_res) : reference::post(in.x, y, mix.H_post, mix.H_res);
  const Tensor loss = (out * in.dout).sum() + (mix.H_pre * in.dH_pre).sum();
  loss.backward();
  Outputs o;
  auto add = [&](const std::string& name, const Tensor& t) {
    o.names.push_back(name);
    o.values.push_back(t.defined() ? t.detach().to(torch::kCPU).clone() : Tensor());
  };
  add("h", mix.h), add("H_pre", mix.H_pre), add("H_post", mix.H_post), add("H_res", mix.H_res), add("x_next", out);
  add("dx", in.x.grad()), add("dw_branch", in.w_branch.grad());
  if (variant != Variant::residual) add("dphi", in.phi.grad()), add("dbias", in.bias.grad()), add("dalpha", in.alpha.grad());
  return o;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  return a.numel() ? (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() : 0.0;
}

// fused vs ref64, with the tolerance derived from ref_low's own error (see the file comment), where
// ref_low is the reference run in fused's precision. Storage rounding adds at most one unit in the
// last place of the storage dtype where fused and ref_low round slightly different fp32 values
// to different neighbours: storage_ulp is 2^-7 for bf16, 0 for fp32 (whose rounding is the math's).
// conditioning, where given, is ref64 rerun on inputs moved by one rounding of the fused precision:
// where the problem itself amplifies that rounding beyond ref_low's error, the larger one counts.
inline void expect_close(const Outputs& fused, const Outputs& ref_low, const Outputs& ref64, const std::string& what,
                         double storage_ulp = 0, const Outputs* conditioning = nullptr) {
  constexpr double u32 = 5.960464477539063e-08;  // 2^-24, fp32 unit roundoff
  for (size_t i = 0; i < ref64.names.size(); ++i) {
    const Tensor& r = ref64.values[i];
    ASSERT_TRUE(fused.values[i].defined()) << what << ": fused produced no " << ref64.names[i];
    ASSERT_TRUE(torch::isfinite(fused.values[i]).all().item<bool>()) << what << ": " << ref64.names[i] << " not finite";
    const double scale = r.numel() ? r.abs().max().item<double>() : 0.0;
    const double ref_err = std::max(max_abs_diff(ref_low.values[i], r),
                                    conditioning ? max_abs_diff(conditioning->values[i], r) : 0.0);
    // + the smallest normal fp32: below it values are subnormal and carry no relative precision.
    const double tol = 8 * ref_err + (64 * u32 + storage_ulp) * scale + std::numeric_limits<float>::min();
    const double err = max_abs_diff(fused.values[i], r);
    EXPECT_LE(err, tol) << what << ": " << ref64.names[i] << " fused error " << err << " > tol " << tol
                        << " (reference's own error " << ref_err << ", scale " << scale << ")";
  }
}
constexpr double kBF16Ulp = 0.0078125;  // 2^-7: bf16 keeps 8 significant bits

// Same numbers in fp64: the fused kernels instantiated for double must agree to ~1e-12 relative.
inline void expect_close_fp64(const Outputs& fused64, const Outputs& ref64, const std::string& what) {
  for (size_t i = 0; i < ref64.names.size(); ++i) {
    const Tensor& r = ref64.values[i];
    const double scale = r.numel() ? std::max(1.0, r.abs().max().item<double>()) : 1.0;
    const double err = max_abs_diff(fused64.values[i], r);
    EXPECT_LE(err, 1e-10 * scale) << what << ": " << ref64.names[i] << " fused fp64 error " << err;
  }
}

// What f throws (its what()), or "(no error)": for comparing one-line error messages exactly.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace mhc::test
