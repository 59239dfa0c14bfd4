// `mhc analyze --deepseek-v4 PATH`: this library's diagnostics of a DeepSeek-V4 checkpoint's
// hyper-connections (DESIGN.md §5, §9). The weights are read by their offsets alone
// (mhc/deepseek_v4_checkpoint.h), converted for mhc-v4, and run on probe states: i.i.d. standard
// normal token states, since a checkpoint holds no activations. Reported per sublayer: the signal
// gains (single and composite), the doubly-stochastic error of V4's comb and of plain Sinkhorn–Knopp
// (mhc) on the same logits, how far apart the two H_res are, and the H_pre/H_post ranges; then
// analysis.json and the plots of `mhc analyze`.
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "analyze.h"
#include "mhc/deepseek_v4_checkpoint.h"
#include "mhc/diag.h"
#include "mhc/files.h"
#include "mhc/module.h"
#include "mhc/ops.h"

namespace mhc::cli {

namespace {

constexpr int64_t kV4Iterations = 20;  // hc_sinkhorn_iters

double worst(const diag::StochasticError& e) { return std::max(e.row, e.column); }

}  // namespace

int analyze_deepseek_v4(const Args& a) {
  const std::vector<std::string> paths = a.list("deepseek-v4");
  const int64_t probe_tokens = a.integer("probe-tokens");
  const int64_t seed = a.integer("seed");
  torch::set_num_threads(static_cast<int>(a.integer("threads")));
  const std::string out = a.str("out").empty() ? "runs/deepseek-v4-analysis" : a.str("out");
  ensure_writable_dir(out);

  const DeepSeekV4Checkpoint v4 = read_deepseek_v4(paths);
  const int64_t n = v4.streams, C = v4.width;
  std::cout << "analyze --deepseek-v4: " << v4.files.size() << " file(s), " << v4.naming << " names, "
            << v4.sublayers.size() << " sublayers, n = " << n << " streams of width C = " << C
            << (v4.head.fn.defined() ? ", with hc_head" : ", no hc_head") << "; read " << v4.bytes_read
            << " tensor bytes\n";

  // The probe: the same i.i.d. N(0, 1) states for every sublayer (a checkpoint has no activations).
  torch::manual_seed(static_cast<uint64_t>(seed));
  const torch::Tensor x = torch::randn({probe_tokens, n, C});
  const std::string origin = "i.i.d. standard normal token states [" + std::to_string(probe_tokens) + ", " +
                             std::to_string(n) + ", " + std::to_string(C) + "], seed " + std::to_string(seed) +
                             ", the same for every sublayer (a checkpoint holds weights, not activations)";
  std::cout << "probe: " << origin << "\n";

  torch::NoGradGuard no_grad;
  std::vector<SublayerRecord> records;
  nlohmann::ordered_json plain = {{"row_error", nlohmann::json::array()},
                                  {"col_error", nlohmann::json::array()},
                                  {"max_h_res_difference", nlohmann::json::array()}};
  const std::vector<int64_t> iterations = {1, 2, 5, 10, 20, 50};
  nlohmann::json errors_by_t = nlohmann::json::array(), mean_h_res = nlohmann::json::array();
  std::ostringstream comparison;
  comparison << "\nV4's comb vs plain Sinkhorn–Knopp (mhc, t = " << kV4Iterations << ") on the same logits, worst token:\n"
             << "| sublayer | V4 row err | V4 col err | plain row err | plain col err | max |H_res V4 - plain| |\n"
             << "|---|---|---|---|---|---|\n";
  for (const auto& s : v4.sublayers) {
    const ConnectionParams& p = s.params;
    const PreOutput mix = mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc_v4, kV4Iterations);
    const torch::Tensor plain_H = mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc, kV4Iterations).H_res;
    const diag::StochasticError e4 = diag::stochastic_error(mix.H_res), ep = diag::stochastic_error(plain_H);
    const double difference = (mix.H_res.to(torch::kDouble) - plain_H.to(torch::kDouble)).abs().max().item<double>();
    plain["row_error"].push_back(ep.row);
    plain["col_error"].push_back(ep.column);
    plain["max_h_res_difference"].push_back(difference);
    comparison << "| " << s.name << " | " << std::scientific << std::setprecision(2) << e4.row << " | " << e4.column
               << " | " << ep.row << " | " << ep.column << " | " << difference << " |\n";
    nlohmann::json row = nlohmann::json::array();
    for (const int64_t t : iterations)  // t = 20 is the H_res above
      row.push_back(t == kV4Iterations ? worst(e4)
                                       : worst(diag::stochastic_error(
                                             mhc::pre(x, p.phi, p.bias, p.alpha, Variant::mhc_v4, t).H_res)));
    errors_by_t.push_back(row);
    mean_h_res.push_back(mean_matrix(mix.H_res));
    records.push_back({x, mix});
  }
  auto diagnostics = diag::diagnose(records);
  for (size_t l = 0; l < diagnostics.size(); ++l)  // diagnose names sublayers after a GPT's; V4's are attn / ffn
    diagnostics[l].name = v4.sublayers[l].name;
  std::cout << diag::table(diagnostics) << comparison.str();

  nlohmann::ordered_json report = {{"source", "deepseek-v4"},
                                   {"files", v4.files},
                                   {"naming", v4.naming},
                                   {"variant", "mhc-v4"},
                                   {"streams", n},
                                   {"width", C},
                                   {"sinkhorn_iters", kV4Iterations},
                                   {"probe", origin},
                                   {"probe_tokens", probe_tokens},
                                   {"tensor_bytes_read", v4.bytes_read}};
  report["diag"] = diag::to_json(diagnostics);
  report["plain_sinkhorn"] = plain;
  report["mean_h_res"] = mean_h_res;
  report["sinkhorn"] = {{"iterations", iterations}, {"error", errors_by_t}};
  if (v4.head.fn.defined()) {
    HyperHead head(n, C);
    head->phi.copy_(v4.head.fn.t());
    head->bias.copy_(v4.head.base);
    head->alpha.copy_(v4.head.scale);
    const torch::Tensor w = head->weights(x);
    report["head"] = {{"weight_min", w.min().item<double>()}, {"weight_max", w.max().item<double>()}};
    std::cout << "hc_head weights on the probe: " << std::defaultfloat << w.min().item<double>() << " to "
              << w.max().item<double>() << "\n";
  }
  write_analysis(out, report);
  return 0;
}

}  // namespace mhc::cli
