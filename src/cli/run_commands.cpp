// `mhc train`, `mhc sample` and `mhc eval`: a run's settings from the flags (run_settings.h), then
// the trainer (mhc/trainer.h), or a trained run read back and asked for text or its loss.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "args.h"
#include "commands.h"
#include "mhc/checkpoint.h"
#include "mhc/files.h"
#include "mhc/format.h"
#include "mhc/parse.h"
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

namespace {

// The prompts' text: --prompt-file's lines (blank ones skipped), or --prompt once per --batch row.
std::vector<std::string> prompt_texts(const Args& a) {
  std::vector<std::string> texts;
  if (a.str("prompt-file").empty()) return std::vector<std::string>(a.integer("batch"), a.str("prompt"));
  std::istringstream lines(read_input_file(a.str("prompt-file"), "--prompt-file", 64 << 20));
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) {
      require_utf8("--prompt-file line " + std::to_string(texts.size() + 1), line);
      texts.push_back(line);
    }
  if (texts.empty()) throw std::invalid_argument("--prompt-file " + a.str("prompt-file") + " holds no prompt (accepted: one per line)");
  return texts;
}

// Prints one sequence's text as its tokens arrive. A token's text is what it adds to the decoded
// text of the few tokens before it: a token may be part of a character or change how the one
// before it decodes, and decoding the whole sequence again for each token would be quadratic.
class StreamedText {
 public:
  StreamedText(const data::Tokenizer& tokenizer, std::vector<int32_t> prompt)
      : tokenizer_(tokenizer), ids_(std::move(prompt)) {
    std::cout << tokenizer.decode(ids_) << std::flush;
  }
  void add(int32_t token) {
    ids_.push_back(token);
    const auto from = ids_.end() - std::min<std::ptrdiff_t>(kContext + 1, static_cast<std::ptrdiff_t>(ids_.size()));
    const std::string before = tokenizer_.decode({from, ids_.end() - 1}), after = tokenizer_.decode({from, ids_.end()});
    if (after.compare(0, before.size(), before) == 0) std::cout << after.substr(before.size()) << std::flush;
  }

 private:
  static constexpr std::ptrdiff_t kContext = 8;
  const data::Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
};

}  // namespace

int sample(const std::vector<std::string>& argv) {
  Args a("mhc sample",
         "Continue prompts with a trained model, with a KV cache. When a sequence fills the context (--seq-len\n"
         "of the run), its newest half is run again as a prompt and generation goes on.");
  declare_checkpoint_flag(a);
  a.flag("prompt", "The", "text to continue")
      .flag("prompt-file", "", "a file of prompts, one per line (instead of --prompt)")
      .flag("batch", "1", "sequences decoded together (with --prompt: that many samples of it)", IntegerRange{1, 256})
      .flag("tokens", "100", "tokens to generate per sequence", IntegerRange{0, 1 << 20})
      .flag("temperature", "0.8", "softmax temperature (0: greedy)", RealRange{0, 100})
      .flag("top-k", "40", "sample among the k most likely tokens (0: all)", IntegerRange{0, 1 << 30})
      .flag("seed", "1", "sampling seed (sequence b uses seed + b)", IntegerRange{0, INT64_MAX});
  a.toggle("no-cache", "run each sequence's whole window for every token (the reference path, slow)");
  declare_threads_flag(a);
  if (!a.parse(argv)) return 0;
  const std::vector<std::string> texts = prompt_texts(a);
  auto run = train::load_run(run_to_read(a).checkpoint);
  train::SamplingOptions options;
  options.tokens = a.integer("tokens"), options.temperature = a.real("temperature"), options.top_k = a.integer("top-k");
  options.seed = static_cast<uint64_t>(a.integer("seed")), options.kv_cache = !a.on("no-cache");
  const auto batch = static_cast<size_t>(a.integer("batch"));
  for (size_t first = 0; first < texts.size(); first += batch) {
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = first; i < std::min(texts.size(), first + batch); ++i) prompts.push_back(run.tokenizer->encode_text(texts[i]));
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::vector<int32_t>> sequences;
    if (prompts.size() == 1) {  // one sequence: its text as it comes
      StreamedText text(*run.tokenizer, prompts[0]);
      sequences = train::generate(run.model, prompts, options, [&](int64_t, int32_t token) { text.add(token); });
      std::cout << std::endl;
    } else {
      sequences = train::generate(run.model, prompts, options);
      for (const auto& ids : sequences) std::cout << run.tokenizer->decode(ids) << "\n\n";
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double made = static_cast<double>(options.tokens) * static_cast<double>(prompts.size());
    std::cerr << "sample: " << Format::automatic()(made) << " tokens in " << Format::significant(3)(seconds) << " s ("
              << Format::fixed(0)(made / seconds) << " tokens/s, " << (options.kv_cache ? "KV cache" : "no cache")
              << ", batch " << prompts.size() << ")" << std::endl;
  }
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
