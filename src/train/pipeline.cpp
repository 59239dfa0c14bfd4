// The pipeline stage behind mhc/pipeline.h: the stage split, the GPipe and 1F1B orders, the
// transfers of the stream state between neighbouring stages, and the cross-stage reductions.
#include "mhc/pipeline.h"

#include <chrono>
#include <algorithm>
#include <deque>
#include <limits>
#include <map>

#include "mhc/optimizer.h"

namespace mhc::train {

namespace {

using Clock = std::chrono::steady_clock;

double now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// Tags of a step's transfers: micro-batch i's stream state forward 2i, its gradient back 2i + 1
// (below 2^30 for every micro-batch count a run can have); the gathers to rank 0 from 2^30, one tag
// per stage (mhc/pipeline.h: kFirstFreeTag).
int64_t forward_tag(int64_t micro) { return 2 * micro; }
int64_t backward_tag(int64_t micro) { return 2 * micro + 1; }
constexpr int64_t kGatherTag = int64_t(1) << 30;

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Schedule parse_schedule(const std::string& name) {
  if (name == "1f1b") return Schedule::one_f_one_b;
  if (name == "gpipe") return Schedule::gpipe;
  throw std::invalid_argument("--schedule '" + name + "' (accepted: 1f1b, gpipe)");
}

const char* schedule_name(Schedule schedule) { return schedule == Schedule::gpipe ? "gpipe" : "1f1b"; }

torch::ScalarType parse_pipe_dtype(const std::string& name, torch::ScalarType activations) {
  if (name == "auto") return activations;
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  throw std::invalid_argument("--pipe-dtype '" + name + "' (accepted: auto, float32, bfloat16)");
}

void check_pipeline_stages(int64_t stages, int64_t blocks) {
  if (stages < 1 || stages > blocks)
    throw std::invalid_argument("--pipeline-stages " + std::to_string(stages) + " for " + std::to_string(blocks) +
                                " blocks (accepted: 1 to " + std::to_string(blocks) + ": each stage runs at least one block)");
}

PartCosts measured_costs(GPT& model, const torch::Tensor& tokens, const torch::Tensor& targets, int reps) {
  auto seconds = [&](const std::function<void()>& pass) {
    std::vector<double> times;
    for (int r = 0; r <= reps; ++r) {  // the first is the warm-up
      const auto t0 = Clock::now();
      pass();
      if (r > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return median_of(times);
  };
  const torch::Tensor x = model->embed(tokens).detach();
  PartCosts costs;
  costs.embed = seconds([&] { model->embed(tokens).sum().backward(); });
  costs.block = seconds([&] {
    const torch::Tensor y = model->run_blocks(x.clone().requires_grad_(true), 0, 1);
    y.backward(torch::ones_like(y));
  });
  costs.head = seconds([&] { model->loss_of(model->logits(x.clone().requires_grad_(true)), targets).backward(); });
  for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
  return costs;
}

std::vector<int64_t> balance_stages(int64_t L, int64_t stages, const PartCosts& costs) {
  check_pipeline_stages(stages, L);
  const double inf = std::numeric_limits<double>::infinity();
  // worst[s][j]: the least possible cost of the costliest stage when stages 0..s−1 run blocks [0, j);
  // cut[s][j]: where stage s − 1 starts in that split.
  std::vector<std::vector<double>> worst(stages + 1, std::vector<double>(L + 1, inf));
  std::vector<std::vector<int64_t>> cut(stages + 1, std::vector<int64_t>(L + 1, 0));
  worst[0][0] = 0;
  for (int64_t s = 1; s <= stages; ++s)
    for (int64_t j = s; j <= L; ++j)
      for (int64_t i = s - 1; i < j; ++i) {
        const double cost = static_cast<double>(j - i) * costs.block + (s == 1 ? costs.embed : 0.0) +
                            (s == stages && j == L ? costs.head : 0.0);
        const double candidate = std::max(worst[s - 1][i], cost);
        if (candidate < worst[s][j]) worst[s][j] = candidate, cut[s][j] = i;
      }
  std::vector<int64_t> first(stages + 1);
  first[stages] = L;
  for (int64_t s = stages, j = L; s > 0; --s) j = first[s - 1] = cut[s][j];
  return first;
}

std::vector<int64_t> measure_and_balance(GPT& model, dist::Group& world, int64_t stages, const torch::Tensor& tokens,
                                         const torch::Tensor& targets) {
  const torch::Tensor costs = torch::zeros({3}, torch::kDouble);
  if (world.leader()) {
    const PartCosts measured = measured_costs(model, tokens, targets);
    costs[0] = measured.embed, costs[1] = measured.block, costs[2] = measured.head;
  }
  world.broadcast({costs});
  return balance_stages(model->config().layers, stages,
                        {costs[0].item<double>(), costs[1].item<double>(), costs[2].item<double>()});
}

int64_t stage_of_parameter(const std::string& name, const std::vector<int64_t>& first_blocks) {
  const int64_t stages = static_cast<int64_t>(first_blocks.size()) - 1;
  if (name.rfind("embed.", 0) == 0) return 0;
  if (name.rfind("blocks.", 0) != 0) return stages - 1;
  const int64_t block = std::stoll(name.substr(7, name.find('.', 7) - 7));
  int64_t s = 0;
  while (s + 1 < stages && first_blocks[s + 1] <= block) ++s;
  return s;
}

PipelineLayout PipelineLayout::of(int rank, int world_size, int64_t stages) {
  if (stages < 1 || world_size % stages != 0)
    throw std::invalid_argument("--pipeline-stages " + std::to_string(stages) + " does not divide WORLD_SIZE=" +
                                std::to_string(world_size) + " (WORLD_SIZE = stages x data-parallel replicas; accepted: " +
                                "a divisor of " + std::to_string(world_size) + ")");
  PipelineLayout l;
  l.stages = stages;
  l.replicas = world_size / stages;
  l.stage = rank % stages;
  l.replica = rank / stages;
  return l;
}

PipelineStage::PipelineStage(GPT model, dist::Group& world, const PipelineLayout& layout,
                             std::vector<int64_t> first_blocks, Schedule schedule, torch::ScalarType wire_dtype)
    : model_(std::move(model)), world_(world), layout_(layout), first_blocks_(std::move(first_blocks)),
      schedule_(schedule), wire_dtype_(wire_dtype) {
  std::vector<int> same_stage;
  for (int64_t d = 0; d < layout_.replicas; ++d) same_stage.push_back(layout_.rank_of(d, layout_.stage));
  replicas_ = world_.subgroup(same_stage);
  for (const auto& [name, parameter] : parameters_of(layout_.stage)) parameters_.push_back(parameter);
}

std::vector<std::pair<std::string, torch::Tensor>> PipelineStage::parameters_of(int64_t stage) const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model_->named_parameters())
    if (stage_of_parameter(p.key(), first_blocks_) == stage) out.emplace_back(p.key(), p.value());
  return out;
}

PipelineStage::~PipelineStage() = default;

std::pair<int64_t, int64_t> PipelineStage::blocks() const {
  return {first_blocks_[layout_.stage], first_blocks_[layout_.stage + 1]};
}

double PipelineStage::run(int64_t micro_batches,
                          const std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t)>& micro_batch,
                          StageTimeline* timeline) {
  const int64_t m = micro_batches, S = layout_.stages;
  const int previous = layout_.first() ? -1 : layout_.rank_of(layout_.replica, layout_.stage - 1);
  const int next = layout_.last() ? -1 : layout_.rank_of(layout_.replica, layout_.stage + 1);
  const std::pair<int64_t, int64_t> span = blocks();
  StageTimeline local;
  StageTimeline& trace = timeline ? *timeline : local;
  trace = {};
  trace.begin = now();

  // Transfers, by (peer, tag): posted as soon as their buffer exists; a receive waited on where its
  // data is needed; a send once it must be done — micro-batch i's stream state when its gradient
  // has come back (the next stage has used it), a gradient when the next one is sent (the previous
  // stage posted its receive long before) — so only the micro-batches in flight hold buffers.
  using Key = std::pair<int, int64_t>;
  std::map<Key, dist::Transfer> sends;
  std::map<Key, std::pair<torch::Tensor, dist::Transfer>> receives;
  auto post_send = [&](const torch::Tensor& value, int peer, int64_t tag) {
    const torch::Tensor wire = value.detach().to(wire_dtype_).contiguous();
    trace.posts.push_back({peer, tag, true, now()});
    trace.bytes_sent += wire.numel() * wire.element_size();
    TORCH_INTERNAL_ASSERT(sends.emplace(Key{peer, tag}, world_.send(wire, peer, tag)).second, "a send posted twice");
  };
  auto finish_send = [&](int peer, int64_t tag) {
    const auto found = sends.find({peer, tag});
    const double begin = now();
    found->second.wait();
    trace.waits.push_back({peer, tag, true, begin, now()});
    sends.erase(found);
  };
  auto post_receive = [&](int peer, int64_t tag, at::IntArrayRef shape) {
    torch::Tensor buffer = torch::empty(shape, torch::TensorOptions().dtype(wire_dtype_));
    trace.posts.push_back({peer, tag, false, now()});
    TORCH_INTERNAL_ASSERT(receives.emplace(Key{peer, tag}, std::make_pair(buffer, world_.receive(buffer, peer, tag))).second,
                          "a receive posted twice");
  };
  auto take = [&](int peer, int64_t tag) {
    auto found = receives.find({peer, tag});
    auto [buffer, transfer] = std::move(found->second);
    receives.erase(found);
    const double begin = now();
    transfer.wait();
    trace.waits.push_back({peer, tag, false, begin, now()});
    return buffer;
  };

  const GPTConfig& c = model_->config();
  const std::pair<torch::Tensor, torch::Tensor> batch0 = micro_batch(0);
  const std::vector<int64_t> shape = {batch0.first.size(0), batch0.first.size(1), c.streams, c.dim};  // the stream state's

  struct InFlight {
    torch::Tensor input, output;  // output: the stream state sent on, or the loss on the last stage
  };
  std::deque<InFlight> in_flight;
  double loss_sum = 0;
  int64_t forwarded = 0, backwarded = 0;
  if (previous >= 0) post_receive(previous, forward_tag(0), shape);

  auto forward = [&] {
    const int64_t i = forwarded++;
    InFlight f;
    const auto [tokens, targets] = i == 0 ? batch0 : micro_batch(i);
    if (previous < 0) {
      f.input = model_->embed(tokens);
    } else {
      f.input = take(previous, forward_tag(i)).to(c.dtype).requires_grad_(true);
      if (i + 1 < m) post_receive(previous, forward_tag(i + 1), shape);  // the next one's transfer overlaps this one's work
    }
    torch::Tensor x = model_->run_blocks(f.input, span.first, span.second);
    if (next < 0) {
      f.output = model_->loss_of(model_->logits(x), targets) / static_cast<double>(m);
      loss_sum += f.output.item<double>();
    } else {
      f.output = x;
      post_send(x, next, forward_tag(i));
      post_receive(next, backward_tag(i), shape);  // its gradient, whenever the next stage gets to it
    }
    in_flight.push_back(std::move(f));
  };
  auto backward = [&] {
    const int64_t i = backwarded++;
    InFlight f = std::move(in_flight.front());
    in_flight.pop_front();
    if (next < 0) {
      f.output.backward();
    } else {
      torch::autograd::backward({f.output}, {take(next, backward_tag(i)).to(f.output.scalar_type())});
      finish_send(next, forward_tag(i));
    }
    if (previous >= 0) {
      if (i > 0) finish_send(previous, backward_tag(i - 1));
      post_send(f.input.grad(), previous, backward_tag(i));
    }
  };

  // GPipe: every forward, then every backward. 1F1B: stage s runs S − 1 − s forwards ahead (fewer
  // when there are fewer micro-batches), then alternates one forward and one backward, then drains:
  // at most S − s micro-batches' activations are alive at once instead of m.
  const int64_t ahead = schedule_ == Schedule::gpipe ? m : std::min(m, S - 1 - layout_.stage);
  for (int64_t k = 0; k < ahead; ++k) forward();
  for (int64_t k = ahead; k < m; ++k) forward(), backward();
  while (backwarded < m) backward();

  while (!sends.empty()) finish_send(sends.begin()->first.first, sends.begin()->first.second);
  trace.end = now();
  return loss_sum;
}

void PipelineStage::combine(double& loss, double& squares) {
  if (layout_.stages == 1) return;
  torch::NoGradGuard no_grad;
  // One slot per stage, written by replica 0 only: the sum is exact, and the same on every rank.
  const torch::Tensor slots = torch::zeros({2 * layout_.stages}, torch::kDouble);
  if (layout_.replica == 0) slots[2 * layout_.stage] = loss, slots[2 * layout_.stage + 1] = squares;
  world_.sum({slots});
  loss = squares = 0;
  for (int64_t s = 0; s < layout_.stages; ++s)
    loss += slots[2 * s].item<double>(), squares += slots[2 * s + 1].item<double>();
}

void PipelineStage::gather_to_leader(AdamW* optimizer) {
  if (layout_.stages == 1 || layout_.replica != 0) return;
  torch::NoGradGuard no_grad;
  const std::map<std::string, torch::Tensor> moments = optimizer ? optimizer->state() : std::map<std::string, torch::Tensor>{};
  // Stage s's tensors in one flat fp32 buffer: its parameters, then (with the optimizer) their moments.
  auto tensors_of = [&](int64_t s) {
    std::vector<torch::Tensor> out;
    const auto named = parameters_of(s);
    for (const auto& [name, parameter] : named) out.push_back(parameter);
    if (optimizer)
      for (const auto& prefix : {"adam_m/", "adam_v/"})
        for (const auto& [name, parameter] : named) out.push_back(moments.at(prefix + name));
    return out;
  };
  if (layout_.stage != 0) {
    std::vector<torch::Tensor> parts;
    for (const auto& t : tensors_of(layout_.stage)) parts.push_back(t.detach().to(torch::kFloat).reshape({-1}));
    world_.send(torch::cat(parts), 0, kGatherTag + layout_.stage).wait();
    return;
  }
  for (int64_t s = 1; s < layout_.stages; ++s) {
    const std::vector<torch::Tensor> targets = tensors_of(s);
    int64_t count = 0;
    for (const auto& t : targets) count += t.numel();
    const torch::Tensor flat = torch::empty({count}, torch::kFloat);
    world_.receive(flat, layout_.rank_of(0, s), kGatherTag + s).wait();
    int64_t offset = 0;
    for (const auto& t : targets) {
      t.copy_(flat.narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  }
}

}  // namespace mhc::train
