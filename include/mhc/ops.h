// The library's seam: the two differentiable ops of one sublayer (DESIGN.md §4).
//
//   pre(x, phi, bias, alpha, variant, t) -> (h, H_pre, H_post, H_res)   coefficients + pre-mix
//
// (the registered ops take the variant as a spec string with its options, mhc/variant.h's
// variant_spec; the C++ entry points take Variant and VariantOptions)
//   post(x, y, H_post, H_res)         -> x_next                      res-mix + post-mix
//
// and, between two consecutive sublayers, the two as one op:
//
//   boundary(x, y, H_post, H_res, phi', bias', alpha', …) = pre'(post(x, y, H_post, H_res))
//
// the post of the sublayer before and the pre of the next (its parameters primed) in one pass over
// tiles of tokens on the CPU (cpu_kernels.h says what the fusion saves in memory traffic; CUDA runs
// the two kernels).
//
// Shapes: x [N, n, C], y and h [N, C], H_pre and H_post [N, n], H_res [N, n, n] (row k is the
// destination stream). phi, bias and alpha are laid out as in mhc/variant.h.
//
// Dtypes: everything float32, or everything float64; or bfloat16 storage — x, y, h (and their
// gradients) bfloat16 while phi, bias, alpha and the coefficients H_* stay float32 (mixed
// precision: fp32 master parameters, fp32 coefficient math). With bf16 storage the projection
// reads phi rounded to bf16, as the tensor-core GEMM of the CUDA kernels does; its gradient flows
// to the fp32 phi unchanged.
//
// mhc::pre / mhc::post call the registered ops `mhc::pre` / `mhc::post` through the dispatcher, so
// they run the fused kernel of the tensors' backend and get autograd from the fused backward.
// mhc::reference::pre / post compute the same functions with plain LibTorch tensor ops (autograd
// gives their backward); they are the specification every fused kernel is tested against.
#pragma once

#include <torch/torch.h>

#include "mhc/variant.h"

namespace mhc {

struct PreOutput {
  torch::Tensor h;       // [N, C]
  torch::Tensor H_pre;   // [N, n]
  torch::Tensor H_post;  // [N, n]
  torch::Tensor H_res;   // [N, n, n]
  // From pre_joint: x again, for the post of the same sublayer (an alias of x). Its gradient is
  // added inside pre's backward kernel instead of autograd summing x's two gradients. (Undefined
  // from pre and boundary; HyperConnection::pre gives x itself on the reference path.)
  torch::Tensor x_post;  // [N, n, C]
  // From boundary: x_next, the state its post made and its pre read, which the post of the same
  // sublayer reads in turn; its gradient from there is likewise added inside boundary's backward
  // kernel. (Undefined from pre and pre_joint.)
  torch::Tensor x_next;  // [N, n, C]
};

PreOutput pre(const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias,
              const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters = 20,
              const VariantOptions& options = {});
PreOutput pre_joint(const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias,
                    const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters = 20,
              const VariantOptions& options = {});
torch::Tensor post(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                   const torch::Tensor& H_res);
// pre(post(x, y, H_post, H_res), phi, bias, alpha, …), with post's output in x_next.
PreOutput boundary(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                   const torch::Tensor& H_res, const torch::Tensor& phi, const torch::Tensor& bias,
                   const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters = 20,
              const VariantOptions& options = {});

namespace reference {
PreOutput pre(const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias,
              const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters = 20,
              const VariantOptions& options = {});
torch::Tensor post(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                   const torch::Tensor& H_res);
PreOutput boundary(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                   const torch::Tensor& H_res, const torch::Tensor& phi, const torch::Tensor& bias,
                   const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters = 20,
              const VariantOptions& options = {});
// The n! permutation matrices in lexicographic order of (σ(0), …, σ(n−1)); P[k][i][σ_k(i)] = 1.
torch::Tensor permutation_matrices(int64_t n, torch::ScalarType dtype = torch::kFloat);
}  // namespace reference

// The dtype of the parameters and coefficients that go with storage of dtype x: float32 for bfloat16,
// x's own dtype otherwise.
torch::ScalarType coefficient_dtype(torch::ScalarType x);
// phi as the projection reads it next to storage of dtype x: rounded to bf16 values (still float32)
// under bfloat16 storage, phi itself otherwise.
torch::Tensor projection_weights(const torch::Tensor& phi, torch::ScalarType x);

// Validation shared by every backend and by the reference: throws c10::Error with a one-line
// message naming the bad value and what is accepted. Returns the variant's layout.
Layout check_pre_args(const torch::Tensor& x, const torch::Tensor& phi, const torch::Tensor& bias,
                      const torch::Tensor& alpha, Variant variant, int64_t sinkhorn_iters,
                      const VariantOptions& options = {});
void check_post_args(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& H_post,
                     const torch::Tensor& H_res);

// Wall-clock time spent inside the connection ops' CPU implementations (pre, post and their
// backward halves: kernels and output allocations; autograd's bookkeeping excluded), summed over
// calls while enabled, from any thread. `mhc bench train` reports it as the connection's measured
// share of a training step, `mhc bench layer --json` as the part of a sublayer's time inside the
// ops. Off by default: then an op call costs one relaxed atomic load.
namespace op_clock {
void enable(bool on);
void reset();
double seconds();
}  // namespace op_clock

}  // namespace mhc
