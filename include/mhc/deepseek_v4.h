// DeepSeek-V4's hyper-connection parameters and this library's `mhc-v4` layout (DESIGN.md §9).
//
// V4 stores one sublayer's connection as fn [(2+n)·n, n·C] (rows [pre | post | comb], comb
// row-major [j = source, k = destination]), base [(2+n)·n] and scale [3], and applies comb
// transposed: x'_k = Σ_j comb[j,k]·x_j. This library's phi [n·C, 2n + n²] has columns [pre | post |
// res] with res row-major in H_res [k = destination, j = source]. So phi is fnᵀ with the res block's
// (j, k) swapped, bias is base reordered the same way and alpha is scale. φ = fnᵀ without the swap
// is the bug Megatron-LM, NeMo and Hugging Face each shipped once: it applies comb untransposed.
//
// Both directions are exact (a permutation of entries) and differentiable; they accept float32
// (V4's dtype) or float64, and throw c10::Error with a one-line message naming the tensor and the
// expected shape or dtype. Python: torch.ops.mhc.from_deepseek_v4 / to_deepseek_v4, and
// mhc.from_deepseek_v4 / mhc.to_deepseek_v4.
#pragma once

#include <torch/torch.h>

namespace mhc {

struct ConnectionParams {
  torch::Tensor phi;    // [n·C, 2n + n²]
  torch::Tensor bias;   // [2n + n²]
  torch::Tensor alpha;  // [3]
};

struct DeepSeekV4Params {
  torch::Tensor fn;     // [(2+n)·n, n·C]
  torch::Tensor base;   // [(2+n)·n]
  torch::Tensor scale;  // [3]
};

// n and C are read from the shapes: base has (2+n)·n entries, fn has n·C columns.
ConnectionParams from_deepseek_v4(const torch::Tensor& fn, const torch::Tensor& base, const torch::Tensor& scale);
DeepSeekV4Params to_deepseek_v4(const torch::Tensor& phi, const torch::Tensor& bias, const torch::Tensor& alpha);

// The stream count n with (2+n)·n = rows, or 0 when there is none in [1, kMaxStreams].
int64_t deepseek_v4_streams(int64_t rows);

}  // namespace mhc
