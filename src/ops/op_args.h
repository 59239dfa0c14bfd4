// What the per-backend op implementations (op_cpu.cpp, op_cuda.cpp) and their checks (op_checks.cpp)
// share: reading the variant argument and `pre`'s inputs, the optional upstream gradients of its
// coefficients, `pre` as `pre_fwd` without the saved tensors, and the boundary ops as post then pre
// (the unfused pair: CUDA's implementation, and the CPU's under bf16 storage).
#pragma once

#include <torch/torch.h>

#include <tuple>

#include "mhc/ops.h"
#include "mhc/variant.h"

namespace mhc::ops {

// The op's `variant` string (a spec: the name and any options, mhc/variant.h) -> the variant and
// its options; a bad name or option is a c10::ValueError naming it and what is accepted.
VariantSpec variant_or_throw(c10::string_view spec);

// The inputs of `pre`, validated and made contiguous, as both directions' kernels read them; each
// backend adds the kernel_inputs() of its own kernel interface.
struct PreArgs {
  torch::Tensor x, phi, bias, alpha;
  VariantSpec spec;
  Variant variant;
  int64_t sinkhorn_iters;
  Layout layout;

  PreArgs(const torch::Tensor& x_, const torch::Tensor& phi_, const torch::Tensor& bias_, const torch::Tensor& alpha_,
          c10::string_view name, int64_t t)
      : x(x_.contiguous()), phi(phi_.contiguous()), bias(bias_.contiguous()), alpha(alpha_.contiguous()),
        spec(variant_or_throw(name)), variant(spec.variant), sinkhorn_iters(t),
        layout(check_pre_args(x_, phi_, bias_, alpha_, variant, t, spec.options)) {}
};

// pre_bwd and post_bwd are reachable from Python (torch.ops.mhc.*), so their gradient and saved
// tensors are checked like the public ops' inputs: a wrong shape, dtype or device is a one-line
// error, never a read out of bounds. check_pre_bwd_args also checks pre's inputs (check_pre_args).
void check_pre_bwd_args(const torch::Tensor& dh, const c10::optional<torch::Tensor>& dH_pre,
                        const c10::optional<torch::Tensor>& dH_post, const c10::optional<torch::Tensor>& dH_res,
                        const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias,
                        const torch::Tensor& alpha, const torch::Tensor& proj, const torch::Tensor& rms,
                        const VariantSpec& spec, int64_t sinkhorn_iters, const c10::optional<torch::Tensor>& dx_add);
void check_post_bwd_args(const torch::Tensor& dout, const torch::Tensor& x, const torch::Tensor& y,
                         const torch::Tensor& H_post, const torch::Tensor& H_res);

// Gradients that did not flow arrive undefined (or absent): the kernels read a null pointer as zeros.
inline torch::Tensor contiguous_or_undefined(const c10::optional<torch::Tensor>& g) {
  return g.has_value() && g->defined() ? g->contiguous() : torch::Tensor();
}

// pre_bwd's tensors besides dh and the inputs: the forward's saved proj and rms and the upstream
// coefficient gradients, contiguous (undefined where none flowed), and the gradients it returns,
// shaped like the (fp32 master) inputs.
struct PreBackwardTensors {
  torch::Tensor proj, rms, dH_pre, dH_post, dH_res, dx_add;
  torch::Tensor dx, dphi, dbias, dalpha;

  // with_dx false: the caller keeps x's gradient elsewhere (the boundary's stays in the kernel).
  PreBackwardTensors(const PreArgs& a, const torch::Tensor& proj_, const torch::Tensor& rms_,
                     const c10::optional<torch::Tensor>& dH_pre_, const c10::optional<torch::Tensor>& dH_post_,
                     const c10::optional<torch::Tensor>& dH_res_, const c10::optional<torch::Tensor>& dx_add_,
                     bool with_dx = true)
      : proj(proj_.contiguous()), rms(rms_.contiguous()), dH_pre(contiguous_or_undefined(dH_pre_)),
        dH_post(contiguous_or_undefined(dH_post_)), dH_res(contiguous_or_undefined(dH_res_)),
        dx_add(contiguous_or_undefined(dx_add_)),
        dx(with_dx ? torch::empty_like(a.x) : torch::Tensor()), dphi(torch::empty_like(a.phi)), dbias(torch::empty_like(a.bias)),
        dalpha(torch::empty_like(a.alpha)) {}

  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gradients() const {
    return {dx, dphi, dbias, dalpha};
  }
};

template <typename T>
const T* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The ops' C++ signatures, one per op as TORCH_LIBRARY declares it (op_schema.cpp): the types of
// the dispatcher's handles, and of each backend's implementations that the templates below compose.
using torch::Tensor;
using PreFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         c10::string_view, int64_t);
using PreJointFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                      const Tensor&, c10::string_view, int64_t);
using PreFwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                            const Tensor&, c10::string_view, int64_t);
using PreBwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view, int64_t,
    const c10::optional<Tensor>&);
using PostFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using PostBwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                             const Tensor&);
// boundary_fwd's and boundary_bwd's seven outputs.
using BoundaryForward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using BoundaryBackward = BoundaryForward;
using BoundaryFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                      const Tensor&, const Tensor&, const Tensor&,
                                                                      const Tensor&, c10::string_view, int64_t);
using BoundaryFwdFn = BoundaryForward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                      const Tensor&, const Tensor&, c10::string_view, int64_t);
using BoundaryBwdFn = BoundaryBackward(const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
                                       const c10::optional<Tensor>&, const c10::optional<Tensor>&, const Tensor&,
                                       const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                       const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view,
                                       int64_t);

// `pre` is `pre_fwd` without the two tensors saved for the backward: pre_from<pre_fwd_BACKEND>.
template <PreFwdFn* pre_fwd>
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> pre_from(const torch::Tensor& x,
                                                                                const torch::Tensor& phi,
                                                                                const torch::Tensor& bias,
                                                                                const torch::Tensor& alpha,
                                                                                c10::string_view variant, int64_t t) {
  auto out = pre_fwd(x, phi, bias, alpha, variant, t);
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out)};
}

// `pre_joint` without autograd (inference mode): pre's outputs and x_post, an alias of x.
template <PreFwdFn* pre_fwd>
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> pre_joint_from(
    const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias, const torch::Tensor& alpha,
    c10::string_view variant, int64_t t) {
  auto out = pre_fwd(x, phi, bias, alpha, variant, t);
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out), x.alias()};
}

// boundary_fwd as post then pre_fwd, where a backend does not fuse them: (x_next, h, H_pre,
// H_post_next, H_res_next, proj, rms).
template <PostFn* post, PreFwdFn* pre_fwd>
BoundaryForward boundary_fwd_from(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                                  const torch::Tensor& H_res, const torch::Tensor& phi, const torch::Tensor& bias,
                                  const torch::Tensor& alpha, c10::string_view variant, int64_t t) {
  const torch::Tensor x_next = post(x, y, H_post, H_res);
  auto [h, H_pre, H_post_next, H_res_next, proj, rms] = pre_fwd(x_next, phi, bias, alpha, variant, t);
  return {x_next, h, H_pre, H_post_next, H_res_next, proj, rms};
}

// boundary_bwd as pre_bwd (x_next's gradient, with dx_next from its other use added) then post_bwd:
// (dx, dy, dH_post, dH_res, dphi, dbias, dalpha).
template <PreBwdFn* pre_bwd, PostBwdFn* post_bwd>
BoundaryBackward boundary_bwd_from(const torch::Tensor& dh, const c10::optional<torch::Tensor>& dH_pre,
                                   const c10::optional<torch::Tensor>& dH_post_next,
                                   const c10::optional<torch::Tensor>& dH_res_next,
                                   const c10::optional<torch::Tensor>& dx_next, const torch::Tensor& x,
                                   const torch::Tensor& y, const torch::Tensor& H_post, const torch::Tensor& H_res,
                                   const torch::Tensor& x_next, const torch::Tensor& phi, const torch::Tensor& bias,
                                   const torch::Tensor& alpha, const torch::Tensor& proj, const torch::Tensor& rms,
                                   c10::string_view variant, int64_t t) {
  auto [dx_next_total, dphi, dbias, dalpha] =
      pre_bwd(dh, dH_pre, dH_post_next, dH_res_next, x_next, phi, bias, alpha, proj, rms, variant, t, dx_next);
  auto [dx, dy, dH_post, dH_res] = post_bwd(dx_next_total, x, y, H_post, H_res);
  return {dx, dy, dH_post, dH_res, dphi, dbias, dalpha};
}

// `boundary` is `boundary_fwd` without the saved proj and rms.
template <BoundaryFwdFn* boundary_fwd>
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> boundary_from(
    const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post, const torch::Tensor& H_res,
    const torch::Tensor& phi, const torch::Tensor& bias, const torch::Tensor& alpha, c10::string_view variant,
    int64_t t) {
  auto out = boundary_fwd(x, y, H_post, H_res, phi, bias, alpha, variant, t);
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out), std::get<4>(out)};
}

}  // namespace mhc::ops
