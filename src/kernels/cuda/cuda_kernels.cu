// Fused CUDA kernels of the residual family (see cuda_kernels.h for the plan of each op).
//
// Every per-token kernel gives one token to one thread block: its threads stride along C with
// 16-byte loads where C allows, hold the n (or n + n²) per-token sums in registers, and reduce
// them across the block once. Stream counts are compile-time (kernels::with_streams), so those
// sums are registers, not local memory.
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>

#include "../coefficients.h"
#include "cuda_kernels.h"

namespace mhc::cuda {
namespace {

constexpr int kThreads = 256;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string("cuBLAS ") + what + " failed (status " + std::to_string(int(s)) + ")");
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T>
constexpr cudaDataType_t blas_type() { return std::is_same<T, float>::value ? CUDA_R_32F : CUDA_R_16BF; }

// W consecutive values of T moved as one load/store (16 bytes when W·sizeof(T) = 16).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// Lanes per thread: 16 bytes when every row start is 16-byte aligned (C a multiple of the pack).
template <typename T>
int pack_width(int64_t C) {
  const int w = 16 / sizeof(T);
  return C % w == 0 ? w : 1;
}

// Sums each of the R values over the block; the totals land in `out` (shared, R floats) for all.
template <int R>
__device__ void block_sum(float (&v)[R], float* out) {
  __shared__ float partial[kThreads / 32][R > 0 ? R : 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float s = v[r];
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) partial[warp][r] = s;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    float s = 0;
    for (int w = 0; w < warps; ++w) s += partial[w][r];  // fixed order: deterministic
    out[r] = s;
  }
  __syncthreads();
}

// Sums each of the R values over the warp; every lane gets the totals.
template <int R>
__device__ void warp_sum(float (&v)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
    for (int o = 16; o > 0; o /= 2) v[r] += __shfl_xor_sync(0xffffffffu, v[r], o);
}

int block_threads(int64_t C, int w) {
  const int64_t lanes = (C / w + 31) / 32 * 32;
  return static_cast<int>(lanes < kThreads ? (lanes > 32 ? lanes : 32) : kThreads);
}

// ---------------------------------------------------------------------------------------------
// post

template <typename T, int N, int W>
__global__ void post_forward_kernel(T* out, const T* x, const T* y, const float* H_post, const float* H_res, int64_t C) {
  const int64_t tok = blockIdx.x;
  float hp[N], hr[N * N];
#pragma unroll
  for (int k = 0; k < N; ++k) hp[k] = H_post[tok * N + k];
#pragma unroll
  for (int e = 0; e < N * N; ++e) hr[e] = H_res[tok * N * N + e];
  const T* xt = x + tok * N * C;
  T* ot = out + tok * N * C;
  for (int64_t c = threadIdx.x * W; c < C; c += blockDim.x * W) {
    Pack<T, W> xs[N], yp = *reinterpret_cast<const Pack<T, W>*>(y + tok * C + c);
#pragma unroll
    for (int j = 0; j < N; ++j) xs[j] = *reinterpret_cast<const Pack<T, W>*>(xt + j * C + c);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      Pack<T, W> o;
#pragma unroll
      for (int l = 0; l < W; ++l) {
        float s = hp[k] * to_float(yp.v[l]);
#pragma unroll
        for (int j = 0; j < N; ++j) s += hr[k * N + j] * to_float(xs[j].v[l]);
        o.v[l] = from_float<T>(s);
      }
      *reinterpret_cast<Pack<T, W>*>(ot + k * C + c) = o;
    }
  }
}

template <typename T, int N, int W>
__global__ void post_backward_kernel(T* dx, T* dy, float* dH_post, float* dH_res, const T* dout, const T* x, const T* y,
                                     const float* H_post, const float* H_res, int64_t C) {
  const int64_t tok = blockIdx.x;
  float hp[N], hr[N * N], acc[N + N * N] = {};
#pragma unroll
  for (int k = 0; k < N; ++k) hp[k] = H_post[tok * N + k];
#pragma unroll
  for (int e = 0; e < N * N; ++e) hr[e] = H_res[tok * N * N + e];
  const int64_t base = tok * N * C;
  for (int64_t c = threadIdx.x * W; c < C; c += blockDim.x * W) {
    Pack<T, W> d[N], xs[N], yp = *reinterpret_cast<const Pack<T, W>*>(y + tok * C + c), dyp;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      d[k] = *reinterpret_cast<const Pack<T, W>*>(dout + base + k * C + c);
      xs[k] = *reinterpret_cast<const Pack<T, W>*>(x + base + k * C + c);
    }
#pragma unroll
    for (int l = 0; l < W; ++l) {
      float dk[N], s = 0;
      const float yl = to_float(yp.v[l]);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        dk[k] = to_float(d[k].v[l]);
        s += hp[k] * dk[k];
        acc[k] += dk[k] * yl;
#pragma unroll
        for (int j = 0; j < N; ++j) acc[N + k * N + j] += dk[k] * to_float(xs[j].v[l]);
      }
      dyp.v[l] = from_float<T>(s);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        float t = 0;
#pragma unroll
        for (int k = 0; k < N; ++k) t += hr[k * N + j] * dk[k];
        xs[j].v[l] = from_float<T>(t);  // reuse: dx_j
      }
    }
    *reinterpret_cast<Pack<T, W>*>(dy + tok * C + c) = dyp;
#pragma unroll
    for (int j = 0; j < N; ++j) *reinterpret_cast<Pack<T, W>*>(dx + base + j * C + c) = xs[j];
  }
  __shared__ float total[N + N * N];
  block_sum<N + N * N>(acc, total);
  for (int r = threadIdx.x; r < N; r += blockDim.x) dH_post[tok * N + r] = total[r];
  for (int r = threadIdx.x; r < N * N; r += blockDim.x) dH_res[tok * N * N + r] = total[N + r];
}

// Calls f(integral_constant<n>, integral_constant<W>) with W the 16-byte pack width if C allows.
template <typename T, typename F>
void dispatch(int n, int64_t C, F&& f) {
  if (n < 1 || n > kMaxStreamsCuda)
    throw std::invalid_argument("the CUDA kernels take 1 to " + std::to_string(kMaxStreamsCuda) + " streams, got n = " +
                                std::to_string(n));
  kernels::with_streams<kMaxStreamsCuda>(n, [&](auto N) {
    if (pack_width<T>(C) > 1) f(N, std::integral_constant<int, 16 / sizeof(T)>{});
    else f(N, std::integral_constant<int, 1>{});
  });
}

// ---------------------------------------------------------------------------------------------
// pre

// The coefficient view for device code (bias, alpha, perms are device pointers).
template <typename T>
kernels::CoeffVariant<float> coeff_view(const PreInputs<T>& in) {
  const Layout l = layout(in.variant, in.n, in.C, in.options);
  return {in.variant,         in.n,     l.proj_cols, l.proj_per_token, l.res_size,
          in.sinkhorn_iters, in.bias, in.alpha,     in.perms,         in.options};
}

// The coefficient math once per program, not inlined into every (T, n, W) kernel: its Sinkhorn
// loops are unrolled for every stream count, which would multiply compile time (and code size).
__device__ __noinline__ void token_coefficients(const kernels::CoeffVariant<float>& v, const float* g, const float* r,
                                                float* scratch, kernels::Coeffs<float>& out) {
  kernels::coefficients(v, g, r, scratch, out);
}
__device__ __noinline__ void token_coefficients_backward(const kernels::CoeffVariant<float>& v, const float* g,
                                                         const float* r, const float* dpre, const float* dpost,
                                                         const float* dres, float* scratch, float* dg, float* dr,
                                                         float* dbias, float* dalpha, float* H_pre) {
  kernels::coefficients_backward(v, g, r, dpre, dpost, dres, scratch, dg, dr, dbias, dalpha, H_pre);
}

// The pre kernels give one token to one warp, up to kTokenWarps tokens to a block (fewer when the
// warps' coefficient scratch would not fit in shared memory: long Sinkhorn runs at large n): the
// per-token coefficient work is serial (lane 0), so many tokens must be in flight per SM to hide it.
constexpr int kTokenWarps = 8;

// Σv and Σv² per stream of one token, summed over the warp.
template <typename T, int N, int W>
__device__ void stream_sums(const T* xt, int64_t C, int lane, float (&s)[N], float (&ss)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) s[i] = ss[i] = 0.f;
  for (int64_t c = lane * W; c < C; c += 32 * W)
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Pack<T, W> p = *reinterpret_cast<const Pack<T, W>*>(xt + i * C + c);
#pragma unroll
      for (int l = 0; l < W; ++l) s[i] += to_float(p.v[l]), ss[i] += to_float(p.v[l]) * to_float(p.v[l]);
    }
  warp_sum<N>(s);
  warp_sum<N>(ss);
}

// A token's mean over its N·C values (a centred read's: Layout::centred).
template <int N>
__device__ float token_mean(const float (&s)[N], int64_t K) {
  float total = 0;
  for (int i = 0; i < N; ++i) total += s[i];
  return total / float(K);
}

// Dynamic shared memory: each warp's coefficient scratch (../coefficients.h), scratch_floats each.
// centred (a LayerNorm read, jpmhc): proj was made with phi's columns centred (op_cuda.cpp), and r
// is the standard deviation, Σv²/K − mean² + eps under the root.
template <typename T, int N, int W>
__global__ void pre_forward_kernel(kernels::CoeffVariant<float> v, const T* x, int64_t tokens, int64_t C, int64_t K,
                                   bool centred, int scratch_floats, T* h, float* H_pre, float* H_post, float* H_res,
                                   const float* proj, float* rms) {
  extern __shared__ float scratch[];
  __shared__ float pre_s[kTokenWarps][N];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tok = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (tok >= tokens) return;
  const T* xt = x + tok * N * C;
  float s[N], ss[N];
  stream_sums<T, N, W>(xt, C, lane, s, ss);
  if (lane == 0) {
    float r[N];
    if (v.P == N) {  // HC: one projection (and norm) per stream
      for (int i = 0; i < N; ++i) r[i] = sqrtf(ss[i] / float(K) + float(kRmsEps));
    } else if (v.P == 1) {
      float total = 0;
      for (int i = 0; i < N; ++i) total += ss[i];
      const float mean = centred ? token_mean<N>(s, K) : 0.f;
      r[0] = sqrtf(fmaxf(total / float(K) - mean * mean, 0.f) + float(kRmsEps));
    }
    for (int q = 0; q < v.P; ++q) rms[tok * v.P + q] = r[q];
    kernels::Coeffs<float> cf;
    token_coefficients(v, proj + tok * v.P * v.m, r, scratch + warp * scratch_floats, cf);
    for (int i = 0; i < N; ++i) {
      pre_s[warp][i] = H_pre[tok * N + i] = cf.pre[i];
      H_post[tok * N + i] = cf.post[i];
    }
    for (int e = 0; e < N * N; ++e) H_res[tok * N * N + e] = cf.res[e];
  }
  __syncwarp();
  float pre[N];
#pragma unroll
  for (int i = 0; i < N; ++i) pre[i] = pre_s[warp][i];
  for (int64_t c = lane * W; c < C; c += 32 * W) {
    float s[W] = {};
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Pack<T, W> p = *reinterpret_cast<const Pack<T, W>*>(xt + i * C + c);
#pragma unroll
      for (int l = 0; l < W; ++l) s[l] += pre[i] * to_float(p.v[l]);
    }
    Pack<T, W> o;
#pragma unroll
    for (int l = 0; l < W; ++l) o.v[l] = from_float<T>(s[l]);
    *reinterpret_cast<Pack<T, W>*>(h + tok * C + c) = o;
  }
}

// Per token: dH_pre += ⟨dh, x_i⟩, the coefficient backward (into dg, and this token's row of
// dbias|dalpha), and dx_i = H_pre[i]·dh + dr·(x_i − mean)/(K·r) (mean 0 unless centred); dg·phiᵀ
// is added by a GEMM afterwards.
template <typename T, int N, int W>
__global__ void pre_backward_kernel(kernels::CoeffVariant<float> v, const T* x, int64_t tokens, int64_t C, int64_t K,
                                    bool centred, int scratch_floats, const float* proj, const float* rms, const T* dh,
                                    const float* dH_pre, const float* dH_post, const float* dH_res, T* dx, T* dg,
                                    float* param_rows, int64_t bias_size, int64_t param_count) {
  extern __shared__ float scratch[];
  __shared__ float H_pre_s[kTokenWarps][N], coef_s[kTokenWarps][N];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tok = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (tok >= tokens) return;
  const T* xt = x + tok * N * C;
  const T* dht = dh + tok * C;
  float dpre[N] = {}, sums[N] = {};
  for (int64_t c = lane * W; c < C; c += 32 * W) {
    const Pack<T, W> d = *reinterpret_cast<const Pack<T, W>*>(dht + c);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Pack<T, W> p = *reinterpret_cast<const Pack<T, W>*>(xt + i * C + c);
#pragma unroll
      for (int l = 0; l < W; ++l) dpre[i] += to_float(d.v[l]) * to_float(p.v[l]), sums[i] += to_float(p.v[l]);
    }
  }
  warp_sum<N>(dpre);
  if (centred) warp_sum<N>(sums);
  const float mean = centred ? token_mean<N>(sums, K) : 0.f;
  if (lane == 0) {
    // P·m: HC's n projections of n + 2 and mHC's 2n + n² at n = 8, mHC-lite's 2n + n! at n = 5, or
    // go-mHC's 2n + d(d−1)/2 at n = 8, d = 16 (136).
    constexpr int kMaxProjections =
        std::max(std::max(kMaxStreamsCuda * (kMaxStreamsCuda + 2), 2 * kMaxStreamsLite + 120),
                 2 * kMaxStreamsCuda + kMaxCayleyDim * (kMaxCayleyDim - 1) / 2);
    float zeros[N * N] = {}, dg_token[kMaxProjections], dr[N];
    for (int i = 0; i < N; ++i) dpre[i] += dH_pre ? dH_pre[tok * N + i] : 0.f;
    float* row = param_rows + tok * param_count;
    for (int64_t e = 0; e < param_count; ++e) row[e] = 0.f;
    token_coefficients_backward(v, proj + tok * v.P * v.m, rms + tok * v.P, dpre, dH_post ? dH_post + tok * N : zeros,
                                dH_res ? dH_res + tok * N * N : zeros, scratch + warp * scratch_floats, dg_token, dr,
                                row, row + bias_size, H_pre_s[warp]);
    for (int64_t e = 0; e < v.P * v.m; ++e) dg[tok * v.P * v.m + e] = from_float<T>(dg_token[e]);
    for (int i = 0; i < N; ++i) {
      const int q = v.P == N ? i : 0;
      coef_s[warp][i] = v.P ? dr[q] / (float(K) * rms[tok * v.P + q]) : 0.f;
    }
  }
  __syncwarp();
  float H_pre[N], coef[N];
#pragma unroll
  for (int i = 0; i < N; ++i) H_pre[i] = H_pre_s[warp][i], coef[i] = coef_s[warp][i];
  T* dxt = dx + tok * N * C;
  for (int64_t c = lane * W; c < C; c += 32 * W) {
    const Pack<T, W> d = *reinterpret_cast<const Pack<T, W>*>(dht + c);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Pack<T, W> p = *reinterpret_cast<const Pack<T, W>*>(xt + i * C + c);
      Pack<T, W> o;
#pragma unroll
      for (int l = 0; l < W; ++l) o.v[l] = from_float<T>(H_pre[i] * to_float(d.v[l]) + coef[i] * (to_float(p.v[l]) - mean));
      *reinterpret_cast<Pack<T, W>*>(dxt + i * C + c) = o;
    }
  }
}

__global__ void fill_kernel(float* p, int64_t count, float value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) p[i] = value;
}

// Floats of coefficient scratch per token, rounded up to keep each warp's slice 16-byte aligned.
int scratch_length(const kernels::CoeffVariant<float>& v) { return int((kernels::scratch_size(v) + 3) / 4 * 4); }

// Tokens (warps) per block whose scratch fits the device's shared memory per block.
int token_warps(int scratch_floats) {
  int device = 0, max_shared = 48 * 1024;
  check(cudaGetDevice(&device), "get device");
  check(cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "device attribute");
  const size_t per_warp = size_t(scratch_floats) * sizeof(float) + 2 * kMaxStreamsCuda * sizeof(float);
  const int fit = int(size_t(max_shared) / per_warp);
  if (fit < 1) throw std::runtime_error("CUDA pre: the Sinkhorn scratch does not fit in shared memory");
  return fit < kTokenWarps ? fit : kTokenWarps;
}

template <typename K>
void allow_shared(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "shared memory");
}

// Row-major C[M, Ncols] = A[M, Kd] · B[Kd, Ncols] (+ C when accumulate), written for cuBLAS's
// column-major view: Cᵀ = Bᵀ·Aᵀ. transpose_a / transpose_b read A or B as its transpose.
void gemm(const Context& ctx, bool transpose_a, bool transpose_b, int64_t M, int64_t Ncols, int64_t Kd, const void* A,
          cudaDataType_t a_type, int64_t lda, const void* B, cudaDataType_t b_type, int64_t ldb, void* Cm,
          cudaDataType_t c_type, int64_t ldc, bool accumulate) {
  const float one = 1.f, beta = accumulate ? 1.f : 0.f;
  check(cublasSetStream(ctx.blas, ctx.stream), "set stream");
  check(cublasGemmEx(ctx.blas, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(Ncols),
                     int(M), int(Kd), &one, B, b_type, int(ldb), A, a_type, int(lda), &beta, Cm, c_type, int(ldc),
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "GEMM");
}

}  // namespace

size_t pre_backward_workspace_bytes(Variant variant, int n, int64_t C, int64_t N, size_t storage_bytes,
                                    const VariantOptions& options) {
  const Layout l = layout(variant, n, C, options);
  const size_t rows = size_t(N) * size_t(l.bias_size + l.alpha_size) * sizeof(float);  // per-token dbias|dalpha
  const size_t dg = size_t(N) * size_t(l.proj_per_token * l.proj_cols) * storage_bytes;
  const size_t ones = size_t(N) * sizeof(float), sums = size_t(l.bias_size + l.alpha_size) * sizeof(float);
  auto up = [](size_t b) { return (b + 255) / 256 * 256; };
  return up(rows) + up(dg) + up(ones) + up(sums);
}

template <typename T>
void pre_forward(const PreForwardParams<T>& p, const Context& ctx) {
  const auto v = coeff_view(p.in);
  const Layout l = layout(p.in.variant, p.in.n, p.in.C, p.in.options);
  if (p.in.N == 0) return;
  if (v.P > 0)  // g [N·P, m] = X [N·P, K] · phi [K, m], fp32 out
    gemm(ctx, false, false, p.in.N * v.P, v.m, l.proj_rows, p.in.x, blas_type<T>(), l.proj_rows, p.in.phi, blas_type<T>(),
         v.m, p.proj, CUDA_R_32F, v.m, false);
  const int scratch_floats = scratch_length(v), warps = token_warps(scratch_floats);
  const size_t smem = size_t(warps) * scratch_floats * sizeof(float);
  dispatch<T>(p.in.n, p.in.C, [&](auto N, auto W) {
    auto kernel = pre_forward_kernel<T, N(), W()>;
    allow_shared(kernel, smem);
    kernel<<<unsigned((p.in.N + warps - 1) / warps), warps * 32, smem, ctx.stream>>>(
        v, p.in.x, p.in.N, p.in.C, l.proj_rows, l.centred, scratch_floats, p.h, p.H_pre, p.H_post, p.H_res, p.proj,
        p.rms);
  });
  check(cudaGetLastError(), "pre forward");
}

template <typename T>
void pre_backward(const PreBackwardParams<T>& p, const Context& ctx) {
  const auto v = coeff_view(p.in);
  const Layout l = layout(p.in.variant, p.in.n, p.in.C, p.in.options);
  const int64_t N = p.in.N, params = l.bias_size + l.alpha_size, K = l.proj_rows;
  auto up = [](size_t b) { return (b + 255) / 256 * 256; };
  char* ws = static_cast<char*>(p.workspace);
  float* rows = reinterpret_cast<float*>(ws);
  T* dg = reinterpret_cast<T*>(ws + up(size_t(N) * params * sizeof(float)));
  float* ones = reinterpret_cast<float*>(reinterpret_cast<char*>(dg) + up(size_t(N) * v.P * v.m * sizeof(T)));
  float* sums = reinterpret_cast<float*>(reinterpret_cast<char*>(ones) + up(size_t(N) * sizeof(float)));
  if (N == 0) {
    if (l.proj_rows * l.proj_cols != 0) check(cudaMemsetAsync(p.dphi, 0, sizeof(float) * K * l.proj_cols, ctx.stream), "memset");
    if (l.bias_size) check(cudaMemsetAsync(p.dbias, 0, sizeof(float) * l.bias_size, ctx.stream), "memset");
    if (l.alpha_size) check(cudaMemsetAsync(p.dalpha, 0, sizeof(float) * l.alpha_size, ctx.stream), "memset");
    return;
  }
  const int scratch_floats = scratch_length(v), warps = token_warps(scratch_floats);
  const size_t smem = size_t(warps) * scratch_floats * sizeof(float);
  dispatch<T>(p.in.n, p.in.C, [&](auto Nn, auto W) {
    auto kernel = pre_backward_kernel<T, Nn(), W()>;
    allow_shared(kernel, smem);
    kernel<<<unsigned((N + warps - 1) / warps), warps * 32, smem, ctx.stream>>>(v, p.in.x, N, p.in.C, K, l.centred, scratch_floats, p.proj,
                                                                   p.rms, p.dh, p.dH_pre, p.dH_post, p.dH_res, p.dx,
                                                                   dg, rows, l.bias_size, params);
  });
  check(cudaGetLastError(), "pre backward");
  if (v.P > 0) {
    // dX [N·P, K] += dg [N·P, m] · phiᵀ ; dphi [K, m] = Xᵀ [K, N·P] · dg [N·P, m]
    gemm(ctx, false, true, N * v.P, K, v.m, dg, blas_type<T>(), v.m, p.in.phi, blas_type<T>(), v.m, p.dx, blas_type<T>(), K, true);
    gemm(ctx, true, false, K, v.m, N * v.P, p.in.x, blas_type<T>(), K, dg, blas_type<T>(), v.m, p.dphi, CUDA_R_32F, v.m, false);
  }
  if (params > 0) {  // column sums of the per-token rows: one GEMV, fixed order
    fill_kernel<<<64, kThreads, 0, ctx.stream>>>(ones, N, 1.f);
    const float one = 1.f, zero = 0.f;
    check(cublasSetStream(ctx.blas, ctx.stream), "set stream");
    check(cublasSgemv(ctx.blas, CUBLAS_OP_N, int(params), int(N), &one, rows, int(params), ones, 1, &zero, sums, 1), "GEMV");
    if (l.bias_size) check(cudaMemcpyAsync(p.dbias, sums, sizeof(float) * l.bias_size, cudaMemcpyDeviceToDevice, ctx.stream), "copy");
    if (l.alpha_size)
      check(cudaMemcpyAsync(p.dalpha, sums + l.bias_size, sizeof(float) * l.alpha_size, cudaMemcpyDeviceToDevice, ctx.stream), "copy");
  }
}

template <typename T>
void post_forward(T* out, const T* x, const T* y, const float* H_post, const float* H_res, int64_t N, int n, int64_t C,
                  const Context& ctx) {
  if (N == 0) return;
  dispatch<T>(n, C, [&](auto Nn, auto W) {
    post_forward_kernel<T, Nn(), W()><<<N, block_threads(C, W()), 0, ctx.stream>>>(out, x, y, H_post, H_res, C);
  });
  check(cudaGetLastError(), "post forward");
}

template <typename T>
void post_backward(T* dx, T* dy, float* dH_post, float* dH_res, const T* dout, const T* x, const T* y,
                   const float* H_post, const float* H_res, int64_t N, int n, int64_t C, const Context& ctx) {
  if (N == 0) return;
  dispatch<T>(n, C, [&](auto Nn, auto W) {
    post_backward_kernel<T, Nn(), W()><<<N, block_threads(C, W()), 0, ctx.stream>>>(dx, dy, dH_post, dH_res, dout, x, y,
                                                                                    H_post, H_res, C);
  });
  check(cudaGetLastError(), "post backward");
}

#define MHC_INSTANTIATE(T)                                                                                          \
  template void pre_forward<T>(const PreForwardParams<T>&, const Context&);                                          \
  template void pre_backward<T>(const PreBackwardParams<T>&, const Context&);                                        \
  template void post_forward<T>(T*, const T*, const T*, const float*, const float*, int64_t, int, int64_t,          \
                                const Context&);                                                                     \
  template void post_backward<T>(T*, T*, float*, float*, const T*, const T*, const T*, const float*, const float*, \
                                 int64_t, int, int64_t, const Context&);
MHC_INSTANTIATE(float)
MHC_INSTANTIATE(__nv_bfloat16)

}  // namespace mhc::cuda
