// `mhc compare`: trains each residual variant with the same settings, seed and data order (one run
// folder each, reused when already finished, resumed when cut short), with --seeds k seeds each,
// then reads their metrics.jsonl and writes <out>/report.md (compare_report.h) and the plots of
// scripts/plots.py.
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "compare_report.h"
#include "mhc/checkpoint.h"
#include "mhc/files.h"
#include "mhc/run_state.h"
#include "mhc/trainer.h"
#include "plots.h"
#include "run_settings.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

// --variant: each a variant, none twice.
std::vector<std::string> compared_variants(const Args& a) {
  const std::vector<std::string> variants = a.list("variant");
  for (size_t i = 0; i < variants.size(); ++i) {
    try {
      parse_variant(variants[i]);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("mhc compare: --variant: " + std::string(e.what()));
    }
    if (std::find(variants.begin(), variants.begin() + i, variants[i]) != variants.begin() + i)
      throw std::invalid_argument("mhc compare: --variant lists '" + variants[i] + "' twice");
  }
  return variants;
}

// A run to train: where, and with what settings.
struct PlannedRun {
  Run run;
  train::Settings settings;
};

// Every run's settings, each checked (n for its variant, …) before the first run starts, so that a
// bad one is not found after the others have trained.
std::vector<PlannedRun> plan_runs(const Args& a, const std::vector<std::string>& variants, int64_t seeds) {
  const int64_t first_seed = a.integer("seed");
  if (first_seed > INT64_MAX - seeds)
    throw std::invalid_argument("mhc compare: --seed " + std::to_string(first_seed) + " + --seeds " + std::to_string(seeds) +
                                " overflows (accepted: --seed at most " + std::to_string(INT64_MAX - seeds) + ")");
  std::vector<PlannedRun> planned;
  for (int64_t k = 0; k < seeds; ++k)
    for (const std::string& variant : variants) {
      Run run;
      run.variant = variant, run.seed_index = k;
      run.name = seeds == 1 ? variant : variant + "-seed" + std::to_string(first_seed + k);
      run.dir = (fs::path(a.str("out")) / run.name).string();
      std::map<std::string, std::string> overrides = {
          {"variant", variant}, {"seed", std::to_string(first_seed + k)}, {"out", run.dir}};
      if (variant == "residual") overrides["streams"] = "1";
      train::Settings settings = fresh_settings(a, overrides);
      settings.model_config(2);
      planned.push_back({run, settings});
    }
  return planned;
}

// Trains one planned run: reuses it when its folder holds it finished, resumes it when cut short
// (refusing a folder whose run has other settings), starts it afresh otherwise.
int train_run(const PlannedRun& p) {
  const Run& run = p.run;
  std::string resume_from;
  if (fs::exists(fs::path(run.dir) / train::kLatestCheckpoint)) {
    std::vector<std::string> defining;
    for (const auto& spec : train::setting_specs())
      if (!spec.run) defining.push_back(spec.name);
    resume_from = train::resolve_checkpoint(run.dir);
    const train::RunInfo info = train::read_run_info(resume_from);
    if (const std::string d = differences(info.settings, p.settings, defining); !d.empty())
      throw std::invalid_argument("mhc compare: " + run.dir + " holds a run with other settings: " + d +
                                  " (choose another --out, or delete that folder)");
    if (info.step >= p.settings.integer("steps")) {
      std::cout << "compare: " << run.name << ": reusing the finished run in " << run.dir << std::endl;
      return 0;
    }
    std::cout << "compare: " << run.name << ": resuming " << run.dir << " at step " << info.step << std::endl;
  } else {
    replace_earlier_run(run.dir, /*overwrite=*/true);  // checkpoints without `latest`: never a finished run
  }
  return train::run_training(p.settings, resume_from);
}

// Reads every run's log, sets each against the plain residual of its seed, and writes the report
// and its plots.
void write_report(std::vector<Run>& runs, const Args& a, const std::vector<std::string>& variants, int64_t seeds,
                  const std::vector<std::string>& argv) {
  for (Run& run : runs) read_metrics(run);
  for (Run& run : runs)
    for (const Run& base : runs)
      if (base.variant == "residual" && base.seed_index == run.seed_index) run.time_ratio = run.step_ms / base.step_ms;
  std::string command = "mhc compare";
  for (const auto& arg : argv) command += " " + arg;
  const std::string out = a.str("out");
  const std::string text = report(runs, variants, static_cast<size_t>(seeds), command, static_cast<int>(a.integer("threads")));
  write_file_atomic(out + "/report.md", text);
  std::cout << "\n" << text.substr(text.find("| run"), text.find("\nDefinitions") - text.find("| run")) << "\n";
  std::vector<std::string> plot_args = {"compare", out};
  for (const Run& run : runs) plot_args.push_back(run.name + "=" + run.dir);
  run_plots(plot_args);
  std::cout << "wrote " << out << "/report.md and its plots" << std::endl;
}

}  // namespace

int compare(const std::vector<std::string>& argv) {
  Args a("mhc compare",
         "Train each residual variant with identical settings, seed and data order, then write <out>/report.md\n"
         "and plots (val_loss.png, grad_norm.png, gain_vs_depth.png, gain_over_steps.png, streams_vs_depth.png,\n"
         "streams_over_steps.png). Each run lives in <out>/<variant>[-seed<S>]; finished runs are reused,\n"
         "interrupted ones resumed. Every mhc train setting applies to all runs; --variant (also\n"
         "--residual) takes a comma-separated list.");
  a.flag("seeds", "1", "runs per variant, with seeds --seed, --seed + 1, …; the report gives every number's mean and "
         "spread over them (min–max below 3 seeds, ± std from 3)", IntegerRange{1, 1000});
  declare_training_flags(a);
  a.set("variant", "residual,hc,mhc,mhc-lite");
  a.set("out", "runs/compare");
  if (!a.parse(argv)) return 0;
  if (dist::Environment::read().world_size > 1)
    throw std::invalid_argument("mhc compare runs in one process (WORLD_SIZE is set); distribute mhc train instead");
  if (a.str("pipeline-stages") != "1")
    throw std::invalid_argument("mhc compare runs in one process: --pipeline-stages " + a.str("pipeline-stages") +
                                " (accepted: 1); pipeline mhc train instead");
  const std::vector<std::string> variants = compared_variants(a);
  const int64_t seeds = a.integer("seeds");
  const std::vector<PlannedRun> planned = plan_runs(a, variants, seeds);
  ensure_writable_dir(a.str("out"));
  std::vector<Run> runs;
  for (const PlannedRun& p : planned) {
    if (const int status = train_run(p); status != 0) return status;
    runs.push_back(p.run);
  }
  write_report(runs, a, variants, seeds, argv);
  return 0;
}

}  // namespace mhc::cli
