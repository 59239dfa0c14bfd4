// The mhc ops' schemas, their autograd (pre, post and boundary as autograd Functions whose forward saves
// what the fused backward needs — the raw projections g and norms r, a few numbers per token — and
// whose backward calls the fused backward ops), and the C++ entry points mhc::pre, pre_joint, post
// and boundary.
//
// The ops are declared once (TORCH_LIBRARY) and implemented per dispatch key: CPU in op_cpu.cpp,
// CUDA in op_cuda.cpp, Autograd here. Because everything goes through the dispatcher, the same
// shared library gives autograd to the C++ trainer and to Python (torch.ops.load_library).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <torch/torch.h>

#include "mhc/deepseek_v4.h"
#include "mhc/ops.h"
#include "mhc/recompute.h"
#include "op_args.h"

namespace mhc {

using torch::Tensor;
using ops::variant_or_throw;

namespace {

// ------------------------------------------------------------------------- dispatcher handles
// A registered op, called through the dispatcher with its signature Fn (op_args.h's *Fn).
template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// ------------------------------------------------------------------------------------ autograd
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Each Function leaves the gradient of an output nothing used undefined (set_materialize_grads
// false): the backward ops take those as optional, and zeros made for them here would be plain
// tensors beside DTensor-sharded ones, which DTensor refuses (python/mhc/sharding.py).

// The backward under create_graph = true (autograd runs a backward with grad mode on exactly then):
// the fused backward kernels compute numbers, not a graph, so a gradient penalty would get a wrong
// second derivative from them. Instead the reference (the same function, in differentiable LibTorch
// ops) is re-run on the saved inputs and differentiated with a graph: the gradients agree with the
// fused ones to rounding and are differentiable to any order, at the reference's speed.
// The reference runs on views of the saved inputs: differentiating with respect to the inputs
// themselves would also follow paths between them (x reaches post both directly and through pre's
// h), which the outer backward already walks, and count those twice.
template <typename Recompute>
variable_list differentiable_backward(Recompute recompute, variable_list inputs, const variable_list& grads,
                                      int non_tensor_args) {
  for (Tensor& input : inputs) input = input.view_as(input);
  variable_list outputs = recompute(inputs), wanted, grad_outputs;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!grads[i].defined() || !outputs[i].requires_grad()) continue;
    wanted.push_back(outputs[i]);
    grad_outputs.push_back(grads[i]);
  }
  variable_list differentiable;
  for (const Tensor& input : inputs)
    if (input.requires_grad()) differentiable.push_back(input);
  variable_list result(inputs.size() + non_tensor_args);
  if (wanted.empty() || differentiable.empty()) return result;
  const variable_list g = torch::autograd::grad(wanted, differentiable, grad_outputs, /*retain_graph=*/true,
                                                /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t i = 0, k = 0; i < inputs.size(); ++i)
    if (inputs[i].requires_grad()) result[i] = g[k++];
  return result;
}

// `pre`, and with `joint` also `pre_joint`: x returned once more as x_post, for post to read. The
// gradient that flows into x_post (post's dx) then arrives here as one more upstream gradient and
// the backward kernel adds it as it writes dx, where two separate uses of x would have autograd
// add two [N, n, C] gradients in a pass of its own.
class PreFunction : public torch::autograd::Function<PreFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& phi, const Tensor& bias,
                               const Tensor& alpha, c10::string_view variant, int64_t t, bool joint) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<ops::PreFwdFn>("mhc::pre_fwd");
    ctx->set_materialize_grads(false);
    auto [h, H_pre, H_post, H_res, proj, rms] = fwd.call(x, phi, bias, alpha, variant, t);
    ctx->save_for_backward({x, phi, bias, alpha, proj, rms});
    ctx->saved_data["variant"] = std::string(variant);
    ctx->saved_data["t"] = t;
    ctx->saved_data["joint"] = joint;
    if (joint) return {h, H_pre, H_post, H_res, x};  // autograd returns an input as a view of it
    return {h, H_pre, H_post, H_res};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    rebuild_if_released(s[0]);
    const bool joint = ctx->saved_data["joint"].toBool();
    if (torch::GradMode::is_enabled()) {  // create_graph: a gradient that is itself differentiable
      const VariantSpec spec = variant_or_throw(ctx->saved_data["variant"].toStringRef());
      return differentiable_backward(
          [&](const variable_list& in) {
            const PreOutput o = reference::pre(in[0], in[1], in[2], in[3], spec.variant, ctx->saved_data["t"].toInt(),
                                               spec.options);
            if (joint) return variable_list{o.h, o.H_pre, o.H_post, o.H_res, in[0]};
            return variable_list{o.h, o.H_pre, o.H_post, o.H_res};
          },
          {s[0], s[1], s[2], s[3]}, grads, /*non_tensor_args=*/3);
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto bwd = op<ops::PreBwdFn>("mhc::pre_bwd");
    const Tensor dh = grads[0].defined() ? grads[0] : torch::zeros({s[0].size(0), s[0].size(2)}, s[0].options());
    const c10::optional<Tensor> dx_post = joint && grads[4].defined() ? c10::optional<Tensor>(grads[4]) : c10::nullopt;
    auto [dx, dphi, dbias, dalpha] = bwd.call(dh, grads[1], grads[2], grads[3], s[0], s[1], s[2], s[3], s[4], s[5],
                                              ctx->saved_data["variant"].toStringRef(), ctx->saved_data["t"].toInt(),
                                              dx_post);
    return {dx, dphi, dbias, dalpha, Tensor(), Tensor(), Tensor()};
  }
};

class PostFunction : public torch::autograd::Function<PostFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, const Tensor& H_post,
                        const Tensor& H_res) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<ops::PostFn>("mhc::post");
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, y, H_post, H_res});
    return fwd.call(x, y, H_post, H_res);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};  // x_next unused
    const auto s = ctx->get_saved_variables();
    rebuild_if_released(s[0]);
    if (torch::GradMode::is_enabled())  // create_graph, as in PreFunction
      return differentiable_backward(
          [](const variable_list& in) { return variable_list{reference::post(in[0], in[1], in[2], in[3])}; }, s, grads,
          /*non_tensor_args=*/0);
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto bwd = op<ops::PostBwdFn>("mhc::post_bwd");
    auto [dx, dy, dH_post, dH_res] = bwd.call(grads[0], s[0], s[1], s[2], s[3]);
    return {dx, dy, dH_post, dH_res};
  }
};

// The boundary between two sublayers: the post of the one before, then the pre of the next, as one
// Function. Its backward gets x_next's gradient from x_next's other use (the next sublayer's post)
// as an upstream gradient and adds it inside the kernel, as pre_joint does for x.
class BoundaryFunction : public torch::autograd::Function<BoundaryFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, const Tensor& H_post,
                               const Tensor& H_res, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                               c10::string_view variant, int64_t t) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<ops::BoundaryFwdFn>("mhc::boundary_fwd");
    ctx->set_materialize_grads(false);
    auto [x_next, h, H_pre, H_post_next, H_res_next, proj, rms] = fwd.call(x, y, H_post, H_res, phi, bias, alpha, variant, t);
    ctx->save_for_backward({x, y, H_post, H_res, phi, bias, alpha, x_next, proj, rms});
    ctx->saved_data["variant"] = std::string(variant);
    ctx->saved_data["t"] = t;
    return {x_next, h, H_pre, H_post_next, H_res_next};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    rebuild_if_released(s[0]), rebuild_if_released(s[7]);  // x, and x_next (the state it made)
    const int64_t t = ctx->saved_data["t"].toInt();
    if (torch::GradMode::is_enabled()) {  // create_graph, as in PreFunction
      const VariantSpec spec = variant_or_throw(ctx->saved_data["variant"].toStringRef());
      return differentiable_backward(
          [&](const variable_list& in) {
            const PreOutput o =
                reference::boundary(in[0], in[1], in[2], in[3], in[4], in[5], in[6], spec.variant, t, spec.options);
            return variable_list{o.x_next, o.h, o.H_pre, o.H_post, o.H_res};
          },
          {s[0], s[1], s[2], s[3], s[4], s[5], s[6]}, grads, /*non_tensor_args=*/2);
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto bwd = op<ops::BoundaryBwdFn>("mhc::boundary_bwd");
    const Tensor& x_next = s[7];
    const Tensor dh = grads[1].defined() ? grads[1] : torch::zeros({x_next.size(0), x_next.size(2)}, x_next.options());
    auto [dx, dy, dH_post, dH_res, dphi, dbias, dalpha] =
        bwd.call(dh, grads[2], grads[3], grads[4], grads[0], s[0], s[1], s[2], s[3], x_next, s[4], s[5], s[6], s[8], s[9],
                 ctx->saved_data["variant"].toStringRef(), t);
    return {dx, dy, dH_post, dH_res, dphi, dbias, dalpha, Tensor(), Tensor()};
  }
};

// Under no_grad (generation) nothing is recorded: the op runs below autograd, with no Function node
// and nothing saved for a backward.
template <typename Fn, typename... Args>
auto below_autograd(const char* name, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  static auto handle = op<Fn>(name);
  return handle.call(args...);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> boundary_autograd(const Tensor& x, const Tensor& y,
                                                                     const Tensor& H_post, const Tensor& H_res,
                                                                     const Tensor& phi, const Tensor& bias,
                                                                     const Tensor& alpha, c10::string_view variant,
                                                                     int64_t t) {
  if (!torch::GradMode::is_enabled())
    return below_autograd<ops::BoundaryFn>("mhc::boundary", x, y, H_post, H_res, phi, bias, alpha, variant, t);
  auto out = BoundaryFunction::apply(x, y, H_post, H_res, phi, bias, alpha, variant, t);
  return {out[0], out[1], out[2], out[3], out[4]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pre_autograd(const Tensor& x, const Tensor& phi, const Tensor& bias,
                                                        const Tensor& alpha, c10::string_view variant, int64_t t) {
  if (!torch::GradMode::is_enabled()) return below_autograd<ops::PreFn>("mhc::pre", x, phi, bias, alpha, variant, t);
  auto out = PreFunction::apply(x, phi, bias, alpha, variant, t, /*joint=*/false);
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> pre_joint_autograd(const Tensor& x, const Tensor& phi,
                                                                      const Tensor& bias, const Tensor& alpha,
                                                                      c10::string_view variant, int64_t t) {
  if (!torch::GradMode::is_enabled())
    return below_autograd<ops::PreJointFn>("mhc::pre_joint", x, phi, bias, alpha, variant, t);
  auto out = PreFunction::apply(x, phi, bias, alpha, variant, t, /*joint=*/true);
  return {out[0], out[1], out[2], out[3], out[4]};
}

Tensor post_autograd(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  if (!torch::GradMode::is_enabled()) return below_autograd<ops::PostFn>("mhc::post", x, y, H_post, H_res);
  return PostFunction::apply(x, y, H_post, H_res);
}

}  // namespace

PreOutput pre(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Variant variant,
              int64_t sinkhorn_iters, const VariantOptions& options) {
  static auto handle = op<ops::PreFn>("mhc::pre");
  auto [h, H_pre, H_post, H_res] = handle.call(x, phi, bias, alpha, variant_spec(variant, options), sinkhorn_iters);
  return {h, H_pre, H_post, H_res, Tensor(), Tensor()};
}

PreOutput pre_joint(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Variant variant,
                    int64_t sinkhorn_iters, const VariantOptions& options) {
  static auto handle = op<ops::PreJointFn>("mhc::pre_joint");
  auto [h, H_pre, H_post, H_res, x_post] =
      handle.call(x, phi, bias, alpha, variant_spec(variant, options), sinkhorn_iters);
  return {h, H_pre, H_post, H_res, x_post, Tensor()};
}

Tensor post(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  static auto handle = op<ops::PostFn>("mhc::post");
  return handle.call(x, y, H_post, H_res);
}

PreOutput boundary(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res, const Tensor& phi,
                   const Tensor& bias, const Tensor& alpha, Variant variant, int64_t sinkhorn_iters,
                   const VariantOptions& options) {
  static auto handle = op<ops::BoundaryFn>("mhc::boundary");
  auto [x_next, h, H_pre, H_post_next, H_res_next] =
      handle.call(x, y, H_post, H_res, phi, bias, alpha, variant_spec(variant, options), sinkhorn_iters);
  return {h, H_pre, H_post_next, H_res_next, Tensor(), x_next};
}

}  // namespace mhc

TORCH_LIBRARY(mhc, m) {
  m.def("pre(Tensor x, Tensor phi, Tensor bias, Tensor alpha, str variant, int sinkhorn_iters=20)"
        " -> (Tensor h, Tensor H_pre, Tensor H_post, Tensor H_res)");
  m.def("post(Tensor x, Tensor y, Tensor H_post, Tensor H_res) -> Tensor");
  // pre, and x again (x_post, an alias) for the post of the same sublayer: x's two gradients are
  // then summed inside pre's backward kernel rather than by autograd in a pass of their own.
  m.def("pre_joint(Tensor(a) x, Tensor phi, Tensor bias, Tensor alpha, str variant, int sinkhorn_iters=20)"
        " -> (Tensor h, Tensor H_pre, Tensor H_post, Tensor H_res, Tensor(a) x_post)");
  // Internal halves of the fused autograd: the forward also returns the projections g and norms r.
  m.def("pre_fwd(Tensor x, Tensor phi, Tensor bias, Tensor alpha, str variant, int sinkhorn_iters)"
        " -> (Tensor h, Tensor H_pre, Tensor H_post, Tensor H_res, Tensor proj, Tensor rms)");
  m.def("pre_bwd(Tensor dh, Tensor? dH_pre, Tensor? dH_post, Tensor? dH_res, Tensor x, Tensor phi,"
        " Tensor bias, Tensor alpha, Tensor proj, Tensor rms, str variant, int sinkhorn_iters, Tensor? dx_add=None)"
        " -> (Tensor dx, Tensor dphi, Tensor dbias, Tensor dalpha)");
  m.def("post_bwd(Tensor dout, Tensor x, Tensor y, Tensor H_post, Tensor H_res)"
        " -> (Tensor dx, Tensor dy, Tensor dH_post, Tensor dH_res)");
  // The boundary between two sublayers (mhc/ops.h): post of the one before (x, y, H_post, H_res),
  // then pre of the next (phi, bias, alpha) on its output x_next, fused where the backend can.
  m.def("boundary(Tensor x, Tensor y, Tensor H_post, Tensor H_res, Tensor phi, Tensor bias, Tensor alpha, str variant,"
        " int sinkhorn_iters=20) -> (Tensor x_next, Tensor h, Tensor H_pre, Tensor H_post_next, Tensor H_res_next)");
  m.def("boundary_fwd(Tensor x, Tensor y, Tensor H_post, Tensor H_res, Tensor phi, Tensor bias, Tensor alpha,"
        " str variant, int sinkhorn_iters) -> (Tensor x_next, Tensor h, Tensor H_pre, Tensor H_post_next,"
        " Tensor H_res_next, Tensor proj, Tensor rms)");
  m.def("boundary_bwd(Tensor dh, Tensor? dH_pre, Tensor? dH_post_next, Tensor? dH_res_next, Tensor? dx_next,"
        " Tensor x, Tensor y, Tensor H_post, Tensor H_res, Tensor x_next, Tensor phi, Tensor bias, Tensor alpha,"
        " Tensor proj, Tensor rms, str variant, int sinkhorn_iters)"
        " -> (Tensor dx, Tensor dy, Tensor dH_post, Tensor dH_res, Tensor dphi, Tensor dbias, Tensor dalpha)");
  // DeepSeek-V4's parameters and mhc-v4's (mhc/deepseek_v4.h): plain tensor ops, any device, differentiable.
  m.def("from_deepseek_v4(Tensor fn, Tensor base, Tensor scale) -> (Tensor phi, Tensor bias, Tensor alpha)",
        [](const torch::Tensor& fn, const torch::Tensor& base, const torch::Tensor& scale) {
          const mhc::ConnectionParams p = mhc::from_deepseek_v4(fn, base, scale);
          return std::make_tuple(p.phi, p.bias, p.alpha);
        });
  m.def("to_deepseek_v4(Tensor phi, Tensor bias, Tensor alpha) -> (Tensor fn, Tensor base, Tensor scale)",
        [](const torch::Tensor& phi, const torch::Tensor& bias, const torch::Tensor& alpha) {
          const mhc::DeepSeekV4Params p = mhc::to_deepseek_v4(phi, bias, alpha);
          return std::make_tuple(p.fn, p.base, p.scale);
        });
}

TORCH_LIBRARY_IMPL(mhc, Autograd, m) {
  m.impl("pre", mhc::pre_autograd);
  m.impl("pre_joint", mhc::pre_joint_autograd);
  m.impl("post", mhc::post_autograd);
  m.impl("boundary", mhc::boundary_autograd);
}
