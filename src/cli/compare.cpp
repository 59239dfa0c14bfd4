// `mhc compare`: trains each residual variant with the same settings, seed and data order (one run
// folder each, reused when already finished, resumed when cut short), with --seeds k seeds each,
// then reads their metrics.jsonl and writes <out>/report.md — losses, gradient norms, loss spikes,
// the final signal gains and stream use, throughput, each as the mean and spread over seeds, and
// which differences from the plain residual exceed that spread — and the plots of scripts/plots.py.
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <tuple>

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
  double time_ratio = NAN;               // step_ms / the plain residual's with the same seed
  bool has_gains = false;
  double fwd_gain = NAN, fwd_deviation = NAN, bwd_gain = NAN, bwd_deviation = NAN, ds_error = NAN;
  // Stream use at the last diagnostic (mhc/diag.h): the collapse alarm's summary, and means over
  // sublayers; NaN for a run logged before these diagnostics existed.
  double effective_rank = NAN, largest_share = NAN, identity_distance = NAN, uniform_distance = NAN,
         pre_entropy = NAN, post_entropy = NAN;
  int64_t alarm_step = -1;  // the first step the collapse alarm was on; -1: never
};

// The mean over sublayers of one column of a "diag" record; NaN when the record lacks it.
double mean_over_sublayers(const nlohmann::json& diag, const char* key) {
  if (!diag.contains(key)) return NAN;
  const auto values = diag[key].get<std::vector<double>>();
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? NAN : sum / static_cast<double>(values.size());
}

void read_metrics(Run& run) {
  std::ifstream in(run.dir + "/metrics.jsonl");
  if (!in) throw std::runtime_error("mhc compare: " + run.dir + "/metrics.jsonl is missing");
  std::vector<double> tokens_per_s, step_ms;
  nlohmann::json last_diag, last_collapse;
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
    if (j.contains("collapse")) {
      last_collapse = j["collapse"];
      if (run.alarm_step < 0 && last_collapse.value("alarm", false)) run.alarm_step = j.value("step", int64_t{0});
    }
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
  if (last_collapse.is_object()) {
    run.effective_rank = last_collapse.value("effective_rank", NAN);
    run.largest_share = last_collapse.value("largest_share", NAN);
  }
  run.identity_distance = mean_over_sublayers(last_diag, "h_res_to_identity");
  run.uniform_distance = mean_over_sublayers(last_diag, "h_res_to_uniform");
  run.pre_entropy = mean_over_sublayers(last_diag, "pre_entropy");
  run.post_entropy = mean_over_sublayers(last_diag, "post_entropy");
}

// ---- Numbers over seeds ----

// One quantity over a variant's seeds: the mean, and the spread [low, high] — min to max for fewer
// than 3 seeds, mean ± the sample standard deviation for 3 or more (the standard deviation of two
// values says no more than their range, and reads as more certain than it is). Non-finite values
// (a run that never evaluated) are left out.
struct Spread {
  size_t count = 0;
  double mean = NAN, low = NAN, high = NAN, deviation = NAN;  // deviation: the std, when used
};

Spread spread(const std::vector<double>& values) {
  Spread s;
  std::vector<double> v;
  for (double x : values)
    if (std::isfinite(x)) v.push_back(x);
  s.count = v.size();
  if (v.empty()) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  if (v.size() < 3) {
    s.low = *std::min_element(v.begin(), v.end()), s.high = *std::max_element(v.begin(), v.end());
    return s;
  }
  double squares = 0;
  for (double x : v) squares += (x - s.mean) * (x - s.mean);
  s.deviation = std::sqrt(squares / static_cast<double>(v.size() - 1));
  s.low = s.mean - s.deviation, s.high = s.mean + s.deviation;
  return s;
}

using Format = std::function<std::string(double)>;

// A standard deviation to two significant digits: "0.030", "8799", "1.6e-05".
std::string deviation_text(double d) {
  if (d == 0) return "0";
  std::ostringstream s;
  if (d < 1e-3) s << std::scientific << std::setprecision(1) << d;
  else s << std::fixed << std::setprecision(std::max(0, 1 - static_cast<int>(std::floor(std::log10(d))))) << d;
  return s.str();
}

// "5.911" (one seed), "5.911 (5.902–5.920)" (two), "5.911 ± 0.012" (three or more).
std::string show(const Spread& s, const Format& format) {
  if (s.count == 0) return "—";
  if (s.count == 1) return format(s.mean);
  if (std::isnan(s.deviation)) return format(s.mean) + " (" + format(s.low) + "–" + format(s.high) + ")";
  return format(s.mean) + " ± " + deviation_text(s.deviation);
}

// A variant differs from the plain residual in a quantity only when their spreads do not overlap;
// one seed has no spread, so nothing is called a difference.
bool differs(const Spread& variant, const Spread& residual) {
  return variant.count > 1 && residual.count > 1 && (variant.low > residual.high || variant.high < residual.low);
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

std::string significant(double v, int digits) {
  std::ostringstream s;
  s << std::setprecision(digits) << v;
  return s.str();
}

const Format kLoss = [](double v) { return fixed(v, 3); };
const Format kNorm = [](double v) { return fixed(v, 2); };
const Format kRate = [](double v) { return fixed(v, 0); };
const Format kCount = [](double v) { return significant(v, 3); };

// ---- The report ----

using Group = std::vector<const Run*>;  // one variant's runs, one per seed

Spread spread_of(const Group& group, double Run::*field) {
  std::vector<double> values;
  for (const Run* run : group) values.push_back(run->*field);
  return spread(values);
}

struct Column {
  std::string header;
  std::function<std::string(const Group&)> cell;
};

Column number(std::string header, double Run::*field, Format format) {
  return {std::move(header), [field, format](const Group& g) { return show(spread_of(g, field), format); }};
}

Column count(std::string header, int64_t Run::*field) {
  return {std::move(header), [field](const Group& g) {
            std::vector<double> values;
            for (const Run* run : g) values.push_back(static_cast<double>(run->*field));
            return show(spread(values), kCount);
          }};
}

// "541.8 (5.4e+02)": the largest composite gain over depth and its worst distance from 1.
Column gain(std::string header, double Run::*value, double Run::*deviation) {
  return {std::move(header), [value, deviation](const Group& g) {
            if (!g.front()->has_gains) return std::string("1 (identity)");
            return show(spread_of(g, value), [](double v) { return significant(v, 7); }) + " (" +
                   show(spread_of(g, deviation), sci) + ")";
          }};
}

// A stream diagnostic: none for the plain residual, whose one stream has no connection.
Column stream(std::string header, double Run::*field) {
  return {std::move(header), [field](const Group& g) {
            return g.front()->has_gains ? show(spread_of(g, field), [](double v) { return fixed(v, 3); }) : "—";
          }};
}

std::vector<Column> main_columns() {
  return {number("final val loss", &Run::final_val, kLoss),
          number("best val loss", &Run::best_val, kLoss),
          number("max grad norm", &Run::max_grad_norm, kNorm),
          count("loss spikes", &Run::spikes),
          count("skipped steps", &Run::skipped),
          gain("composite fwd gain, max (worst \\|g−1\\|)", &Run::fwd_gain, &Run::fwd_deviation),
          gain("composite bwd gain, max (worst \\|g−1\\|)", &Run::bwd_gain, &Run::bwd_deviation),
          {"max doubly-stochastic error",
           [](const Group& g) { return g.front()->has_gains ? show(spread_of(g, &Run::ds_error), sci) : "—"; }},
          number("tokens/s", &Run::tokens_per_s, kRate),
          number("time vs residual", &Run::time_ratio, [](double v) { return fixed(v, 3) + "x"; })};
}

std::vector<Column> stream_columns() {
  return {stream("effective rank", &Run::effective_rank),
          stream("largest stream share", &Run::largest_share),
          stream("\\|H_res − I\\|_F", &Run::identity_distance),
          stream("\\|H_res − J/n\\|_F", &Run::uniform_distance),
          stream("H_pre entropy (nats)", &Run::pre_entropy),
          stream("H_post entropy (nats)", &Run::post_entropy),
          {"collapse alarm", [](const Group& g) {
             if (!g.front()->has_gains) return std::string("—");
             int64_t fired = 0, first = -1;
             for (const Run* r : g)
               if (r->alarm_step >= 0) ++fired, first = first < 0 ? r->alarm_step : std::min(first, r->alarm_step);
             if (fired == 0) return std::string("never");
             const std::string when = "from step " + std::to_string(first);
             if (g.size() == 1) return when;
             return std::to_string(fired) + " of " + std::to_string(g.size()) + " seeds (" + when + ")";
           }}};
}

std::string table(const std::vector<std::pair<std::string, Group>>& rows, const std::vector<Column>& columns) {
  std::ostringstream t;
  t << "| run |";
  for (const Column& c : columns) t << " " << c.header << " |";
  t << "\n|---|";
  for (size_t i = 0; i < columns.size(); ++i) t << "---|";
  t << "\n";
  for (const auto& [name, group] : rows) {
    t << "| " << name << " |";
    for (const Column& c : columns) t << " " << c.cell(group) << " |";
    t << "\n";
  }
  return t.str();
}

// Each variant's difference from the plain residual in the quantities both have, called a
// difference only when it exceeds the spread.
std::string differences_from_residual(const std::vector<std::pair<std::string, Group>>& groups, size_t seeds) {
  const Group* residual = nullptr;
  for (const auto& [name, group] : groups)
    if (name == "residual") residual = &group;
  if (residual == nullptr) return "";
  std::ostringstream r;
  r << "**Differences from the plain residual.** A variant's mean is called different from the plain residual's "
       "only when their spreads do not overlap (";
  if (seeds == 1) {
    r << "with one seed there is no spread, so no difference is called here: run with `--seeds 3` or more).\n\n";
    return r.str();
  }
  r << (seeds < 3 ? "min–max" : "mean ± std") << " over " << seeds << " seeds); otherwise the difference is within the "
    << "spread, which these runs cannot tell from the seed's noise.\n\n";
  // The quantities both have, as columns of Δ = variant − residual.
  std::vector<Column> columns;
  for (const auto& [label, field, format] : std::vector<std::tuple<std::string, double Run::*, Format>>{
           {"final val loss", &Run::final_val, kLoss},
           {"best val loss", &Run::best_val, kLoss},
           {"max grad norm", &Run::max_grad_norm, kNorm},
           {"tokens/s", &Run::tokens_per_s, kRate}})
    columns.push_back({"Δ " + label, [residual, field = field, format = format](const Group& g) {
                         const Spread v = spread_of(g, field), base = spread_of(*residual, field);
                         const double delta = v.mean - base.mean;
                         return (delta >= 0 ? "+" : "") + format(delta) +
                                (differs(v, base) ? " (**difference**)" : " (within the spread)");
                       }});
  std::vector<std::pair<std::string, Group>> variants;
  for (const auto& row : groups)
    if (&row.second != residual) variants.push_back(row);
  r << table(variants, columns);
  return r.str() + "\n";
}

std::string report(const std::vector<Run>& runs, const std::vector<std::string>& variants, size_t seeds,
                   const std::string& command, int threads) {
  std::vector<std::pair<std::string, Group>> groups, singles;
  for (const std::string& variant : variants) {
    Group group;
    for (const Run& run : runs)
      if (run.variant == variant) group.push_back(&run), singles.push_back({run.name, {&run}});
    groups.push_back({variant, group});
  }
  std::ostringstream r;
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  r << "# mhc compare\n\n"
    << "`" << command << "`\n\n"
    << "Machine: " << cpu_model() << ", " << threads << " threads; runs trained one after another; report written "
    << date << ".\n\n";
  if (seeds > 1)
    r << "Each number is the mean over " << seeds << " seeds (`--seed` S … S + " << seeds - 1 << ") and its spread: "
      << (seeds < 3 ? "(min–max)" : "± the sample standard deviation") << ". Each run's own numbers follow below.\n\n";
  r << table(groups, main_columns()) << "\n"
    << "Stream use at the end of training (the last diagnostic):\n\n"
    << table(groups, stream_columns()) << "\n"
    << differences_from_residual(groups, seeds);
  if (seeds > 1)
    r << "### Each run\n\n" << table(singles, main_columns()) << "\n" << table(singles, stream_columns()) << "\n";
  r << "Definitions. Validation losses in nats (mean cross-entropy). Gradient norm: global L2 norm before "
       "clipping. A **loss spike** is a step whose training loss exceeds the median of the "
    << kSpikeWindow << " steps before it by more than " << static_cast<int>(kSpikeRise * 100)
    << "%. Gains (DESIGN.md §5) are from the last step's diagnostics on the fixed probe batch (the first "
       "validation windows): for each sublayer l the composite map P_l = H_res^(L-1)···H_res^(l), forward gain = "
       "max absolute row sum, backward gain = max absolute column sum, each the max over probe tokens; the table gives "
       "the largest over depth and, in brackets, the largest |gain − 1| over depth. Doubly-stochastic error: "
       "max over sublayers and tokens of |row sum − 1| and |column sum − 1| of H_res. The plain residual has no H_res "
       "(its map is the identity). tokens/s and step time are medians over the steps (evaluation excluded); "
       "time vs residual = median step time / the plain residual's with the same seed. "
       "Stream use (include/mhc/diag.h), per token of the probe batch and then averaged over tokens: "
       "the **effective rank** of the n×C state entering a sublayer, exp of the entropy of its singular values "
       "normalised to sum to 1 (1: one signal in n copies; n: n orthogonal streams of equal norm), and the "
       "**largest stream share**, max over streams of ||x_i||² / Σ_j ||x_j||² (1/n: balanced), both averaged over "
       "sublayers 1 … L−1 (sublayer 0 receives n copies of the embedding); the Frobenius distances of H_res from the "
       "identity and from J/n (the two are √(n−1) apart) and the entropies of |H_pre| and |H_post| normalised to sum "
       "to 1 (ln n: every stream weighted alike), averaged over all sublayers. The **collapse alarm** is on when the "
       "effective rank stays below `--collapse-rank` or the largest share above `--collapse-share` for "
       "`--collapse-after` diagnostics in a row (defaults 1.2, 0.9, 5); the column gives the first step it was on.\n\n"
    << "![validation loss](val_loss.png)\n\n![gradient norm](grad_norm.png)\n\n"
    << "![composite gain vs depth](gain_vs_depth.png)\n\n![composite gain over training](gain_over_steps.png)\n\n"
    << "![stream use vs depth](streams_vs_depth.png)\n\n![stream use over training](streams_over_steps.png)\n";
  return r.str();
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
         "spread over them (min–max below 3 seeds, ± std from 3)");
  declare_training_flags(a);
  a.set("variant", "residual,hc,mhc,mhc-lite");
  a.set("out", "runs/compare");
  if (!a.parse(argv)) return 0;
  if (dist::Environment::read().world_size > 1)
    throw std::invalid_argument("mhc compare runs in one process (WORLD_SIZE is set); distribute mhc train instead");
  if (a.str("pipeline-stages") != "1")
    throw std::invalid_argument("mhc compare runs in one process: --pipeline-stages " + a.str("pipeline-stages") +
                                " (accepted: 1); pipeline mhc train instead");

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
  const int64_t seeds = a.integer("seeds", 1, 1000), first_seed = a.integer("seed", 0, INT64_MAX - 1000);
  const std::string out = a.str("out");
  ensure_writable_dir(out);
  std::vector<std::string> fixed_names;
  for (const auto& spec : train::setting_specs())
    if (!spec.run) fixed_names.push_back(spec.name);

  // Every run's settings, each checked (n for its variant, …) before the first run starts, so
  // that a bad one is not found after the others have trained (issue 35, item 22).
  std::vector<Run> runs;
  std::vector<train::Settings> settings;
  for (int64_t k = 0; k < seeds; ++k) {
    for (const std::string& variant : variants) {
      Run run;
      run.variant = variant, run.seed_index = k;
      run.name = seeds == 1 ? variant : variant + "-seed" + std::to_string(first_seed + k);
      run.dir = (fs::path(out) / run.name).string();
      std::map<std::string, std::string> overrides = {
          {"variant", variant}, {"seed", std::to_string(first_seed + k)}, {"out", run.dir}};
      if (variant == "residual") overrides["streams"] = "1";
      settings.push_back(fresh_settings(a, overrides));
      settings.back().model_config(2);
      runs.push_back(run);
    }
  }

  for (size_t i = 0; i < runs.size(); ++i) {
    const Run& run = runs[i];
    const train::Settings& s = settings[i];
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

  for (Run& run : runs) read_metrics(run);
  for (Run& run : runs)
    for (const Run& base : runs)
      if (base.variant == "residual" && base.seed_index == run.seed_index) run.time_ratio = run.step_ms / base.step_ms;
  std::string command = "mhc compare";
  for (const auto& arg : argv) command += " " + arg;
  const std::string text =
      report(runs, variants, static_cast<size_t>(seeds), command, static_cast<int>(a.integer("threads", 1, 1024)));
  write_file_atomic(out + "/report.md", text);
  std::cout << "\n" << text.substr(text.find("| run"), text.find("\nDefinitions") - text.find("| run")) << "\n";
  std::vector<std::string> plot_args = {"compare", out};
  for (const Run& run : runs) plot_args.push_back(run.name + "=" + run.dir);
  run_plots(plot_args);
  std::cout << "wrote " << out << "/report.md and its plots" << std::endl;
  return 0;
}

}  // namespace mhc::cli
