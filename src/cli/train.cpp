// `mhc train`, `mhc sample`, `mhc eval`, and the settings logic of run_settings.h that `mhc compare`
// shares: flags -> settings (preset < --config TOML < flags, or a checkpoint's settings when
// resuming), then the trainer of mhc/train.h.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "mhc/files.h"
#include "mhc/train.h"
#include "run_settings.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

using train::Settings;

bool same_value(const train::SettingSpec& spec, const std::string& a, const std::string& b) {
  try {
    if (spec.type == 'i') return std::stoll(a) == std::stoll(b);
    if (spec.type == 'f') return std::stod(a) == std::stod(b);
  } catch (const std::exception&) {
  }
  return a == b;
}

std::string preset_names() {
  std::string names;
  for (const auto& [name, values] : train::presets()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace

void declare_training_flags(Args& a) {
  a.flag("preset", "tiny", "starting settings: " + preset_names() + " (the defaults below are tiny's)");
  a.flag("config", "", "a TOML file of settings, applied over the preset");
  for (const auto& spec : train::setting_specs()) {
    a.flag(spec.name, spec.default_value, spec.help);
    if (!spec.old_name.empty()) a.alias(spec.old_name, spec.name);
  }
}

Settings fresh_settings(const Args& a, const std::map<std::string, std::string>& overrides) {
  const auto preset = train::presets().find(a.str("preset"));
  if (preset == train::presets().end())
    throw std::invalid_argument(a.command() + ": unknown --preset '" + a.str("preset") + "' (accepted: " + preset_names() + ")");
  Settings s;
  for (const auto& spec : train::setting_specs()) s.values[spec.name] = a.str(spec.name);
  std::map<std::string, std::string> layered = preset->second;
  if (!a.str("config").empty())
    for (const auto& [k, v] : train::read_toml(a.str("config"))) layered[k] = v;
  for (const auto& [k, v] : layered)
    if (!a.given(k)) s.values[k] = v;
  for (const auto& [k, v] : overrides) s.values[k] = v;
  // The plain residual has one stream by definition; only an explicit --streams can contradict it.
  if (s.str("variant") == "residual" && !a.given("streams")) s.values["streams"] = "1";
  return s;
}

std::string differences(const Settings& checkpoint, const Settings& given, const std::vector<std::string>& names) {
  std::string out;
  for (const auto& spec : train::setting_specs()) {
    if (std::find(names.begin(), names.end(), spec.name) == names.end()) continue;
    if (!same_value(spec, checkpoint.str(spec.name), given.str(spec.name)))
      out += (out.empty() ? "" : ", ") + spec.name + " (checkpoint " + checkpoint.str(spec.name) + ", given " +
             given.str(spec.name) + ")";
  }
  return out;
}

void replace_earlier_run(const std::string& out, bool overwrite) {
  if (!fs::is_directory(out)) return;
  const FolderLock lock(out);  // a run still writing there is named, and none of its files is deleted
  std::vector<fs::path> earlier;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name == train::kLatestCheckpoint || train::is_checkpoint_file_name(name)) earlier.push_back(e.path());
  }
  if (earlier.empty()) return;
  if (!overwrite)
    throw std::invalid_argument("mhc train: " + out + " holds an earlier run (continue it with --resume " + out +
                                ", or start afresh with --overwrite)");
  for (const auto& p : earlier) fs::remove(p);
}

void declare_checkpoint_flag(Args& a) { a.flag("ckpt", "", "a run folder (its latest checkpoint) or a checkpoint file"); }

void declare_threads_flag(Args& a) { a.flag("threads", std::to_string(train::default_threads()), "CPU threads"); }

RunToRead run_to_read(const Args& a) {
  if (a.str("ckpt").empty())
    throw std::invalid_argument(a.command() + ": --ckpt is required (a run folder or checkpoint file)");
  const int threads = static_cast<int>(a.integer("threads", 1, 1024));
  torch::set_num_threads(threads);
  return {train::resolve_checkpoint(a.str("ckpt")), threads};
}

int train(const std::vector<std::string>& argv) {
  Args a("mhc train",
         "Train a GPT whose residual stream is the chosen variant. Settings: the preset, then --config FILE.toml\n"
         "(keys named as the flags), then the flags. --resume DIR continues a run exactly; it may change only\n"
         "the run settings (out … sample-tokens).");
  a.flag("resume", "", "a run folder (or checkpoint file) to continue");
  a.toggle("overwrite", "start afresh even if --out holds an earlier run (its checkpoints are deleted)");
  declare_training_flags(a);
  if (!a.parse(argv)) return 0;

  const auto environment = dist::Environment::read();  // one rank of several under torchrun / mhc launch
  if (a.str("resume").empty()) {
    const Settings s = fresh_settings(a);
    s.model_config(2);  // reject a bad model before any data is read
    if (environment.rank == 0) replace_earlier_run(s.str("out"), a.on("overwrite"));
    return train::run_training(s, "", environment);
  }
  if (a.given("preset") || a.given("config"))
    throw std::invalid_argument("mhc train: --resume takes the run's own settings; drop --preset/--config");
  const std::string resume_from = train::resolve_checkpoint(a.str("resume"));
  Settings s = train::read_run_info(resume_from).settings;
  const Settings saved = s;
  std::vector<std::string> fixed_given;
  for (const auto& spec : train::setting_specs()) {
    if (!a.given(spec.name)) continue;
    s.values[spec.name] = a.str(spec.name);
    if (!spec.run) fixed_given.push_back(spec.name);
  }
  if (const std::string differing = differences(saved, s, fixed_given); !differing.empty())
    throw std::invalid_argument("mhc train: --resume " + a.str("resume") + " contradicts the checkpoint: " + differing);
  if (!a.given("out"))
    s.values["out"] = fs::is_directory(a.str("resume")) ? a.str("resume") : fs::path(resume_from).parent_path().string();
  // The pipeline layout belongs to the launch, as WORLD_SIZE does: a resumed run takes the one it is
  // given (default: none), not its checkpoint's.
  if (!a.given("pipeline-stages"))
    for (const auto& spec : train::setting_specs())
      if (spec.name == "pipeline-stages") s.values[spec.name] = spec.default_value;
  return train::run_training(s, resume_from, environment);
}

int sample(const std::vector<std::string>& argv) {
  Args a("mhc sample", "Continue a prompt with a trained model.");
  declare_checkpoint_flag(a);
  a.flag("prompt", "The", "text to continue")
      .flag("tokens", "100", "tokens to generate")
      .flag("temperature", "0.8", "softmax temperature (0: greedy)")
      .flag("top-k", "40", "sample among the k most likely tokens (0: all)")
      .flag("seed", "1", "sampling seed");
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  auto run = train::load_run(run_to_read(a).checkpoint);
  const auto ids = train::generate(run.model, run.tokenizer->encode_text(a.str("prompt")), a.integer("tokens", 0, 1 << 20),
                                   a.real("temperature", 0, 100), a.integer("top-k", 0, 1 << 30),
                                   static_cast<uint64_t>(a.integer("seed", 0, INT64_MAX)));
  std::cout << run.tokenizer->decode(ids) << std::endl;
  return 0;
}

int eval(const std::vector<std::string>& argv) {
  Args a("mhc eval", "Validation loss and perplexity of a trained model on its run's validation split.");
  declare_checkpoint_flag(a);
  a.flag("data-dir", "", "where the corpus and token caches are (default: the run's)")
      .flag("batches", "0", "batches to evaluate (0: the whole validation split)");
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  const RunToRead target = run_to_read(a);
  auto run = train::load_run(target.checkpoint);
  const auto corpus = train::run_corpus(run, a.str("data-dir"), target.threads);
  const data::WindowSampler val(corpus.val, run.model->config().seq_len, 0, "validation");
  const double loss =
      train::evaluate(run.model, val, run.settings.integer("batch", 1, 1 << 20), a.integer("batches", 0, 1 << 30));
  std::cout << "step " << run.step << ": validation loss " << loss << " nats, perplexity " << std::exp(loss) << " ("
            << val.windows() << " windows of " << run.model->config().seq_len << " tokens)" << std::endl;
  return 0;
}

}  // namespace mhc::cli
