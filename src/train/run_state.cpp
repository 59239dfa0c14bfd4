// A run's checkpoint schema: what run_training writes and every check on reading it back, side by
// side. The file itself (format, checksum, atomic write) is src/train/checkpoint.cpp's.
#include "mhc/run_state.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "mhc/files.h"
#include "mhc/format.h"

namespace fs = std::filesystem;

namespace mhc::train {

namespace {

// Removes the folder's checkpoints other than `newest`, oldest first, until `keep` remain in all.
void remove_old_checkpoints(const std::string& out, const std::string& newest, int64_t keep) {
  std::vector<std::string> old;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string f = e.path().filename().string();
    if (is_checkpoint_file_name(f) && f != newest) old.push_back(f);
  }
  // Oldest first: by step, i.e. by the digits' length, then lexically.
  std::sort(old.begin(), old.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  const size_t keep_old = static_cast<size_t>(keep - 1);
  for (size_t i = 0; i + keep_old < old.size(); ++i) fs::remove(fs::path(out) / old[i]);
}

// ---- Reading a run's checkpoint: every key checked in one place, errors naming the file and key --

[[noreturn]] void refuse(const std::string& path, const std::string& what) {
  throw std::invalid_argument("checkpoint " + path + ": " + what);
}

const std::string& metadata_value(const std::string& path, const std::map<std::string, std::string>& metadata,
                                  const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) refuse(path, "no metadata '" + key + "' (not written by mhc train?)");
  return it->second;
}

// A count (steps, windows): a whole number in [0, max].
int64_t metadata_count(const std::string& path, const std::map<std::string, std::string>& metadata,
                       const std::string& key, int64_t max) {
  const std::string& text = metadata_value(path, metadata, key);
  int64_t value = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 0 || value > max)
    refuse(path, "metadata '" + key + "' is '" + text + "', not a whole number in [0, " + std::to_string(max) + "]");
  return value;
}

// A whole-number setting of the checkpoint's config, in its range.
int64_t config_count(const std::string& path, const Settings& settings, const std::string& name) {
  try {
    return settings.integer(name);
  } catch (const std::invalid_argument& e) {
    refuse(path, std::string("metadata 'config': ") + e.what());
  }
}

// The run's settings and step, from the metadata alone.
RunInfo run_info_of(const std::string& path, const std::map<std::string, std::string>& metadata) {
  const std::string& config = metadata_value(path, metadata, "config");
  RunInfo info;
  try {
    info.settings = Settings::from_json(config);
    info.settings.model_config(2);  // every model setting in range
  } catch (const nlohmann::json::exception&) {
    refuse(path, "metadata 'config' is not a JSON object of settings");
  } catch (const std::invalid_argument& e) {
    refuse(path, std::string("metadata 'config': ") + e.what());
  }
  info.step = metadata_count(path, metadata, "step", config_count(path, info.settings, "steps"));
  return info;
}

// A tensor the run needs, of the dtype and shape it must have ("like"), and finite when it is
// floating point: a checkpoint is never the source of a non-finite weight.
const torch::Tensor& checkpoint_tensor(const std::string& path, const Checkpoint& c, const std::string& key,
                                       const torch::Tensor& like) {
  const auto it = c.tensors.find(key);
  const auto description = [](const torch::Tensor& t) {
    return std::string(c10::toString(t.scalar_type())) + " " + c10::str(t.sizes());
  };
  if (it == c.tensors.end()) refuse(path, "no tensor '" + key + "' (" + description(like) + ")");
  if (it->second.scalar_type() != like.scalar_type() || it->second.sizes() != like.sizes())
    refuse(path, "tensor '" + key + "' is " + description(it->second) + ", expected " + description(like));
  if (it->second.is_floating_point() && !torch::isfinite(it->second).all().item<bool>())
    refuse(path, "tensor '" + key + "' holds non-finite values");
  return it->second;
}

// A lower bound on a GPT's parameter count from its settings alone — the embedding, the head and
// each block's attention and MLP matrices — in double, as absurd settings overflow int64.
double least_parameters(const GPTConfig& c) {
  const double dim = static_cast<double>(c.dim);
  return 2.0 * static_cast<double>(c.vocab) * dim +
         static_cast<double>(c.layers) * (4.0 * dim * dim + 3.0 * dim * static_cast<double>(c.mlp_hidden()));
}

// Parameters by name, and the checkpoint tensors they map to ("model/<name>").
void restore_model(GPT& model, const Checkpoint& checkpoint, const std::string& path) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) p.value().copy_(checkpoint_tensor(path, checkpoint, "model/" + p.key(), p.value()));
}

}  // namespace

// ---- Writing ------------------------------------------------------------------------------------

void save_run_state(const std::string& out, int64_t keep, const Settings& settings, int64_t step,
                    int64_t data_position, int64_t bad_steps, const GPT& model, const AdamW& optimizer,
                    const data::Tokenizer& tokenizer) {
  Checkpoint c;
  for (const auto& p : model->named_parameters()) c.tensors["model/" + p.key()] = p.value();
  for (const auto& [name, t] : optimizer.state()) c.tensors[name] = t;
  const std::string tok = tokenizer.serialize();
  c.tensors["tokenizer"] = torch::from_blob(const_cast<char*>(tok.data()), {static_cast<int64_t>(tok.size())}, torch::kByte).clone();
  c.tensors["rng/torch_cpu"] = at::detail::getDefaultCPUGenerator().get_state();
  c.metadata = {{"step", std::to_string(step)}, {"data_position", std::to_string(data_position)},
                {"bad_steps", std::to_string(bad_steps)}, {"adam_steps", std::to_string(optimizer.steps_taken())},
                {"tokenizer", tokenizer.kind()}, {"config", settings.to_json()}};
  const std::string name = checkpoint_file_name(step);
  save_checkpoint(out + "/" + name, c);
  point_symlink_atomic(out + "/" + kLatestCheckpoint, name);
  // Older checkpoints beyond --keep go only after `latest` points at the new one.
  remove_old_checkpoints(out, name, keep);
}

// ---- Reading ------------------------------------------------------------------------------------

RunState load_run_state(const std::string& path, const Checkpoint& c) {
  RunState state;
  static_cast<RunInfo&>(state) = run_info_of(path, c.metadata);
  const Settings& s = state.settings;
  state.bad_steps = metadata_count(path, c.metadata, "bad_steps", state.step);
  // Every step but a skipped one is one AdamW step.
  state.adam_steps = metadata_count(path, c.metadata, "adam_steps", state.step - state.bad_steps);
  if (state.adam_steps != state.step - state.bad_steps)
    refuse(path, "metadata 'adam_steps' is " + std::to_string(state.adam_steps) + ", expected step - bad_steps = " +
                     std::to_string(state.step - state.bad_steps));
  // Each step consumes batch x accum windows of the endless shuffled order.
  int64_t windows = 0;
  if (__builtin_mul_overflow(state.step, config_count(path, s, "batch"), &windows) ||
      __builtin_mul_overflow(windows, config_count(path, s, "accum"), &windows))
    refuse(path, "metadata 'step' is too large for its batch and accum");
  state.data_position = metadata_count(path, c.metadata, "data_position", INT64_MAX);
  if (state.data_position != windows)
    refuse(path, "metadata 'data_position' is " + std::to_string(state.data_position) + ", expected step x batch x accum = " +
                     std::to_string(windows));

  const std::string& kind = metadata_value(path, c.metadata, "tokenizer");
  const auto bytes = c.tensors.find("tokenizer");
  if (bytes == c.tensors.end() || bytes->second.scalar_type() != torch::kByte || bytes->second.dim() != 1)
    refuse(path, "no tensor 'tokenizer' of bytes");
  try {
    state.tokenizer = data::tokenizer_from_bytes(
        kind, std::string(static_cast<const char*>(bytes->second.data_ptr()), bytes->second.numel()));
  } catch (const std::exception& e) {
    refuse(path, "metadata 'tokenizer' and tensor 'tokenizer' are not a tokenizer: " + std::string(e.what()));
  }
  const torch::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  checkpoint_tensor(path, c, "rng/torch_cpu", rng);

  // The settings must not claim a model larger than the tensors the file holds: that model would be
  // allocated (tens of GB for a file of a few hundred KB) before restore_model could refuse it.
  int64_t held = 0;
  for (const auto& [name, t] : c.tensors)
    if (name.rfind("model/", 0) == 0) held += t.numel();
  const double least = least_parameters(s.model_config(state.tokenizer->vocab_size()));
  if (least > static_cast<double>(held))
    refuse(path, "metadata 'config' describes a model of at least " + Format::count()(least) + " parameters, but its model/ tensors hold " +
                     Format::count()(static_cast<double>(held)));
  return state;
}

void restore_training(GPT& model, AdamW& optimizer, const Checkpoint& checkpoint, const RunState& state,
                      const std::string& path) {
  restore_model(model, checkpoint, path);
  for (const auto& [name, moment] : optimizer.state()) checkpoint_tensor(path, checkpoint, name, moment);
  optimizer.load(checkpoint.tensors, state.adam_steps);
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(checkpoint.tensors.at("rng/torch_cpu"));  // checked by load_run_state
}

RunInfo read_run_info(const std::string& checkpoint_path) {
  return run_info_of(checkpoint_path, read_checkpoint_metadata(checkpoint_path));
}

LoadedRun load_run(const std::string& checkpoint_path) {
  const Checkpoint c = load_checkpoint(checkpoint_path);
  RunState state = load_run_state(checkpoint_path, c);
  LoadedRun run;
  run.settings = state.settings;
  run.tokenizer = std::move(state.tokenizer);
  run.model = GPT(run.settings.model_config(run.tokenizer->vocab_size()));
  restore_model(run.model, c, checkpoint_path);
  run.step = state.step;
  return run;
}

data::TokenizedCorpus run_corpus(LoadedRun& run, const std::string& data_dir, int threads) {
  const Settings& s = run.settings;
  return data::tokenize_corpus(s.str("data"), data_dir.empty() ? s.str("data-dir") : data_dir, s.str("tokenizer"),
                               s.integer("vocab"), threads, std::move(run.tokenizer));
}

}  // namespace mhc::train
