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

}  // namespace

int bench_memory(const std::vector<std::string>& argv) {
  Args a("mhc bench memory",
         "Peak live tensor bytes of one training step for each variant and recomputation policy, with the DESIGN.md "
         "§6 prediction and the step time.");
  declare_model_bench_flags(a, "3", "the median time and the largest peak are reported");
  a.flag("recompute", "none,streams,blocks", "recomputation policies, comma-separated")
      .flag("recompute-every", "auto", "L_r: auto or a whole number >= 1");
  if (!a.parse(argv)) return 0;
  train::Settings s = model_bench_settings(a);
  s.values["recompute-every"] = a.str("recompute-every");
  const int threads = static_cast<int>(a.integer("threads", 1, 1024));
  const int warmup = static_cast<int>(a.integer("warmup", 1, 100)), reps = static_cast<int>(a.integer("reps", 1, 1000));
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
  const int64_t L = 2 * base.layers, tokens_per_step = s.integer("batch", 1, 1 << 20) * base.seq_len;
  const torch::Tensor tokens = random_tokens(s);
  std::vector<Row> rows;
  for (const auto& m : models)
    for (Recompute mode : modes) {
      RecomputeOptions r = m.model->config().recompute;
      r.mode = mode;
      const int64_t n = m.model->config().streams;
      rows.push_back({m.variant, n, mode, mode == Recompute::none ? 0 : group_size(r, n, L), 0, 0, {}});
    }
  for (int rep = 0; rep < warmup + reps; ++rep)
    for (size_t i = 0; i < rows.size(); ++i) {
      BenchModel& m = models[i / modes.size()];
      Row& row = rows[i];
      RecomputeOptions r = m.model->config().recompute;
      r.mode = row.mode;
      m.model->set_recompute(r);
      live_bytes::reset_peak();
      const int64_t before = live_bytes::live();
      const auto t0 = Clock::now();
      m.step(tokens);
      if (rep < warmup) continue;  // the first step also allocates the gradients and AdamW's moments
      row.seconds.push_back(seconds_since(t0));
      row.activation_bytes = std::max(row.activation_bytes, static_cast<double>(live_bytes::peak() - before));
      row.peak_bytes = std::max(row.peak_bytes, static_cast<double>(live_bytes::peak()));
    }

  auto find = [&](const std::string& variant, Recompute mode) -> const Row* {
    for (const auto& r : rows)
      if (r.variant == variant && r.mode == mode) return &r;
    return nullptr;
  };
  const Row& baseline = *find("residual", Recompute::none);
  const bool md = a.on("markdown"), json = a.on("json");
  const double element = static_cast<double>(c10::elementSize(base.dtype)), MiB = 1024.0 * 1024.0;
  if (!json)
    std::cout << (md ? "Machine: " : "machine: ") << cpu_model() << ", " << threads << " threads. Preset "
              << a.str("preset") << ": " << base.layers << " blocks (L = " << L << " sublayers), C = " << base.dim << ", "
              << tokens_per_step << " tokens per step; activation = peak live tensor bytes of a step minus those live "
              << "at its start; stream memory = activation minus the plain residual's under the same policy; "
              << "prediction: DESIGN.md §6 (Eq. 20), resident and resident + transient; median step of " << reps
              << ", configurations interleaved.\n"
              << (md ? "\n| variant | n | recompute | L_r | activation MiB | KiB/token | vs residual | stream MiB | "
                       "Eq. 20 resident MiB | Eq. 20 total MiB | step ms | time vs same variant, none |\n"
                       "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
                     : "variant      n  recompute  L_r  activation MiB  KiB/token  vs residual  stream MiB  Eq.20 resident"
                       "  Eq.20 total  step ms  time vs none\n");
  for (const auto& row : rows) {
    const Row* plain = find(baseline.variant, row.mode == Recompute::streams ? Recompute::none : row.mode);
    const Row* none = find(row.variant, Recompute::none);
    const int64_t n = row.streams;
    const double stream_bytes = plain ? row.activation_bytes - plain->activation_bytes : NAN;
    Prediction predicted;
    if (row.variant != baseline.variant) {
      predicted = predicted_stream_elements(row.mode, n, base.dim, L, row.group);
      const double bytes = element * static_cast<double>(tokens_per_step);
      predicted.resident *= bytes, predicted.transient *= bytes;
    }
    const double predicted_total = predicted.resident + predicted.transient;
    const double ms = median(row.seconds) * 1e3, vs_none = none ? median(row.seconds) / median(none->seconds) : NAN;
    const double vs_residual = row.activation_bytes / baseline.activation_bytes;
    const std::string group = row.group ? std::to_string(row.group) : "-";
    std::ostringstream line;
    line << std::fixed;
    if (json)
      line << std::setprecision(6) << "{\"variant\": \"" << row.variant << "\", \"streams\": " << n
           << ", \"recompute\": \"" << recompute_name(row.mode) << "\", \"recompute_every\": "
           << (row.group ? std::to_string(row.group) : "null")
           << ", \"preset\": \"" << a.str("preset") << "\", \"threads\": " << threads << ", \"reps\": " << reps
           << ", \"tokens_per_step\": " << tokens_per_step << ", \"activation_bytes\": " << std::setprecision(0)
           << row.activation_bytes << ", \"peak_bytes\": " << row.peak_bytes << ", \"stream_bytes\": " << stream_bytes
           << ", \"predicted_stream_resident_bytes\": " << predicted.resident
           << ", \"predicted_stream_bytes\": " << predicted_total << std::setprecision(6)
           << ", \"activation_ratio_to_residual\": " << vs_residual << ", \"median_step_ms\": " << ms
           << ", \"time_ratio_to_none\": " << vs_none << ", \"time_ratio_to_residual\": "
           << median(row.seconds) / median(baseline.seconds) << "}";
    else if (md)
      line << "| " << row.variant << " | " << n << " | " << recompute_name(row.mode) << " | " << group << " | "
           << std::setprecision(1) << row.activation_bytes / MiB << " | " << row.activation_bytes / 1024.0 / tokens_per_step
           << " | " << std::setprecision(3) << vs_residual << "x | " << std::setprecision(1) << stream_bytes / MiB
           << " | " << predicted.resident / MiB << " | " << predicted_total / MiB << " | " << ms << " | " << std::setprecision(3) << vs_none << "x |";
    else
      line << std::left << std::setw(10) << row.variant << std::right << std::setw(4) << n << std::setw(11)
           << recompute_name(row.mode) << std::setw(5) << group << std::setprecision(1) << std::setw(16)
           << row.activation_bytes / MiB << std::setw(11) << row.activation_bytes / 1024.0 / tokens_per_step
           << std::setprecision(3) << std::setw(12) << vs_residual << "x" << std::setprecision(1) << std::setw(12)
           << stream_bytes / MiB << std::setw(16) << predicted.resident / MiB << std::setw(13) << predicted_total / MiB
           << std::setw(9) << ms << std::setprecision(3)
           << std::setw(13) << vs_none << "x";
    std::cout << line.str() << std::endl;
  }
  return 0;
}

}  // namespace mhc::cli
