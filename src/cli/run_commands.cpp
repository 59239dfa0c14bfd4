// `mhc train`, `mhc sample` and `mhc eval`: a run's settings from the flags (run_settings.h), then
// the trainer (mhc/trainer.h), or a trained run read back and asked for text or its loss.
#include <cmath>
#include <filesystem>
#include <iostream>

#include "args.h"
#include "commands.h"
#include "mhc/checkpoint.h"
#include "mhc/run_log.h"
#include "mhc/run_state.h"
#include "mhc/sampling.h"
#include "mhc/trainer.h"
#include "run_settings.h"

namespace fs = std::filesystem;

namespace mhc::cli {

using train::Settings;

int train(const std::vector<std::string>& argv) {
  Args a("mhc train",
         "Train a GPT whose residual stream is the chosen variant. Settings: the preset, then --config FILE.toml\n"
         "(keys named as the flags), then the flags. --resume DIR continues a run exactly; it may change only\n"
         "the run settings (out … sample-tokens).");
  a.flag("resume", "", "a run folder (or checkpoint file) to continue");
  a.toggle("overwrite", "start afresh even if --out holds an earlier run (its checkpoints are deleted)");
  a.toggle("print-log-keys", "print the keys of metrics.jsonl's lines by role, as JSON, and exit (for scripts)");
  declare_training_flags(a);
  if (!a.parse(argv)) return 0;
  if (a.on("print-log-keys")) {
    std::cout << train::log_keys().dump() << std::endl;
    return 0;
  }

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
  if (!a.given("pipeline-stages")) s.values["pipeline-stages"] = train::setting_spec("pipeline-stages").default_value;
  return train::run_training(s, resume_from, environment);
}

int sample(const std::vector<std::string>& argv) {
  Args a("mhc sample", "Continue a prompt with a trained model.");
  declare_checkpoint_flag(a);
  a.flag("prompt", "The", "text to continue")
      .flag("tokens", "100", "tokens to generate", IntegerRange{0, 1 << 20})
      .flag("temperature", "0.8", "softmax temperature (0: greedy)", RealRange{0, 100})
      .flag("top-k", "40", "sample among the k most likely tokens (0: all)", IntegerRange{0, 1 << 30})
      .flag("seed", "1", "sampling seed", IntegerRange{0, INT64_MAX});
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  auto run = train::load_run(run_to_read(a).checkpoint);
  const auto ids = train::generate(run.model, run.tokenizer->encode_text(a.str("prompt")), a.integer("tokens"),
                                   a.real("temperature"), a.integer("top-k"),
                                   static_cast<uint64_t>(a.integer("seed")));
  std::cout << run.tokenizer->decode(ids) << std::endl;
  return 0;
}

int eval(const std::vector<std::string>& argv) {
  Args a("mhc eval", "Validation loss and perplexity of a trained model on its run's validation split.");
  declare_checkpoint_flag(a);
  a.flag("data-dir", "", "where the corpus and token caches are (default: the run's)")
      .flag("batches", "0", "batches to evaluate (0: the whole validation split)", IntegerRange{0, 1 << 30});
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  const RunToRead target = run_to_read(a);
  auto run = train::load_run(target.checkpoint);
  const auto corpus = train::run_corpus(run, a.str("data-dir"), target.threads);
  const data::WindowSampler val(corpus.val, run.model->config().seq_len, 0, "validation");
  const double loss =
      train::evaluate(run.model, val, run.settings.integer("batch"), a.integer("batches"));
  std::cout << "step " << run.step << ": validation loss " << loss << " nats, perplexity " << std::exp(loss) << " ("
            << val.windows() << " windows of " << run.model->config().seq_len << " tokens)" << std::endl;
  return 0;
}

}  // namespace mhc::cli
