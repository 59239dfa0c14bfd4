// `mhc bench train`: the median time of one full training step (forward, backward, clipping, AdamW)
// of the same GPT with each residual variant, interleaved step by step in one run, as ratios to
// the plain residual, and the share of each step spent inside the connection's ops, measured by
// the ops' own clock (mhc::op_clock), not inferred from the difference to the plain residual.
// Batches are random tokens: a step's cost does not depend on the text.
#include <iomanip>
#include <iostream>

#include "args.h"
#include "bench_common.h"
#include "bench_model.h"
#include "commands.h"
#include "mhc/trainer.h"

namespace mhc::cli {

int bench_train(const std::vector<std::string>& argv) {
  Args a("mhc bench train", "Training step time of each residual variant at one preset, as ratios to plain residual.");
  declare_model_bench_flags(a, "5", "the median is reported");
  if (!a.parse(argv)) return 0;
  const train::Settings s = model_bench_settings(a);
  const TableStyle style = table_style(a);
  const int threads = static_cast<int>(a.integer("threads"));
  const int warmup = static_cast<int>(a.integer("warmup")), reps = static_cast<int>(a.integer("reps"));
  const int64_t batch = s.integer("batch");
  torch::set_num_threads(threads);

  struct Timed {
    BenchModel bench;
    std::vector<double> seconds, op_seconds;  // whole steps; inside the connection's ops
  };
  std::vector<Timed> variants;
  for (const auto& name : a.list("variant")) variants.push_back({BenchModel(s, name, a.str("streams")), {}, {}});
  const GPTConfig& c = variants.front().bench.model->config();
  const torch::Tensor tokens = random_tokens(s);
  op_clock::enable(true);
  for (int rep = 0; rep < warmup + reps; ++rep)
    for (auto& v : variants) {
      op_clock::reset();
      const auto t0 = Clock::now();
      v.bench.step(tokens);
      if (rep >= warmup) v.seconds.push_back(seconds_since(t0)), v.op_seconds.push_back(op_clock::seconds());
    }
  op_clock::enable(false);

  const double base = median(variants.front().seconds);
  // On a shared, noisy host the fastest step is the steadier estimate of a variant's own cost;
  // both ratios are to the first variant (the plain residual by default).
  const double base_fastest = *std::min_element(variants.front().seconds.begin(), variants.front().seconds.end());
  if (style != TableStyle::json)
    std::cout << (style == TableStyle::markdown ? "Machine: " : "machine: ") << cpu_model() << ", " << threads
              << " threads. Preset " << a.str("preset") << ": " << c.layers << " blocks, C = " << c.dim << ", " << batch
              << " x " << c.seq_len << " tokens per step, vocab " << c.vocab << "; median of " << reps
              << " steps, variants interleaved.\n" << (style == TableStyle::markdown ? "\n" : "");
  const Format ms = Format::fixed(1);
  const Table table({{"variant", "variant"}, {"n", "streams"}, {"", "preset"}, {"", "threads"}, {"", "reps"},
                     {"median step ms", "median_step_ms", ms}, {"fastest step ms", "fastest_step_ms", ms},
                     {"tokens/s (median)", "tokens_per_s", Format::fixed(0)}, {"median ratio", "median_ratio", Format::ratio(3)},
                     {"fastest ratio", "fastest_ratio", Format::ratio(3)}, {"", "connection_ops_ms"},
                     {"in the connection's ops", "connection_share", Format::percent(1)}},
                    style);
  std::cout << table.header();
  for (const auto& v : variants) {
    const double m = median(v.seconds), f = *std::min_element(v.seconds.begin(), v.seconds.end());
    std::vector<double> shares;
    for (size_t i = 0; i < v.seconds.size(); ++i) shares.push_back(v.op_seconds[i] / v.seconds[i]);
    std::cout << table.row({v.bench.variant, v.bench.model->config().streams, a.str("preset"), threads, reps, m * 1e3, f * 1e3,
                            batch * c.seq_len / m, m / base, f / base_fastest, median(v.op_seconds) * 1e3, median(shares)})
              << std::flush;
  }
  return 0;
}

}  // namespace mhc::cli
