// `mhc compare`: trains each residual variant with the same settings, seed and data order (one run
// folder each, reused when already finished, resumed when cut short), then reads their
// metrics.jsonl and writes <out>/report.md — losses, gradient norms, loss spikes, the final
// signal gains, throughput — and the plots of scripts/plots.py.
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.h"
#include "bench_common.h"
#include "commands.h"
#include "mhc/files.h"
#include "mhc/train.h"
#include "plots.h"
#include "run_settings.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

// A loss spike: a step whose training loss exceeds the median of the kSpikeWindow steps before it
// by more than kSpikeRise (relative). The median ignores the single noisy steps a mean would chase;
// 10% is far above the step-to-step noise of a 2k-token batch (~1-2% here) yet well below the jumps
// an unstable residual map produces.
constexpr size_t kSpikeWindow = 20;
constexpr double kSpikeRise = 0.10;

struct Run {
  std::string name, variant, dir;
  int64_t seed_index = 0;
  // From metrics.jsonl:
  std::vector<double> losses;
  double final_val = NAN, best_val = NAN, max_grad_norm = 0;
  int64_t spikes = 0, skipped = 0;
  double tokens_per_s = 0, step_ms = 0;  // medians over steps
  bool has_gains = false;
  double fwd_gain = NAN, fwd_deviation = NAN, bwd_gain = NAN, bwd_deviation = NAN, ds_error = NAN;
};

void read_metrics(Run& run) {
  std::ifstream in(run.dir + "/metrics.jsonl");
  if (!in) throw std::runtime_error("mhc compare: " + run.dir + "/metrics.jsonl is missing");
  std::vector<double> tokens_per_s, step_ms;
  nlohmann::json last_diag;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) continue;  // a line cut by a crash
    if (j.value("skipped", false)) ++run.skipped;
    if (j.contains("loss") && j["loss"].is_number()) {
      const double loss = j["loss"];
      if (run.losses.size() >= kSpikeWindow) {
        std::vector<double> window(run.losses.end() - kSpikeWindow, run.losses.end());
        if (loss > (1 + kSpikeRise) * median(window)) ++run.spikes;
      }
      run.losses.push_back(loss);
    }
    if (j.contains("grad_norm") && j["grad_norm"].is_number())
      run.max_grad_norm = std::max(run.max_grad_norm, j["grad_norm"].get<double>());
    if (j.contains("val_loss")) {
      run.final_val = j["val_loss"];
      run.best_val = std::isnan(run.best_val) ? run.final_val : std::min(run.best_val, run.final_val);
    }
    tokens_per_s.push_back(j.value("tokens_per_s", 0.0));
    step_ms.push_back(j.value("step_ms", 0.0));
    if (j.contains("diag")) last_diag = j["diag"];
  }
  if (step_ms.empty()) throw std::runtime_error("mhc compare: " + run.dir + "/metrics.jsonl holds no steps");
  run.tokens_per_s = median(tokens_per_s);
  run.step_ms = median(step_ms);
  if (last_diag.is_null()) return;
  run.has_gains = true;
  auto worst = [&](const char* key, double& max, double& deviation) {
    max = 0, deviation = 0;
    for (double g : last_diag.at(key).get<std::vector<double>>()) max = std::max(max, g), deviation = std::max(deviation, std::abs(g - 1));
  };
  worst("composite_fwd_max", run.fwd_gain, run.fwd_deviation);
  worst("composite_bwd_max", run.bwd_gain, run.bwd_deviation);
  run.ds_error = 0;
  for (const char* key : {"row_error", "col_error"})
    for (double e : last_diag.at(key).get<std::vector<double>>()) run.ds_error = std::max(run.ds_error, e);
}

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "—";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

std::string sci(double v) {
  std::ostringstream s;
  s << std::scientific << std::setprecision(1) << v;
  return s.str();
}

// "1.000003 (3.1e-06)": the gain and its worst distance from 1 over depth.
std::string gain(double value, double deviation) {
  std::ostringstream s;
  s << std::setprecision(7) << value << " (" << sci(deviation) << ")";
  return s.str();
}

std::string report(const std::vector<Run>& runs, const std::string& command, int threads) {
  std::ostringstream r;
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  r << "# mhc compare\n\n"
    << "`" << command << "`\n\n"
    << "Machine: " << cpu_model() << ", " << threads << " threads; runs trained one after another; report written "
    << date << ".\n\n"
    << "| run | final val loss | best val loss | max grad norm | loss spikes | skipped steps "
    << "| composite fwd gain, max (worst \\|g−1\\|) | composite bwd gain, max (worst \\|g−1\\|) "
    << "| max doubly-stochastic error | tokens/s | time vs residual |\n"
    << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Run& run : runs) {
    const Run* base = nullptr;
    for (const Run& b : runs)
      if (b.variant == "residual" && b.seed_index == run.seed_index) base = &b;
    r << "| " << run.name << " | " << fixed(run.final_val, 3) << " | " << fixed(run.best_val, 3) << " | "
      << fixed(run.max_grad_norm, 2) << " | " << run.spikes << " | " << run.skipped << " | ";
    if (run.has_gains)
      r << gain(run.fwd_gain, run.fwd_deviation) << " | " << gain(run.bwd_gain, run.bwd_deviation) << " | "
        << sci(run.ds_error) << " | ";
    else
      r << "1 (identity) | 1 (identity) | — | ";
    r << fixed(run.tokens_per_s, 0) << " | " << (base ? fixed(run.step_ms / base->step_ms, 3) + "x" : "—") << " |\n";
  }
  r << "\nDefinitions. Validation losses in nats (mean cross-entropy). Gradient norm: global L2 norm before "
       "clipping. A **loss spike** is a step whose training loss exceeds the median of the "
    << kSpikeWindow << " steps before it by more than " << static_cast<int>(kSpikeRise * 100)
    << "%. Gains (DESIGN.md §5) are from the last step's diagnostics on the fixed probe batch (the first "
       "validation windows): for each sublayer l the composite map P_l = H_res^(L-1)···H_res^(l), forward gain = "
       "max absolute row sum, backward gain = max absolute column sum, each the max over probe tokens; the table gives "
       "the largest over depth and, in brackets, the largest |gain − 1| over depth. Doubly-stochastic error: "
       "max over sublayers and tokens of |row sum − 1| and |column sum − 1| of H_res. The plain residual has no H_res "
       "(its map is the identity). tokens/s and step time are medians over the steps (evaluation excluded); "
       "time vs residual = median step time / the plain residual's with the same seed.\n\n"
    << "![validation loss](val_loss.png)\n\n![gradient norm](grad_norm.png)\n\n"
    << "![composite gain vs depth](gain_vs_depth.png)\n\n![composite gain over training](gain_over_steps.png)\n";
  return r.str();
}

}  // namespace

int compare(const std::vector<std::string>& argv) {
  Args a("mhc compare",
         "Train each residual variant with identical settings, seed and data order, then write <out>/report.md\n"
         "and plots (val_loss.png, grad_norm.png, gain_vs_depth.png, gain_over_steps.png). Each run lives in\n"
         "<out>/<variant>[-seed<S>]; finished runs are reused, interrupted ones resumed. Every mhc train setting\n"
         "applies to all runs; --residual takes a comma-separated list.");
  a.flag("seeds", "1", "runs per variant, with seeds --seed, --seed + 1, …");
  declare_training_flags(a);
  a.set("residual", "residual,hc,mhc,mhc-lite");
  a.set("out", "runs/compare");
  if (!a.parse(argv)) return 0;
  if (dist::Environment::read().world_size > 1)
    throw std::invalid_argument("mhc compare runs in one process (WORLD_SIZE is set); distribute mhc train instead");

  const std::vector<std::string> variants = a.list("residual");
  for (size_t i = 0; i < variants.size(); ++i) {
    try {
      parse_kind(variants[i]);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("mhc compare: --residual: " + std::string(e.what()));
    }
    if (std::find(variants.begin(), variants.begin() + i, variants[i]) != variants.begin() + i)
      throw std::invalid_argument("mhc compare: --residual lists '" + variants[i] + "' twice");
  }
  const int64_t seeds = a.integer("seeds", 1, 1000), first_seed = a.integer("seed", 0, INT64_MAX - 1000);
  const std::string out = a.str("out");
  ensure_writable_dir(out);
  std::vector<std::string> fixed_names;
  for (const auto& spec : train::setting_specs())
    if (!spec.run) fixed_names.push_back(spec.name);

  std::vector<Run> runs;
  for (int64_t k = 0; k < seeds; ++k) {
    for (const std::string& variant : variants) {
      Run run;
      run.variant = variant, run.seed_index = k;
      run.name = seeds == 1 ? variant : variant + "-seed" + std::to_string(first_seed + k);
      run.dir = (fs::path(out) / run.name).string();
      std::map<std::string, std::string> overrides = {
          {"residual", variant}, {"seed", std::to_string(first_seed + k)}, {"out", run.dir}};
      if (variant == "residual") overrides["streams"] = "1";
      const train::Settings s = fresh_settings(a, overrides);
      s.model_config(2);
      runs.push_back(run);

      std::string resume_from;
      if (fs::exists(fs::path(run.dir) / train::kLatestCheckpoint)) {
        resume_from = train::resolve_checkpoint(run.dir);
        const train::RunInfo info = train::read_run_info(resume_from);
        if (const std::string d = differences(info.settings, s, fixed_names); !d.empty())
          throw std::invalid_argument("mhc compare: " + run.dir + " holds a run with other settings: " + d +
                                      " (choose another --out, or delete that folder)");
        if (info.step >= s.integer("steps", 1, INT64_MAX)) {
          std::cout << "compare: " << run.name << ": reusing the finished run in " << run.dir << std::endl;
          continue;
        }
        std::cout << "compare: " << run.name << ": resuming " << run.dir << " at step " << info.step << std::endl;
      } else {
        replace_earlier_run(run.dir, /*overwrite=*/true);  // checkpoints without `latest`: never a finished run
      }
      if (const int status = train::run_training(s, resume_from); status != 0) return status;
    }
  }

  for (Run& run : runs) read_metrics(run);
  std::string command = "mhc compare";
  for (const auto& arg : argv) command += " " + arg;
  const std::string text = report(runs, command, static_cast<int>(a.integer("threads", 1, 1024)));
  write_file_atomic(out + "/report.md", text);
  std::cout << "\n" << text.substr(text.find("| run"), text.find("\nDefinitions") - text.find("| run")) << "\n";
  std::vector<std::string> plot_args = {"compare", out};
  for (const Run& run : runs) plot_args.push_back(run.name + "=" + run.dir);
  run_plots(plot_args);
  std::cout << "wrote " << out << "/report.md and its plots" << std::endl;
  return 0;
}

}  // namespace mhc::cli
