// The training loop: data -> GPT -> AdamW, with evaluation, metrics, checkpoints, exact resume,
// non-finite step handling, and a clean stop on SIGINT/SIGTERM.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
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
constexpr const char* kFormat = "mhc-checkpoint-1";

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

// Parameters by name, and the checkpoint tensors they map to ("model/<name>").
void restore_model(GPT& model, const Checkpoint& checkpoint, const std::string& path) {
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    auto it = checkpoint.tensors.find("model/" + p.key());
    if (it == checkpoint.tensors.end() || it->second.sizes() != p.value().sizes())
      throw std::invalid_argument("checkpoint " + path + " does not match the model: no tensor model/" + p.key() +
                                  " of shape " + c10::str(p.value().sizes()));
    p.value().copy_(it->second);
  }
}

std::string tokenizer_bytes(const Checkpoint& c) {
  const torch::Tensor t = c.tensors.at("tokenizer");
  return std::string(static_cast<const char*>(t.data_ptr()), t.numel());
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

namespace {

void check_format(const std::string& path, const std::map<std::string, std::string>& metadata) {
  const auto format = metadata.find("format");
  if (format == metadata.end() || format->second != kFormat || metadata.count("config") == 0 || metadata.count("step") == 0)
    throw std::invalid_argument("checkpoint " + path + " was not written by mhc train (format '" +
                                (format == metadata.end() ? "" : format->second) + "', expected '" + kFormat + "')");
}

}  // namespace

RunInfo read_run_info(const std::string& checkpoint_path) {
  const auto metadata = read_checkpoint_metadata(checkpoint_path);
  check_format(checkpoint_path, metadata);
  return {Settings::from_json(metadata.at("config")), std::stoll(metadata.at("step"))};
}

LoadedRun load_run(const std::string& checkpoint_path) {
  const Checkpoint c = load_checkpoint(checkpoint_path);
  check_format(checkpoint_path, c.metadata);
  LoadedRun run;
  run.settings = Settings::from_json(c.metadata.at("config"));
  run.tokenizer = data::tokenizer_from_bytes(c.metadata.at("tokenizer"), tokenizer_bytes(c));
  run.model = GPT(run.settings.model_config(run.tokenizer->vocab_size()));
  restore_model(run.model, c, checkpoint_path);
  run.step = std::stoll(c.metadata.at("step"));
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
  if (leader) ensure_writable_dir(out);

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
  dist::Group group(environment, std::chrono::milliseconds(static_cast<int64_t>(s.real("dist-timeout", 0.001, 1e6) * 1e3)));

  // The checkpoint first: its tokenizer must be the one the data is encoded with.
  Checkpoint resumed;
  std::unique_ptr<data::Tokenizer> tokenizer;
  if (!resume_from.empty()) {
    resumed = load_checkpoint(resume_from);
    tokenizer = data::tokenizer_from_bytes(resumed.metadata.at("tokenizer"), tokenizer_bytes(resumed));
  }
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

  int64_t step = 0, position = 0, bad_total = 0;
  if (!resume_from.empty()) {
    restore_model(model, resumed, resume_from);
    step = std::stoll(resumed.metadata.at("step"));
    position = std::stoll(resumed.metadata.at("data_position"));
    bad_total = std::stoll(resumed.metadata.at("bad_steps"));
    optimizer.load(resumed.tensors, std::stoll(resumed.metadata.at("adam_steps")));
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(resumed.tensors.at("rng/torch_cpu"));
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
  }

  auto save = [&] {
    Checkpoint c;
    for (const auto& [name, p] : named) c.tensors["model/" + name] = p;
    for (const auto& [name, t] : optimizer.state()) c.tensors[name] = t;
    const std::string tok = corpus.tokenizer->serialize();
    c.tensors["tokenizer"] = torch::from_blob(const_cast<char*>(tok.data()), {static_cast<int64_t>(tok.size())}, torch::kByte).clone();
    c.tensors["rng/torch_cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    c.metadata = {{"format", kFormat}, {"step", std::to_string(step)}, {"data_position", std::to_string(position)},
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
    metrics << line.dump() << "\n" << std::flush;
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
