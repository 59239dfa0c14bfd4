// Pipeline parallelism for the GPT (`mhc train --pipeline-stages S`): the blocks cut into S
// contiguous stages balanced by cost, the micro-batches of a step scheduled GPipe or 1F1B, and the
// n-stream state [b, T, n, C] and its gradient carried between stages by c10d point-to-point
// transfers that are posted ahead of need and waited on only where the data is used, so that the
// n-times-wider boundary overlaps the stages' computation.
//
// WORLD_SIZE = S × D: rank = replica · S + stage. Every rank builds the whole model (the same
// initialisation everywhere) and trains the parameters of its stage; replicas of a stage average
// their gradients as in data parallelism; the ranks of a pipeline add their gradient norms. Rank 0
// gathers the other stages' parameters (and AdamW moments) when it evaluates or checkpoints, so a
// checkpoint is the whole model and resumes on any (S, D).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "mhc/distributed.h"
#include "mhc/model.h"

namespace mhc::train {

class AdamW;

// Point-to-point tags from here up are free for other users of the stages' `world`: a step's
// schedule uses those below 2^30 (two per micro-batch), gather_to_leader [2^30, 2^30 + S).
inline constexpr int64_t kFirstFreeTag = (int64_t(1) << 30) + (int64_t(1) << 20);

enum class Schedule { gpipe, one_f_one_b };
// "gpipe" or "1f1b"; throws std::invalid_argument naming the value and the accepted names.
Schedule parse_schedule(const std::string& name);
const char* schedule_name(Schedule schedule);

// --pipe-dtype: "auto" (the activations' dtype), "float32" or "bfloat16"; throws
// std::invalid_argument naming the value and the accepted names.
torch::ScalarType parse_pipe_dtype(const std::string& name, torch::ScalarType activations);
// Throws std::invalid_argument unless 1 <= stages <= blocks (each stage runs at least one block).
void check_pipeline_stages(int64_t stages, int64_t blocks);

// What the parts of a stage cost, in any one unit: the embedding (on the first stage), one block
// (the blocks are alike), the stream head, final norm, LM head and loss (on the last stage).
struct PartCosts {
  double embed = 0, block = 1, head = 0;
};
// Seconds of one forward and backward pass of each part on this process, on one micro-batch
// (tokens, targets [b, T]): the median of `reps` after a warm-up. The parameters' gradients are
// left undefined, as in a fresh model; the random state is not touched.
PartCosts measured_costs(GPT& model, const torch::Tensor& tokens, const torch::Tensor& targets, int reps = 3);

// The first block of each stage and, last, the number of blocks: stage s runs blocks
// [first[s], first[s + 1]). Contiguous, non-empty, and minimising the costliest stage's cost, the
// embedding counted on the first stage and the head on the last. Throws std::invalid_argument
// when S exceeds the blocks.
std::vector<int64_t> balance_stages(int64_t blocks, int64_t stages, const PartCosts& costs);
// The split every rank of `world` takes: rank 0 measures the costs (measured_costs, on one
// micro-batch) and broadcasts them. A split changes where the work runs, never a result. (Counted
// FLOPs were the first choice, and they missed: the attention's softmax and the norms are
// elementwise work that a CPU runs far below its FMA rate, so a block costs more against the LM
// head's GEMM than its FLOPs say.)
std::vector<int64_t> measure_and_balance(GPT& model, dist::Group& world, int64_t stages, const torch::Tensor& tokens,
                                         const torch::Tensor& targets);
// The stage that trains a GPT parameter, by name: embed.* the first, blocks.<i>.* the stage of block
// i, the rest (stream head, final norm, LM head) the last.
int64_t stage_of_parameter(const std::string& name, const std::vector<int64_t>& first_blocks);

// Where a rank sits in S stages × D replicas.
struct PipelineLayout {
  int64_t stages = 1, replicas = 1, stage = 0, replica = 0;
  // Throws std::invalid_argument when S does not divide WORLD_SIZE.
  static PipelineLayout of(int rank, int world_size, int64_t stages);
  int rank_of(int64_t replica_index, int64_t stage_index) const {
    return static_cast<int>(replica_index * stages + stage_index);
  }
  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
};

// What one step's schedule did on this rank, in seconds on the steady clock (which every process of
// one machine shares, so that `mhc bench pipeline` can line up the stages' timelines).
struct StageTimeline {
  struct Post {  // a transfer handed to c10d: a send (of micro-batch data to a peer) or a receive
    int peer;
    int64_t tag;
    bool send;
    double at;
  };
  struct Wait {  // the stage blocked on that transfer
    int peer;
    int64_t tag;
    bool send;
    double begin, end;
  };
  double begin = 0, end = 0;  // the schedule: first forward to last transfer done
  std::vector<Post> posts;
  std::vector<Wait> waits;
  int64_t bytes_sent = 0;
};

class PipelineStage {
 public:
  // `world` holds every rank; the stage keeps a subgroup of the replicas of its stage. wire_dtype:
  // the dtype of the stream state and its gradient between stages (the activations' own, or
  // bfloat16 to halve the bytes; the coefficients are computed inside the stage and never travel).
  PipelineStage(GPT model, dist::Group& world, const PipelineLayout& layout, std::vector<int64_t> first_blocks,
                Schedule schedule, torch::ScalarType wire_dtype);
  ~PipelineStage();

  // The forward and backward passes of `micro_batches` micro-batches through this stage, in the
  // schedule's order; micro_batch(i) gives micro-batch i's tokens and targets [b, T]. Gradients
  // accumulate in this stage's parameters, every loss divided by micro_batches. Returns the sum of
  // those losses on the last stage, 0 on the others.
  double run(int64_t micro_batches,
             const std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t)>& micro_batch,
             StageTimeline* timeline = nullptr);

  // The parameters this stage trains, in the model's order.
  const std::vector<torch::Tensor>& parameters() const { return parameters_; }
  // The ranks holding the same stage (data parallelism within a stage).
  dist::Group& replicas() { return *replicas_; }
  const PipelineLayout& layout() const { return layout_; }
  // (first block, end block) of this stage.
  std::pair<int64_t, int64_t> blocks() const;
  // The first block of every stage.
  std::vector<int64_t> first_blocks() const { return {first_blocks_.begin(), first_blocks_.end() - 1}; }

  // The step's loss and squared gradient norm over the whole pipeline: each of replica 0's stages
  // contributes its own (one all-reduce over the world), the same on every rank afterwards.
  void combine(double& loss, double& squares);
  // Rank 0 receives every other stage's parameters (and, with `optimizer`, its AdamW moments) from
  // replica 0 of that stage, so that it can evaluate, sample and checkpoint the whole model. Every
  // rank calls it at the same step; it is a no-op for a pipeline of one stage.
  void gather_to_leader(AdamW* optimizer);

 private:
  GPT model_;
  dist::Group& world_;
  PipelineLayout layout_;
  std::vector<int64_t> first_blocks_;
  Schedule schedule_;
  torch::ScalarType wire_dtype_;
  std::unique_ptr<dist::Group> replicas_;
  std::vector<torch::Tensor> parameters_;
  // The named parameters that stage trains, in the model's order.
  std::vector<std::pair<std::string, torch::Tensor>> parameters_of(int64_t stage) const;
};

}  // namespace mhc::train
