// The training loop: data -> GPT -> AdamW, with evaluation, metrics, checkpoints, exact resume,
// non-finite step handling, and a clean stop on SIGINT/SIGTERM.
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mhc/diag.h"
#include "mhc/distributed.h"
#include "mhc/files.h"
#include "mhc/train.h"

namespace fs = std::filesystem;

namespace mhc::train {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> stop_signal{0};
void request_stop(int signal) { stop_signal = signal; }

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

std::string short_count(double v) {
  if (v >= 1e6) return fixed(v / 1e6, 1) + "M";
  if (v >= 1e3) return fixed(v / 1e3, 1) + "k";
  return fixed(v, 0);
}

std::string duration(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  return s >= 60 ? std::to_string(s / 60) + "m" + (s % 60 < 10 ? "0" : "") + std::to_string(s % 60) + "s"
                 : std::to_string(s) + "s";
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

// A positive whole-number setting of the checkpoint's config.
int64_t config_count(const std::string& path, const Settings& settings, const std::string& name) {
  try {
    return settings.integer(name, 1, INT64_MAX);
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

// What resuming or loading a run reads besides the model's weights.
struct RunState : RunInfo {
  int64_t data_position = 0, bad_steps = 0, adam_steps = 0;
  std::unique_ptr<data::Tokenizer> tokenizer;
};

// A lower bound on a GPT's parameter count from its settings alone — the embedding, the head and
// each block's attention and MLP matrices — in double, as absurd settings overflow int64.
double least_parameters(const GPTConfig& c) {
  const double dim = static_cast<double>(c.dim);
  return 2.0 * static_cast<double>(c.vocab) * dim +
         static_cast<double>(c.layers) * (4.0 * dim * dim + 3.0 * dim * static_cast<double>(c.mlp_hidden()));
}

RunState read_run_state(const std::string& path, const Checkpoint& c) {
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
    refuse(path, "metadata 'config' describes a model of at least " + short_count(least) + " parameters, but its model/ tensors hold " +
                     short_count(static_cast<double>(held)));
  return state;
}

// Parameters by name, and the checkpoint tensors they map to ("model/<name>").
void restore_model(GPT& model, const Checkpoint& checkpoint, const std::string& path) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) p.value().copy_(checkpoint_tensor(path, checkpoint, "model/" + p.key(), p.value()));
}

// Keeps the metrics of steps <= step (a resumed run re-logs what came after its checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    try {
      if (nlohmann::json::parse(line).at("step").get<int64_t>() <= step) kept += line + "\n";
    } catch (const std::exception&) {  // a line cut by a crash: drop it
    }
  }
  write_file_atomic(path, kept);
}

// One line per step on a pipe; an updating bar with the ETA on a terminal.
class Progress {
 public:
  explicit Progress(int64_t total) : total_(total), tty_(::isatty(STDOUT_FILENO)) {}
  void step(int64_t step, double loss, const double* val, double norm, double lr, double ms, double tokens_per_s,
            double eta_s, bool skipped) {
    std::ostringstream s;
    s << "step " << step << "/" << total_ << " | loss " << fixed(loss, 3);
    if (val) s << " | val " << fixed(*val, 3);
    s << " | norm " << fixed(norm, 2) << " | lr " << std::setprecision(2) << lr << " | " << fixed(ms, 0) << " ms | "
      << short_count(tokens_per_s) << " tok/s";
    if (skipped) s << " | skipped (non-finite)";
    if (!tty_) {
      std::cout << s.str() << std::endl;
      return;
    }
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(total_, 1));
    std::cout << "\r\033[K[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] " << s.str()
              << " | ETA " << duration(eta_s) << (val || step == total_ ? "\n" : "") << std::flush;
  }
  void note(const std::string& line) { std::cout << (tty_ ? "\r\033[K" : "") << line << std::endl; }

 private:
  int64_t total_;
  bool tty_;
};

}  // namespace

double evaluate(GPT& model, const data::WindowSampler& val, int64_t batch, int64_t batches) {
  torch::NoGradGuard no_grad;
  const int64_t windows = batches > 0 ? std::min(val.windows(), batch * batches) : val.windows();
  double total = 0;
  for (int64_t first = 0; first < windows; first += batch) {
    const int64_t count = std::min(batch, windows - first);
    auto [x, y] = val.ordered(first, count);
    total += model->loss(x, y).item<double>() * static_cast<double>(count);
  }
  return total / static_cast<double>(windows);
}

std::vector<int32_t> generate(GPT& model, std::vector<int32_t> tokens, int64_t count, double temperature,
                              int64_t top_k, uint64_t seed) {
  torch::NoGradGuard no_grad;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int64_t context = model->config().seq_len;
  if (tokens.empty()) tokens.push_back(0);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(tokens.size()) - context);
    std::vector<int64_t> window(tokens.begin() + start, tokens.end());
    const torch::Tensor x = torch::tensor(window, torch::kLong).view({1, -1});
    torch::Tensor logits = model->forward(x).select(1, x.size(1) - 1).squeeze(0).to(torch::kDouble);
    int32_t next = 0;
    if (temperature <= 0) {
      next = static_cast<int32_t>(logits.argmax().item<int64_t>());
    } else {
      if (top_k > 0 && top_k < logits.size(0)) {
        const double kth = std::get<0>(logits.topk(top_k)).min().item<double>();
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      const torch::Tensor probs = (logits / temperature).softmax(0).cumsum(0);
      const double u = uniform(rng) * probs[-1].item<double>();
      next = static_cast<int32_t>((probs < u).sum().item<int64_t>());
      next = std::min<int32_t>(next, static_cast<int32_t>(logits.size(0) - 1));
    }
    tokens.push_back(next);
  }
  return tokens;
}

RunInfo read_run_info(const std::string& checkpoint_path) {
  return run_info_of(checkpoint_path, read_checkpoint_metadata(checkpoint_path));
}

LoadedRun load_run(const std::string& checkpoint_path) {
  const Checkpoint c = load_checkpoint(checkpoint_path);
  RunState state = read_run_state(checkpoint_path, c);
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
                               s.integer("vocab", 2, 1 << 20), threads, std::move(run.tokenizer));
}


StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<torch::Tensor()>& micro_batch_loss, int64_t accum, double clip, double lr,
                      dist::Group* group) {
  double loss_sum = 0;
  for (int64_t micro = 0; micro < accum; ++micro) {
    const torch::Tensor loss = micro_batch_loss() / static_cast<double>(accum);
    loss.backward();
    loss_sum += loss.item<double>();
  }
  double all_reduce_seconds = 0;
  if (group && group->world_size() > 1) {
    const auto t0 = Clock::now();
    std::vector<torch::Tensor> shared;
    for (const auto& p : parameters) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // every rank's buffer has one layout
      shared.push_back(p.grad());
    }
    const torch::Tensor loss = torch::tensor({loss_sum}, torch::kDouble);
    shared.push_back(loss);
    group->average(shared);
    loss_sum = loss.item<double>();
    all_reduce_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  std::vector<torch::Tensor> squares;  // summed on the device: one synchronisation, not one per tensor
  for (const auto& p : parameters)
    if (p.grad().defined()) squares.push_back(p.grad().pow(2).sum().to(torch::kDouble));
  const double norm = squares.empty() ? 0.0 : std::sqrt(torch::stack(squares).sum().item<double>());
  const bool finite = std::isfinite(loss_sum) && std::isfinite(norm);
  if (finite) {
    if (clip > 0 && norm > clip)
      for (const auto& p : parameters)
        if (p.grad().defined()) p.grad().mul_(clip / norm);
    optimizer.step(lr);
  }
  for (const auto& p : parameters)
    if (p.grad().defined()) p.grad().zero_();
  return {loss_sum, norm, finite, all_reduce_seconds};
}

int run_training(const Settings& s, const std::string& resume_from, const dist::Environment& environment) {
  const int threads = static_cast<int>(s.integer("threads", 1, 1024));
  torch::set_num_threads(threads);
  const std::string out = s.str("out");
  const bool leader = environment.rank == 0;
  std::optional<FolderLock> lock;  // one run at a time writes into `out`
  if (leader) {
    ensure_writable_dir(out);
    lock.emplace(out);
    for (const auto& e : fs::directory_iterator(out)) {  // left by a run that was killed while writing
      const std::string target = temporary_target(e.path().filename().string());
      if (is_checkpoint_file_name(target) || target == kLatestCheckpoint || target == "config.json" || target == "metrics.jsonl")
        fs::remove(e.path());
    }
  }

  const int64_t steps = s.integer("steps", 1, int64_t(1) << 40), batch = s.integer("batch", 1, 1 << 20),
                accum = s.integer("accum", 1, 1 << 20), warmup = s.integer("warmup", 0, INT64_MAX),
                eval_every = s.integer("eval-every", 0, INT64_MAX), eval_batches = s.integer("eval-batches", 0, 1 << 30),
                ckpt_every = s.integer("ckpt-every", 0, INT64_MAX), keep = s.integer("keep", 1, 1 << 20),
                stop_after = s.integer("stop-after", 0, INT64_MAX), max_bad = s.integer("max-bad-steps", 1, 1 << 20),
                sample_tokens = s.integer("sample-tokens", 0, 1 << 20), seed = s.integer("seed", 0, INT64_MAX),
                diag_every = s.integer("diag-every", 0, INT64_MAX), diag_batch = s.integer("diag-batch", 1, 1 << 20);
  const double lr = s.real("lr", 0, 1e30), min_lr = s.real("min-lr", 0, 1e30), clip = s.real("clip", 0, 1e30);
  AdamW::Options adam{s.real("beta1", 0, 0.999999), s.real("beta2", 0, 0.999999), 1e-8, s.real("weight-decay", 0, 1e3)};
  const int world = environment.world_size;
  if (batch % world != 0)
    throw std::invalid_argument("--batch " + std::to_string(batch) + " does not split over WORLD_SIZE=" +
                                std::to_string(world) + " ranks (the batch is global: accepted, a multiple of " +
                                std::to_string(world) + ")");
  const int64_t rank_batch = batch / world;
  const torch::Device device = parse_device(s.str("device"));
  if (device.is_cuda() && world > 1)
    throw std::invalid_argument("--device " + s.str("device") + " with WORLD_SIZE=" + std::to_string(world) +
                                ": data-parallel training exchanges CPU tensors over Gloo; NCCL for CUDA is not wired "
                                "in yet (accepted: --device cpu, or one rank)");
  // What defines the run must agree on every rank (run settings such as --out may differ); numbers
  // in config.json's form, so that 0.001 and 1e-3 agree.
  dist::Group::SharedSettings shared_settings;
  const auto config = nlohmann::json::parse(s.to_json());
  for (const auto& spec : setting_specs())
    if (!spec.run) {
      const auto& value = config.at(spec.name);
      shared_settings.emplace_back("--" + spec.name, value.is_string() ? value.get<std::string>() : value.dump());
    }
  dist::Group group(environment, std::chrono::milliseconds(static_cast<int64_t>(s.real("dist-timeout", 0.001, 1e6) * 1e3)),
                    shared_settings);

  // The checkpoint first: its tokenizer must be the one the data is encoded with.
  Checkpoint resumed;
  RunState state;
  if (!resume_from.empty()) {
    resumed = load_checkpoint(resume_from);
    state = read_run_state(resume_from, resumed);
  }
  std::unique_ptr<data::Tokenizer> tokenizer = std::move(state.tokenizer);
  auto tokenize = [&] {
    return data::tokenize_corpus(s.str("data"), s.str("data-dir"), s.str("tokenizer"), s.integer("vocab", 2, 1 << 20),
                                 threads, std::move(tokenizer));
  };
  // Rank 0 trains the tokenizer and writes the token cache; the others then read it.
  data::TokenizedCorpus corpus;
  if (leader) corpus = tokenize();
  group.barrier();
  if (!leader) corpus = tokenize();
  const data::WindowSampler train_windows(corpus.train, s.integer("seq-len", 1, 1 << 20), seed, "training");
  const data::WindowSampler val_windows(corpus.val, s.integer("seq-len", 1, 1 << 20), seed, "validation");

  torch::manual_seed(seed);
  GPT model(s.model_config(corpus.tokenizer->vocab_size()));
  model->to(device);  // before the optimizer takes its state shaped (and placed) like the parameters
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  AdamW optimizer(named, adam);
  const std::vector<torch::Tensor> parameters = model->parameters();
  const bool has_connections = !model->connections().empty();  // the plain residual has nothing to diagnose
  const torch::Tensor probe = diag::probe_tokens(val_windows, diag_batch);

  int64_t step = state.step, position = state.data_position, bad_total = state.bad_steps;
  if (!resume_from.empty()) {
    restore_model(model, resumed, resume_from);
    for (const auto& [name, moment] : optimizer.state()) checkpoint_tensor(resume_from, resumed, name, moment);
    optimizer.load(resumed.tensors, state.adam_steps);
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(resumed.tensors.at("rng/torch_cpu"));  // checked by read_run_state
    resumed = {};
  }
  group.broadcast(parameters);  // rank 0's weights everywhere, fresh or resumed
  const std::string metrics_path = out + "/metrics.jsonl";
  std::ofstream metrics;
  if (leader) {
    write_file_atomic(out + "/config.json", s.to_json());
    if (resume_from.empty()) write_file_atomic(metrics_path, "");
    else truncate_metrics(metrics_path, step);
    metrics.open(metrics_path, std::ios::app);
    if (!metrics) throw std::runtime_error("cannot open " + metrics_path + ": " + std::strerror(errno));
  }

  auto save = [&] {
    Checkpoint c;
    for (const auto& [name, p] : named) c.tensors["model/" + name] = p;
    for (const auto& [name, t] : optimizer.state()) c.tensors[name] = t;
    const std::string tok = corpus.tokenizer->serialize();
    c.tensors["tokenizer"] = torch::from_blob(const_cast<char*>(tok.data()), {static_cast<int64_t>(tok.size())}, torch::kByte).clone();
    c.tensors["rng/torch_cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    c.metadata = {{"step", std::to_string(step)}, {"data_position", std::to_string(position)},
                  {"bad_steps", std::to_string(bad_total)}, {"adam_steps", std::to_string(optimizer.steps_taken())},
                  {"tokenizer", corpus.tokenizer->kind()}, {"config", s.to_json()}};
    const std::string name = checkpoint_file_name(step);
    save_checkpoint(out + "/" + name, c);
    point_symlink_atomic(out + "/" + kLatestCheckpoint, name);
    // Older checkpoints beyond --keep go only after `latest` points at the new one.
    std::vector<std::string> old;
    for (const auto& e : fs::directory_iterator(out)) {
      const std::string f = e.path().filename().string();
      if (is_checkpoint_file_name(f) && f != name) old.push_back(f);
    }
    // Oldest first: by step, i.e. by the digits' length, then lexically.
    std::sort(old.begin(), old.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    const size_t keep_old = static_cast<size_t>(keep - 1);
    for (size_t i = 0; i + keep_old < old.size(); ++i) fs::remove(fs::path(out) / old[i]);
    return out + "/" + name;
  };

  stop_signal = 0;
  auto previous_int = std::signal(SIGINT, request_stop), previous_term = std::signal(SIGTERM, request_stop);
  struct RestoreSignals {
    decltype(previous_int) i, t;
    ~RestoreSignals() { std::signal(SIGINT, i), std::signal(SIGTERM, t); }
  } restore{previous_int, previous_term};

  if (leader)
    std::cout << "train: " << s.str("residual") << " n=" << s.str("streams") << ", " << s.str("layers")
              << " blocks x C=" << s.str("dim") << ", " << model->parameters().size() << " tensors / "
              << [&] { int64_t c = 0; for (auto& p : model->parameters()) c += p.numel(); return short_count(c); }()
              << " parameters, vocab " << corpus.tokenizer->vocab_size() << ", "
              << (world > 1 ? std::to_string(world) + " ranks x " : "") << threads << " threads, " << device << ", "
              << s.str("dtype") << " -> " << out
              << (resume_from.empty() ? "" : " (resumed at step " + std::to_string(step) + ")") << std::endl;

  // The global batch is windows [position, position + batch) of the shuffled order; this rank's
  // share is its rank_batch-sized slice, so the data order does not depend on the world size.
  const auto next_loss = [&] {
    auto [x, y] = train_windows.batch(position + group.rank() * rank_batch, rank_batch);
    position += batch;
    return model->loss(x, y);
  };
  Progress progress(steps);
  const int64_t tokens_per_step = batch * accum * model->config().seq_len;
  int64_t bad_in_row = 0;
  double last_val = NAN, seconds_training = 0;
  const int64_t first_step = step;
  const int64_t last_step = stop_after > 0 ? std::min(stop_after, steps) : steps;
  bool stopping = stop_signal != 0;
  while (step < last_step && !stopping) {
    const auto t0 = Clock::now();
    const double rate = learning_rate(step, steps, warmup, lr, min_lr);
    const StepResult r = train_step(optimizer, parameters, next_loss, accum, clip, rate, &group);
    const double loss_sum = r.loss, norm = r.grad_norm;
    const bool finite = r.finite;
    bad_in_row = finite ? 0 : bad_in_row + 1;
    bad_total += finite ? 0 : 1;
    ++step;
    stopping = stop_signal != 0;
    if (world > 1) {  // a signal to any rank stops every rank after the same step
      const torch::Tensor stop = torch::tensor({stopping ? 1 : 0}, torch::kInt);
      group.sum({stop});
      stopping = stop.item<int>() != 0;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    seconds_training += seconds;
    if (!leader) {
      if (bad_in_row >= max_bad) return 1;  // rank 0 reports it
      continue;
    }

    const bool eval_now = step == last_step || (eval_every > 0 && step % eval_every == 0);
    if (eval_now) last_val = evaluate(model, val_windows, batch, eval_batches);
    nlohmann::ordered_json line = {{"step", step}, {"loss", finite ? loss_sum : NAN}, {"lr", rate},
                                   {"grad_norm", norm}, {"tokens_per_s", tokens_per_step / seconds},
                                   {"step_ms", seconds * 1e3}, {"skipped", !finite}, {"bad_steps", bad_total}};
    if (!std::isfinite(loss_sum)) line["loss"] = nullptr;
    if (!std::isfinite(norm)) line["grad_norm"] = nullptr;
    if (world > 1) line["all_reduce_ms"] = r.all_reduce_seconds * 1e3;
    if (eval_now) line["val_loss"] = last_val;
    // No autograd and no randomness: the diagnostics cannot change the training that follows.
    if (diag_every > 0 && has_connections && (step % diag_every == 0 || step == last_step)) {
      const auto d0 = Clock::now();
      line["diag"] = nlohmann::ordered_json::parse(diag::to_json(diag::probe(model, probe)));
      line["diag_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - d0).count();
    }
    if (!(metrics << line.dump() << "\n" << std::flush))  // a full disk must not lose metrics silently
      throw std::runtime_error("cannot write " + metrics_path + ": " + std::strerror(errno) + " (step " +
                               std::to_string(step) + "'s metrics would be lost)");
    const double eta = seconds_training / static_cast<double>(step - first_step) * static_cast<double>(last_step - step);
    progress.step(step, loss_sum, eval_now ? &last_val : nullptr, norm, rate, seconds * 1e3, tokens_per_step / seconds,
                  eta, !finite);

    if (bad_in_row >= max_bad)
      throw std::runtime_error("training diverged: the loss or gradient was not finite for " + std::to_string(bad_in_row) +
                               " steps in a row (last at step " + std::to_string(step) + "; try a lower --lr)");
    if (step == last_step || stopping || (ckpt_every > 0 && step % ckpt_every == 0)) save();
  }
  if (world > 1) {
    const bool same = group.same_everywhere(parameters);
    if (!same) throw std::runtime_error("the ranks' parameters differ after step " + std::to_string(step));
    if (leader) progress.note("parameters identical on all " + std::to_string(world) + " ranks");
  }
  if (!leader) return 0;
  if (stopping) {
    progress.note("stopped by " + (stop_signal != 0 ? "signal " + std::to_string(stop_signal.load()) : "a signal to another rank") +
                  " at step " + std::to_string(step) +
                  "; checkpoint saved (resume: mhc train --resume " + out + ")");
    return 0;
  }
  if (step >= last_step && std::isfinite(last_val)) {
    const double ln_vocab = std::log(static_cast<double>(corpus.tokenizer->vocab_size()));
    progress.note("done: step " + std::to_string(step) + ", validation loss " + fixed(last_val, 3) + " nats (ln vocab = " +
                  fixed(ln_vocab, 3) + ", " + fixed(ln_vocab - last_val, 2) + " below), perplexity " +
                  fixed(std::exp(last_val), 1));
  }
  if (sample_tokens > 0) {
    const std::string prompt = "The";
    const auto ids = generate(model, corpus.tokenizer->encode_text(prompt), sample_tokens, 0.8, 40, seed);
    progress.note("sample: " + corpus.tokenizer->decode(ids));
  }
  return 0;
}

}  // namespace mhc::train
