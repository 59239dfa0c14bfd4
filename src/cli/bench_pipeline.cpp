// `mhc bench pipeline --stages S`: a preset GPT's training step pipelined over S local processes
// (mhc/pipeline.h), for each variant interleaved step by step, against the same step in one process
// with the same global batch, micro-batches and cores. Per variant it reports:
//   - the measured bubble next to the schedule's theory ((S − 1)/(m + S − 1) for m micro-batches);
//   - the bytes sent between stages per step;
//   - the share of the step a stage waits on communication;
//   - the throughput against one process.
// Every stage records when it posted each transfer and when it blocked on one (on the steady clock,
// which the processes of one machine share). A wait is communication only from the moment both
// ends had posted the transfer (the data could move) to its end; the rest of the stages' waiting is
// the bubble: waiting for another stage's computation. Both are averaged over the stages, the
// bubble as a share of the schedule's makespan (first stage's start to last stage's end), the
// communication as a share of the whole step.
//
// Run without a distributed environment, the command measures the one-process step, starts S
// copies of itself through `mhc launch` (which write their measurements to a temporary file),
// measures the one-process step again, and prints both. Run under a launcher it is one of those
// copies.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.h"
#include "bench_common.h"
#include "bench_model.h"
#include "commands.h"
#include "mhc/distributed.h"
#include "mhc/files.h"
#include "mhc/pipeline.h"
#include "mhc/trainer.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

constexpr double kLr = 1e-4, kClip = 1.0;

// The micro-batches of one step: m × [batch, T + 1] random tokens, the same on every rank.
std::vector<torch::Tensor> micro_batches(const train::Settings& s, int64_t m) {
  torch::manual_seed(1);
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < m; ++i) out.push_back(random_tokens(s));
  return out;
}

// A stage's timeline of one step as numbers, for the trip to rank 0: begin, end, bytes, step
// seconds, then the posts (peer, tag, send, at) and the waits (peer, tag, send, begin, end), each
// list preceded by its length.
void encode(const train::StageTimeline& t, double step_seconds, std::vector<double>& out) {
  out.insert(out.end(), {t.begin, t.end, static_cast<double>(t.bytes_sent), step_seconds, static_cast<double>(t.posts.size())});
  for (const auto& p : t.posts) out.insert(out.end(), {double(p.peer), double(p.tag), double(p.send), p.at});
  out.push_back(static_cast<double>(t.waits.size()));
  for (const auto& w : t.waits) out.insert(out.end(), {double(w.peer), double(w.tag), double(w.send), w.begin, w.end});
}

struct Measured {
  train::StageTimeline timeline;
  double step_seconds;
};

Measured decode(const std::vector<double>& in, size_t& k) {
  Measured m;
  train::StageTimeline& t = m.timeline;
  t.begin = in[k++], t.end = in[k++], t.bytes_sent = static_cast<int64_t>(in[k++]), m.step_seconds = in[k++];
  for (size_t n = static_cast<size_t>(in[k++]); n > 0; --n, k += 4)
    t.posts.push_back({int(in[k]), int64_t(in[k + 1]), in[k + 2] != 0, in[k + 3]});
  for (size_t n = static_cast<size_t>(in[k++]); n > 0; --n, k += 5)
    t.waits.push_back({int(in[k]), int64_t(in[k + 1]), in[k + 2] != 0, in[k + 3], in[k + 4]});
  return m;
}

// One step of every stage (index = rank) -> bubble (share of the makespan), communication wait
// (share of the step), both averaged over the stages; bytes sent by all stages.
struct StepShares {
  double bubble, communication, step_seconds;
  int64_t bytes;
  std::vector<double> busy_seconds;  // per stage: computing, not waiting
};

StepShares shares(const std::vector<Measured>& stages) {
  double begin = stages[0].timeline.begin, end = stages[0].timeline.end;
  for (const auto& s : stages) begin = std::min(begin, s.timeline.begin), end = std::max(end, s.timeline.end);
  const double makespan = end - begin;
  // A transfer seen from rank r, as (sender, receiver, tag): the same key from both of its ends.
  auto transfer = [](size_t r, int peer, int64_t tag, bool send) {
    return send ? std::make_tuple(int(r), peer, tag) : std::make_tuple(peer, int(r), tag);
  };
  // When each transfer could move: both its ends posted.
  std::map<std::tuple<int, int, int64_t>, double> ready;
  for (size_t r = 0; r < stages.size(); ++r)
    for (const auto& p : stages[r].timeline.posts) {
      double& at = ready[transfer(r, p.peer, p.tag, p.send)];
      at = std::max(at, p.at);
    }
  StepShares out{0, 0, 0, 0, {}};
  for (size_t r = 0; r < stages.size(); ++r) {
    const auto& t = stages[r].timeline;
    double waiting = 0, communication = 0;
    for (const auto& w : t.waits) {
      waiting += w.end - w.begin;
      communication += std::max(0.0, w.end - std::max(w.begin, ready.at(transfer(r, w.peer, w.tag, w.send))));
    }
    const double busy = (t.end - t.begin) - waiting;
    out.busy_seconds.push_back(busy);
    out.bubble += (makespan - busy - communication) / makespan;
    out.communication += communication / stages[r].step_seconds;
    out.step_seconds = std::max(out.step_seconds, stages[r].step_seconds);
    out.bytes += t.bytes_sent;
  }
  out.bubble /= static_cast<double>(stages.size());
  out.communication /= static_cast<double>(stages.size());
  return out;
}

// Rank 0: its own encoded timelines and every other rank's (a length, then the numbers), by rank.
std::vector<std::vector<double>> gather_timelines(dist::Group& world, const std::vector<double>& own) {
  std::vector<std::vector<double>> per_rank = {own};
  for (int r = 1; r < world.world_size(); ++r) {
    const torch::Tensor length = torch::zeros({1}, torch::kLong);
    world.receive(length, r, train::kFirstFreeTag).wait();
    const torch::Tensor values = torch::empty({length.item<int64_t>()}, torch::kDouble);
    world.receive(values, r, train::kFirstFreeTag + 1).wait();
    per_rank.emplace_back(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
  }
  return per_rank;
}

// The medians over `reps` steps of every stage's timelines: the step, each stage's busy time, the
// bubble and the communication wait, and the bytes sent per step.
nlohmann::ordered_json step_medians(const std::vector<std::vector<double>>& per_rank, int reps) {
  std::vector<size_t> cursor(per_rank.size(), 0);
  std::vector<double> bubble, communication, step;
  std::vector<std::vector<double>> busy(per_rank.size());
  int64_t bytes = 0;
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<Measured> stages_of_step;
    for (size_t r = 0; r < per_rank.size(); ++r) stages_of_step.push_back(decode(per_rank[r], cursor[r]));
    const StepShares sh = shares(stages_of_step);
    bubble.push_back(sh.bubble), communication.push_back(sh.communication), step.push_back(sh.step_seconds);
    bytes = sh.bytes;
    for (size_t r = 0; r < busy.size(); ++r) busy[r].push_back(sh.busy_seconds[r]);
  }
  std::vector<double> busy_ms;
  for (const auto& b : busy) busy_ms.push_back(median(b) * 1e3);
  return {{"step_ms", median(step) * 1e3}, {"stage_busy_ms", busy_ms}, {"bubble", median(bubble)},
          {"comm_wait_share", median(communication)}, {"bytes_per_step", bytes}};
}

// One copy of the pipelined benchmark: every variant's stage, stepped in turn; rank 0 gathers the
// timelines and writes the medians to `result`.
void run_stage(const Args& a, const train::Settings& s, const dist::Environment& environment) {
  const int64_t stages = a.integer("stages"), m = a.integer("micro-batches");
  const int warmup = static_cast<int>(a.integer("warmup")), reps = static_cast<int>(a.integer("reps"));
  const train::Schedule schedule = train::parse_schedule(a.str("schedule"));
  torch::set_num_threads(static_cast<int>(a.integer("threads")));
  dist::Group world(environment, std::chrono::milliseconds(120000), {});
  const train::PipelineLayout layout = train::PipelineLayout::of(environment.rank, environment.world_size, stages);
  if (layout.replicas != 1) throw std::invalid_argument("mhc bench pipeline: WORLD_SIZE must equal --stages");

  struct Variant {
    BenchModel bench;
    std::unique_ptr<train::PipelineStage> stage;
    std::vector<double> encoded;  // the measured steps' timelines
  };
  const std::vector<torch::Tensor> tokens = micro_batches(s, m);
  std::vector<Variant> variants;
  for (const auto& name : a.list("variant")) {
    BenchModel bench(s, name, a.str("streams"));
    const auto [x, y] = inputs_and_targets(tokens[0]);
    std::vector<int64_t> first_blocks = train::measure_and_balance(bench.model, world, stages, x, y);
    auto stage = std::make_unique<train::PipelineStage>(bench.model, world, layout, std::move(first_blocks), schedule,
                                                        train::parse_pipe_dtype(a.str("pipe-dtype"), bench.model->config().dtype));
    variants.push_back({std::move(bench), std::move(stage), {}});
  }
  for (int rep = 0; rep < warmup + reps; ++rep)
    for (auto& v : variants) {
      train::StageTimeline timeline;
      auto& stage = *v.stage;
      world.barrier();  // every stage starts the step together
      const auto t0 = Clock::now();
      train::train_step(
          *v.bench.optimizer, stage.parameters(),
          [&] { return stage.run(m, [&](int64_t i) { return inputs_and_targets(tokens[i]); }, &timeline); }, kClip, kLr,
          &stage.replicas(), [&](double& loss, double& squares) { stage.combine(loss, squares); });
      if (rep >= warmup) encode(timeline, seconds_since(t0), v.encoded);
    }

  // The timelines to rank 0: a length, then the numbers, per variant.
  if (!world.leader()) {
    for (auto& v : variants) {
      const torch::Tensor values = torch::tensor(v.encoded, torch::kDouble);
      world.send(torch::tensor({values.numel()}, torch::kLong), 0, train::kFirstFreeTag).wait();
      world.send(values, 0, train::kFirstFreeTag + 1).wait();
    }
    return;
  }
  nlohmann::ordered_json result = nlohmann::ordered_json::array();
  for (auto& v : variants) {
    nlohmann::ordered_json medians = step_medians(gather_timelines(world, v.encoded), reps);
    medians["bubble_theory"] = double(stages - 1) / double(m + stages - 1);  // GPipe's and 1F1B's alike
    result.push_back({{"variant", v.bench.variant},
                      {"streams", v.bench.model->config().streams},
                      {"stage_first_blocks", v.stage->first_blocks()}});
    result.back().update(medians);
  }
  write_file_atomic(a.str("result"), result.dump());
}

// The rows' columns: JSON keys as scripts read them; milliseconds, shares and MB for people.
Table pipeline_table(TableStyle style) {
  const Format ms = Format::fixed(1), percent = Format::percent(1);
  return Table({{"variant", "variant"}, {"n", "streams"}, {"", "preset"}, {"", "stages"}, {"", "micro_batches"},
                     {"", "schedule"}, {"", "threads_per_stage"}, {"stages' first blocks", "stage_first_blocks"},
                     {"pipelined step ms", "pipelined_step_ms", ms}, {"one-process step ms", "one_process_step_ms", ms},
                     {"", "tokens_per_s"}, {"throughput vs one process", "throughput_vs_one_process", Format::ratio(2)},
                     {"bubble", "bubble", percent}, {"theory", "bubble_theory", percent},
                     {"communication wait", "comm_wait_share", percent},
                     {"MB sent per step", "bytes_per_step", Format::fixed(1).scaled(1e-6)}, {"", "stage_busy_ms"}},
               style);
}

// What the table measures, on what: the lines above it.
std::string caption(const Args& a, const GPTConfig& c, int64_t windows, int64_t stages, int threads, int reps,
                    TableStyle style) {
  std::ostringstream s;
  s << (style == TableStyle::markdown ? "Machine: " : "machine: ") << cpu_model() << ". Preset " << a.str("preset") << ": "
    << c.layers << " blocks, C = " << c.dim << ", " << a.str("micro-batches") << " micro-batches of "
    << windows / a.integer("micro-batches") << " x " << c.seq_len << " tokens per step; " << stages << " stages ("
    << a.str("schedule") << ") x " << threads << " threads against one process x " << stages * threads
    << " threads; median of " << reps << " steps, variants interleaved.\n" << (style == TableStyle::markdown ? "\n" : "");
  return s.str();
}

}  // namespace

int bench_pipeline(const std::vector<std::string>& argv) {
  Args a("mhc bench pipeline",
         "A preset's training step pipelined over --stages local processes (1F1B or GPipe), against one process with the\n"
         "same global batch, micro-batches and cores: bubble, bytes between stages, communication wait, throughput.");
  declare_model_bench_flags(a, "5", "the median is reported");
  a.set("preset", "deep");  // 24 blocks: stages can be balanced to within one block
  a.set("variant", "residual,mhc");
  a.set("threads", "1");
  a.flag("stages", "2", "pipeline stages, one process each", IntegerRange{2, 64})
      .flag("micro-batches", "8", "m, micro-batches per step (each of the preset's --batch windows)", IntegerRange{1, 4096})
      .flag("schedule", "1f1b", "1f1b or gpipe")
      .flag("pipe-dtype", "auto", "the stream state between stages: auto (the activations' dtype), float32, bfloat16")
      .flag("result", "", "(set by the command for its copies) where rank 0 writes the pipelined measurements");
  if (!a.parse(argv)) return 0;
  const train::Settings s = model_bench_settings(a);
  const TableStyle style = table_style(a);
  const int64_t stages = a.integer("stages"), m = a.integer("micro-batches");
  const int threads = static_cast<int>(a.integer("threads"));
  train::parse_schedule(a.str("schedule"));
  train::parse_pipe_dtype(a.str("pipe-dtype"), torch::kFloat);  // bad values refused before anything runs
  train::check_pipeline_stages(stages, s.integer("layers"));
  const dist::Environment environment = dist::Environment::read();
  if (environment.world_size > 1) {
    run_stage(a, s, environment);
    return 0;
  }

  // The one-process step: all the stages' cores, every micro-batch, the variants interleaved.
  struct OneProcess {
    BenchModel bench;
    std::vector<double> seconds;
  };
  std::vector<OneProcess> one;
  for (const auto& name : a.list("variant")) one.push_back({BenchModel(s, name, a.str("streams")), {}});
  const std::vector<torch::Tensor> tokens = micro_batches(s, m);
  const int warmup = static_cast<int>(a.integer("warmup")), reps = static_cast<int>(a.integer("reps"));
  auto measure_one_process = [&] {
    torch::set_num_threads(static_cast<int>(stages) * threads);
    for (int rep = 0; rep < warmup + reps; ++rep)
      for (auto& v : one) {
        int64_t i = 0;
        const auto t0 = Clock::now();
        train::train_step(*v.bench.optimizer, v.bench.parameters, [&] {
          const auto [x, y] = inputs_and_targets(tokens[i++]);
          return v.bench.model->loss(x, y);
        }, m, kClip, kLr);
        if (rep >= warmup) v.seconds.push_back(seconds_since(t0));
      }
  };
  measure_one_process();
  const fs::path folder = fs::temp_directory_path() / ("mhc-bench-pipeline-" + std::to_string(::getpid()));
  fs::create_directories(folder);
  const std::string result_path = (folder / "result.json").string();
  std::vector<std::string> command = {"--nproc", std::to_string(stages), "--", "bench", "pipeline"};
  command.insert(command.end(), argv.begin(), argv.end());
  command.insert(command.end(), {"--result", result_path});
  const int status = launch(command);
  measure_one_process();  // before and after the pipelined run: a slower period of the host hits both
  std::string text;
  if (status == 0) text = read_file(result_path);
  fs::remove_all(folder);
  if (status != 0) throw std::runtime_error("mhc bench pipeline: the pipelined run failed (status " + std::to_string(status) + ")");

  const auto results = nlohmann::json::parse(text);
  const GPTConfig& c = one.front().bench.model->config();
  const int64_t tokens_per_step = m * s.integer("batch") * c.seq_len;
  if (style != TableStyle::json) std::cout << caption(a, c, m * s.integer("batch"), stages, threads, reps, style);
  const Table table = pipeline_table(style);
  std::cout << table.header();
  for (size_t i = 0; i < one.size(); ++i) {
    const auto& r = results.at(i);
    const double piped = r.at("step_ms").get<double>(), alone = median(one[i].seconds) * 1e3;
    std::cout << table.row({one[i].bench.variant, r.at("streams"), a.str("preset"), stages, m, a.str("schedule"), threads,
                            r.at("stage_first_blocks"), piped, alone, tokens_per_step / piped * 1e3, alone / piped,
                            r.at("bubble"), r.at("bubble_theory"), r.at("comm_wait_share"),
                            r.at("bytes_per_step"), r.at("stage_busy_ms")})
              << std::flush;
  }
  return 0;
}

}  // namespace mhc::cli
