// `mhc bench decode`: inference with the KV cache (DESIGN.md §12) for each residual variant against
// the plain residual, interleaved in one run: prefill tokens/s of one prompt, decode tokens/s of one
// new token per sequence at each batch size, the share of decode time inside the connection's ops
// (mhc::op_clock), and the uncached path's tokens/s (the whole window for every token) beside it.
// Models are the preset's at random initialisation: the cost does not depend on the weights.
#include <iostream>

#include "args.h"
#include "bench_common.h"
#include "bench_model.h"
#include "commands.h"

namespace mhc::cli {

namespace {

struct DecodeCase {
  std::string variant;
  GPT model{nullptr};
  std::vector<KVCache> caches;  // one per batch size
  std::vector<double> prefill_seconds, uncached_seconds;
  std::vector<std::vector<double>> decode_seconds, op_seconds;  // [batch size][rep], per decode step
};

GPT random_model(train::Settings s, const std::string& variant, const std::string& streams, int64_t seq_len) {
  s.values["variant"] = variant;
  s.values["streams"] = parse_variant(variant) == Variant::residual ? "1" : streams;
  s.values["seq-len"] = std::to_string(seq_len);
  torch::manual_seed(0);
  return GPT(s.model_config(s.integer("vocab")));
}

// Seconds per token of the uncached path: `count` tokens, each running the whole window so far.
double uncached_step_seconds(GPT& model, const torch::Tensor& prompt, int64_t count) {
  c10::InferenceMode inference;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < count; ++i) model->forward(prompt.slice(0, 0, prompt.size(0) - count + i + 1).view({1, -1}));
  return seconds_since(t0) / static_cast<double>(count);
}

void measure(DecodeCase& c, const std::vector<int64_t>& batches, const torch::Tensor& prompt, int64_t steps,
             int64_t uncached_tokens, bool keep) {
  const int64_t P = prompt.size(0);
  for (size_t k = 0; k < batches.size(); ++k) {
    KVCache& cache = c.caches[k];
    auto t0 = Clock::now();
    c.model->prefill(prompt, cache, 0);
    if (keep && k == 0) c.prefill_seconds.push_back(seconds_since(t0));
    for (int64_t b = 1; b < batches[k]; ++b) c.model->prefill(prompt, cache, b);
    const torch::Tensor next = prompt.slice(0, P - 1).expand({batches[k]}).contiguous();
    op_clock::reset();
    t0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) c.model->decode(next, cache);
    if (!keep) continue;
    c.decode_seconds[k].push_back(seconds_since(t0) / static_cast<double>(steps));
    c.op_seconds[k].push_back(op_clock::seconds() / static_cast<double>(steps));
  }
  if (keep && uncached_tokens > 0) c.uncached_seconds.push_back(uncached_step_seconds(c.model, prompt, uncached_tokens));
}

}  // namespace

int bench_decode(const std::vector<std::string>& argv) {
  Args a("mhc bench decode",
         "Inference with the KV cache for each residual variant against the plain residual (the first variant):\n"
         "prefill and decode tokens/s, the connection ops' share of decode, and the uncached path beside it.");
  declare_model_bench_flags(a, "5", "the median is reported");
  a.set("variant", "residual,hc,mhc,mhc-v4,mhc-lite,kromhc,ihc");
  a.flag("batch", "1,8", "sequences decoded together, comma-separated", IntegerRange{1, 256})
      .flag("prompt", "256", "prompt tokens (prefill)", IntegerRange{1, 1 << 16})
      .flag("tokens", "32", "decode steps timed per batch size and rep", IntegerRange{1, 1 << 16})
      .flag("uncached-tokens", "4", "tokens timed on the uncached path per rep, at batch 1 (0: skip it)",
            IntegerRange{0, 1 << 10});
  if (!a.parse(argv)) return 0;
  const train::Settings s = model_bench_settings(a);
  const TableStyle style = table_style(a);
  const int threads = static_cast<int>(a.integer("threads"));
  torch::set_num_threads(threads);
  const std::vector<int64_t> batches = a.integers("batch");
  const std::vector<int64_t> streams = a.integers("streams");
  const int64_t P = a.integer("prompt"), steps = a.integer("tokens"), uncached = a.integer("uncached-tokens");
  const int64_t seq_len = P + steps;  // room for every decode step after the prompt

  std::vector<DecodeCase> cases;
  for (const auto& variant : a.list("variant"))
    for (int64_t n : parse_variant(variant) == Variant::residual ? std::vector<int64_t>{1} : streams) {
      DecodeCase c{variant, random_model(s, variant, std::to_string(n), seq_len)};
      for (int64_t b : batches) c.caches.emplace_back(c.model->config(), b, torch::kCPU);
      c.decode_seconds.resize(batches.size()), c.op_seconds.resize(batches.size());
      cases.push_back(std::move(c));
    }
  torch::manual_seed(1);
  const torch::Tensor prompt = torch::randint(s.integer("vocab"), {P}, torch::kLong);
  const int64_t warmup = a.integer("warmup"), reps = a.integer("reps");
  op_clock::enable(true);
  for (int64_t rep = 0; rep < warmup + reps; ++rep)
    for (auto& c : cases) measure(c, batches, prompt, steps, uncached, rep >= warmup);
  op_clock::enable(false);

  const GPTConfig& base = cases.front().model->config();
  if (style != TableStyle::json)
    std::cout << (style == TableStyle::markdown ? "Machine: " : "machine: ") << cpu_model() << ", " << threads
              << " threads. Preset " << a.str("preset") << ": " << base.layers << " blocks, C = " << base.dim
              << ", vocab " << base.vocab << "; prompt " << P << " tokens, " << steps << " decode steps per batch size; median of "
              << reps << " reps, variants interleaved; ratios are to " << cases.front().variant << ".\n"
              << (style == TableStyle::markdown ? "\n" : "");
  const Table table({{"variant", "variant"}, {"n", "streams"}, {"", "preset"}, {"", "threads"}, {"batch", "batch"},
                     {"prefill tok/s", "prefill_tokens_per_s", Format::fixed(0)},
                     {"prefill ratio", "prefill_ratio", Format::ratio(3)},
                     {"decode ms/step", "decode_ms_per_step", Format::fixed(3)},
                     {"decode tok/s", "decode_tokens_per_s", Format::fixed(0)},
                     {"decode ratio", "decode_ratio", Format::ratio(3)},
                     {"in the connection's ops", "connection_share", Format::percent(1)},
                     {"uncached tok/s", "uncached_tokens_per_s", Format::fixed(0)},
                     {"cache speedup", "cache_speedup", Format::ratio(1)}},
                    style);
  std::cout << table.header();
  const DecodeCase& residual = cases.front();
  for (const auto& c : cases)
    for (size_t k = 0; k < batches.size(); ++k) {
      const double step = median(c.decode_seconds[k]), prefill = median(c.prefill_seconds);
      const bool single = batches[k] == 1 && !c.uncached_seconds.empty();
      const nlohmann::ordered_json uncached_rate = single ? nlohmann::ordered_json(1 / median(c.uncached_seconds)) : nullptr;
      const nlohmann::ordered_json speedup = single ? nlohmann::ordered_json(median(c.uncached_seconds) / step) : nullptr;
      std::cout << table.row({c.variant, c.model->config().streams, a.str("preset"), threads, batches[k], P / prefill,
                              prefill / median(residual.prefill_seconds), step * 1e3, batches[k] / step,
                              step / median(residual.decode_seconds[k]), median(c.op_seconds[k]) / step, uncached_rate,
                              speedup})
                << std::flush;
    }
  return 0;
}

}  // namespace mhc::cli
