// Fused kernels vs the plain-LibTorch reference: forward values and every gradient (x, y via the
// sublayer, phi, bias, alpha), for every variant, stream count and input scenario, in fp32 and bf16
// storage (with precision-derived tolerances, see helpers.h) and in fp64 (the CPU kernels
// instantiated for double); on the CPU, and on CUDA where a GPU is (skipped otherwise).
#include <algorithm>
#include <cctype>
#include <tuple>

#include "../src/kernels/cpu/simd.h"
#include "helpers.h"

namespace mhc::test {
namespace {

// N = 37 tokens: not a multiple of the kernels' token tiles (16 forward, 64 backward for mHC), one
// ragged backward tile; the cases with more tokens cross several.
constexpr int64_t kTokens = 37;

struct Case {
  Variant variant;
  int64_t n, C, t;
  Scenario scenario;
  int64_t tokens = kTokens;
  VariantOptions options = {};
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string k = variant_spec(c.variant, c.options);
  for (char& ch : k)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return k + "_n" + std::to_string(c.n) + "_C" + std::to_string(c.C) + "_t" + std::to_string(c.t) + "_" +
         scenario_name(c.scenario) + (c.tokens == kTokens ? "" : "_N" + std::to_string(c.tokens));
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<std::pair<Variant, std::vector<int64_t>>> streams = {
      {Variant::residual, {1}},
      {Variant::hc, {1, 2, 4, 16}},
      {Variant::mhc, {1, 2, 4, 8, 16}},
      {Variant::mhc_v4, {1, 4, 16}},
      {Variant::mhc_lite, {1, 2, 4, 5}},
      {Variant::kromhc, {2, 3, 4, 6, 8, 9, 12, 16}},  // every accepted n
      {Variant::ihc, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}},  // every accepted n
      {Variant::jpmhc, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}},  // every accepted n
      {Variant::gomhc, {1, 2, 3, 4, 5, 6, 7, 8}}};  // every n accepted at block_size 2
  for (const auto& [variant, ns] : streams)
    for (int64_t n : ns)
      for (int64_t C : {13, 64})  // 13: not a multiple of any vector width
        for (Scenario s : {Scenario::random, Scenario::large_logits, Scenario::zero_rows})
          cases.push_back({variant, n, C, 20, s});
  // The orthogonal variants' options: go-mHC's block size 1 (n up to 16), JPmHC's fixed-point steps.
  VariantOptions single_blocks, paper_steps, wide_scale;
  single_blocks.block_size = 1, paper_steps.cayley_iters = 2, wide_scale.cayley_scale = 1.0;
  for (int64_t n = 1; n <= kMaxCayleyDim; ++n)  // every n accepted at block_size 1
    for (Scenario s : {Scenario::random, Scenario::large_logits})
      cases.push_back({Variant::gomhc, n, 13, 20, s, kTokens, single_blocks});
  for (int64_t n : {2, 4, 16}) {
    cases.push_back({Variant::jpmhc, n, 13, 20, Scenario::random, kTokens, paper_steps});
    cases.push_back({Variant::jpmhc, n, 13, 20, Scenario::random, kTokens, wide_scale});
  }
  for (int64_t t : {0, 1, 5})  // Sinkhorn iteration counts other than the default
    cases.push_back({Variant::mhc, 4, 13, t, Scenario::random});
  for (int64_t t : {1, 5}) cases.push_back({Variant::mhc_v4, 4, 13, t, Scenario::random});
  // Projections longer than one of the CPU forward's K blocks (kBlockK = 2048), with a ragged last
  // block; and several backward tiles (64 tokens for mHC / mHC-lite, a ragged last one).
  cases.push_back({Variant::mhc, 4, 541, 20, Scenario::random});
  cases.push_back({Variant::mhc_lite, 4, 541, 20, Scenario::random});
  cases.push_back({Variant::hc, 2, 2069, 20, Scenario::random});
  for (Variant v : {Variant::mhc, Variant::mhc_lite})
    for (Scenario s : {Scenario::random, Scenario::large_logits}) cases.push_back({v, 4, 13, 20, s, 133});
  // Decode sizes: at most kDirectProjectionRows rows of the projection (N tokens × P rows each) read
  // phi untransposed (projection_gemm.h), with a partial last vector of columns where W does not
  // divide m (HC's 6, KromHC's 12) and several blocks of them (mHC at n = 16: 288 columns).
  const std::vector<std::pair<Variant, int64_t>> decode = {{Variant::hc, 4},       {Variant::mhc, 4},
                                                           {Variant::mhc, 16},     {Variant::mhc_v4, 4},
                                                           {Variant::mhc_lite, 4}, {Variant::mhc_lite, 5},
                                                           {Variant::kromhc, 4},   {Variant::ihc, 3},
                                                           {Variant::jpmhc, 4},    {Variant::gomhc, 4}};
  for (const auto& [variant, n] : decode)
    for (int64_t tokens : {1, 2, 8})
      for (int64_t C : {13, 64}) cases.push_back({variant, n, C, 20, Scenario::random, tokens});
  return cases;
}

// gtest prints a failing parameter with this instead of its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << case_name({c, 0}); }

// One case on one backend: fp32 against the reference (and, on the CPU, the fp64 kernels); bf16
// storage against the reference run on the same bf16 numbers; on CUDA also against the CPU kernels.
void check_case(const Case& c, torch::Device device) {
  const int64_t N = c.tokens;
  const std::string what = case_name({c, 0}) + " on " + device.str();
  const Inputs in64 = make_inputs(c.variant, N, c.n, c.C, c.scenario, 1234, c.options);
  // One sublayer of this case's variant and options, by the fused ops or the reference.
  auto run = [&](const Inputs& in, bool fused) { return run_sublayer(in, c.variant, c.t, fused, c.options); };
  const Outputs ref64 = run(in64, /*fused=*/false);
  const Outputs ref32 = run(in64.to(torch::kFloat), /*fused=*/false);
  const Outputs fused32 = run(in64.to(torch::kFloat, device), /*fused=*/true);
  // At ±80 logits a gradient may be ill-conditioned: with ties among a softmax's +80 logits, one
  // fp32 rounding of the logits (ulp(80) = 7.6e-6) moves KromHC's dalpha at n = 12 by ~1e-4, which
  // fp32's own reference may happen to dodge. The tolerance then counts that sensitivity, measured:
  // ref64 with every bias b moved by |b|·2^-23 (one to two fp32 ulps) in a random direction.
  Outputs jittered64;
  if (c.scenario == Scenario::large_logits) {
    Inputs moved = in64;
    torch::manual_seed(99);
    const Tensor ulp = in64.bias.detach().abs() * std::ldexp(1.0, -23);
    moved.bias = (in64.bias.detach() + ulp * (torch::randint(0, 2, in64.bias.sizes(), torch::kDouble) * 2 - 1))
                     .requires_grad_(true);
    jittered64 = run(moved, /*fused=*/false);
  }
  expect_close(fused32, ref32, ref64, what + " fp32", 0, c.scenario == Scenario::large_logits ? &jittered64 : nullptr);
  if (device.is_cpu()) {  // the fp64 kernels exist on the CPU only
    expect_close_fp64(run(in64, /*fused=*/true), ref64, what);
  } else {
    const Outputs cpu32 = run(in64.to(torch::kFloat), /*fused=*/true);
    expect_close(fused32, cpu32, ref64, what + " fp32 vs the CPU kernels");
  }
  const Inputs bf64 = in64.rounded_to_bf16();
  const Outputs bf_ref64 = run(bf64, /*fused=*/false);
  const Outputs bf_ref = run(bf64.to(torch::kBFloat16), /*fused=*/false);
  const Outputs bf_fused = run(bf64.to(torch::kBFloat16, device), /*fused=*/true);
  expect_close(bf_fused, bf_ref, bf_ref64, what + " bf16", kBF16Ulp);
}

class FusedVsReference : public testing::TestWithParam<Case> {};

TEST_P(FusedVsReference, CPU) { check_case(GetParam(), torch::kCPU); }

TEST_P(FusedVsReference, CUDA) {
  MHC_SKIP_UNLESS_USABLE(torch::kCUDA);
  if (GetParam().n > kMaxStreamsCuda) GTEST_SKIP() << "the CUDA kernels take n <= " << kMaxStreamsCuda;
  check_case(GetParam(), torch::kCUDA);
}

INSTANTIATE_TEST_SUITE_P(AllVariants, FusedVsReference, testing::ValuesIn(all_cases()), case_name);

// The kernels split tokens across threads: the result must not depend on how many.
TEST(FusedOps, SameResultForAnyThreadCount) {
  const Inputs in = make_inputs(Variant::mhc, 100, 4, 32, Scenario::random, 7).to(torch::kFloat);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const Outputs one = run_sublayer(in, Variant::mhc, 20, true);
  at::set_num_threads(2);
  const Outputs two = run_sublayer(in, Variant::mhc, 20, true);
  at::set_num_threads(before);
  for (size_t i = 0; i < one.names.size(); ++i) {
    // Per-token outputs are bitwise equal; phi/bias/alpha gradients are sums over tokens whose
    // order depends on the split, so they agree to fp32 rounding of that sum.
    const double scale = one.values[i].abs().max().item<double>();
    EXPECT_LE(max_abs_diff(one.values[i], two.values[i]), 1e-5 * std::max(scale, 1.0)) << one.names[i];
  }
  EXPECT_TRUE(torch::equal(one.values[4], two.values[4])) << "x_next differs between 1 and 2 threads";
}

// Outputs of kNonTemporalBytes or more are written with non-temporal stores (simd.h), smaller ones
// through the cache: the store changes where a value goes, never the value. A batch in which every
// output kind is written past the cache (h alone is 8.5 MB in fp32) against the same tokens in
// chunks of 320, in which none is (post's backward writes (n + 1)·C values per token, 3.3 MB):
// every per-token output and gradient bit for bit (parameter gradients are sums whose order
// depends on the split). Chunks are whole 64-token tiles, so Sinkhorn–Knopp's groups of tokens are
// the same ones. Every path that can store past the cache: the plain residual's dx (no
// projection), HC's (one projection row per stream), mHC's and mHC-lite's, fp32 and fp64.
TEST(FusedOps, StreamedOutputsEqualCachedOnes) {
  const int64_t N = 4160, C = 512, chunk = 320;
  for (auto [variant, n, dtype] : {std::tuple{Variant::residual, 1, torch::kFloat}, {Variant::hc, 4, torch::kFloat},
                                   {Variant::mhc, 4, torch::kFloat}, {Variant::mhc_lite, 4, torch::kFloat},
                                   {Variant::mhc, 4, torch::kDouble}}) {
    const std::string what = std::string(variant_name(variant)) + (dtype == torch::kDouble ? " fp64" : " fp32");
    const int64_t value_bytes = dtype == torch::kDouble ? 8 : 4;
    ASSERT_GE(N * C * value_bytes, cpu::kNonTemporalBytes) << what << ": h must bypass the cache";
    ASSERT_LT(chunk * (n + 1) * C * value_bytes, cpu::kNonTemporalBytes) << what << ": a chunk's outputs must not";
    const Inputs in = make_inputs(variant, N, n, C, Scenario::random, 21).to(dtype);
    const Outputs whole = run_sublayer(in, variant, 20, true);
    std::vector<Outputs> parts;
    for (int64_t t0 = 0; t0 < N; t0 += chunk) parts.push_back(run_sublayer(in.tokens(t0, std::min(N, t0 + chunk)), variant, 20, true));
    for (const std::string name : {"h", "H_pre", "H_post", "H_res", "x_next", "dx"}) {
      const auto at = std::find(whole.names.begin(), whole.names.end(), name);
      ASSERT_NE(at, whole.names.end()) << name;
      const size_t i = at - whole.names.begin();
      EXPECT_TRUE(torch::equal(whole.values[i], joined(parts, i))) << what << " " << name;
    }
  }
}

// pre_joint + post(x_post) is pre + post(x) with x's two gradients summed inside pre's backward
// kernel instead of by autograd: the same values, dx differing at most by where that one sum is
// rounded (one fp32 rounding of |dx|).
TEST(FusedOps, PreJointIsPreThenPost) {
  for (auto [variant, n] : {std::pair{Variant::residual, 1}, {Variant::hc, 4}, {Variant::mhc, 4}, {Variant::mhc_v4, 4},
                            {Variant::mhc_lite, 4}, {Variant::kromhc, 4}, {Variant::ihc, 4}}) {
    const Inputs in = make_inputs(variant, 37, n, 13, Scenario::random, 11).to(torch::kFloat);
    const Outputs joint = run_sublayer(in, variant, 20, /*fused=*/true);
    in.x.mutable_grad() = Tensor();
    const PreOutput mix = mhc::pre(in.x, in.phi, in.bias, in.alpha, variant, 20);
    const Tensor out = mhc::post(in.x, torch::tanh(mix.h * in.w_branch), mix.H_post, mix.H_res);
    const Tensor dx = torch::autograd::grad({(out * in.dout).sum() + (mix.H_pre * in.dH_pre).sum()}, {in.x})[0];
    const Tensor joint_dx = joint.values[5];
    ASSERT_EQ(joint.names[5], "dx");
    EXPECT_TRUE(torch::equal(joint.values[4], out.detach())) << variant_name(variant);
    EXPECT_LE(max_abs_diff(joint_dx, dx), std::ldexp(dx.abs().max().item<double>(), -23)) << variant_name(variant);
    EXPECT_GT(dx.abs().max().item<double>(), 0.0) << variant_name(variant);
  }
}

// The CPU kernels run Sinkhorn–Knopp for W tokens at once when every token of the group is exact
// in the linear domain, and token by token otherwise. With a large phi every nonzero token's logits
// are sharp (the log domain, for mhc), and an all-zero token keeps the bias's ordinary logits: the
// first 16 tokens are zeros (whole groups on the lanes), then every third (groups mixing ordinary
// and sharp tokens, token by token). mhc-v4's floor keeps every group on the lanes. fp64 against
// the reference, values and every gradient.
TEST(FusedOps, SinkhornGroupsOfMixedSharpness) {
  for (Variant variant : {Variant::mhc, Variant::mhc_v4})
    for (int64_t n : {2, 4, 8}) {
      Inputs in = make_inputs(variant, 37, n, 13, Scenario::zero_rows, 21);
      in.phi = (in.phi.detach() * 60).requires_grad_(true);
      in.x = in.x.detach().index_put_({torch::indexing::Slice(0, 16)}, 0.0).requires_grad_(true);
      const std::string what = std::string(variant_name(variant)) + " n=" + std::to_string(n);
      expect_close_fp64(run_sublayer(in, variant, 20, /*fused=*/true), run_sublayer(in, variant, 20, /*fused=*/false),
                        what);
    }
}

// Gradients that never flow (here only h is used, so H_post and H_res get none) are read as zeros.
TEST(FusedOps, GradientOfHAlone) {
  for (Variant variant : {Variant::hc, Variant::mhc, Variant::mhc_v4, Variant::mhc_lite, Variant::kromhc, Variant::ihc}) {
    const Inputs in = make_inputs(variant, 9, 3, 16, Scenario::random, 5);
    std::vector<Tensor> grads[2];
    for (bool fused : {true, false}) {
      const PreOutput mix = fused ? mhc::pre(in.x, in.phi, in.bias, in.alpha, variant, 20)
                                  : reference::pre(in.x, in.phi, in.bias, in.alpha, variant, 20);
      grads[fused] = torch::autograd::grad({(mix.h * in.dout.select(1, 0)).sum()}, {in.x, in.phi, in.bias, in.alpha});
    }
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_LE(max_abs_diff(grads[0][i], grads[1][i]), 1e-10) << variant_name(variant) << " input " << i;
  }
}

// Strided inputs are made contiguous by the binding, not misread.
TEST(FusedOps, NonContiguousInputsAreHandled) {
  const Inputs in = make_inputs(Variant::mhc, 20, 4, 16, Scenario::random, 3).to(torch::kFloat);
  const Tensor x_t = in.x.detach().transpose(0, 2).contiguous().transpose(0, 2);  // same values, other strides
  ASSERT_FALSE(x_t.is_contiguous());
  const PreOutput a = mhc::pre(in.x.detach(), in.phi.detach(), in.bias.detach(), in.alpha.detach(), Variant::mhc, 20);
  const PreOutput b = mhc::pre(x_t, in.phi.detach(), in.bias.detach(), in.alpha.detach(), Variant::mhc, 20);
  EXPECT_TRUE(torch::equal(a.h, b.h));
  EXPECT_TRUE(torch::equal(a.H_res, b.H_res));
  const Tensor y = torch::randn({16, 20}).t();  // [20, 16], non-contiguous
  EXPECT_TRUE(torch::equal(mhc::post(x_t, y, a.H_post, a.H_res), mhc::post(in.x.detach(), y.contiguous(), a.H_post, a.H_res)));
}

// An empty batch is valid: forward and backward return empty tensors and zero parameter gradients.
TEST(FusedOps, EmptyBatch) {
  for (Variant variant :
       {Variant::residual, Variant::hc, Variant::mhc, Variant::mhc_v4, Variant::mhc_lite, Variant::kromhc, Variant::ihc}) {
    const int64_t n = variant == Variant::residual ? 1 : 4;
    const Inputs in = make_inputs(variant, 0, n, 8, Scenario::random, 1).to(torch::kFloat);
    const Outputs o = run_sublayer(in, variant, 20, true);
    EXPECT_EQ(o.values[0].sizes(), (std::vector<int64_t>{0, 8})) << variant_name(variant);
    EXPECT_EQ(o.values[4].sizes(), (std::vector<int64_t>{0, n, 8})) << variant_name(variant);
    if (variant != Variant::residual) {
      EXPECT_EQ(in.phi.grad().abs().sum().item<double>(), 0.0) << variant_name(variant);
    }
  }
}

}  // namespace
}  // namespace mhc::test
