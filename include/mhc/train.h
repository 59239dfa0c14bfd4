// Training: the settings of a run (presets, TOML file, flags, config.json), AdamW with a warmup +
// cosine schedule, safetensors checkpoints, and the loop that ties them to the GPT and the data.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "mhc/data.h"
#include "mhc/distributed.h"
#include "mhc/model.h"

namespace mhc::train {

// ---- Settings -----------------------------------------------------------------------------------

// One setting of a run, named as its `mhc train` flag. A resumed run may change only `run` settings;
// the others define the model, the data or the optimisation and must match the checkpoint.
struct SettingSpec {
  std::string name, default_value, help;
  char type;  // 'i' integer, 'f' real, 's' string
  bool run;
  // The value a run written before this setting existed had, if it defines the run (for run settings
  // such a run takes the default).
  std::string before_it_existed = {};
  // The name runs, config files and command lines used before it was renamed; still read as this one.
  std::string old_name = {};
};
const std::vector<SettingSpec>& setting_specs();
// --device: "cpu", "cuda", "cuda:N" (checked to exist here); throws std::invalid_argument naming the
// value and what is accepted.
torch::Device parse_device(const std::string& name);
// --dtype: "float32" or "bfloat16" (one spelling each, so that a resumed run's setting compares
// equal); throws std::invalid_argument.
torch::ScalarType parse_dtype(const std::string& name);
// The default of every --threads flag: the machine's hardware threads.
int default_threads();
// The defaults are the `tiny` preset; these are what `small` and `deep` change.
const std::map<std::string, std::map<std::string, std::string>>& presets();

// Resolved values by name (all of setting_specs()), with typed, range-checked readers whose errors
// name the flag and the accepted range.
class Settings {
 public:
  std::map<std::string, std::string> values;
  const std::string& str(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t min, int64_t max) const;
  double real(const std::string& name, double min, double max) const;
  // config.json: typed values (numbers as numbers).
  std::string to_json() const;
  static Settings from_json(const std::string& json);
  // The model the settings describe (vocab from the tokenizer); throws std::invalid_argument.
  GPTConfig model_config(int64_t vocab) const;
};
// Reads a TOML file of `name = value` lines (names as the flags); unknown keys are refused with the
// closest valid name. Throws std::invalid_argument.
std::map<std::string, std::string> read_toml(const std::string& path);

// ---- Optimiser ----------------------------------------------------------------------------------

// AdamW (Loshchilov & Hutter: decoupled weight decay). Matrices decay; vectors — norm gains, the
// connections' biases and scalar gains — do not. The state is explicit so checkpoints hold it as is.
class AdamW {
 public:
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  };
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_parameters, Options options);
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  // name -> tensor for "adam_m/<param>", "adam_v/<param>"; load() requires every one of them.
  std::map<std::string, torch::Tensor> state() const;
  void load(const std::map<std::string, torch::Tensor>& state, int64_t steps_taken);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, m, v;
    bool decay;
  };
  std::vector<Slot> slots_;
  Options options_;
  int64_t step_ = 0;
};

// Linear warmup over `warmup` steps to `peak`, then cosine to `floor` at step `total`.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak, double floor);

// One optimizer step: `accum` micro-batches from next_batch (forward, backward), the global
// gradient norm, clipping, AdamW. A non-finite loss or norm skips the update (grads are zeroed
// either way). An update that overflows a parameter is not checked here (that would cost a pass
// over the weights every step): the next loss is then non-finite, and save_checkpoint refuses to
// write the weights. The trainer and `mhc bench train` both run exactly this.
struct StepResult {
  double loss, grad_norm;
  bool finite;
  double all_reduce_seconds = 0;  // waiting for and exchanging gradients with the other ranks
};
// With a group of several ranks, the gradients and the loss are averaged over them before the norm
// (one flattened all-reduce), so every rank takes the same step.
StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<torch::Tensor()>& micro_batch_loss, int64_t accum, double clip, double lr,
                      dist::Group* group = nullptr);
// The same step with the micro-batches' passes given whole: `accumulate` runs them, leaving the
// gradients in the parameters, and returns the summed loss. `replicas` (data parallelism) averages
// the gradients and the loss; then `combine`, if given, turns this rank's loss and squared gradient
// norm into the whole model's (a pipeline's stages each hold a part: mhc/pipeline.h).
StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<double()>& accumulate, double clip, double lr, dist::Group* replicas,
                      const std::function<void(double& loss, double& squares)>& combine = {});

// ---- Checkpoints --------------------------------------------------------------------------------

// One file in the safetensors format: tensors (model/…, adam_m/…, adam_v/…, tokenizer, rng/…) and
// string metadata; metadata["format"] is kCheckpointFormat and metadata["sha256"] the digest of the
// whole file (its own 64 digits read as zeros), checked on every load.
// What a run's checkpoint holds, key by key, and how each is checked: mhc/run_state.h.
struct Checkpoint {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};
inline constexpr const char* kCheckpointFormat = "mhc-checkpoint-2";
// Writes atomically (temporary name, fsync, rename), adding "format" and "sha256" to the metadata.
// Refuses (std::runtime_error, nothing written) a floating-point tensor with a non-finite value: a
// checkpoint is never the carrier of a diverged run, and the run's earlier checkpoints stay.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);
// Throws std::invalid_argument naming the file (and the key at fault) when it is missing, not a
// regular file, truncated, not safetensors, of another format, or fails its checksum.
Checkpoint load_checkpoint(const std::string& path);
// A checkpoint's metadata (format, step, config, …) from its header alone: no tensor is read and
// the checksum is not verified. Throws std::invalid_argument like load_checkpoint.
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);
// A run folder (its `latest`: a symlink, or a regular file where a copy followed the link) or a
// checkpoint file -> the checkpoint file's path; throws std::invalid_argument saying what is there
// when it is not a checkpoint file.
std::string resolve_checkpoint(const std::string& path);

// A run folder's checkpoints are ckpt-<step, at least 8 digits>.safetensors, and `latest` is a
// symlink to the newest; --overwrite and --keep remove these names and nothing else. A run holds
// the folder's lock (FolderLock) for its whole life.
inline constexpr const char* kLatestCheckpoint = "latest";
std::string checkpoint_file_name(int64_t step);
bool is_checkpoint_file_name(const std::string& name);

// ---- The loop -----------------------------------------------------------------------------------

// Trains as the settings say, writing into settings "out"; resume_from (a checkpoint file, or
// empty) continues that run exactly. Returns the process exit status. Bad settings throw
// std::invalid_argument; a run of non-finite steps throws std::runtime_error.
//
// With an environment of several ranks (mhc/distributed.h) every rank runs this: rank 0's
// parameters are broadcast, each rank trains on its share of every global batch (--batch /
// WORLD_SIZE windows) and the gradients are averaged, so the run is the single-process run with
// the same --batch up to summation order, and its checkpoints resume on any world size. Rank 0
// alone logs, evaluates, samples and checkpoints.
int run_training(const Settings& settings, const std::string& resume_from, const dist::Environment& environment = {});

// The settings and step of a checkpoint written by run_training, from its header alone.
struct RunInfo {
  Settings settings;
  int64_t step = 0;
};
RunInfo read_run_info(const std::string& checkpoint_path);

// What sampling and evaluation need from a finished run.
struct LoadedRun {
  Settings settings;
  std::unique_ptr<data::Tokenizer> tokenizer;
  GPT model{nullptr};
  int64_t step = 0;
};
LoadedRun load_run(const std::string& checkpoint_path);
// The run's corpus tokenized with its own tokenizer, which moves into the result (data_dir empty:
// the run's).
data::TokenizedCorpus run_corpus(LoadedRun& run, const std::string& data_dir, int threads);
// Mean validation loss (nats) over `batches` batches of `batch` windows (0: the whole split).
double evaluate(GPT& model, const data::WindowSampler& val, int64_t batch, int64_t batches);
// Continues `prompt` by `tokens` tokens (temperature 0: greedy; top_k 0: no cut).
std::vector<int32_t> generate(GPT& model, std::vector<int32_t> prompt, int64_t tokens, double temperature,
                              int64_t top_k, uint64_t seed);

// A count in logs and messages: 1234567 -> "1.2M", 1234 -> "1.2k", 12 -> "12".
std::string short_count(double count);

}  // namespace mhc::train
