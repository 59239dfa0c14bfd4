// The two recomputation policies of mhc/recompute.h: `streams` (free a group's inner n-stream
// states after the forward pass, rebuild them with the fused post op before the backward pass) and
// `blocks` (reentrant activation checkpointing of a whole segment).
#include "mhc/recompute.h"

#include <ATen/SavedTensorHooks.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "mhc/ops.h"

namespace mhc {

using torch::Tensor;

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "streams") return Recompute::streams;
  if (name == "blocks") return Recompute::blocks;
  throw std::invalid_argument("--recompute '" + name + "' is not a recomputation policy (accepted: none, streams, blocks)");
}

const char* recompute_name(Recompute mode) {
  switch (mode) {
    case Recompute::none: return "none";
    case Recompute::streams: return "streams";
    case Recompute::blocks: return "blocks";
  }
  return "?";
}

int64_t auto_group_size(Recompute mode, int64_t streams, int64_t sublayers) {
  const int64_t L = std::max<int64_t>(sublayers, 1);
  if (mode == Recompute::streams) {
    const int64_t groups = (L + kMaxAutoStreamGroup - 1) / kMaxAutoStreamGroup;
    return (L + groups - 1) / groups;
  }
  const double n = static_cast<double>(streams);
  return std::clamp<int64_t>(std::llround(std::sqrt(n * static_cast<double>(L) / (n + 2))), 1, L);
}

int64_t group_size(const RecomputeOptions& options, int64_t streams, int64_t sublayers) {
  if (options.every < 0) throw std::invalid_argument("--recompute-every must be auto or at least 1, got " + std::to_string(options.every));
  if (options.every == 0) return auto_group_size(options.mode, streams, sublayers);
  return std::min(options.every, std::max<int64_t>(sublayers, 1));
}

namespace {

// ----------------------------------------------------------------------------------- streams
// A state's data, released or adopted in place: every view of the storage (the tensors pre and post
// saved) sees the change.
void release_data(const Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(c10::DataPtr(nullptr, s->device()));
  s->set_nbytes(0);
}

// Moves `fresh`'s data (same size, contiguous, owning its storage) into `t`'s storage.
void adopt_data(const Tensor& t, const Tensor& fresh) {
  c10::StorageImpl* from = fresh.storage().unsafeGetStorageImpl();
  const size_t bytes = from->nbytes();
  c10::StorageImpl* to = t.storage().unsafeGetStorageImpl();
  to->set_data_ptr_noswap(from->set_data_ptr(c10::DataPtr(nullptr, from->device())));
  to->set_nbytes(bytes);
}

bool owns_its_storage(const Tensor& t) {
  return t.is_contiguous() && t.storage_offset() == 0 &&
         t.storage().nbytes() == static_cast<size_t>(t.numel()) * t.element_size();
}

}  // namespace

struct FreedStates;

namespace {

// Each released state's storage -> its group and index, for rebuild_if_released. A group removes
// its entries when it is done or destroyed (a storage's address is reused after it is freed).
struct Released {
  std::weak_ptr<FreedStates> group;
  const FreedStates* owner;  // the group, while its weak_ptr can no longer be locked (its destructor)
  size_t index;
};
std::mutex released_mutex;
std::unordered_map<const c10::StorageImpl*, Released> released_states;

}  // namespace

// What one group keeps to rebuild its freed states, shared by the hooks on its states. Every tensor
// is a detached alias (no graph edges, so no reference cycle through the hooks), dropped as soon as
// the backward pass is past the sublayers that need it.
//
// A freed state is rebuilt just before the backward pass reaches the sublayer that reads it, from
// the group's input, and the states in between are temporaries: at most two rebuilt states are
// alive at a time (three states in all where a fused boundary's backward, which reads the state it
// made as well as its input, is about to run), so the transient memory does not grow with the group (rebuilding the whole group
// at once, as the paper does, holds k − 1 of them at the start of the group's backward pass, when
// nothing of the sublayers' own activations has been freed yet). The price is k·(k − 1)/2 re-runs
// of post per group instead of k − 1; post is the cheapest op of a sublayer.
struct FreedStates {
  Tensor start;                           // x_{l0}
  std::vector<const c10::StorageImpl*> registered;  // in released_states
  std::vector<Tensor> freed;              // freed[i] = x_{l0+1+i}, its data released until rebuilt
  std::vector<Tensor> ys, H_post, H_res;  // post j's inputs, which make x_{l0+1+j} from x_{l0+j}
  std::vector<bool> use_reference;        // whether post j ran the reference

  Tensor post(size_t j, const Tensor& x) const {
    const int64_t n = x.size(-2), C = x.size(-1);
    const Tensor flat = x.reshape({-1, n, C}), y = ys[j].reshape({-1, C}), hp = H_post[j].reshape({-1, n}),
                 hr = H_res[j].reshape({-1, n, n});
    return use_reference[j] ? reference::post(flat, y, hp, hr) : mhc::post(flat, y, hp, hr);
  }

  FreedStates() = default;
  FreedStates(const FreedStates&) = delete;
  FreedStates& operator=(const FreedStates&) = delete;
  ~FreedStates() { forget(); }

  void forget() {
    const std::lock_guard<std::mutex> lock(released_mutex);
    for (const c10::StorageImpl* storage : registered) {
      const auto it = released_states.find(storage);
      if (it != released_states.end() && it->second.owner == this) released_states.erase(it);
    }
    registered.clear();
  }

  // Rebuilds freed[i] (x_{l0+1+i}) from the group's input, if it is still released.
  void rebuild(size_t i) {
    Tensor& target = freed[i];
    if (!target.defined() || target.storage().nbytes() != 0) return;
    torch::NoGradGuard no_grad;
    Tensor x = start;
    for (size_t j = 0; j <= i; ++j) {
      TORCH_CHECK(j < ys.size() && ys[j].defined(), "recompute='streams': a released stream state is read by a backward "
                  "pass after its group's inputs were dropped (a second backward pass over part of the graph?); use "
                  "recompute='none' or 'blocks' for such a program");
      x = post(j, x);
    }
    adopt_data(target, x);
  }

  // Called when the gradient of x_{l0+m} (m ≥ 2) is complete, so the ops that took it as an input
  // are done, and just before sublayer l0+m−1's post (alone, or in the boundary op that also
  // reads x_{l0+m} as the state it made) reads x_{l0+m−1}.
  void reached(size_t m) {
    if (m - 1 < freed.size()) freed[m - 1] = Tensor();
    ys[m - 1] = H_post[m - 1] = H_res[m - 1] = Tensor();
    rebuild(m - 2);  // unless rebuilt already (a second backward finds it kept)
    if (m == 2) {  // the group is done
      forget();
      start = Tensor(), freed.clear(), ys.clear(), H_post.clear(), H_res.clear(), use_reference.clear();
    }
  }
};

void rebuild_if_released(const Tensor& x) {
  // Traced tensors (fake, symbolic sizes: torch.compile, opcheck) hold no data to release.
  if (!x.defined() || x.unsafeGetTensorImpl()->has_symbolic_sizes_strides() || !x.has_storage()) return;
  if (x.storage().nbytes() != 0 || x.numel() == 0) return;
  Released at;
  {
    const std::lock_guard<std::mutex> lock(released_mutex);
    const auto it = released_states.find(x.storage().unsafeGetStorageImpl());
    TORCH_CHECK(it != released_states.end(), "a stream state's data was released and nothing can rebuild it");
    at = it->second;
  }
  const std::shared_ptr<FreedStates> group = at.group.lock();
  TORCH_CHECK(group, "recompute='streams': a released stream state is read after its group was done; use "
              "recompute='none' or 'blocks' for such a program");
  group->rebuild(at.index);
}

// Saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks, non-reentrant checkpointing, CPU
// offloading) may keep the saved states elsewhere or re-run this forward pass for a graph whose
// backward never runs: under them nothing is freed.
StreamGroup::StreamGroup(const Tensor& start)
    : freed_(std::make_shared<FreedStates>()),
      last_(start),
      active_(torch::GradMode::is_enabled() && at::SavedTensorDefaultHooks::get_tls_state().stack.empty()) {
  freed_->start = start.detach();
}

void StreamGroup::add(const Tensor& x_next, const Tensor& y, const Tensor& H_post, const Tensor& H_res,
                      bool use_reference) {
  const Tensor& start = freed_->start;
  TORCH_CHECK_VALUE(x_next.sizes() == start.sizes() && y.dim() == start.dim() - 1 && H_post.dim() == y.dim() &&
                        H_res.dim() == start.dim(),
                    "mhc.StreamGroup.add: need x_next of the group's shape ", start.sizes(), ", y [..., C], H_post [..., n] "
                    "and H_res [..., n, n], got ", x_next.sizes(), ", ", y.sizes(), ", ", H_post.sizes(), ", ", H_res.sizes());
  active_ = active_ && x_next.requires_grad();
  if (!active_) return;  // no backward pass will come: nothing to free
  // The group releases the data of the states it is given: a caller's own tensor (a leaf) would be
  // emptied under the caller. The states come from the connections' post or boundary ops.
  TORCH_CHECK_VALUE(x_next.grad_fn() != nullptr, "mhc._StreamGroup.add: x_next must be a state the stack's ops made "
                    "(it is a leaf: a tensor of the caller's own, whose data the group would release)");
  const size_t m = freed_->ys.size() + 1;  // x_next is x_{l0+m}
  if (m >= 2) {                           // the previous state is an inner one, consumed by now
    TORCH_CHECK_VALUE(owns_its_storage(last_), "mhc.StreamGroup.add: state ", m - 1,
                      " must own its storage, as post returns it (got a view of shape ", last_.sizes(), ")");
    freed_->freed.push_back(last_.detach());
    release_data(last_);
    {
      const std::lock_guard<std::mutex> lock(released_mutex);
      const c10::StorageImpl* storage = last_.storage().unsafeGetStorageImpl();
      released_states[storage] = {freed_, freed_.get(), freed_->freed.size() - 1};
      freed_->registered.push_back(storage);
    }
    x_next.register_hook([freed = freed_, m](const Tensor&) {
      if (!freed->ys.empty()) freed->reached(m);
    });
  }
  freed_->ys.push_back(y.detach()), freed_->H_post.push_back(H_post.detach()), freed_->H_res.push_back(H_res.detach());
  freed_->use_reference.push_back(use_reference);
  last_ = x_next;
}

// ------------------------------------------------------------------------------------ blocks
namespace {

using torch::autograd::variable_list;

// A new autograd node in the smart pointer this torch's autograd holds nodes in: torch 2.13 moved
// them from std::shared_ptr, released through deleteNode (which frees long chains without deep
// recursion), to c10::intrusive_ptr (pytorch/pytorch#181782). Tensor::grad_fn()'s type says which;
// the unqualified deleteNode is looked up (by argument-dependent lookup) only where it is used.
template <class NodeT, class... Args>
auto new_node(Args&&... args) {
  using Handle = std::decay_t<decltype(std::declval<const Tensor&>().grad_fn())>;
  if constexpr (std::is_same_v<Handle, std::shared_ptr<torch::autograd::Node>>)
    return std::shared_ptr<NodeT>(new NodeT(std::forward<Args>(args)...), [](NodeT* node) { deleteNode(node); });
  else
    return c10::make_intrusive<NodeT>(std::forward<Args>(args)...);
}

// The backward of checkpoint(): re-runs the segment with a graph and differentiates it.
struct CheckpointBackward : torch::autograd::Node {
  CheckpointBackward(std::function<Tensor(const Tensor&)> segment, const Tensor& input, std::vector<Tensor> watched)
      : segment(std::move(segment)), input(input, /*is_output=*/false), input_requires_grad(input.requires_grad()),
        watched(std::move(watched)) {
    for (const Tensor& t : this->watched) versions.push_back(t._version());
  }

  // Autograd's version check sees only saved tensors; the segment's parameters are read again
  // instead, so a change made in place since the forward pass (an optimizer step) is refused here.
  void check_watched_unchanged() const {
    for (size_t i = 0; i < watched.size(); ++i)
      TORCH_CHECK(watched[i]._version() == versions[i], "mhc.checkpoint (--recompute blocks): a parameter of shape ",
                  watched[i].sizes(), " that the segment re-runs with was modified in place after the forward pass "
                  "(version ", versions[i], ", now ", watched[i]._version(), "): the backward pass would re-run the "
                  "segment with the new values and give wrong gradients; run the backward pass first");
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(segment, "mhc.checkpoint: the segment's backward ran already and its input was released "
                         "(use retain_graph=True to run backward twice)");
    // As PyTorch's reentrant checkpoint: the inner backward pass accumulates into every parameter's
    // .grad, which torch.autograd.grad(inputs=...) must not do, and builds no graph of its own.
    TORCH_CHECK(torch::autograd::Engine::get_default_engine().is_checkpoint_valid(),
                "mhc.checkpoint (--recompute blocks) works with backward() only, not torch.autograd.grad or "
                "backward(inputs=...); use --recompute none or streams");
    TORCH_CHECK(!torch::GradMode::is_enabled(), "mhc.checkpoint (--recompute blocks) does not support "
                                                "create_graph=True; use --recompute none or streams");
    if (!grads[0].defined()) return {Tensor()};
    check_watched_unchanged();
    const Tensor x = input.unpack().detach().requires_grad_(input_requires_grad);  // checks the version
    Tensor out;
    {
      torch::AutoGradMode with_graph(true);
      out = segment(x);
    }
    if (!out.requires_grad()) return {Tensor()};  // nothing in the segment is trained
    // Accumulates the segment's parameter gradients, and x's.
    torch::autograd::backward({out}, {grads[0]});
    return {x.requires_grad() ? x.grad() : Tensor()};
  }

  // Called by the engine once the outer graph is not retained.
  void release_variables() override { segment = nullptr, input.reset_data(), watched.clear(), versions.clear(); }

  std::string name() const override { return "mhc::CheckpointBackward"; }

  std::function<Tensor(const Tensor&)> segment;
  torch::autograd::SavedVariable input;  // the segment's input, kept in place of its activations
  bool input_requires_grad;
  std::vector<Tensor> watched;     // the parameters the segment reads
  std::vector<uint32_t> versions;  // theirs at the forward pass
};

}  // namespace

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& segment, const Tensor& x, std::vector<Tensor> watched) {
  if (!torch::GradMode::is_enabled()) return segment(x);
  Tensor out;
  {
    torch::NoGradGuard no_graph;
    out = segment(x);
  }
  auto node = new_node<CheckpointBackward>(segment, x, std::move(watched));
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace mhc

// The `streams` group and the group size, for the Python package's stack (python/mhc/modules.py).
TORCH_LIBRARY_FRAGMENT(mhc, m) {
  m.def("recompute_group_size(str recompute, int streams, int sublayers, int every=0) -> int",
        [](c10::string_view recompute, int64_t streams, int64_t sublayers, int64_t every) {
          try {
            return mhc::group_size({mhc::parse_recompute(std::string(recompute)), every}, streams, sublayers);
          } catch (const std::invalid_argument& e) {
            TORCH_CHECK_VALUE(false, e.what());
          }
        });
  // The stack's own (python/mhc/modules.py): it releases the data of the states it is given, so it
  // is registered under a private name, and refuses a caller's own tensor.
  m.class_<mhc::StreamGroup>("_StreamGroup")
      .def(torch::init<at::Tensor>())
      .def("add", [](const c10::intrusive_ptr<mhc::StreamGroup>& self, const at::Tensor& x_next, const at::Tensor& y,
                     const at::Tensor& H_post, const at::Tensor& H_res) { self->add(x_next, y, H_post, H_res); });
}
