// Fused CPU kernels of the residual family: the interface.
//
// Framework-free on purpose (the flash-attention split): plain pointers to contiguous row-major
// buffers, sizes, and a thread count. The LibTorch ops (src/ops/op_checks.cpp, op_cpu.cpp) validate shapes
// and dtypes, allocates, fills these structs and calls in. Instantiated for float (training) and
// double (gradient checks). Shape letters: N tokens, n streams, C width, K = rows of phi, m = its
// columns, P = projections per token (n for HC, 1 for mHC/mHC-lite, 0 for the plain residual).
#pragma once

#include <cstdint>

#include "mhc/variant.h"

namespace mhc::cpu {

// What both directions of `pre` read: the op's inputs and sizes.
template <typename T>
struct PreInputs {
  const T* x;      // [N, n, C]
  const T* phi;    // [K, m]
  const T* bias;   // [B]
  const T* alpha;  // [A]
  int64_t N;
  int n;
  int64_t C;
  Variant variant;
  int sinkhorn_iters;
  VariantOptions options;
  int threads;
};

template <typename T>
struct PreForwardParams {
  PreInputs<T> in;
  T* h;       // [N, C]       out: H_pre·x
  T* H_pre;   // [N, n]       out
  T* H_post;  // [N, n]       out
  T* H_res;   // [N, n, n]    out, row k = destination stream
  T* proj;    // [N, P, m]    out: raw projections g (saved for backward)
  T* rms;     // [N, P]       out: r = sqrt(mean(v^2) + eps) (saved for backward)
};

template <typename T>
struct PreBackwardParams {
  PreInputs<T> in;
  const T* proj;     // saved by the forward
  const T* rms;
  const T* dh;       // [N, C]
  const T* dH_pre;   // [N, n]     may be null (no gradient flowed into that output)
  const T* dH_post;  // [N, n]     may be null
  const T* dH_res;   // [N, n, n]  may be null
  T* dx;             // [N, n, C]  out (overwritten)
  T* dphi;           // [K, m]     out (overwritten)
  T* dbias;          // [B]        out (overwritten)
  T* dalpha;         // [A]        out (overwritten)
  const T* dx_add;   // [N, n, C]  may be null: x's gradient from its other uses, added into dx
};

template <typename T>
void pre_forward(const PreForwardParams<T>& p);

template <typename T>
void pre_backward(const PreBackwardParams<T>& p);

// x_next[k] = Σ_j H_res[k,j]·x[j] + H_post[k]·y, per token; one read of x and y, one write.
template <typename T>
void post_forward(T* out, const T* x, const T* y, const T* H_post, const T* H_res, int64_t N, int n,
                  int64_t C, int threads);

// All four gradients in one pass over (dout, x, y). Outputs are overwritten.
template <typename T>
void post_backward(T* dx, T* dy, T* dH_post, T* dH_res, const T* dout, const T* x, const T* y,
                   const T* H_post, const T* H_res, int64_t N, int n, int64_t C, int threads);

// ---- The boundary between two sublayers: post of the one before, pre of the next ----------------
//
// x_next = H_res·x + H_post^T·y (the post before), then the next pre on x_next, over the same tile of
// tokens: the forward writes the tile of x_next and projects it while it is in cache (one read of
// x_next fewer than post then pre); the backward computes the tile of x_next's gradient (through
// the pre, plus the gradient from x_next's other use) and runs the post's backward on it in cache,
// so that gradient never goes to memory (a write and a read of n·C per token fewer).

// The post before the boundary.
template <typename T>
struct PostInputs {
  const T* x;       // [N, n, C]
  const T* y;       // [N, C]
  const T* H_post;  // [N, n]
  const T* H_res;   // [N, n, n]
};

// Its gradients, out (overwritten).
template <typename T>
struct PostGradients {
  T* dx;       // [N, n, C]
  T* dy;       // [N, C]
  T* dH_post;  // [N, n]
  T* dH_res;   // [N, n, n]
};

// pre.in.x is x_next: the forward writes it (x_next, the same pointer, writable), the backward reads
// it (saved by the forward).
// The backward's pre.dx is unused (x_next's gradient stays in the tile); pre.dx_add is x_next's
// gradient from its other use (the next sublayer's post), may be null.
template <typename T>
void boundary_forward(const PostInputs<T>& post, T* x_next, const PreForwardParams<T>& pre);
template <typename T>
void boundary_backward(const PostInputs<T>& post, const PostGradients<T>& post_grads, const PreBackwardParams<T>& pre);

// The FMA throughput of `threads` threads in GFLOP/s (2 per multiply-add, 32-byte vectors): the
// arithmetic ceiling of the projection GEMMs (peak.cpp; public as mhc::cpu_fma_peak_gflops, mhc/machine.h).
double fma_peak_gflops(int threads);

}  // namespace mhc::cpu
