// Recomputation that trades a little compute for activation memory (DESIGN.md §6, mHC paper §4.3).
//
// n streams make every saved residual state n times wider. Two policies give that memory back:
//
//   streams  the paper's selective recomputation. Of a group of L_r consecutive sublayers only the
//            group's input state x_{l0} stays resident, with what the connections save anyway
//            (each F output y_l and the small coefficients). The states x_{l0+1} … x_{l0+L_r−1}
//            are freed as soon as the forward pass has consumed them and each is rebuilt from
//            x_{l0}, just before the backward pass reaches the sublayer that reads it, by re-running
//            the fused `post` op x_{l+1} = H_res·x_l + H_post^T·y_l. F is never re-run, and F's
//            activations are F's.
//   blocks   classic activation checkpointing: a group's forward runs without a graph and is run
//            again, F included, in the backward pass. It gives back F's activations too.
//
// Both give bit-identical values and gradients to no recomputation: the rebuild runs the same
// kernels on the same inputs with the same thread count (deterministic, per token).
//
// How `streams` frees memory that autograd nodes still reference: pre and post save x_l (the same
// storage, through views), so the storage's data is released in place and a hook on the next
// state's gradient refills it before any node that reads it runs (Megatron-LM's "checkpoint without output"
// does the same with storage resizing). A discarded state must not be read between the forward and
// the backward pass: its data is gone. The stacks below never hand one out.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/custom_class.h>
#include <torch/torch.h>

namespace mhc {

enum class Recompute { none, streams, blocks };

// "none", "streams", "blocks"; throws std::invalid_argument naming the value and the accepted ones.
Recompute parse_recompute(const std::string& name);
const char* recompute_name(Recompute mode);

struct RecomputeOptions {
  Recompute mode = Recompute::none;
  int64_t every = 0;  // L_r, sublayers per group; 0: auto (auto_group_size)
};

// L_r when `every` is auto, for n streams and L sublayers:
//   streams  the whole stack, split into the fewest equal groups of at most kMaxAutoStreamGroup.
//            The rebuild's transient is three states whatever L_r is, so memory falls as L_r grows
//            and only time limits it: a group of k re-runs post (k − 1)/2 times per sublayer on
//            average, 5.5 at most (measured ≤ 2% of a step at the small and deep presets). The
//            paper's round(sqrt(n·L/(n+2))) minimises its own scheme's resident + (n+2)·C·L_r
//            transient, a transient this rebuild does not have (docs/benchmarks.md compares them).
//   blocks   the paper's round(sqrt(n·L/(n+2))): resident group inputs against one group's
//            activations rebuilt at a time, the classic √L balance.
// At least 1, at most L.
constexpr int64_t kMaxAutoStreamGroup = 12;
int64_t auto_group_size(Recompute mode, int64_t streams, int64_t sublayers);

// L_r as `options` asks for it (auto resolved), at most L.
int64_t group_size(const RecomputeOptions& options, int64_t streams, int64_t sublayers);

// The `streams` policy for one group of sublayers l0 … l0+k−1, fed as the forward pass runs:
//
//     mhc::StreamGroup group(x);                      // x_{l0}, the group's input: kept
//     for each sublayer of the group:
//       x_next = post(x, y, H_post, H_res);           // the fused op, boundary's x_next, or reference::post
//       group.add(x_next, y, H_post, H_res);          // frees x's data, unless x is the input
//
// Each state [..., n, C] must own its storage (as post returns it); y [..., C], H_post [..., n],
// H_res [..., n, n]. Freed states are rebuilt from x_{l0} by hooks on the next state's gradient,
// just before the backward pass reads them: at most three states are alive at a time (two rebuilt
// ones, and the one after them that a fused boundary's backward also reads), for
// k·(k − 1)/2 re-runs of post per group (recompute.cpp says why). With grad mode off, or a state
// not requiring grad, it frees nothing: no backward pass will come; nor under saved-tensor hooks.
// `use_reference` says that this post ran reference::post, so the rebuild does too. The Python
// package's stack uses it as torch.classes.mhc._StreamGroup (the fused rebuild): a private name,
// since it releases the data of the states it is given (it refuses a leaf).
//
// A backward pass may also reach a released state by a path that skips the hook: a loss on a
// sublayer's output inside a group, or an in-place change of the stack's output. The fused ops'
// backward then rebuilds it first (rebuild_if_released), so such programs get `none`'s gradients.
// The saved state `x` of a fused op's backward, its data rebuilt first if a StreamGroup released
// it and no hook has rebuilt it yet. Throws c10::Error (one line) when its group's inputs are gone.
void rebuild_if_released(const torch::Tensor& x);

struct FreedStates;
class StreamGroup : public torch::CustomClassHolder {
 public:
  explicit StreamGroup(const torch::Tensor& start);
  void add(const torch::Tensor& x_next, const torch::Tensor& y, const torch::Tensor& H_post, const torch::Tensor& H_res,
           bool use_reference = false);

 private:
  std::shared_ptr<FreedStates> freed_;  // shared with the hooks
  torch::Tensor last_;                  // the newest state: freed when the next one comes
  bool active_;
};

// The `blocks` policy: segment(x) run without a graph in the forward pass and again, with one, in
// the backward pass (F included), then differentiated. Parameters used inside the segment get their
// gradients accumulated by that inner backward, as with PyTorch's reentrant checkpoint, so the
// backward pass must be a plain backward(): torch::autograd::grad, backward(inputs) and
// create_graph are refused with one line. The segment must be deterministic, and neither x nor the
// `watched` tensors (the parameters it reads) are to be changed in place before the backward pass:
// version checks refuse it, as autograd refuses it without recomputation. With grad mode off it is
// segment(x).
torch::Tensor checkpoint(const std::function<torch::Tensor(const torch::Tensor&)>& segment, const torch::Tensor& x,
                         std::vector<torch::Tensor> watched = {});

}  // namespace mhc
