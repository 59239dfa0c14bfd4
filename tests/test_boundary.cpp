// The fused boundary op (mhc::boundary: post of sublayer l and pre of sublayer l + 1 in one pass)
// against the unfused pair it replaces, pre_joint → F → post → pre_joint → F → post over two
// sublayers: every value and every gradient (x, both sublayers' phi, bias, alpha and F's weights),
// for every variant at n ∈ {1, 2, 4} (and 8 for mHC, 5 for mHC-lite), with ±80 logits, all-zero
// tokens and odd C; in fp32 and bf16 storage within the pair's own error in that precision
// (helpers.h), in fp64 to 1e-10. Then a
// double-precision gradient check of the op alone, the thread-count independence of its per-token
// outputs, the stack helper against sublayer-by-sublayer updates, and one-line errors.
#include "../src/kernels/cpu/simd.h"
#include "helpers.h"
#include "mhc/errors.h"

namespace mhc::test {
namespace {

struct TwoSublayers {
  Inputs first;  // x, the first sublayer's parameters and F weight, the upstream gradients
  Tensor phi, bias, alpha, w_branch, dH_pre;  // the second sublayer's

  TwoSublayers to(torch::ScalarType storage) const {
    const auto coefficients = coefficient_dtype(storage);
    auto c = [](const Tensor& t, torch::ScalarType d) { return t.to(d).detach().requires_grad_(t.requires_grad()); };
    return {first.to(storage), c(phi, coefficients), c(bias, coefficients), c(alpha, coefficients), c(w_branch, storage),
            c(dH_pre, coefficients)};
  }
  TwoSublayers tokens(int64_t t0, int64_t t1) const {
    return {first.tokens(t0, t1), phi, bias, alpha, w_branch, token_rows(dH_pre, t0, t1)};
  }
  TwoSublayers rounded_to_bf16() const {
    auto r = [](const Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_(t.requires_grad()); };
    return {first.rounded_to_bf16(), r(phi), bias, alpha, r(w_branch), dH_pre};
  }
};

TwoSublayers make_two(Variant variant, int64_t N, int64_t n, int64_t C, Scenario scenario, uint64_t seed) {
  const Inputs second = make_inputs(variant, N, n, C, scenario, seed + 1);
  return {make_inputs(variant, N, n, C, scenario, seed), second.phi, second.bias, second.alpha, second.w_branch,
          second.dH_pre};
}

enum class Path { boundary, pair, reference };

// Two sublayers, forward and backward, by one path; the loss reaches every output.
Outputs run_two(const TwoSublayers& in, Variant variant, int64_t t, Path path) {
  const Inputs& a = in.first;
  const std::vector<const Tensor*> leaves = {&a.x, &a.phi, &a.bias, &a.alpha, &a.w_branch, &in.phi, &in.bias, &in.alpha, &in.w_branch};
  for (const Tensor* p : leaves)
    if (p->grad().defined()) p->mutable_grad() = Tensor();
  PreOutput first, second;
  Tensor x1;
  if (path == Path::reference) {
    first = reference::pre(a.x, a.phi, a.bias, a.alpha, variant, t);
    x1 = reference::post(a.x, torch::tanh(first.h * a.w_branch), first.H_post, first.H_res);
    second = reference::pre(x1, in.phi, in.bias, in.alpha, variant, t);
    second.x_next = x1;
  } else {
    first = mhc::pre_joint(a.x, a.phi, a.bias, a.alpha, variant, t);
    const Tensor y0 = torch::tanh(first.h * a.w_branch);
    if (path == Path::boundary) {
      second = mhc::boundary(first.x_post, y0, first.H_post, first.H_res, in.phi, in.bias, in.alpha, variant, t);
      x1 = second.x_next;
    } else {
      x1 = mhc::post(first.x_post, y0, first.H_post, first.H_res);
      second = mhc::pre_joint(x1, in.phi, in.bias, in.alpha, variant, t);
    }
  }
  const Tensor y1 = torch::tanh(second.h * in.w_branch);
  const Tensor x2 = path == Path::reference ? reference::post(x1, y1, second.H_post, second.H_res)
                                            : mhc::post(path == Path::boundary ? second.x_next : second.x_post, y1,
                                                        second.H_post, second.H_res);
  const Tensor loss = (x2 * a.dout).sum() + (first.H_pre * a.dH_pre).sum() + (second.H_pre * in.dH_pre).sum() +
                      (x1 * a.dout).sum() / 3;  // x1's gradient from outside the pair, too
  loss.backward();
  Outputs o;
  auto add = [&](const std::string& name, const Tensor& v) {
    o.names.push_back(name);
    o.values.push_back(v.defined() ? v.detach().clone() : Tensor());
  };
  add("x1", x1), add("h1", second.h), add("H_pre1", second.H_pre), add("H_post1", second.H_post);
  add("H_res1", second.H_res), add("x2", x2), add("dx", a.x.grad()), add("dw0", a.w_branch.grad());
  add("dw1", in.w_branch.grad());
  if (variant != Variant::residual) {
    add("dphi0", a.phi.grad()), add("dbias0", a.bias.grad()), add("dalpha0", a.alpha.grad());
    add("dphi1", in.phi.grad()), add("dbias1", in.bias.grad()), add("dalpha1", in.alpha.grad());
  }
  return o;
}

struct Case {
  Variant variant;
  int64_t n, C;
  Scenario scenario;
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  std::string k = variant_name(info.param.variant);
  for (char& ch : k)
    if (ch == '-') ch = '_';
  return k + "_n" + std::to_string(info.param.n) + "_C" + std::to_string(info.param.C) + "_" +
         scenario_name(info.param.scenario);
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name({c, 0}); }

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<std::pair<Variant, std::vector<int64_t>>> streams = {
      {Variant::residual, {1}},         {Variant::hc, {1, 2, 4}},     {Variant::mhc, {1, 2, 4, 8}},
      {Variant::mhc_v4, {1, 2, 4}},     {Variant::mhc_lite, {1, 2, 4, 5}}, {Variant::kromhc, {2, 4}},
      {Variant::ihc, {1, 2, 4}}};
  for (const auto& [variant, ns] : streams)
    for (int64_t n : ns)
      for (int64_t C : {13, 64})  // 13: odd, not a multiple of any vector width
        for (Scenario s : {Scenario::random, Scenario::large_logits, Scenario::zero_rows})
          cases.push_back({variant, n, C, s});
  return cases;
}

class BoundaryVsPair : public testing::TestWithParam<Case> {};

TEST_P(BoundaryVsPair, ValuesAndGradients) {
  const Case& c = GetParam();
  const int64_t N = 37, t = 20;  // 37: not a multiple of the kernels' token tiles
  const std::string what = case_name({c, 0});
  const TwoSublayers in64 = make_two(c.variant, N, c.n, c.C, c.scenario, 4321);
  const Outputs pair64 = run_two(in64, c.variant, t, Path::pair);
  // The reference agrees with the pair (so the comparisons below are against the right function).
  expect_close_fp64(pair64, run_two(in64, c.variant, t, Path::reference), what + " pair vs reference");
  expect_close_fp64(run_two(in64, c.variant, t, Path::boundary), pair64, what + " fp64");
  const TwoSublayers in32 = in64.to(torch::kFloat);
  expect_close(run_two(in32, c.variant, t, Path::boundary), run_two(in32, c.variant, t, Path::pair), pair64,
               what + " fp32");
  // bf16 storage: the CPU's boundary is the pair itself there, except that x1's gradients from its
  // uses are summed in another order (and so rounded to bf16 differently), so the two differ by
  // bf16 roundings, within the pair's own bf16 error.
  const TwoSublayers bf64 = in64.rounded_to_bf16(), bf = bf64.to(torch::kBFloat16);
  expect_close(run_two(bf, c.variant, t, Path::boundary), run_two(bf, c.variant, t, Path::pair),
               run_two(bf64, c.variant, t, Path::pair), what + " bf16", kBF16Ulp);
}

INSTANTIATE_TEST_SUITE_P(AllVariants, BoundaryVsPair, testing::ValuesIn(all_cases()), case_name);

// Finite differences of the fused op alone, in fp64, against its fused backward: every input,
// upstream gradients into every output (x_next's standing for its use by the next post).
TEST(Boundary, Gradcheck) {
  for (auto [variant, n] : {std::pair{Variant::residual, 1}, {Variant::hc, 2}, {Variant::mhc, 4}, {Variant::mhc_v4, 3},
                            {Variant::mhc_lite, 4}, {Variant::kromhc, 4}, {Variant::ihc, 3}}) {
    const int64_t N = 3, C = 5, t = 5;
    torch::manual_seed(17);
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
    const Inputs p = make_inputs(variant, N, n, C, Scenario::random, 23);
    std::vector<Tensor> inputs = {torch::randn({N, n, C}, f64), torch::randn({N, C}, f64),
                                  torch::rand({N, n}, f64) + 0.5, torch::softmax(torch::randn({N, n, n}, f64), -1),
                                  p.phi.detach(), p.bias.detach(), p.alpha.detach()};
    const std::vector<Tensor> weights = {torch::randn({N, n, C}, f64), torch::randn({N, C}, f64),
                                         torch::randn({N, n}, f64), torch::randn({N, n}, f64), torch::randn({N, n, n}, f64)};
    auto loss = [&] {
      const PreOutput o = mhc::boundary(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], inputs[6], variant, t);
      const std::vector<Tensor> outs = {o.x_next, o.h, o.H_pre, o.H_post, o.H_res};
      Tensor s = torch::zeros({}, f64);
      for (size_t i = 0; i < outs.size(); ++i) s = s + (outs[i] * weights[i]).sum();
      return s;
    };
    for (Tensor& in : inputs) in.requires_grad_(true);
    loss().backward();
    const double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
    const char* names[] = {"x", "y", "H_post", "H_res", "phi", "bias", "alpha"};
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < inputs.size(); ++k) {
      if (inputs[k].numel() == 0) continue;
      const Tensor analytic = inputs[k].grad().reshape(-1);
      Tensor flat = inputs[k].detach().view(-1);
      for (int64_t e = 0; e < flat.numel(); ++e) {
        const double saved = flat[e].item<double>();
        flat[e] = saved + eps;
        const double up = loss().item<double>();
        flat[e] = saved - eps;
        const double down = loss().item<double>();
        flat[e] = saved;
        const double numeric = (up - down) / (2 * eps), a = analytic[e].item<double>();
        ASSERT_LE(std::abs(a - numeric), atol + rtol * std::abs(numeric))
            << variant_name(variant) << ": d" << names[k] << "[" << e << "] analytic " << a << " vs numeric " << numeric;
      }
    }
  }
}

// Wide projections (mHC at n = 8, mHC-lite at n = 5) take 64-token tiles: several of them, and a
// ragged last one, against the pair in fp64.
TEST(Boundary, WideProjectionsOverSeveralTiles) {
  for (auto [variant, n] : {std::pair{Variant::mhc, 8}, {Variant::mhc_lite, 5}}) {
    const TwoSublayers in64 = make_two(variant, 150, n, 16, Scenario::random, 77);
    expect_close_fp64(run_two(in64, variant, 20, Path::boundary), run_two(in64, variant, 20, Path::pair),
                      std::string(variant_name(variant)) + " n=" + std::to_string(n) + " N=150");
  }
}

// Tokens are split across threads by tiles: x_next and the coefficients must not depend on how many.
TEST(Boundary, SameResultForAnyThreadCount) {
  const TwoSublayers in = make_two(Variant::mhc, 100, 4, 32, Scenario::random, 5).to(torch::kFloat);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const Outputs one = run_two(in, Variant::mhc, 20, Path::boundary);
  at::set_num_threads(2);
  const Outputs two = run_two(in, Variant::mhc, 20, Path::boundary);
  at::set_num_threads(before);
  for (size_t i = 0; i < 9; ++i)  // the per-token outputs and gradients (parameter gradients are sums over threads)
    EXPECT_TRUE(torch::equal(one.values[i], two.values[i])) << one.names[i];
}

// The boundary's large outputs (h, and the post's gradients dx and dy) are written with
// non-temporal stores from kNonTemporalBytes on (simd.h): against the same tokens in chunks of 320
// whose outputs stay under it, every per-token output and gradient is equal bit for bit (see
// FusedOps.StreamedOutputsEqualCachedOnes).
TEST(Boundary, StreamedOutputsEqualCachedOnes) {
  const int64_t N = 4160, n = 4, C = 512, chunk = 320;
  ASSERT_GE(N * C * 4, cpu::kNonTemporalBytes);
  ASSERT_LT(chunk * (n + 1) * C * 4, cpu::kNonTemporalBytes);
  const TwoSublayers in = make_two(Variant::mhc, N, n, C, Scenario::random, 31).to(torch::kFloat);
  const Outputs whole = run_two(in, Variant::mhc, 20, Path::boundary);
  std::vector<Outputs> parts;
  for (int64_t t0 = 0; t0 < N; t0 += chunk)
    parts.push_back(run_two(in.tokens(t0, std::min(N, t0 + chunk)), Variant::mhc, 20, Path::boundary));
  for (size_t i = 0; i < whole.names.size(); ++i) {
    if (whole.values[i].dim() == 0 || whole.values[i].size(0) != N) continue;  // parameter gradients: sums
    EXPECT_TRUE(torch::equal(whole.values[i], joined(parts, i))) << whole.names[i];
  }
}

// forward_stack runs inner boundaries fused: the same values and gradients as one connection's
// forward() after another, bit for bit (the same per-token arithmetic and tiles, x_next's two
// gradients added in the kernel either way).
TEST(Boundary, StackMatchesSublayerBySublayer) {
  torch::manual_seed(3);
  const int64_t L = 4, n = 4, C = 24;
  HyperConnectionStack stack(HyperConnectionOptions(Variant::mhc, n, C), L);
  std::vector<Tensor> w;
  std::vector<Sublayer> sublayers;
  for (int64_t l = 0; l < L; ++l) {
    w.push_back(torch::randn({C}).requires_grad_(true));
    sublayers.push_back([weight = w.back()](const Tensor& h) { return torch::tanh(h * weight); });
  }
  const Tensor x = torch::randn({2, 9, n, C}).requires_grad_(true), dout = torch::randn({2, 9, n, C});
  auto gradients = [&](const Tensor& out) {
    std::vector<Tensor> wrt = {x};
    for (const auto& p : stack->parameters()) wrt.push_back(p);
    wrt.insert(wrt.end(), w.begin(), w.end());
    return torch::autograd::grad({(out * dout).sum()}, wrt);
  };
  const Tensor fused = stack->forward(x, sublayers);
  Tensor one_by_one = x;
  for (int64_t l = 0; l < L; ++l) one_by_one = stack->connections[l]->forward(one_by_one, sublayers[l]);
  EXPECT_TRUE(torch::equal(fused, one_by_one));
  const auto g_fused = gradients(fused), g_one = gradients(one_by_one);
  for (size_t i = 0; i < g_one.size(); ++i) EXPECT_TRUE(torch::equal(g_fused[i], g_one[i])) << "gradient " << i;
}

// The first line of what f throws (c10 errors add a backtrace below it).
template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return error_message(e);
  }
  return "(no error)";
}

TEST(Boundary, BadShapesGiveOneLineErrors) {
  const Inputs in = make_inputs(Variant::mhc, 6, 4, 8, Scenario::random, 1).to(torch::kFloat);
  const Tensor y = torch::randn({6, 8}), H_post = torch::rand({6, 4}), H_res = torch::rand({6, 4, 4});
  const std::string wrong_y = message_of([&] {
    mhc::boundary(in.x, torch::randn({6, 7}), H_post, H_res, in.phi, in.bias, in.alpha, Variant::mhc);
  });
  EXPECT_NE(wrong_y.find("y must be [N, C] = [6, 8], got [6, 7]"), std::string::npos) << wrong_y;
  const std::string wrong_phi = message_of([&] {
    mhc::boundary(in.x, y, H_post, H_res, in.phi.narrow(0, 0, 3), in.bias, in.alpha, Variant::mhc);
  });
  EXPECT_NE(wrong_phi.find("phi must be"), std::string::npos) << wrong_phi;
  for (const std::string& e : {wrong_y, wrong_phi}) EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

}  // namespace
}  // namespace mhc::test
