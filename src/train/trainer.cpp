// The training run (mhc/trainer.h): one optimizer step, and TrainingRun — set-up, resume, the
// steps, and after each evaluation, diagnostics, metrics, progress and checkpoints — which owns the
// run's position (step, data position, bad steps) so that only its own steps move it.
#include "mhc/trainer.h"

#include <chrono>
#include <cmath>
#include <iostream>
#include <optional>

#include "mhc/files.h"
#include "mhc/format.h"
#include "mhc/run_log.h"
#include "mhc/run_state.h"
#include "mhc/sampling.h"
#include "progress.h"
#include "run_folder.h"

namespace mhc::train {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// What defines the run must agree on every rank (run settings such as --out may differ), and so
// must the pipeline's layout and the run settings that decide which steps the ranks meet after
// (a stop, an evaluation, a probe, a checkpoint): ranks that disagree on them would wait for each
// other until the timeout. Numbers in config.json's form, so that 0.001 and 1e-3 agree.
dist::Group::SharedSettings shared_settings(const Settings& s) {
  dist::Group::SharedSettings shared;
  const auto config = nlohmann::json::parse(s.to_json());
  for (const auto& spec : setting_specs())
    if (!spec.run) {
      const auto& value = config.at(spec.name);
      shared.emplace_back("--" + spec.name, value.is_string() ? value.get<std::string>() : value.dump());
    }
  for (const char* name : {"pipeline-stages", "schedule", "pipe-dtype", "stop-after", "eval-every", "diag-every", "ckpt-every",
                           "max-bad-steps"})
    shared.emplace_back(std::string("--") + name, s.str(name));
  return shared;
}

// "2 pipeline stages (1f1b, stream state float32 between stages; this rank: stage 0, blocks 0 to 2)".
std::string pipeline_summary(const PipelineStage& pipeline, Schedule schedule, torch::ScalarType wire_dtype) {
  const PipelineLayout& l = pipeline.layout();
  return std::to_string(l.stages) + " pipeline stages (" + schedule_name(schedule) + ", stream state " +
         (wire_dtype == torch::kBFloat16 ? "bfloat16" : "float32") + " between stages; this rank: stage " +
         std::to_string(l.stage) + ", blocks " + std::to_string(pipeline.blocks().first) + " to " +
         std::to_string(pipeline.blocks().second - 1) + ")";
}

// --batch must split over the data-parallel replicas; the message says over what.
void check_batch_split(int64_t batch, const PipelineLayout& layout, int world, int64_t stages) {
  if (batch % layout.replicas == 0) return;
  throw std::invalid_argument("--batch " + std::to_string(batch) + " does not split over " +
                              (stages == 1 ? "WORLD_SIZE=" + std::to_string(world) + " ranks"
                                           : std::to_string(layout.replicas) + " data-parallel replicas (WORLD_SIZE=" +
                                                 std::to_string(world) + " / --pipeline-stages " + std::to_string(stages) + ")") +
                              " (the batch is global: accepted, a multiple of " + std::to_string(layout.replicas) + ")");
}

// The loop of one run, on one rank. Construction sets the run up (folder, ranks, data, model) and
// puts a resumed run where its checkpoint left it; run() trains to the last step or a stop.
class TrainingRun {
 public:
  TrainingRun(const Settings& settings, const std::string& resume_from, const dist::Environment& environment);
  int run();

 private:
  void claim_folder();
  void read_data();
  void build_model();
  void resume_and_log();
  void announce() const;
  StepResult step(double lr);
  // What the step just taken is followed by (a stop is always followed by a checkpoint).
  struct Due {
    bool evaluation, diagnostics, checkpoint;
    bool any() const { return evaluation || diagnostics || checkpoint; }
  };
  Due due_after(bool stopping) const;
  // Rank 0 after each step: evaluation, diagnostics, the metrics line, progress and a checkpoint.
  void after_step(const StepResult& result, double lr, double seconds, const Due& due);
  void diagnose(StepRecord& record);
  int finish(bool stopping, const StopOnSignals& signals);

  const Settings& settings_;
  const TrainingOptions o_;
  const std::string resume_from_;
  const dist::Environment environment_;
  const bool leader_;
  const PipelineLayout layout_;
  std::optional<FolderLock> lock_;  // one run at a time writes into the run folder
  std::unique_ptr<dist::Group> group_;
  Checkpoint resumed_;
  RunState state_;
  data::TokenizedCorpus corpus_;
  std::optional<data::WindowSampler> train_windows_, val_windows_;
  GPT model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  std::vector<torch::Tensor> parameters_;
  std::unique_ptr<PipelineStage> pipeline_;  // with --pipeline-stages > 1: this rank's stage
  torch::Tensor probe_;
  std::optional<RunLog> log_;
  std::optional<diag::CollapseAlarm> alarm_;
  Progress progress_;
  // The run's position: steps taken, windows of the shuffled order consumed, skipped steps.
  int64_t step_ = 0, position_ = 0, bad_total_ = 0, bad_in_row_ = 0, first_step_ = 0;
  double last_val_ = NAN, seconds_training_ = 0;
};

TrainingRun::TrainingRun(const Settings& settings, const std::string& resume_from, const dist::Environment& environment)
    : settings_(settings),
      o_(TrainingOptions::read(settings)),
      resume_from_(resume_from),
      environment_(environment),
      leader_(environment.rank == 0),
      layout_(PipelineLayout::of(environment.rank, environment.world_size, o_.pipeline_stages)),
      progress_(o_.steps) {
  torch::set_num_threads(o_.threads);
  claim_folder();
  check_pipeline_stages(o_.pipeline_stages, settings.integer("layers"));
  check_batch_split(o_.batch, layout_, environment.world_size, o_.pipeline_stages);
  if (o_.device.is_cuda() && environment.world_size > 1)
    throw std::invalid_argument("--device " + o_.device_name + " with WORLD_SIZE=" + std::to_string(environment.world_size) +
                                ": data-parallel training exchanges CPU tensors over Gloo; NCCL for CUDA is not wired "
                                "in yet (accepted: --device cpu, or one rank)");
  group_ = std::make_unique<dist::Group>(
      environment, std::chrono::milliseconds(static_cast<int64_t>(o_.dist_timeout_seconds * 1e3)), shared_settings(settings));
  // The checkpoint first: its tokenizer must be the one the data is encoded with.
  if (!resume_from.empty()) {
    resumed_ = load_checkpoint(resume_from);
    state_ = load_run_state(resume_from, resumed_);
  }
  read_data();
  build_model();
  resume_and_log();
}

void TrainingRun::claim_folder() {
  if (!leader_) return;
  ensure_writable_dir(o_.out);
  lock_.emplace(o_.out);
  remove_temporaries(o_.out);
}

// Rank 0 trains the tokenizer and writes the token cache (however long it takes: the others wait
// on its heartbeat); the others then read it.
void TrainingRun::read_data() {
  auto tokenize = [&] {
    return data::tokenize_corpus(settings_.str("data"), settings_.str("data-dir"), settings_.str("tokenizer"),
                                 settings_.integer("vocab"), o_.threads, std::move(state_.tokenizer));
  };
  group_->leader_work("preparing the data", [&] { corpus_ = tokenize(); });
  if (!leader_) corpus_ = tokenize();
  train_windows_.emplace(corpus_.train, o_.seq_len, o_.seed, "training");
  val_windows_.emplace(corpus_.val, o_.seq_len, o_.seed, "validation");
}

// With pipeline stages, this rank trains its stage's parameters and averages them with the same
// stage's replicas; otherwise it trains them all with every rank.
void TrainingRun::build_model() {
  torch::manual_seed(o_.seed);
  model_ = GPT(settings_.model_config(corpus_.tokenizer->vocab_size()));
  model_->to(o_.device);  // before the optimizer takes its state shaped (and placed) like the parameters
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : model_->named_parameters()) named.emplace_back(p.key(), p.value());
  optimizer_ = std::make_unique<AdamW>(named, o_.adam);
  parameters_ = model_->parameters();
  if (o_.pipeline_stages > 1) {
    auto [x, y] = train_windows_->batch(0, o_.batch / layout_.replicas);
    pipeline_ = std::make_unique<PipelineStage>(model_, *group_, layout_,
                                                measure_and_balance(model_, *group_, o_.pipeline_stages, x, y),
                                                o_.schedule, o_.wire_dtype);
  }
  probe_ = diag::probe_tokens(*val_windows_, o_.diag_batch);
}

// The weights, AdamW and the RNG where the checkpoint left them, rank 0's weights everywhere, and
// the run's log continued from the checkpoint's step.
void TrainingRun::resume_and_log() {
  step_ = first_step_ = state_.step, position_ = state_.data_position, bad_total_ = state_.bad_steps;
  if (!resume_from_.empty()) {
    restore_training(model_, *optimizer_, resumed_, state_, resume_from_);
    resumed_ = {};
  }
  group_->broadcast(parameters_);
  const std::string log_path = o_.out + "/metrics.jsonl";
  if (leader_) {
    write_file_atomic(o_.out + "/config.json", settings_.to_json());
    log_.emplace(log_path, !resume_from_.empty(), step_);
  }
  alarm_.emplace(o_.collapse, leader_ ? collapse_streak(log_path) : 0);
}

void TrainingRun::announce() const {
  if (!leader_) return;
  int64_t count = 0;
  for (const auto& p : model_->parameters()) count += p.numel();
  const int world = environment_.world_size;
  std::cout << "train: " << settings_.str("variant") << " n=" << settings_.str("streams") << ", " << settings_.str("layers")
            << " blocks x C=" << settings_.str("dim") << ", " << model_->parameters().size() << " tensors / "
            << Format::count()(static_cast<double>(count)) << " parameters, vocab " << corpus_.tokenizer->vocab_size()
            << ", " << (pipeline_ ? pipeline_summary(*pipeline_, o_.schedule, o_.wire_dtype) + ", " : "")
            << (world > 1 ? std::to_string(world) + " ranks x " : "") << o_.threads << " threads, " << o_.device << ", "
            << o_.dtype_name << " -> " << o_.out
            << (resume_from_.empty() ? "" : " (resumed at step " + std::to_string(step_) + ")") << std::endl;
}

// One optimizer step on the global batch at the data position: windows [position, position +
// batch) of the shuffled order per micro-batch, this replica's slice of each, so that the data
// order does not depend on the world size.
StepResult TrainingRun::step(double lr) {
  const int64_t rank_batch = o_.batch / layout_.replicas;
  const auto micro_batch = [&](int64_t i) {
    return train_windows_->batch(position_ + i * o_.batch + layout_.replica * rank_batch, rank_batch);
  };
  if (pipeline_) {
    const auto run_pipeline = [&] { return pipeline_->run(o_.accum, micro_batch); };
    const StepResult r = train_step(*optimizer_, pipeline_->parameters(), run_pipeline, o_.clip, lr, &pipeline_->replicas(),
                                    [&](double& loss, double& squares) { pipeline_->combine(loss, squares); });
    position_ += o_.batch * o_.accum;
    return r;
  }
  const auto next_loss = [&] {
    auto [x, y] = micro_batch(0);
    position_ += o_.batch;
    return model_->loss(x, y);
  };
  return train_step(*optimizer_, parameters_, next_loss, o_.accum, o_.clip, lr, group_.get());
}

int TrainingRun::run() {
  const StopOnSignals signals;
  announce();
  const int64_t last_step = o_.last_step();
  bool stopping = signals.signalled_here();
  while (step_ < last_step && !stopping) {
    const auto t0 = Clock::now();
    const double lr = learning_rate(step_, o_.steps, o_.warmup, o_.lr, o_.min_lr);
    const StepResult r = step(lr);
    bad_in_row_ = r.finite ? 0 : bad_in_row_ + 1;
    bad_total_ += r.finite ? 0 : 1;
    ++step_;
    stopping = signals.requested(*group_);
    const double seconds = seconds_since(t0);
    seconds_training_ += seconds;
    const Due due = due_after(stopping);
    // Rank 0 evaluates, probes and checkpoints the whole model: the other stages' parts first.
    if (pipeline_ && due.any()) pipeline_->gather_to_leader(due.checkpoint ? optimizer_.get() : nullptr);
    // Rank 0's evaluation, probe or checkpoint may take longer than --dist-timeout: the others wait it
    // out on its heartbeat.
    if (due.any())
      group_->leader_work("evaluating, probing or checkpointing after step " + std::to_string(step_),
                          [&] { after_step(r, lr, seconds, due); });
    else if (leader_)
      after_step(r, lr, seconds, due);
    if (!leader_ && bad_in_row_ >= o_.max_bad_steps) return 1;  // rank 0 reports it
  }
  return finish(stopping, signals);
}

TrainingRun::Due TrainingRun::due_after(bool stopping) const {
  const int64_t last_step = o_.last_step();
  const bool every_eval = o_.eval_every > 0 && step_ % o_.eval_every == 0;
  const bool every_ckpt = o_.ckpt_every > 0 && step_ % o_.ckpt_every == 0;
  // The plain residual has no connection to diagnose.
  const bool every_diag = o_.diag_every > 0 && step_ % o_.diag_every == 0;
  return {step_ == last_step || every_eval,
          o_.diag_every > 0 && !model_->connections().empty() && (every_diag || step_ == last_step),
          step_ == last_step || stopping || every_ckpt};
}

void TrainingRun::after_step(const StepResult& r, double lr, double seconds, const Due& due) {
  const int64_t last_step = o_.last_step();
  if (due.evaluation) last_val_ = evaluate(model_, *val_windows_, o_.batch, o_.eval_batches);

  const int64_t tokens_per_step = o_.batch * o_.accum * o_.seq_len;
  StepRecord record;
  record.step = step_, record.loss = r.loss, record.lr = lr, record.grad_norm = r.grad_norm;
  record.tokens_per_s = tokens_per_step / seconds, record.step_ms = seconds * 1e3;
  record.skipped = !r.finite, record.bad_steps = bad_total_;
  if (environment_.world_size > 1) record.all_reduce_ms = r.all_reduce_seconds * 1e3;
  if (due.evaluation) record.val_loss = last_val_;
  if (due.diagnostics) diagnose(record);
  log_->append(record);
  const double eta = seconds_training_ / static_cast<double>(step_ - first_step_) * static_cast<double>(last_step - step_);
  progress_.step({step_, r.loss, record.val_loss, r.grad_norm, lr, seconds * 1e3, tokens_per_step / seconds, eta,
                  !r.finite});

  if (bad_in_row_ >= o_.max_bad_steps)
    throw std::runtime_error("training diverged: the loss or gradient was not finite for " + std::to_string(bad_in_row_) +
                             " steps in a row (last at step " + std::to_string(step_) + "; try a lower --lr)");
  if (due.checkpoint)
    save_run_state(o_.out, o_.keep, settings_, step_, position_, bad_total_, model_, *optimizer_, *corpus_.tokenizer);
}

// No autograd and no randomness: the diagnostics cannot change the training that follows.
void TrainingRun::diagnose(StepRecord& record) {
  const auto t0 = Clock::now();
  const auto diagnostics = diag::probe(model_, probe_);
  record.diag = diag::to_json(diagnostics);
  record.diag_ms = seconds_since(t0) * 1e3;
  if (alarm_->observe(diag::summarize_streams(diagnostics))) progress_.note(alarm_->warning(step_));
  record.collapse = alarm_->to_json();
}

// The ranks agree, and rank 0 says how the run ended: stopped (with a checkpoint), or the last
// step's validation loss against ln(vocab) and a sample.
int TrainingRun::finish(bool stopping, const StopOnSignals& signals) {
  dist::Group& replicas = pipeline_ ? pipeline_->replicas() : *group_;
  if (replicas.world_size() > 1) {
    if (!replicas.same_everywhere(pipeline_ ? pipeline_->parameters() : parameters_))
      throw std::runtime_error("the replicas' parameters differ after step " + std::to_string(step_));
    if (leader_)
      progress_.note(pipeline_ ? "each stage's parameters identical on its " + std::to_string(layout_.replicas) + " replicas"
                               : "parameters identical on all " + std::to_string(environment_.world_size) + " ranks");
  }
  // Rank 0 hosts the store the other replica groups compared through: nobody leaves before all are done.
  if (pipeline_ && environment_.world_size > 1) group_->barrier();
  if (!leader_) return 0;
  if (stopping) {
    progress_.note("stopped by " +
                   (signals.signalled_here() ? "signal " + std::to_string(signals.signal()) : "a signal to another rank") +
                   " at step " + std::to_string(step_) + "; checkpoint saved (resume: mhc train --resume " + o_.out + ")");
    return 0;
  }
  const Format three = Format::fixed(3);
  if (std::isfinite(last_val_)) {
    const double ln_vocab = std::log(static_cast<double>(corpus_.tokenizer->vocab_size()));
    progress_.note("done: step " + std::to_string(step_) + ", validation loss " + three(last_val_) + " nats (ln vocab = " +
                   three(ln_vocab) + ", " + Format::fixed(2)(ln_vocab - last_val_) + " below), perplexity " +
                   Format::fixed(1)(std::exp(last_val_)));
  }
  if (o_.sample_tokens > 0) {
    SamplingOptions sampling;
    sampling.tokens = o_.sample_tokens, sampling.seed = o_.seed;
    const auto ids = generate(model_, {corpus_.tokenizer->encode_text("The")}, sampling)[0];
    progress_.note("sample: " + corpus_.tokenizer->decode(ids));
  }
  return 0;
}

}  // namespace

TrainingOptions TrainingOptions::read(const Settings& s) {
  s.require_utf8();
  TrainingOptions o;
  o.out = s.str("out"), o.device_name = s.str("device"), o.dtype_name = s.str("dtype");
  o.threads = static_cast<int>(s.integer("threads"));
  o.steps = s.integer("steps"), o.batch = s.integer("batch"), o.accum = s.integer("accum");
  o.warmup = s.integer("warmup"), o.seed = s.integer("seed"), o.seq_len = s.integer("seq-len");
  o.lr = s.real("lr"), o.min_lr = s.real("min-lr"), o.clip = s.real("clip");
  o.adam = {s.real("beta1"), s.real("beta2"), 1e-8, s.real("weight-decay")};
  o.eval_every = s.integer("eval-every"), o.eval_batches = s.integer("eval-batches");
  o.diag_every = s.integer("diag-every"), o.diag_batch = s.integer("diag-batch");
  o.ckpt_every = s.integer("ckpt-every"), o.keep = s.integer("keep"), o.stop_after = s.integer("stop-after");
  o.max_bad_steps = s.integer("max-bad-steps"), o.sample_tokens = s.integer("sample-tokens");
  o.collapse = {s.real("collapse-rank"), s.real("collapse-share"), s.integer("collapse-after")};
  o.dist_timeout_seconds = s.real("dist-timeout");
  o.pipeline_stages = s.integer("pipeline-stages");
  o.schedule = parse_schedule(s.str("schedule"));
  o.wire_dtype = parse_pipe_dtype(s.str("pipe-dtype"), parse_dtype(o.dtype_name));
  o.device = parse_device(o.device_name);
  return o;
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

int run_training(const Settings& settings, const std::string& resume_from, const dist::Environment& environment) {
  TrainingRun run(settings, resume_from, environment);
  return run.run();
}

}  // namespace mhc::train
