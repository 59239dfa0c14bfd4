// `mhc analyze`: the diagnostics of one checkpoint on its run's fixed probe batch — per-sublayer
// tables of the signal gains and the stream use on stdout, analysis.json, and plots (composite gains
// vs depth, mean H_res per sublayer, Sinkhorn–Knopp error vs iteration count, stream use vs depth).
#include <cmath>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "analyze.h"
#include "args.h"
#include "commands.h"
#include "mhc/diag.h"
#include "mhc/files.h"
#include "mhc/run_state.h"
#include "plots.h"
#include "run_settings.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

// Counts the numbers under `j` (all of them in *total) that are not finite: NaN and inf as such, or
// as the null that nlohmann's dump() writes for them.
int64_t non_finite_numbers(const nlohmann::ordered_json& j, int64_t* total) {
  if (j.is_null()) return ++*total, 1;
  if (j.is_number_float()) return ++*total, std::isfinite(j.get<double>()) ? 0 : 1;
  if (j.is_number()) return ++*total, 0;
  int64_t bad = 0;
  if (j.is_structured())
    for (const auto& v : j) bad += non_finite_numbers(v, total);
  return bad;
}

// Finite weights can still overflow in the forward pass (a run near divergence): the diagnostics
// downstream are then NaN or inf. Said in one line, naming where, so that null in analysis.json
// and gaps in the plots are not mistaken for a fault of the tool.
void report_non_finite(const nlohmann::ordered_json& report) {
  int64_t bad = 0, total = 0;
  std::string where;
  for (const auto& [key, value] : report.items()) {
    const int64_t n = non_finite_numbers(value, &total);
    if (n > 0) bad += n, where += (where.empty() ? "" : ", ") + key;
  }
  if (bad > 0)
    std::cerr << "warning: " << bad << " of " << total << " diagnostic values are not finite (in " << where
              << "): the probe overflows in the forward pass; they are null in analysis.json and left out of the plots\n";
}

enum class Source { run, deepseek_v4 };
// Which source --ckpt or --deepseek-v4 names (exactly one), with each source's own flags only.
Source checked_source(const Args& a);
void analyze_run(const Args& a);

}  // namespace

int analyze(const std::vector<std::string>& argv) {
  Args a("mhc analyze",
         "Signal-gain and stream diagnostics (DESIGN.md §5, include/mhc/diag.h) of a checkpoint on its run's\n"
         "probe batch (the first validation windows): per-sublayer tables, the collapse alarm's verdict,\n"
         "<out>/analysis.json, and plots gain_vs_depth.png, h_res_mean.png, sinkhorn_error.png, streams.png.\n"
         "With --deepseek-v4 PATH instead of --ckpt: the same for a DeepSeek-V4 checkpoint's hyper-connections\n"
         "(safetensors shards or a folder of them; only those tensors are read), on random probe states.");
  declare_checkpoint_flag(a);
  a.flag("deepseek-v4", "", "DeepSeek-V4 safetensors files or folders (comma-separated), native or Hugging Face "
         "names; each distinct file read once, at most 100 MB of header each and 2 GiB of connection tensors in all")
      .flag("probe-tokens", "256", "--deepseek-v4: probe states, i.i.d. standard normal", IntegerRange{1, 1 << 20})
      .flag("seed", "0", "--deepseek-v4: the probe states' seed", IntegerRange{0, INT64_MAX})
      .flag("out", "", "where to write analysis.json and the plots (default: <run folder>/analysis; with "
            "--deepseek-v4: runs/deepseek-v4-analysis)")
      .flag("probe-batch", "", "validation windows in the probe batch (default: the run's --diag-batch)",
            train::setting_spec("diag-batch").range)
      .flag("data-dir", "", "where the corpus and token caches are (default: the run's)");
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  if (checked_source(a) == Source::deepseek_v4) return analyze_deepseek_v4(a);
  analyze_run(a);
  return 0;
}

namespace {

Source checked_source(const Args& a) {
  const bool v4 = !a.str("deepseek-v4").empty();
  if (v4 == !a.str("ckpt").empty())
    throw std::invalid_argument(std::string("mhc analyze: ") + (v4 ? "give --ckpt or --deepseek-v4, not both" :
                                "--ckpt is required (a run folder or checkpoint file), or --deepseek-v4 PATH"));
  for (const char* flag : {"probe-batch", "data-dir", "probe-tokens", "seed"}) {
    const bool v4_flag = std::string(flag) == "probe-tokens" || std::string(flag) == "seed";
    if (a.given(flag) && v4_flag != v4)
      throw std::invalid_argument(std::string("mhc analyze: --") + flag + " applies to " +
                                  (v4_flag ? "--deepseek-v4" : "--ckpt") + " only");
  }
  return v4 ? Source::deepseek_v4 : Source::run;
}

// The probe of a trained run: its tables on stdout, analysis.json and the plots.
void analyze_run(const Args& a) {
  const RunToRead target = run_to_read(a);
  const std::string& path = target.checkpoint;
  require_utf8("--ckpt", path);  // analysis.json names it
  const std::string out = a.str("out").empty() ? (fs::path(path).parent_path() / "analysis").string() : a.str("out");
  ensure_writable_dir(out);

  auto run = train::load_run(path);
  const int64_t windows = a.str("probe-batch").empty() ? run.settings.integer("diag-batch") : a.integer("probe-batch");
  const auto corpus = train::run_corpus(run, a.str("data-dir"), target.threads);
  const data::WindowSampler val(corpus.val, run.model->config().seq_len, 0, "validation");
  const auto [tokens, targets] = val.ordered(0, std::min(windows, val.windows()));

  torch::NoGradGuard no_grad;
  std::vector<SublayerRecord> records;
  const torch::Tensor logits = run.model->forward(tokens, &records);
  const double probe_loss =
      torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1})).item<double>();
  const GPTConfig& config = run.model->config();
  std::cout << "analyze: " << path << " (step " << run.step << "): " << variant_name(config.variant) << " n=" << config.streams
            << ", " << 2 * config.layers << " sublayers, probe batch " << tokens.size(0) << " x " << tokens.size(1)
            << " tokens, probe loss " << probe_loss << " nats\n";

  nlohmann::ordered_json report = {{"checkpoint", path},
                                   {"step", run.step},
                                   {"variant", variant_name(config.variant)},
                                   {"streams", config.streams},
                                   {"sinkhorn_iters", config.sinkhorn_iters},
                                   {"probe_tokens", tokens.numel()},
                                   {"probe_loss", probe_loss}};
  if (run.model->connections().empty()) {
    std::cout << "the plain residual has no H_res to analyse: its residual map is the identity (x + F(x)), so every\n"
                 "single-layer and composite gain is exactly 1 and there is no doubly-stochastic error\n";
    write_analysis(out, report, /*plots=*/false);
    return;
  }
  const auto diagnostics = diag::diagnose(records);
  std::cout << diag::table(diagnostics);
  // The alarm's test of this one diagnostic, with the run's thresholds (a run written before they
  // existed gets the defaults).
  const diag::CollapseThresholds thresholds{run.settings.real("collapse-rank"), run.settings.real("collapse-share"),
                                            run.settings.integer("collapse-after")};
  const diag::StreamSummary streams = diag::summarize_streams(diagnostics);
  const bool collapsed = diag::collapsed(streams, thresholds);
  std::cout << "\nstreams, means over sublayers 1..L-1: effective rank " << streams.effective_rank << ", largest share "
            << streams.largest_share << " (n = " << streams.streams << "): "
            << (collapsed ? "collapsed" : "not collapsed") << " by the alarm's thresholds (rank < " << thresholds.rank
            << " or share > " << thresholds.share << ")\n";

  const std::vector<int64_t> iterations = {1, 2, 5, 10, 20, 50};
  nlohmann::json mean_h_res = nlohmann::json::array();
  for (const auto& r : records) mean_h_res.push_back(mean_matrix(r.mix.H_res));
  report["diag"] = diag::to_json(diagnostics);
  report["stream_summary"] = {{"effective_rank", streams.effective_rank},
                       {"largest_share", streams.largest_share},
                       {"collapsed", collapsed},
                       {"collapse_rank", thresholds.rank},
                       {"collapse_share", thresholds.share}};
  report["mean_h_res"] = mean_h_res;
  report["sinkhorn"] = {{"iterations", iterations},
                        {"error", diag::sinkhorn_errors(run.model, records, iterations)}};
  write_analysis(out, report);
}

}  // namespace

nlohmann::json mean_matrix(const torch::Tensor& H_res) {
  const int64_t n = H_res.size(-1);
  const torch::Tensor mean = H_res.reshape({-1, n, n}).to(torch::kDouble).mean(0).contiguous();
  std::vector<std::vector<double>> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = std::vector<double>(mean[i].data_ptr<double>(), mean[i].data_ptr<double>() + n);
  return rows;
}

void write_analysis(const std::string& out, const nlohmann::ordered_json& report, bool plots) {
  report_non_finite(report);
  write_file_atomic(out + "/analysis.json", report.dump(1) + "\n");
  std::cout << "wrote " << out << "/analysis.json" << (plots ? "" : " (no plots: nothing to plot)") << std::endl;
  if (!plots) return;
  run_plots({"analyze", out + "/analysis.json", out});
  std::cout << "plots: " << out << "/gain_vs_depth.png, " << out << "/h_res_mean.png, " << out << "/sinkhorn_error.png, "
            << out << "/streams.png\n";
}

}  // namespace mhc::cli
