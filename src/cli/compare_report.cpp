// The report of `mhc compare` (compare_report.h): each run's log read into its numbers, the numbers
// over seeds as a mean and a spread, and report.md's tables, set against the plain residual.
#include "compare_report.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <iomanip>
#include <sstream>
#include <tuple>

#include "bench_common.h"
#include "mhc/format.h"
#include "mhc/run_log.h"
#include "mhc/table.h"

namespace mhc::cli {

namespace {

// A loss spike: a step whose training loss exceeds the median of the kSpikeWindow steps before it
// by more than kSpikeRise (relative). The median ignores the single noisy steps a mean would chase;
// 10% is far above the step-to-step noise of a 2k-token batch (~1-2% here) yet well below the jumps
// an unstable residual map produces.
constexpr size_t kSpikeWindow = 20;
constexpr double kSpikeRise = 0.10;


// The extreme over sublayers of one column of a "diag" record (std::max or std::min of the
// values); NaN when the record lacks it.
template <typename Pick>
double extreme_over_sublayers(const nlohmann::ordered_json& diag, const char* key, Pick pick) {
  if (!diag.contains(key)) return NAN;
  const auto values = diag[key].get<std::vector<double>>();
  if (values.empty()) return NAN;
  double out = values.front();
  for (double v : values) out = pick(out, v);
  return out;
}

// The mean over sublayers of one column of a "diag" record; NaN when the record lacks it.
double mean_over_sublayers(const nlohmann::ordered_json& diag, const char* key) {
  if (!diag.contains(key)) return NAN;
  const auto values = diag[key].get<std::vector<double>>();
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? NAN : sum / static_cast<double>(values.size());
}

// The gains, the doubly-stochastic error and the stream use at the run's last diagnostic.
void read_last_diagnostics(Run& run, const train::StepRecord& last) {
  const nlohmann::ordered_json& diag = last.diag;
  run.has_gains = true;
  auto worst = [&](const char* key, double& max, double& deviation) {
    max = 0, deviation = 0;
    for (double g : diag.at(key).get<std::vector<double>>()) max = std::max(max, g), deviation = std::max(deviation, std::abs(g - 1));
  };
  worst("composite_fwd_max", run.fwd_gain, run.fwd_deviation);
  worst("composite_bwd_max", run.bwd_gain, run.bwd_deviation);
  run.ds_error = 0;
  for (const char* key : {"row_error", "col_error"})
    for (double e : diag.at(key).get<std::vector<double>>()) run.ds_error = std::max(run.ds_error, e);
  if (last.collapse.is_object()) {
    run.effective_rank = last.collapse.value("effective_rank", NAN);
    run.largest_share = last.collapse.value("largest_share", NAN);
  }
  run.identity_distance = mean_over_sublayers(diag, "h_res_to_identity");
  run.uniform_distance = mean_over_sublayers(diag, "h_res_to_uniform");
  run.pre_entropy = mean_over_sublayers(diag, "pre_entropy");
  run.post_entropy = mean_over_sublayers(diag, "post_entropy");
  auto larger = [](double a, double b) { return std::max(a, b); };
  auto smaller = [](double a, double b) { return std::min(a, b); };
  run.composite_sigma_max = extreme_over_sublayers(diag, "composite_sigma_max_max", larger);
  run.composite_sigma_min = extreme_over_sublayers(diag, "composite_sigma_min_min", smaller);
  run.orthogonality_error = extreme_over_sublayers(diag, "orth_error", larger);
}

}  // namespace

void read_metrics(Run& run) {
  const std::vector<train::StepRecord> records = train::RunLog::read(run.dir + "/metrics.jsonl");
  if (records.empty()) throw std::runtime_error("mhc compare: " + run.dir + "/metrics.jsonl holds no steps");
  std::vector<double> tokens_per_s, step_ms;
  const train::StepRecord* last_diag = nullptr;
  for (const train::StepRecord& r : records) {
    if (r.skipped) ++run.skipped;
    if (std::isfinite(r.loss)) {
      if (run.losses.size() >= kSpikeWindow) {
        std::vector<double> window(run.losses.end() - kSpikeWindow, run.losses.end());
        if (r.loss > (1 + kSpikeRise) * median(window)) ++run.spikes;
      }
      run.losses.push_back(r.loss);
    }
    if (std::isfinite(r.grad_norm)) run.max_grad_norm = std::max(run.max_grad_norm, r.grad_norm);
    if (r.val_loss) {
      run.final_val = *r.val_loss;
      run.best_val = std::isnan(run.best_val) ? run.final_val : std::min(run.best_val, run.final_val);
    }
    tokens_per_s.push_back(r.tokens_per_s);
    step_ms.push_back(r.step_ms);
    if (!r.diag.is_null()) last_diag = &r;
    if (run.alarm_step < 0 && r.collapse.is_object() && r.collapse.value("alarm", false)) run.alarm_step = r.step;
  }
  run.tokens_per_s = median(tokens_per_s);
  run.step_ms = median(step_ms);
  if (last_diag) read_last_diagnostics(run, *last_diag);
}

namespace {

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

const Format kLoss = Format::fixed(3), kNorm = Format::fixed(2), kRate = Format::fixed(0), kCount = Format::significant(3),
             kSci = Format::scientific(1);

// ---- The report ----

using Group = std::vector<const Run*>;  // one variant's runs, one per seed

Spread spread_of(const Group& group, double Run::*field) {
  std::vector<double> values;
  for (const Run* run : group) values.push_back(run->*field);
  return spread(values);
}

// A column of the report: its header and how a group of runs (one per seed) fills its cell.
struct ReportColumn {
  std::string header;
  std::function<std::string(const Group&)> cell;
};

ReportColumn number(std::string header, double Run::*field, Format format) {
  return {std::move(header), [field, format](const Group& g) { return show(spread_of(g, field), format); }};
}

ReportColumn count(std::string header, int64_t Run::*field) {
  return {std::move(header), [field](const Group& g) {
            std::vector<double> values;
            for (const Run* run : g) values.push_back(static_cast<double>(run->*field));
            return show(spread(values), kCount);
          }};
}

// "541.8 (5.4e+02)": the largest composite gain over depth and its worst distance from 1.
ReportColumn gain(std::string header, double Run::*value, double Run::*deviation) {
  return {std::move(header), [value, deviation](const Group& g) {
            if (!g.front()->has_gains) return std::string("1 (identity)");
            return show(spread_of(g, value), Format::significant(7)) + " (" +
                   show(spread_of(g, deviation), kSci) + ")";
          }};
}

// A stream diagnostic: none for the plain residual, whose one stream has no connection.
ReportColumn stream(std::string header, double Run::*field) {
  return {std::move(header), [field](const Group& g) {
            return g.front()->has_gains ? show(spread_of(g, field), Format::fixed(3)) : "—";
          }};
}

std::vector<ReportColumn> main_columns() {
  return {number("final val loss", &Run::final_val, kLoss),
          number("best val loss", &Run::best_val, kLoss),
          number("max grad norm", &Run::max_grad_norm, kNorm),
          count("loss spikes", &Run::spikes),
          count("skipped steps", &Run::skipped),
          gain("composite fwd gain, max (worst \\|g−1\\|)", &Run::fwd_gain, &Run::fwd_deviation),
          gain("composite bwd gain, max (worst \\|g−1\\|)", &Run::bwd_gain, &Run::bwd_deviation),
          {"max doubly-stochastic error",
           [](const Group& g) { return g.front()->has_gains ? show(spread_of(g, &Run::ds_error), kSci) : "—"; }},
          {"composite σ_max, max", [](const Group& g) {
             return g.front()->has_gains ? show(spread_of(g, &Run::composite_sigma_max), Format::significant(4)) : "1";
           }},
          {"composite σ_min, min", [](const Group& g) {
             return g.front()->has_gains ? show(spread_of(g, &Run::composite_sigma_min), kSci) : "1";
           }},
          {"max orthogonality error", [](const Group& g) {
             return g.front()->has_gains ? show(spread_of(g, &Run::orthogonality_error), kSci) : "0";
           }},
          number("tokens/s", &Run::tokens_per_s, kRate),
          number("time vs residual", &Run::time_ratio, Format::ratio(3))};
}

std::vector<ReportColumn> stream_columns() {
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

std::string table(const std::vector<std::pair<std::string, Group>>& rows, const std::vector<ReportColumn>& columns) {
  std::vector<Column> headers = {{"run", ""}};
  for (const ReportColumn& c : columns) headers.push_back({c.header, ""});
  const Table table(headers, TableStyle::markdown);
  std::string out = table.header();
  for (const auto& [name, group] : rows) {
    std::vector<nlohmann::ordered_json> cells = {name};
    for (const ReportColumn& c : columns) cells.push_back(c.cell(group));
    out += table.row(cells);
  }
  return out;
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
  std::vector<ReportColumn> columns;
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

}  // namespace

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
       "max over sublayers and tokens of |row sum − 1| and |column sum − 1| of H_res. Spectrum: the largest and "
       "the smallest singular value of P_l over sublayers and tokens (an orthogonal P keeps both at 1; products of "
       "doubly stochastic maps drive σ_min towards 0), and the orthogonality error max |H_resᵀH_res − I| over "
       "sublayers and tokens. The plain residual has no H_res (its map is the identity). tokens/s and step time are medians over the steps (evaluation excluded); "
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


}  // namespace mhc::cli
