// CUDA implementations of the mhc ops: validation, then the framework-free kernels of
// src/kernels/cuda on the current stream and cuBLAS handle of x's device.
//
// Registered for the CUDA dispatch key only; autograd is op_schema.cpp's, whose Functions call
// pre_fwd / pre_bwd / post / post_bwd through the dispatcher and so reach these on CUDA tensors.
// Storage is float32 or bfloat16 (mhc/ops.h); float64 stays on the CPU, where the gradchecks run.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <map>
#include <mutex>

#include "../kernels/coefficients.h"
#include "../kernels/cuda/cuda_kernels.h"
#include "mhc/ops.h"
#include "op_args.h"

namespace mhc {
namespace {

using torch::Tensor;
using ops::variant_or_throw;
using ops::ptr_or_null;

// A storage dtype as the kernels (K) and as ATen (A) spell it.
template <typename K, typename A>
struct Storage {
  using kernel = K;
  using aten = A;
};

// Also refuses more streams than the CUDA kernels take (x is [N, n, C] in every op).
template <typename F>
void with_storage(const char* op, const Tensor& x, F&& f) {
  TORCH_CHECK_VALUE(x.dim() != 3 || x.size(1) <= kMaxStreamsCuda, op, " on CUDA takes 1 to ",
                    kMaxStreamsCuda, " streams, got n = ", x.size(1), "; more streams run on the CPU");
  switch (x.scalar_type()) {
    case torch::kFloat: return f(Storage<float, float>{});
    case torch::kBFloat16: return f(Storage<__nv_bfloat16, at::BFloat16>{});
    default:
      TORCH_CHECK_TYPE(false, op, " on CUDA: x is ", x.scalar_type(),
                       "; the CUDA kernels take float32 or bfloat16 storage (float64 runs on the CPU)");
  }
}

template <typename S>
typename S::kernel* storage_ptr(const Tensor& t) {
  return reinterpret_cast<typename S::kernel*>(t.data_ptr<typename S::aten>());
}

cuda::Context context() { return {at::cuda::getCurrentCUDAStream().stream(), at::cuda::getCurrentCUDABlasHandle()}; }

// mHC-lite's permutation table on x's device, made once per (device, n). Never freed: a static
// destructor would run after the CUDA runtime has gone.
const int* permutations_on(const Tensor& x, Variant variant, int n) {
  if (variant != Variant::mhc_lite) return nullptr;
  static std::mutex mutex;
  static auto* tables = new std::map<std::pair<int, int>, Tensor>();
  std::lock_guard<std::mutex> lock(mutex);
  Tensor& table = (*tables)[{x.get_device(), n}];
  if (!table.defined())
    table = torch::tensor(kernels::permutation_table(variant, n), torch::kInt).to(x.device());
  return table.data_ptr<int>();
}

// `pre`'s inputs for the CUDA kernels, with phi in the storage dtype: the projection GEMM's operand.
// A centred read (jpmhc's LayerNorm) projects with phi's columns centred, so that the GEMM gives
// (v − mean)·phi; its gradient is centred likewise after the GEMM (pre_bwd_cuda).
struct PreArgs : ops::PreArgs {
  Tensor phi_stored;

  PreArgs(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, c10::string_view name, int64_t t)
      : ops::PreArgs(x, phi, bias, alpha, name, t),
        phi_stored((layout.centred ? centred_columns(this->phi) : this->phi).to(x.scalar_type())) {}

  static Tensor centred_columns(const Tensor& w) { return w - w.mean(0, /*keepdim=*/true); }

  template <typename S>
  cuda::PreInputs<typename S::kernel> kernel_inputs() const {
    return {storage_ptr<S>(x), storage_ptr<S>(phi_stored), bias.data_ptr<float>(), alpha.data_ptr<float>(),
            permutations_on(x, variant, static_cast<int>(x.size(1))), x.size(0), static_cast<int>(x.size(1)), x.size(2),
            variant, static_cast<int>(sinkhorn_iters), spec.options};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pre_fwd_cuda(const Tensor& x, const Tensor& phi,
                                                                        const Tensor& bias, const Tensor& alpha,
                                                                        c10::string_view variant, int64_t t) {
  const c10::cuda::CUDAGuard device(x.device());
  const PreArgs a(x, phi, bias, alpha, variant, t);
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2), P = a.layout.proj_per_token;
  const auto coefficients = x.options().dtype(torch::kFloat);
  Tensor h = torch::empty({N, C}, x.options()), H_pre = torch::empty({N, n}, coefficients),
         H_post = torch::empty({N, n}, coefficients), H_res = torch::empty({N, n, n}, coefficients),
         proj = torch::empty({N, P, a.layout.proj_cols}, coefficients), rms = torch::empty({N, P}, coefficients);
  with_storage("mhc.pre", x, [&](auto s) {
    using S = decltype(s);
    cuda::pre_forward(cuda::PreForwardParams<typename S::kernel>{a.kernel_inputs<S>(), storage_ptr<S>(h),
                                                                 H_pre.data_ptr<float>(), H_post.data_ptr<float>(),
                                                                 H_res.data_ptr<float>(), proj.data_ptr<float>(),
                                                                 rms.data_ptr<float>()},
                      context());
  });
  return {h, H_pre, H_post, H_res, proj, rms};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pre_bwd_cuda(const Tensor& dh_, const c10::optional<Tensor>& dH_pre_,
                                                        const c10::optional<Tensor>& dH_post_,
                                                        const c10::optional<Tensor>& dH_res_, const Tensor& x,
                                                        const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                                        const Tensor& proj_, const Tensor& rms_, c10::string_view variant,
                                                        int64_t t, const c10::optional<Tensor>& dx_add) {
  ops::check_pre_bwd_args(dh_, dH_pre_, dH_post_, dH_res_, x, phi, bias, alpha, proj_, rms_, ops::variant_or_throw(variant), t,
                          dx_add);
  const c10::cuda::CUDAGuard device(x.device());
  const PreArgs a(x, phi, bias, alpha, variant, t);
  const Tensor dh = dh_.contiguous();
  // dphi, dbias, dalpha are gradients of the fp32 masters (a.phi, not a.phi_stored).
  const ops::PreBackwardTensors b(a, proj_, rms_, dH_pre_, dH_post_, dH_res_, dx_add);
  const int64_t N = x.size(0), C = x.size(2);
  const int n = static_cast<int>(x.size(1));
  const Tensor workspace = torch::empty(
      {static_cast<int64_t>(cuda::pre_backward_workspace_bytes(a.variant, n, C, N, x.element_size(), a.spec.options))},
      x.options().dtype(torch::kByte));
  with_storage("mhc.pre_backward", x, [&](auto s) {
    using S = decltype(s);
    cuda::pre_backward(
        cuda::PreBackwardParams<typename S::kernel>{
            a.kernel_inputs<S>(), b.proj.data_ptr<float>(), b.rms.data_ptr<float>(), storage_ptr<S>(dh),
            ptr_or_null<float>(b.dH_pre), ptr_or_null<float>(b.dH_post), ptr_or_null<float>(b.dH_res),
            storage_ptr<S>(b.dx), b.dphi.data_ptr<float>(), b.dbias.data_ptr<float>(), b.dalpha.data_ptr<float>(),
            workspace.data_ptr()},
        context());
  });
  // Not yet inside the CUDA kernel: one more pass over dx (the CPU kernel adds it as it writes dx).
  if (b.dx_add.defined()) b.dx.add_(b.dx_add);
  if (a.layout.centred) b.dphi.copy_(PreArgs::centred_columns(b.dphi));
  return b.gradients();
}

Tensor post_cuda(const Tensor& x_, const Tensor& y_, const Tensor& H_post_, const Tensor& H_res_) {
  check_post_args(x_, y_, H_post_, H_res_);
  const c10::cuda::CUDAGuard device(x_.device());
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  Tensor out = torch::empty_like(x);
  with_storage("mhc.post", x, [&](auto s) {
    using S = decltype(s);
    cuda::post_forward(storage_ptr<S>(out), storage_ptr<S>(x), storage_ptr<S>(y), H_post.data_ptr<float>(),
                       H_res.data_ptr<float>(), x.size(0), static_cast<int>(x.size(1)), x.size(2), context());
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> post_bwd_cuda(const Tensor& dout_, const Tensor& x_, const Tensor& y_,
                                                         const Tensor& H_post_, const Tensor& H_res_) {
  ops::check_post_bwd_args(dout_, x_, y_, H_post_, H_res_);
  const c10::cuda::CUDAGuard device(x_.device());
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  const Tensor dout = dout_.contiguous();
  Tensor dx = torch::empty_like(x), dy = torch::empty_like(y), dH_post = torch::empty_like(H_post),
         dH_res = torch::empty_like(H_res);
  with_storage("mhc.post_backward", x, [&](auto s) {
    using S = decltype(s);
    cuda::post_backward(storage_ptr<S>(dx), storage_ptr<S>(dy), dH_post.data_ptr<float>(), dH_res.data_ptr<float>(),
                        storage_ptr<S>(dout), storage_ptr<S>(x), storage_ptr<S>(y), H_post.data_ptr<float>(),
                        H_res.data_ptr<float>(), x.size(0), static_cast<int>(x.size(1)), x.size(2), context());
  });
  return {dx, dy, dH_post, dH_res};
}

}  // namespace
}  // namespace mhc

TORCH_LIBRARY_IMPL(mhc, CUDA, m) {
  m.impl("pre", mhc::ops::pre_from<mhc::pre_fwd_cuda>);
  m.impl("pre_joint", mhc::ops::pre_joint_from<mhc::pre_fwd_cuda>);
  m.impl("post", mhc::post_cuda);
  m.impl("pre_fwd", mhc::pre_fwd_cuda);
  m.impl("pre_bwd", mhc::pre_bwd_cuda);
  m.impl("post_bwd", mhc::post_bwd_cuda);
  // Not fused on CUDA yet: the boundary is the post kernel, then the pre kernels.
  m.impl("boundary_fwd", mhc::ops::boundary_fwd_from<mhc::post_cuda, mhc::pre_fwd_cuda>);
  m.impl("boundary", mhc::ops::boundary_from<mhc::ops::boundary_fwd_from<mhc::post_cuda, mhc::pre_fwd_cuda>>);
  m.impl("boundary_bwd", mhc::ops::boundary_bwd_from<mhc::pre_bwd_cuda, mhc::post_bwd_cuda>);
}
