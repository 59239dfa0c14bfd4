// The preset models that the training benchmarks step (see bench_model.h).
#include "bench_model.h"

#include "bench_common.h"
#include "run_settings.h"
#include "mhc/trainer.h"

namespace mhc::cli {

train::Settings preset_settings(const std::string& command, const std::string& preset) {
  const std::map<std::string, std::string>& values = preset_values(command, preset);
  train::Settings s;
  for (const auto& spec : train::setting_specs()) s.values[spec.name] = spec.default_value;
  for (const auto& [k, v] : values) s.values[k] = v;
  return s;
}

BenchModel::BenchModel(train::Settings s, const std::string& name, const std::string& streams) : variant(name) {
  s.values["variant"] = name;
  s.values["streams"] = parse_variant(name) == Variant::residual ? "1" : streams;
  torch::manual_seed(0);
  model = GPT(s.model_config(s.integer("vocab")));
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  optimizer = std::make_unique<train::AdamW>(named, train::AdamW::Options{});
  parameters = model->parameters();
}

std::pair<torch::Tensor, torch::Tensor> inputs_and_targets(const torch::Tensor& tokens) {
  const int64_t T = tokens.size(1) - 1;
  return {tokens.slice(1, 0, T), tokens.slice(1, 1)};
}

void BenchModel::step(const torch::Tensor& tokens) {
  const auto [x, y] = inputs_and_targets(tokens);
  train::train_step(*optimizer, parameters, [&] { return model->loss(x, y); }, 1, 1.0, 1e-4);
}

void declare_model_bench_flags(Args& a, const std::string& reps, const std::string& reps_help, int64_t least_warmup) {
  a.flag("preset", "small", "model and batch settings (see mhc train --help)")
      .flag("variant", "residual,hc,mhc,mhc-lite", "variants, comma-separated (the first is the baseline)")
      .alias("residual", "variant")
      .flag("streams", "4", "n for the hyper-connection variants", IntegerRange{1, kMaxStreams})
      .flag("warmup", "1", "untimed steps per configuration first", IntegerRange{least_warmup, 100})
      .flag("reps", reps, "measured steps per configuration (" + reps_help + ")", IntegerRange{1, 1000})
      .toggle("markdown", "a Markdown table (for docs/benchmarks.md)")
      .toggle("json", "one JSON object per configuration instead of a table");
  declare_threads_flag(a);
}

train::Settings model_bench_settings(const Args& a) {
  table_style(a);
  return preset_settings(a.command(), a.str("preset"));
}

torch::Tensor random_tokens(const train::Settings& s) {
  return torch::randint(s.integer("vocab"), {s.integer("batch"), s.integer("seq-len") + 1}, torch::kLong);
}

}  // namespace mhc::cli
