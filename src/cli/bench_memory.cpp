// `mhc bench memory`: the peak bytes of live CPU tensors during one training step (mhc/live_bytes.h,
// a counting allocator; not RSS) for each residual variant under each recomputation policy, beside
// the stream memory DESIGN.md §6 (paper Eq. 20) predicts, and the step time, all in one run with
// the configurations interleaved step by step.
//
// A step's activation memory is its peak minus what was live when it began (weights, gradient
// buffers, AdamW's moments): what the forward pass saves for the backward pass and the backward
// pass's transients. The n streams' cost is the difference to the plain residual under the same
// policy (the plain residual has no connection; `streams` leaves it unchanged).
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "args.h"
#include "bench_common.h"
#include "bench_model.h"
#include "commands.h"
#include "mhc/live_bytes.h"

namespace mhc::cli {

namespace {

// Eq. 20's stream memory per token, in elements, for n streams of width C over L sublayers with
// groups of L_r (0 for none): what the streams add over the plain residual under the same policy, as what stays
// from the forward to the backward pass (resident) and what a group's rebuild adds (transient).
//   none     n·C·L states + C·L outputs y (F's input h replaces the plain residual's saved state)
//   streams  n·C·⌈L/L_r⌉ group inputs + C·L outputs y, resident; (n+2)·C·L_r transient in the
//            paper's rebuild of a whole group at once. This library's rebuild holds three states at
//            a time instead (mhc/recompute.h), so the measurement should meet the resident term.
//   blocks   (n−1)·C·⌈L/L_r⌉ wider group inputs, resident; (n+1)·C·L_r while one group is rerun
// The connections' coefficients ((2n+n²+1) + n + n² numbers per sublayer for mHC) are left out,
// as in the paper.
struct Prediction {
  double resident = 0, transient = 0;
};
Prediction predicted_stream_elements(Recompute mode, int64_t n, int64_t C, int64_t L, int64_t L_r) {
  const double groups = L_r > 0 ? static_cast<double>((L + L_r - 1) / L_r) : 0, nC = static_cast<double>(n * C);
  switch (mode) {
    case Recompute::none: return {static_cast<double>((n + 1) * C * L), 0};
    case Recompute::streams: return {nC * groups + static_cast<double>(C * L), static_cast<double>((n + 2) * C * L_r)};
    case Recompute::blocks: return {static_cast<double>((n - 1) * C) * groups, static_cast<double>((n + 1) * C * L_r)};
  }
  return {};
}

struct Row {
  std::string variant;
  int64_t streams;
  Recompute mode;
  int64_t group = 0;               // L_r (0 for none)
  double activation_bytes = 0;     // peak minus live at the step's start (the largest over steps)
  double peak_bytes = 0;           // all live tensors at the peak
  std::vector<double> seconds;
};

const Row* find_row(const std::vector<Row>& rows, const std::string& variant, Recompute mode) {
  for (const auto& r : rows)
    if (r.variant == variant && r.mode == mode) return &r;
  return nullptr;
}

// Steps every configuration in turn, `warmup` times unmeasured (the first step also allocates the
// gradients and AdamW's moments), then `reps` times: each row's step times and its largest peak.
// Row i belongs to models[i / modes].
void measure(std::vector<BenchModel>& models, std::vector<Row>& rows, size_t modes, const torch::Tensor& tokens, int warmup,
             int reps) {
  for (int rep = 0; rep < warmup + reps; ++rep)
    for (size_t i = 0; i < rows.size(); ++i) {
      BenchModel& m = models[i / modes];
      Row& row = rows[i];
      RecomputeOptions r = m.model->config().recompute;
      r.mode = row.mode;
      m.model->set_recompute(r);
      live_bytes::reset_peak();
      const int64_t before = live_bytes::live();
      const auto t0 = Clock::now();
      m.step(tokens);
      if (rep < warmup) continue;
      row.seconds.push_back(seconds_since(t0));
      row.activation_bytes = std::max(row.activation_bytes, static_cast<double>(live_bytes::peak() - before));
      row.peak_bytes = std::max(row.peak_bytes, static_cast<double>(live_bytes::peak()));
    }
}

// The rows' columns: JSON keys as scripts read them; MiB and ratios for people.
Table memory_table(TableStyle style) {
  const Format mib = Format::fixed(1).scaled(1.0 / (1024.0 * 1024.0)), ratio = Format::ratio(3);
  return Table({{"variant", "variant"}, {"n", "streams"}, {"recompute", "recompute"}, {"L_r", "recompute_every"},
                     {"", "preset"}, {"", "threads"}, {"", "reps"}, {"", "tokens_per_step"},
                     {"activation MiB", "activation_bytes", mib}, {"KiB/token", "", Format::fixed(1)}, {"", "peak_bytes"},
                     {"stream MiB", "stream_bytes", mib}, {"Eq. 20 resident MiB", "predicted_stream_resident_bytes", mib},
                     {"Eq. 20 total MiB", "predicted_stream_bytes", mib},
                     {"vs residual", "activation_ratio_to_residual", ratio}, {"step ms", "median_step_ms", Format::fixed(1)},
                     {"time vs same variant, none", "time_ratio_to_none", ratio}, {"", "time_ratio_to_residual"}},
               style);
}

// What the table measures, on what: the lines above it.
std::string caption(const Args& a, const GPTConfig& base, int64_t tokens_per_step, int threads, int reps, TableStyle style) {
  std::ostringstream s;
  s << (style == TableStyle::markdown ? "Machine: " : "machine: ") << cpu_model() << ", " << threads << " threads. Preset "
    << a.str("preset") << ": " << base.layers << " blocks (L = " << 2 * base.layers << " sublayers), C = " << base.dim << ", "
    << tokens_per_step << " tokens per step; activation = peak live tensor bytes of a step minus those live at its start; "
    << "stream memory = activation minus the plain residual's under the same policy; prediction: DESIGN.md §6 (Eq. 20), "
    << "resident and resident + transient; median step of " << reps << ", configurations interleaved.\n"
    << (style == TableStyle::markdown ? "\n" : "");
  return s.str();
}

}  // namespace

int bench_memory(const std::vector<std::string>& argv) {
  Args a("mhc bench memory",
         "Peak live tensor bytes of one training step for each variant and recomputation policy, with the DESIGN.md "
         "§6 prediction and the step time.");
  declare_model_bench_flags(a, "3", "the median time and the largest peak are reported", /*least_warmup=*/1);
  a.flag("recompute", "none,streams,blocks", "recomputation policies, comma-separated")
      .flag("recompute-every", "auto", "L_r: auto or a whole number >= 1");
  if (!a.parse(argv)) return 0;
  train::Settings s = model_bench_settings(a);
  s.values["recompute-every"] = a.str("recompute-every");
  const TableStyle style = table_style(a);
  const int threads = static_cast<int>(a.integer("threads"));
  const int warmup = static_cast<int>(a.integer("warmup")), reps = static_cast<int>(a.integer("reps"));
  std::vector<Recompute> modes;
  for (const auto& name : a.list("recompute")) modes.push_back(parse_recompute(name));
  // Every row is set against the plain residual without recomputation (issue 35, item 4: without
  // that row the ratios were NaN, or set against whatever came first).
  const std::vector<std::string> variants = a.list("variant");
  if (std::find(variants.begin(), variants.end(), "residual") == variants.end() ||
      std::find(modes.begin(), modes.end(), Recompute::none) == modes.end())
    throw std::invalid_argument("mhc bench memory: every row is measured against the plain residual without "
                                "recomputation, so --variant must include residual and --recompute none (got --variant " +
                                a.str("variant") + " --recompute " + a.str("recompute") + ")");
  torch::set_num_threads(threads);
  live_bytes::install();  // before any model: every tensor of the steps is counted

  std::vector<BenchModel> models;
  for (const auto& name : variants) models.emplace_back(s, name, a.str("streams"));
  const GPTConfig base = models.front().model->config();
  const int64_t L = 2 * base.layers, tokens_per_step = s.integer("batch") * base.seq_len;
  const torch::Tensor tokens = random_tokens(s);
  std::vector<Row> rows;
  for (const auto& m : models)
    for (Recompute mode : modes) {
      RecomputeOptions r = m.model->config().recompute;
      r.mode = mode;
      const int64_t n = m.model->config().streams;
      rows.push_back({m.variant, n, mode, mode == Recompute::none ? 0 : group_size(r, n, L), 0, 0, {}});
    }
  measure(models, rows, modes.size(), tokens, warmup, reps);

  if (style != TableStyle::json) std::cout << caption(a, base, tokens_per_step, threads, reps, style);
  const Table table = memory_table(style);
  std::cout << table.header();
  const Row& baseline = *find_row(rows, "residual", Recompute::none);
  const double element = static_cast<double>(c10::elementSize(base.dtype));
  for (const auto& row : rows) {
    const Row* plain = find_row(rows, baseline.variant, row.mode == Recompute::streams ? Recompute::none : row.mode);
    const Row* none = find_row(rows, row.variant, Recompute::none);
    const double stream_bytes = plain ? row.activation_bytes - plain->activation_bytes : NAN;
    Prediction predicted;
    if (row.variant != baseline.variant) {
      predicted = predicted_stream_elements(row.mode, row.streams, base.dim, L, row.group);
      const double bytes = element * static_cast<double>(tokens_per_step);
      predicted.resident *= bytes, predicted.transient *= bytes;
    }
    const double ms = median(row.seconds) * 1e3;
    std::cout << table.row({row.variant, row.streams, recompute_name(row.mode),
                            row.group ? nlohmann::ordered_json(row.group) : nlohmann::ordered_json(nullptr), a.str("preset"),
                            threads, reps, tokens_per_step, static_cast<int64_t>(row.activation_bytes),
                            row.activation_bytes / 1024.0 / static_cast<double>(tokens_per_step),
                            static_cast<int64_t>(row.peak_bytes), stream_bytes, predicted.resident,
                            predicted.resident + predicted.transient, row.activation_bytes / baseline.activation_bytes, ms,
                            none ? median(row.seconds) / median(none->seconds) : NAN,
                            median(row.seconds) / median(baseline.seconds)})
              << std::flush;
  }
  return 0;
}

}  // namespace mhc::cli
