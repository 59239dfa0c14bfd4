// The training loop: data -> GPT -> AdamW, with evaluation, metrics, checkpoints, exact resume,
// non-finite step handling, and a clean stop on SIGINT/SIGTERM.
#include <unistd.h>

#include <atomic>
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
#include "mhc/pipeline.h"
#include "mhc/run_state.h"
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

std::string duration(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  return s >= 60 ? std::to_string(s / 60) + "m" + (s % 60 < 10 ? "0" : "") + std::to_string(s % 60) + "s"
                 : std::to_string(s) + "s";
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

// Removes what a run that was killed while writing into `out` left there.
void remove_temporaries(const std::string& out) {
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string target = temporary_target(e.path().filename().string());
    if (is_checkpoint_file_name(target) || target == kLatestCheckpoint || target == "config.json" || target == "metrics.jsonl")
      fs::remove(e.path());
  }
}

// What defines the run must agree on every rank (run settings such as --out may differ); numbers
// in config.json's form, so that 0.001 and 1e-3 agree.
dist::Group::SharedSettings defining_settings(const Settings& s) {
  dist::Group::SharedSettings shared_settings;
  const auto config = nlohmann::json::parse(s.to_json());
  for (const auto& spec : setting_specs())
    if (!spec.run) {
      const auto& value = config.at(spec.name);
      shared_settings.emplace_back("--" + spec.name, value.is_string() ? value.get<std::string>() : value.dump());
    }
  return shared_settings;
}

// "2 pipeline stages (1f1b, stream state float32 between stages; this rank: stage 0, blocks 0 to 2)".
std::string pipeline_summary(const PipelineStage& pipeline, Schedule schedule, torch::ScalarType wire_dtype) {
  const PipelineLayout& l = pipeline.layout();
  return std::to_string(l.stages) + " pipeline stages (" + schedule_name(schedule) + ", stream state " +
         (wire_dtype == torch::kBFloat16 ? "bfloat16" : "float32") + " between stages; this rank: stage " +
         std::to_string(l.stage) + ", blocks " + std::to_string(pipeline.blocks().first) + " to " +
         std::to_string(pipeline.blocks().second - 1) + ")";
}

// SIGINT and SIGTERM set stop_signal (cleared first) for the object's life; the previous handlers
// come back after.
class StopOnSignals {
 public:
  StopOnSignals() {
    stop_signal = 0;
    previous_int_ = std::signal(SIGINT, request_stop);
    previous_term_ = std::signal(SIGTERM, request_stop);
  }
  ~StopOnSignals() { std::signal(SIGINT, previous_int_), std::signal(SIGTERM, previous_term_); }
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

// A signal to any rank stops every rank after the same step.
bool stop_requested(dist::Group& group) {
  bool stopping = stop_signal != 0;
  if (group.world_size() > 1) {
    const torch::Tensor stop = torch::tensor({stopping ? 1 : 0}, torch::kInt);
    group.sum({stop});
    stopping = stop.item<int>() != 0;
  }
  return stopping;
}

// metrics.jsonl, open for appending: emptied for a fresh run, cut back to its step for a resumed one.
std::ofstream open_metrics(const std::string& path, bool resumed, int64_t step) {
  if (!resumed) write_file_atomic(path, "");
  else truncate_metrics(path, step);
  std::ofstream metrics(path, std::ios::app);
  if (!metrics) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  return metrics;
}

// One step's line of metrics.jsonl (val_loss on evaluation steps); a non-finite value is null.
nlohmann::ordered_json metrics_line(int64_t step, const StepResult& r, double lr, double seconds, int64_t tokens_per_step,
                                    int64_t bad_steps, bool distributed, const double* val_loss) {
  nlohmann::ordered_json line = {{"step", step}, {"loss", r.finite ? r.loss : NAN}, {"lr", lr},
                                 {"grad_norm", r.grad_norm}, {"tokens_per_s", tokens_per_step / seconds},
                                 {"step_ms", seconds * 1e3}, {"skipped", !r.finite}, {"bad_steps", bad_steps}};
  if (!std::isfinite(r.loss)) line["loss"] = nullptr;
  if (!std::isfinite(r.grad_norm)) line["grad_norm"] = nullptr;
  if (distributed) line["all_reduce_ms"] = r.all_reduce_seconds * 1e3;
  if (val_loss) line["val_loss"] = *val_loss;
  return line;
}

void append_metrics(std::ofstream& metrics, const std::string& path, const nlohmann::ordered_json& line, int64_t step) {
  if (!(metrics << line.dump() << "\n" << std::flush))  // a full disk must not lose metrics silently
    throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno) + " (step " + std::to_string(step) +
                             "'s metrics would be lost)");
}

// The last lines of a run that reached its last step: the validation loss against ln(vocab), if it
// was evaluated, and a sample.
void report_result(Progress& progress, GPT& model, const data::Tokenizer& tokenizer, int64_t step, double val_loss,
                   int64_t sample_tokens, int64_t seed) {
  if (std::isfinite(val_loss)) {
    const double ln_vocab = std::log(static_cast<double>(tokenizer.vocab_size()));
    progress.note("done: step " + std::to_string(step) + ", validation loss " + fixed(val_loss, 3) + " nats (ln vocab = " +
                  fixed(ln_vocab, 3) + ", " + fixed(ln_vocab - val_loss, 2) + " below), perplexity " +
                  fixed(std::exp(val_loss), 1));
  }
  if (sample_tokens > 0) {
    const std::string prompt = "The";
    const auto ids = generate(model, tokenizer.encode_text(prompt), sample_tokens, 0.8, 40, seed);
    progress.note("sample: " + tokenizer.decode(ids));
  }
}

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

std::string short_count(double v) {
  if (v >= 1e6) return fixed(v / 1e6, 1) + "M";
  if (v >= 1e3) return fixed(v / 1e3, 1) + "k";
  return fixed(v, 0);
}

data::TokenizedCorpus run_corpus(LoadedRun& run, const std::string& data_dir, int threads) {
  const Settings& s = run.settings;
  return data::tokenize_corpus(s.str("data"), data_dir.empty() ? s.str("data-dir") : data_dir, s.str("tokenizer"),
                               s.integer("vocab", 2, 1 << 20), threads, std::move(run.tokenizer));
}


StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<torch::Tensor()>& micro_batch_loss, int64_t accum, double clip, double lr,
                      dist::Group* group) {
  const auto accumulate = [&] {
    double loss_sum = 0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      const torch::Tensor loss = micro_batch_loss() / static_cast<double>(accum);
      loss.backward();
      loss_sum += loss.item<double>();
    }
    return loss_sum;
  };
  return train_step(optimizer, parameters, accumulate, clip, lr, group);
}

StepResult train_step(AdamW& optimizer, const std::vector<torch::Tensor>& parameters,
                      const std::function<double()>& accumulate, double clip, double lr, dist::Group* replicas,
                      const std::function<void(double& loss, double& squares)>& combine) {
  double loss_sum = accumulate();
  double all_reduce_seconds = 0;
  const bool averaged = replicas && replicas->world_size() > 1;
  if (averaged) {
    const auto t0 = Clock::now();
    std::vector<torch::Tensor> shared;
    for (const auto& p : parameters) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // every rank's buffer has one layout
      shared.push_back(p.grad());
    }
    const torch::Tensor loss = torch::tensor({loss_sum}, torch::kDouble);
    shared.push_back(loss);
    replicas->average(shared);
    loss_sum = loss.item<double>();
    all_reduce_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  std::vector<torch::Tensor> parts;  // summed on the device: one synchronisation, not one per tensor
  for (const auto& p : parameters)
    if (p.grad().defined()) parts.push_back(p.grad().pow(2).sum().to(torch::kDouble));
  double squares = parts.empty() ? 0.0 : torch::stack(parts).sum().item<double>();
  if (combine) {
    const auto t0 = Clock::now();
    combine(loss_sum, squares);
    all_reduce_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  const double norm = std::sqrt(squares);
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
  // ---- Setup: the run folder, the settings, the ranks, the data, the model ----
  const int threads = static_cast<int>(s.integer("threads", 1, 1024));
  torch::set_num_threads(threads);
  const std::string out = s.str("out");
  const bool leader = environment.rank == 0;
  std::optional<FolderLock> lock;  // one run at a time writes into `out`
  if (leader) {
    ensure_writable_dir(out);
    lock.emplace(out);
    remove_temporaries(out);
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
  const int64_t stages = s.integer("pipeline-stages", 1, 1 << 20);
  const PipelineLayout layout = PipelineLayout::of(environment.rank, world, stages);
  check_pipeline_stages(stages, s.integer("layers", 1, 1 << 20));
  const Schedule schedule = parse_schedule(s.str("schedule"));
  const torch::ScalarType wire_dtype = parse_pipe_dtype(s.str("pipe-dtype"), parse_dtype(s.str("dtype")));
  if (batch % layout.replicas != 0)
    throw std::invalid_argument("--batch " + std::to_string(batch) + " does not split over " +
                                (stages == 1 ? "WORLD_SIZE=" + std::to_string(world) + " ranks"
                                             : std::to_string(layout.replicas) + " data-parallel replicas (WORLD_SIZE=" +
                                                   std::to_string(world) + " / --pipeline-stages " + std::to_string(stages) + ")") +
                                " (the batch is global: accepted, a multiple of " + std::to_string(layout.replicas) + ")");
  const int64_t rank_batch = batch / layout.replicas;
  const torch::Device device = parse_device(s.str("device"));
  if (device.is_cuda() && world > 1)
    throw std::invalid_argument("--device " + s.str("device") + " with WORLD_SIZE=" + std::to_string(world) +
                                ": data-parallel training exchanges CPU tensors over Gloo; NCCL for CUDA is not wired "
                                "in yet (accepted: --device cpu, or one rank)");
  dist::Group::SharedSettings shared = defining_settings(s);
  for (const char* name : {"pipeline-stages", "schedule", "pipe-dtype"}) shared.emplace_back(std::string("--") + name, s.str(name));
  dist::Group group(environment, std::chrono::milliseconds(static_cast<int64_t>(s.real("dist-timeout", 0.001, 1e6) * 1e3)),
                    shared);

  // The checkpoint first: its tokenizer must be the one the data is encoded with.
  Checkpoint resumed;
  RunState state;
  if (!resume_from.empty()) {
    resumed = load_checkpoint(resume_from);
    state = load_run_state(resume_from, resumed);
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
  // With pipeline stages, this rank trains its stage's parameters and averages them with the same
  // stage's replicas; otherwise it trains them all with every rank.
  std::unique_ptr<PipelineStage> pipeline;
  if (stages > 1) {
    auto [x, y] = train_windows.batch(0, rank_batch);
    pipeline = std::make_unique<PipelineStage>(model, group, layout, measure_and_balance(model, group, stages, x, y),
                                               schedule, wire_dtype);
  }
  const std::vector<torch::Tensor>& trained = pipeline ? pipeline->parameters() : parameters;
  dist::Group& replicas = pipeline ? pipeline->replicas() : group;
  const bool has_connections = !model->connections().empty();  // the plain residual has nothing to diagnose
  const torch::Tensor probe = diag::probe_tokens(val_windows, diag_batch);
  const diag::CollapseThresholds collapse{s.real("collapse-rank", 0, 1e6), s.real("collapse-share", 0, 1),
                                          s.integer("collapse-after", 1, INT64_MAX)};

  // ---- Resume: the weights, AdamW and the RNG where the checkpoint left them ----
  int64_t step = state.step, position = state.data_position, bad_total = state.bad_steps;
  if (!resume_from.empty()) {
    restore_training(model, optimizer, resumed, state, resume_from);
    resumed = {};
  }
  group.broadcast(parameters);  // rank 0's weights everywhere, fresh or resumed
  const std::string metrics_path = out + "/metrics.jsonl";
  std::ofstream metrics;
  if (leader) {
    write_file_atomic(out + "/config.json", s.to_json());
    metrics = open_metrics(metrics_path, !resume_from.empty(), step);
  }
  diag::CollapseAlarm collapse_alarm(collapse, leader ? diag::collapse_streak(metrics_path) : 0);

  const StopOnSignals stop_on_signals;
  if (leader)
    std::cout << "train: " << s.str("variant") << " n=" << s.str("streams") << ", " << s.str("layers")
              << " blocks x C=" << s.str("dim") << ", " << model->parameters().size() << " tensors / "
              << [&] { int64_t c = 0; for (auto& p : model->parameters()) c += p.numel(); return short_count(c); }()
              << " parameters, vocab " << corpus.tokenizer->vocab_size() << ", "
              << (pipeline ? pipeline_summary(*pipeline, schedule, wire_dtype) + ", " : "")
              << (world > 1 ? std::to_string(world) + " ranks x " : "") << threads << " threads, " << device << ", "
              << s.str("dtype") << " -> " << out
              << (resume_from.empty() ? "" : " (resumed at step " + std::to_string(step) + ")") << std::endl;

  // ---- The loop: one optimizer step, then (rank 0) evaluation, metrics, progress, checkpoint ----
  // The global batch is windows [position, position + batch) of the shuffled order; this rank's
  // share is its rank_batch-sized slice, so the data order does not depend on the world size.
  // Micro-batch i from the current position: windows [i · batch, (i + 1) · batch), this replica's share.
  const auto micro_batch = [&](int64_t i) {
    return train_windows.batch(position + i * batch + layout.replica * rank_batch, rank_batch);
  };
  const auto next_loss = [&] {
    auto [x, y] = micro_batch(0);
    position += batch;
    return model->loss(x, y);
  };
  const auto run_pipeline = [&] {
    const double loss_sum = pipeline->run(accum, micro_batch);
    position += batch * accum;
    return loss_sum;
  };
  std::function<void(double&, double&)> combine;
  if (pipeline) combine = [&](double& loss, double& squares) { pipeline->combine(loss, squares); };
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
    const StepResult r = pipeline ? train_step(optimizer, trained, run_pipeline, clip, rate, &replicas, combine)
                                  : train_step(optimizer, parameters, next_loss, accum, clip, rate, &group);
    bad_in_row = r.finite ? 0 : bad_in_row + 1;
    bad_total += r.finite ? 0 : 1;
    ++step;
    stopping = stop_requested(group);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    seconds_training += seconds;
    const bool eval_now = step == last_step || (eval_every > 0 && step % eval_every == 0);
    const bool diag_now = diag_every > 0 && has_connections && (step % diag_every == 0 || step == last_step);
    const bool ckpt_now = step == last_step || stopping || (ckpt_every > 0 && step % ckpt_every == 0);
    // Rank 0 evaluates, probes and checkpoints the whole model: the other stages' parts first.
    if (pipeline && (eval_now || diag_now || ckpt_now)) pipeline->gather_to_leader(ckpt_now ? &optimizer : nullptr);
    if (!leader) {
      if (bad_in_row >= max_bad) return 1;  // rank 0 reports it
      continue;
    }

    if (eval_now) last_val = evaluate(model, val_windows, batch, eval_batches);
    nlohmann::ordered_json line =
        metrics_line(step, r, rate, seconds, tokens_per_step, bad_total, world > 1, eval_now ? &last_val : nullptr);
    // No autograd and no randomness: the diagnostics cannot change the training that follows.
    if (diag_now) {
      const auto d0 = Clock::now();
      const auto diagnostics = diag::probe(model, probe);
      line["diag"] = nlohmann::ordered_json::parse(diag::to_json(diagnostics));
      line["diag_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - d0).count();
      if (collapse_alarm.observe(diag::summarize_streams(diagnostics))) progress.note(collapse_alarm.warning(step));
      line["collapse"] = nlohmann::ordered_json::parse(collapse_alarm.to_json());
    }
    append_metrics(metrics, metrics_path, line, step);
    const double eta = seconds_training / static_cast<double>(step - first_step) * static_cast<double>(last_step - step);
    progress.step(step, r.loss, eval_now ? &last_val : nullptr, r.grad_norm, rate, seconds * 1e3,
                  tokens_per_step / seconds, eta, !r.finite);

    if (bad_in_row >= max_bad)
      throw std::runtime_error("training diverged: the loss or gradient was not finite for " + std::to_string(bad_in_row) +
                               " steps in a row (last at step " + std::to_string(step) + "; try a lower --lr)");
    if (ckpt_now)
      save_run_state(out, keep, s, step, position, bad_total, model, optimizer, *corpus.tokenizer);
  }

  // ---- The end: the ranks agree, and rank 0 says how the run ended ----
  if (replicas.world_size() > 1) {
    const bool same = replicas.same_everywhere(trained);
    if (!same) throw std::runtime_error("the replicas' parameters differ after step " + std::to_string(step));
    if (leader)
      progress.note(pipeline ? "each stage's parameters identical on its " + std::to_string(layout.replicas) + " replicas"
                             : "parameters identical on all " + std::to_string(world) + " ranks");
  }
  // Rank 0 hosts the store the other replica groups compared through: nobody leaves before all are done.
  if (pipeline && world > 1) group.barrier();
  if (!leader) return 0;
  if (stopping)
    progress.note("stopped by " + (stop_signal != 0 ? "signal " + std::to_string(stop_signal.load()) : "a signal to another rank") +
                  " at step " + std::to_string(step) +
                  "; checkpoint saved (resume: mhc train --resume " + out + ")");
  else  // the loop ran to last_step
    report_result(progress, model, *corpus.tokenizer, step, last_val, sample_tokens, seed);
  return 0;
}

}  // namespace mhc::train
