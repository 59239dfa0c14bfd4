// The CPU implementation of the mhc ops: the framework-free kernels of src/kernels/cpu on LibTorch
// tensors (bf16 storage through fp32 copies), each call timed by the op clock when it is on
// (mhc/ops.h: `mhc bench train` and `mhc bench layer --json` report it).
#include <torch/library.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>

#include "../kernels/cpu/cpu_kernels.h"
#include "mhc/ops.h"
#include "op_args.h"

namespace mhc {

using torch::Tensor;
using ops::variant_or_throw;
using ops::ptr_or_null;

namespace {

int kernel_threads() { return at::get_num_threads(); }

// ---------------------------------------------------------------------------------- CPU kernels
// bfloat16 storage runs the fp32 kernels on upcast copies and rounds the storage outputs back:
// the function the CUDA kernels compute (fp32 math on bf16 values, phi read as bf16), not a fused
// bf16 path — these CPUs have no bf16 arithmetic; the point is that a bf16 model runs, and can be
// checked, anywhere.
bool is_bf16(const Tensor& t) { return t.scalar_type() == torch::kBFloat16; }
Tensor upcast(const Tensor& t) { return t.to(torch::kFloat); }
Tensor downcast(const Tensor& t) { return t.to(torch::kBFloat16); }

// `pre`'s inputs for the CPU kernels.
struct PreArgs : ops::PreArgs {
  using ops::PreArgs::PreArgs;

  template <typename scalar_t>
  cpu::PreInputs<scalar_t> kernel_inputs() const {
    return {x.data_ptr<scalar_t>(), phi.data_ptr<scalar_t>(),   bias.data_ptr<scalar_t>(),
            alpha.data_ptr<scalar_t>(), x.size(0),                static_cast<int>(x.size(1)),
            x.size(2),                variant,                      static_cast<int>(sinkhorn_iters),
            spec.options,             kernel_threads()};
  }
};

// pre's outputs, allocated for the kernel: h, the coefficients, and the proj and rms saved for the backward.
struct PreForwardTensors {
  Tensor h, H_pre, H_post, H_res, proj, rms;

  explicit PreForwardTensors(const PreArgs& a) {
    const int64_t N = a.x.size(0), n = a.x.size(1), C = a.x.size(2), P = a.layout.proj_per_token;
    const auto opts = a.x.options();
    h = torch::empty({N, C}, opts), H_pre = torch::empty({N, n}, opts), H_post = torch::empty({N, n}, opts);
    H_res = torch::empty({N, n, n}, opts), proj = torch::empty({N, P, a.layout.proj_cols}, opts);
    rms = torch::empty({N, P}, opts);
  }
  template <typename scalar_t>
  cpu::PreForwardParams<scalar_t> params(const PreArgs& a) const {
    return {a.kernel_inputs<scalar_t>(), h.data_ptr<scalar_t>(),    H_pre.data_ptr<scalar_t>(), H_post.data_ptr<scalar_t>(),
            H_res.data_ptr<scalar_t>(),  proj.data_ptr<scalar_t>(), rms.data_ptr<scalar_t>()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pre_fwd_cpu(const Tensor& x, const Tensor& phi,
                                                                       const Tensor& bias, const Tensor& alpha,
                                                                       c10::string_view variant, int64_t t) {
  if (is_bf16(x)) {
    const VariantSpec spec = variant_or_throw(variant);
    check_pre_args(x, phi, bias, alpha, spec.variant, t, spec.options);
    auto out = pre_fwd_cpu(upcast(x), projection_weights(phi, torch::kBFloat16), bias, alpha, variant, t);
    std::get<0>(out) = downcast(std::get<0>(out));
    return out;
  }
  const PreArgs a(x, phi, bias, alpha, variant, t);
  const PreForwardTensors o(a);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.pre", [&] { cpu::pre_forward(o.params<scalar_t>(a)); });
  return {o.h, o.H_pre, o.H_post, o.H_res, o.proj, o.rms};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pre_bwd_cpu(const Tensor& dh_, const c10::optional<Tensor>& dH_pre_,
                                                       const c10::optional<Tensor>& dH_post_,
                                                       const c10::optional<Tensor>& dH_res_, const Tensor& x,
                                                       const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                                       const Tensor& proj_, const Tensor& rms_, c10::string_view variant,
                                                       int64_t t, const c10::optional<Tensor>& dx_add) {
  ops::check_pre_bwd_args(dh_, dH_pre_, dH_post_, dH_res_, x, phi, bias, alpha, proj_, rms_, variant_or_throw(variant), t,
                          dx_add);
  if (is_bf16(x)) {
    const c10::optional<Tensor> dx_add32 =
        dx_add.has_value() && dx_add->defined() ? c10::optional<Tensor>(upcast(*dx_add)) : c10::nullopt;
    auto out = pre_bwd_cpu(upcast(dh_), dH_pre_, dH_post_, dH_res_, upcast(x), projection_weights(phi, torch::kBFloat16),
                           bias, alpha, proj_, rms_, variant, t, dx_add32);
    std::get<0>(out) = downcast(std::get<0>(out));
    return out;
  }
  const PreArgs a(x, phi, bias, alpha, variant, t);
  const Tensor dh = dh_.contiguous();
  const ops::PreBackwardTensors b(a, proj_, rms_, dH_pre_, dH_post_, dH_res_, dx_add);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.pre_backward", [&] {
    cpu::pre_backward(cpu::PreBackwardParams<scalar_t>{
        a.kernel_inputs<scalar_t>(), b.proj.data_ptr<scalar_t>(), b.rms.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(b.dH_pre), ptr_or_null<scalar_t>(b.dH_post), ptr_or_null<scalar_t>(b.dH_res),
        b.dx.data_ptr<scalar_t>(), b.dphi.data_ptr<scalar_t>(), b.dbias.data_ptr<scalar_t>(),
        b.dalpha.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b.dx_add)});
  });
  return b.gradients();
}

Tensor post_cpu(const Tensor& x_, const Tensor& y_, const Tensor& H_post_, const Tensor& H_res_) {
  check_post_args(x_, y_, H_post_, H_res_);
  if (is_bf16(x_)) return downcast(post_cpu(upcast(x_), upcast(y_), H_post_, H_res_));
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  Tensor out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.post", [&] {
    cpu::post_forward(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                      H_post.data_ptr<scalar_t>(), H_res.data_ptr<scalar_t>(), x.size(0), static_cast<int>(x.size(1)),
                      x.size(2), kernel_threads());
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> post_bwd_cpu(const Tensor& dout_, const Tensor& x_, const Tensor& y_,
                                                        const Tensor& H_post_, const Tensor& H_res_) {
  ops::check_post_bwd_args(dout_, x_, y_, H_post_, H_res_);
  if (is_bf16(x_)) {
    auto out = post_bwd_cpu(upcast(dout_), upcast(x_), upcast(y_), H_post_, H_res_);
    std::get<0>(out) = downcast(std::get<0>(out)), std::get<1>(out) = downcast(std::get<1>(out));
    return out;
  }
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  const Tensor dout = dout_.contiguous();
  Tensor dx = torch::empty_like(x), dy = torch::empty_like(y), dH_post = torch::empty_like(H_post),
         dH_res = torch::empty_like(H_res);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.post_backward", [&] {
    cpu::post_backward(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dH_post.data_ptr<scalar_t>(),
                       dH_res.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                       y.data_ptr<scalar_t>(), H_post.data_ptr<scalar_t>(), H_res.data_ptr<scalar_t>(), x.size(0),
                       static_cast<int>(x.size(1)), x.size(2), kernel_threads());
  });
  return {dx, dy, dH_post, dH_res};
}

// The boundary between two sublayers, fused (cpu_kernels.h); under bf16 storage the unfused pair,
// whose roundings (x_next, and x_next's gradient, to bf16) it must reproduce.
ops::BoundaryForward boundary_fwd_cpu(const Tensor& x_, const Tensor& y_, const Tensor& H_post_, const Tensor& H_res_,
                                      const Tensor& phi, const Tensor& bias, const Tensor& alpha, c10::string_view variant,
                                      int64_t t) {
  check_post_args(x_, y_, H_post_, H_res_);
  if (is_bf16(x_)) return ops::boundary_fwd_from<post_cpu, pre_fwd_cpu>(x_, y_, H_post_, H_res_, phi, bias, alpha, variant, t);
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  const Tensor x_next = torch::empty_like(x);  // written by the kernel, tile by tile, before pre reads it
  const PreArgs a(x_next, phi, bias, alpha, variant, t);
  const PreForwardTensors o(a);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.boundary", [&] {
    cpu::boundary_forward(cpu::PostInputs<scalar_t>{x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                                    H_post.data_ptr<scalar_t>(), H_res.data_ptr<scalar_t>()},
                          x_next.data_ptr<scalar_t>(), o.params<scalar_t>(a));
  });
  return {x_next, o.h, o.H_pre, o.H_post, o.H_res, o.proj, o.rms};
}

ops::BoundaryBackward boundary_bwd_cpu(const Tensor& dh_, const c10::optional<Tensor>& dH_pre,
                                       const c10::optional<Tensor>& dH_post_next, const c10::optional<Tensor>& dH_res_next,
                                       const c10::optional<Tensor>& dx_next, const Tensor& x_, const Tensor& y_,
                                       const Tensor& H_post_, const Tensor& H_res_, const Tensor& x_next,
                                       const Tensor& phi, const Tensor& bias, const Tensor& alpha, const Tensor& proj_,
                                       const Tensor& rms_, c10::string_view variant, int64_t t) {
  ops::check_pre_bwd_args(dh_, dH_pre, dH_post_next, dH_res_next, x_next, phi, bias, alpha, proj_, rms_,
                          variant_or_throw(variant), t, dx_next);
  ops::check_post_bwd_args(x_next, x_, y_, H_post_, H_res_);  // x_next stands for post's output gradient: x's shape
  if (is_bf16(x_))
    return ops::boundary_bwd_from<pre_bwd_cpu, post_bwd_cpu>(dh_, dH_pre, dH_post_next, dH_res_next, dx_next, x_, y_,
                                                             H_post_, H_res_, x_next, phi, bias, alpha, proj_, rms_,
                                                             variant, t);
  const PreArgs a(x_next, phi, bias, alpha, variant, t);
  const Tensor dh = dh_.contiguous(), x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(),
               H_res = H_res_.contiguous();
  const ops::PreBackwardTensors b(a, proj_, rms_, dH_pre, dH_post_next, dH_res_next, dx_next, /*with_dx=*/false);
  Tensor dx = torch::empty_like(x), dy = torch::empty_like(y), dH_post = torch::empty_like(H_post),
         dH_res = torch::empty_like(H_res);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.boundary_backward", [&] {
    cpu::boundary_backward(
        cpu::PostInputs<scalar_t>{x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), H_post.data_ptr<scalar_t>(),
                                  H_res.data_ptr<scalar_t>()},
        cpu::PostGradients<scalar_t>{dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dH_post.data_ptr<scalar_t>(),
                                     dH_res.data_ptr<scalar_t>()},
        cpu::PreBackwardParams<scalar_t>{
            a.kernel_inputs<scalar_t>(), b.proj.data_ptr<scalar_t>(), b.rms.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
            ptr_or_null<scalar_t>(b.dH_pre), ptr_or_null<scalar_t>(b.dH_post), ptr_or_null<scalar_t>(b.dH_res),
            /*dx: x_next's gradient stays in the kernel's tiles*/ nullptr, b.dphi.data_ptr<scalar_t>(),
            b.dbias.data_ptr<scalar_t>(), b.dalpha.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b.dx_add)});
  });
  return {dx, dy, dH_post, dH_res, b.dphi, b.dbias, b.dalpha};
}

// --------------------------------------------------------------------------------- op clock
std::atomic<bool> clock_enabled{false};
std::atomic<int64_t> clock_nanoseconds{0};

// Adds the wall time of one call to the op clock when it is enabled.
class ScopedOpClock {
 public:
  ScopedOpClock() : on_(clock_enabled.load(std::memory_order_relaxed)) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedOpClock() {
    if (on_)
      clock_nanoseconds += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

// An op implementation as registered: the same function, timed. Inner calls (the bf16 path calls
// the fp32 one) go to the untimed function, so nothing is counted twice.
template <auto fn>
struct Timed;
template <typename R, typename... Args, R (*fn)(Args...)>
struct Timed<fn> {
  static R call(Args... args) {
    const ScopedOpClock clock;
    return fn(args...);
  }
};

}  // namespace

void op_clock::enable(bool on) { clock_enabled = on; }
void op_clock::reset() { clock_nanoseconds = 0; }
double op_clock::seconds() { return static_cast<double>(clock_nanoseconds.load()) * 1e-9; }

}  // namespace mhc

TORCH_LIBRARY_IMPL(mhc, CPU, m) {
  m.impl("pre", mhc::Timed<mhc::ops::pre_from<mhc::pre_fwd_cpu>>::call);
  m.impl("pre_joint", mhc::Timed<mhc::ops::pre_joint_from<mhc::pre_fwd_cpu>>::call);
  m.impl("post", mhc::Timed<mhc::post_cpu>::call);
  m.impl("pre_fwd", mhc::Timed<mhc::pre_fwd_cpu>::call);
  m.impl("pre_bwd", mhc::Timed<mhc::pre_bwd_cpu>::call);
  m.impl("post_bwd", mhc::Timed<mhc::post_bwd_cpu>::call);
  m.impl("boundary", mhc::Timed<mhc::ops::boundary_from<mhc::boundary_fwd_cpu>>::call);
  m.impl("boundary_fwd", mhc::Timed<mhc::boundary_fwd_cpu>::call);
  m.impl("boundary_bwd", mhc::Timed<mhc::boundary_bwd_cpu>::call);
}
