// Bad input gets a one-line error that names the bad value and what is accepted — never a crash,
// a hang or a silently wrong result.
#include "helpers.h"
#include "mhc/errors.h"

namespace mhc::test {
namespace {

// Runs f, expects a c10::Error whose backtrace-free message is one line containing every needle.
template <typename F>
void expect_error(F&& f, std::vector<std::string> needles) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string msg = error_message(e);
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& needle : needles) EXPECT_NE(msg.find(needle), std::string::npos) << "'" << needle << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no error raised; expected one mentioning " << needles[0];
}

struct Params {
  Tensor phi, bias, alpha;
};

Params params(Variant variant, int64_t n, int64_t C) {
  const Layout l = layout(variant, n, C);
  return {torch::zeros({l.proj_rows, l.proj_cols}), torch::zeros({l.bias_size}), torch::zeros({l.alpha_size})};
}

TEST(BadInput, WrongRankOrShape) {
  const Params p = params(Variant::mhc, 4, 8);
  expect_error([&] { mhc::pre(torch::zeros({4, 8}), p.phi, p.bias, p.alpha, Variant::mhc, 20); }, {"x must be 3-D", "[4, 8]"});
  expect_error([&] { mhc::pre(torch::zeros({2, 4, 8}), p.phi.t(), p.bias, p.alpha, Variant::mhc, 20); },
               {"phi must be", "[32, 24]", "[24, 32]"});
  expect_error([&] { mhc::pre(torch::zeros({2, 4, 8}), p.phi, p.bias.narrow(0, 0, 3), p.alpha, Variant::mhc, 20); },
               {"bias must be", "[24]", "[3]"});
  expect_error([&] { mhc::pre(torch::zeros({2, 4, 8}), p.phi, p.bias, torch::zeros({2}), Variant::mhc, 20); },
               {"alpha must be", "[3]", "[2]"});
  const Tensor x = torch::zeros({2, 4, 8});
  expect_error([&] { mhc::post(x, torch::zeros({2, 7}), torch::zeros({2, 4}), torch::zeros({2, 4, 4})); },
               {"y must be", "[2, 8]", "[2, 7]"});
  expect_error([&] { mhc::post(x, torch::zeros({2, 8}), torch::zeros({2, 3}), torch::zeros({2, 4, 4})); },
               {"H_post must be", "[2, 4]"});
  expect_error([&] { mhc::post(x, torch::zeros({2, 8}), torch::zeros({2, 4}), torch::zeros({2, 4})); },
               {"H_res must be", "[2, 4, 4]"});
}

TEST(BadInput, StreamCountMismatchBetweenXAndParameters) {
  const Params p = params(Variant::mhc, 4, 8);  // made for n = 4
  expect_error([&] { mhc::pre(torch::zeros({2, 2, 8}), p.phi, p.bias, p.alpha, Variant::mhc, 20); },
               {"phi must be", "[16, 8]"});
  HyperConnection hc(HyperConnectionOptions(Variant::mhc, 4, 8));
  expect_error([&] { hc->pre(torch::zeros({2, 3, 8})); }, {"n = 4", "[..., 3, 8]"});
  const Tensor x = torch::zeros({2, 5, 4, 8});
  const PreOutput mix = hc->pre(x);
  expect_error([&] { hc->post(x, torch::zeros({5, 2, 8}), mix); }, {"y must be [2, 5, 8]", "[5, 2, 8]"});
}

TEST(BadInput, UnsupportedStreamCounts) {
  const Tensor x = torch::zeros({2, 6, 4});
  const Params p = params(Variant::mhc, 6, 4);
  expect_error([&] { mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc_lite, 20); }, {"mhc-lite", "1 to 5", "n = 6", "KromHC"});
  expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::mhc_lite, 6, 4)); }, {"n = 6", "KromHC"});
  expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::mhc, 17, 4)); }, {"mhc takes 1 to 16", "n = 17"});
  expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::hc, 0, 4)); }, {"1 to 16", "n = 0"});
  expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::ihc, 17, 4)); }, {"ihc takes 1 to 16", "n = 17"});
  for (int64_t n : {1, 5, 10, 18, 32})
    expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::kromhc, n, 4)); },
                 {"kromhc takes n = 2^a·3^b streams (2, 3, 4, 6, 8, 9, 12 or 16)", "got n = " + std::to_string(n)});
  const Params k = params(Variant::kromhc, 4, 4);  // parameters for n = 4 given n = 8 streams: one line naming the shape
  expect_error([&] { mhc::pre(torch::zeros({1, 8, 4}), k.phi, k.bias, k.alpha, Variant::kromhc, 0); }, {"phi", "kromhc"});
  expect_error([&] { mhc::pre(torch::zeros({2, 2, 4}), Tensor(torch::zeros({0})), torch::zeros({0}), torch::zeros({0}),
                              Variant::residual, 0); },
               {"residual takes exactly 1 stream", "n = 2"});
}

TEST(BadInput, SinkhornIterations) {
  const Params p = params(Variant::mhc, 2, 4);
  const Tensor x = torch::zeros({1, 2, 4});
  expect_error([&] { mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc, -1); }, {"sinkhorn_iters", "[0, 100]", "-1"});
  expect_error([&] { mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc, 101); }, {"sinkhorn_iters", "101"});
  expect_error([&] { HyperConnection(HyperConnectionOptions(Variant::mhc, 2, 4).sinkhorn_iters(-3)); }, {"-3"});
}

TEST(BadInput, DtypesAndDevices) {
  const Params p = params(Variant::mhc, 2, 4);
  expect_error([&] { mhc::pre(torch::zeros({1, 2, 4}, torch::kInt), p.phi, p.bias, p.alpha, Variant::mhc, 20); },
               {"x must be float32, float64 or bfloat16, got Int"});
  expect_error([&] { mhc::pre(torch::zeros({1, 2, 4}, torch::kDouble), p.phi, p.bias, p.alpha, Variant::mhc, 20); },
               {"phi must be Double when x is Double (all inputs share one dtype), got Float"});
  expect_error([&] { mhc::pre(torch::zeros({1, 2, 4}, torch::kBFloat16), p.phi.to(torch::kBFloat16), p.bias, p.alpha,
                              Variant::mhc, 20); },
               {"phi must be Float when x is BFloat16 (bfloat16 storage keeps parameters and coefficients in float32)",
                "got BFloat16"});
  expect_error([&] { mhc::post(torch::zeros({1, 2, 4}), torch::zeros({1, 4}, torch::kHalf), torch::zeros({1, 2}),
                               torch::zeros({1, 2, 2})); },
               {"y must be Float when x is Float", "got Half"});
  expect_error([&] { mhc::post(torch::zeros({1, 2, 4}, torch::kBFloat16), torch::zeros({1, 4}, torch::kBFloat16),
                               torch::zeros({1, 2}, torch::kBFloat16), torch::zeros({1, 2, 2})); },
               {"H_post must be Float when x is BFloat16", "got BFloat16"});
}

TEST(BadInput, KindNames) {
  expect_error([&] { HyperConnection(HyperConnectionOptions(parse_variant("mhc-heavy"), 2, 4)); },
               {"mhc-heavy", "residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc"});
  expect_error([&] { BiasInit::named("ones"); }, {"ones", "paper, zero"});
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mhc::pre", "");
  const Params p = params(Variant::mhc, 2, 4);
  expect_error([&] {
    op.typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                        c10::string_view, int64_t)>()
        .call(torch::zeros({1, 2, 4}), p.phi, p.bias, p.alpha, "sinkhorn", 20);
  }, {"unknown variant 'sinkhorn'", "mhc-lite"});
}

TEST(BadInput, NonFiniteInputsPropagateAndDoNotCrash) {
  // NaN in x is the caller's to detect (the trainer checks its loss); the kernels must neither
  // crash nor hide it.
  const Params p = params(Variant::mhc, 2, 4);
  Tensor x = torch::randn({3, 2, 4});
  x[1][0][2] = NAN;
  const PreOutput mix = mhc::pre(x, p.phi + 0.1, p.bias, p.alpha + 1, Variant::mhc, 20);
  EXPECT_TRUE(torch::isnan(mix.H_res[1]).any().item<bool>());
  EXPECT_TRUE(torch::isfinite(mix.H_res[0]).all().item<bool>());
}

}  // namespace
}  // namespace mhc::test
