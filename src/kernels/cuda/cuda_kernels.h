// Fused CUDA kernels of the residual family: the interface (the same seam as ../cpu/cpu_kernels.h).
//
// Framework-free: device pointers to contiguous row-major buffers, sizes, a stream and a cuBLAS
// handle. Storage T is float or __nv_bfloat16 (x, y, h, dx, dy, dh, and phi for the projection's
// GEMMs); every coefficient — H_pre, H_post, H_res, the projections g, the norms r, bias, alpha
// and all their gradients — is fp32, and so is all arithmetic (DESIGN.md §1).
//
// pre forward  = cuBLAS GEMM g = v·phi (tensor cores for bf16), then one kernel per token block:
//                Σv², the coefficients (σ, Sinkhorn–Knopp, permutation mixture, tanh gates: the
//                math of ../coefficients.h, shared with the CPU), and h = H_pre·x.
// pre backward = one kernel per token block: ⟨dh, x_i⟩, the coefficient backward (recomputing the
//                Sinkhorn iterates on chip), dx's direct terms and dg; then dx += dg·phiᵀ and
//                dphi = vᵀ·dg as GEMMs, and dbias/dalpha as a GEMV over per-token rows — no atomics.
// post         = one pass over (x, y) forward, one over (dout, x, y) backward.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "mhc/variant.h"

namespace mhc::cuda {

struct Context {
  cudaStream_t stream;
  cublasHandle_t blas;
};

template <typename T>
struct PreInputs {
  const T* x;          // [N, n, C]
  const T* phi;        // [K, m]   in the storage type (the caller keeps the fp32 master copy)
  const float* bias;   // [B]
  const float* alpha;  // [A]
  const int* perms;    // mHC-lite: device copy of kernels::permutation_table(variant, n); else null
  int64_t N;
  int n;
  int64_t C;
  Variant variant;
  int sinkhorn_iters;
  VariantOptions options;
};

template <typename T>
struct PreForwardParams {
  PreInputs<T> in;
  T* h;           // [N, C]
  float* H_pre;   // [N, n]
  float* H_post;  // [N, n]
  float* H_res;   // [N, n, n]
  float* proj;    // [N, P, m]  saved for backward
  float* rms;     // [N, P]     saved for backward
};

template <typename T>
struct PreBackwardParams {
  PreInputs<T> in;
  const float* proj;
  const float* rms;
  const T* dh;             // [N, C]
  const float* dH_pre;     // [N, n]     may be null
  const float* dH_post;    // [N, n]     may be null
  const float* dH_res;     // [N, n, n]  may be null
  T* dx;                   // [N, n, C]  out
  float* dphi;             // [K, m]     out
  float* dbias;            // [B]        out
  float* dalpha;           // [A]        out
  void* workspace;         // pre_backward_workspace_bytes(...) bytes
};

size_t pre_backward_workspace_bytes(Variant variant, int n, int64_t C, int64_t N, size_t storage_bytes,
                                    const VariantOptions& options = {});

template <typename T>
void pre_forward(const PreForwardParams<T>& p, const Context& ctx);
template <typename T>
void pre_backward(const PreBackwardParams<T>& p, const Context& ctx);

// x_next[k] = Σ_j H_res[k,j]·x[j] + H_post[k]·y per token.
template <typename T>
void post_forward(T* out, const T* x, const T* y, const float* H_post, const float* H_res, int64_t N, int n, int64_t C,
                  const Context& ctx);
// All four gradients in one pass over (dout, x, y).
template <typename T>
void post_backward(T* dx, T* dy, float* dH_post, float* dH_res, const T* dout, const T* x, const T* y,
                   const float* H_post, const float* H_res, int64_t N, int n, int64_t C, const Context& ctx);

}  // namespace mhc::cuda
