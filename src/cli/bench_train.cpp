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
#include "mhc/train.h"

namespace mhc::cli {

int bench_train(const std::vector<std::string>& argv) {
  Args a("mhc bench train", "Training step time of each residual variant at one preset, as ratios to plain residual.");
  declare_model_bench_flags(a, "5", "the median is reported");
  if (!a.parse(argv)) return 0;
  const train::Settings s = model_bench_settings(a);
  const int threads = static_cast<int>(a.integer("threads", 1, 1024));
  const int warmup = static_cast<int>(a.integer("warmup", 0, 100)), reps = static_cast<int>(a.integer("reps", 1, 1000));
  const int64_t batch = s.integer("batch", 1, 1 << 20);
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

  const bool md = a.on("markdown"), json = a.on("json");
  const double base = median(variants.front().seconds);
  // On a shared, noisy host the fastest step is the steadier estimate of a variant's own cost;
  // both ratios are to the first variant (the plain residual by default).
  const double base_fastest = *std::min_element(variants.front().seconds.begin(), variants.front().seconds.end());
  if (!json)
    std::cout << (md ? "Machine: " : "machine: ") << cpu_model() << ", " << threads << " threads. Preset " << a.str("preset")
              << ": " << c.layers << " blocks, C = " << c.dim << ", " << batch << " x " << c.seq_len
              << " tokens per step, vocab " << c.vocab << "; median of " << reps << " steps, variants interleaved.\n"
              << (md ? "\n| variant | n | median step ms | fastest step ms | tokens/s (median) | median ratio | fastest ratio |"
                       " in the connection's ops |\n|---|---|---|---|---|---|---|---|\n"
                     : "variant      n  median ms  fastest ms   tokens/s  median ratio  fastest ratio  connection ops\n");
  for (const auto& v : variants) {
    const double m = median(v.seconds), f = *std::min_element(v.seconds.begin(), v.seconds.end());
    std::vector<double> shares;
    for (size_t i = 0; i < v.seconds.size(); ++i) shares.push_back(v.op_seconds[i] / v.seconds[i]);
    const double share = median(shares);
    std::ostringstream line;
    line << std::fixed;
    if (json)
      line << std::setprecision(6) << "{\"variant\": \"" << v.bench.variant << "\", \"streams\": " << v.bench.model->config().streams
           << ", \"preset\": \"" << a.str("preset") << "\", \"threads\": " << threads << ", \"reps\": " << reps
           << ", \"median_step_ms\": " << m * 1e3 << ", \"fastest_step_ms\": " << f * 1e3
           << ", \"tokens_per_s\": " << batch * c.seq_len / m << ", \"median_ratio\": " << m / base
           << ", \"fastest_ratio\": " << f / base_fastest << ", \"connection_ops_ms\": " << median(v.op_seconds) * 1e3
           << ", \"connection_share\": " << share << "}";
    else if (md)
      line << "| " << v.bench.variant << " | " << v.bench.model->config().streams << " | " << std::setprecision(1) << m * 1e3 << " | "
           << f * 1e3 << " | " << std::setprecision(0) << batch * c.seq_len / m << " | " << std::setprecision(3) << m / base
           << "x | " << f / base_fastest << "x | " << std::setprecision(1) << 100 * share << "% |";
    else
      line << std::left << std::setw(10) << v.bench.variant << std::right << std::setw(4) << v.bench.model->config().streams
           << std::setprecision(1) << std::setw(11) << m * 1e3 << std::setw(12) << f * 1e3 << std::setprecision(0)
           << std::setw(11) << batch * c.seq_len / m << std::setprecision(3) << std::setw(13) << m / base << "x"
           << std::setw(14) << f / base_fastest << "x" << std::setprecision(1) << std::setw(15) << 100 * share << "%";
    std::cout << line.str() << std::endl;
  }
  return 0;
}

}  // namespace mhc::cli
