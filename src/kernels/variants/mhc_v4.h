// DeepSeek-V4's released mHC (DESIGN.md §9): mHC with V4's eps terms. In this library's H_res
// convention (row k is the destination; V4's comb is H_resᵀ) V4's `softmax over k + eps` is a
// column normalisation of exp(H̃_res) with every entry then floored by eps, its 2t − 1 later
// normalisations (rows last) divide by (sum + eps), and H_pre = σ + eps; H_post = 2σ as in mHC.
// Only the eps differs from mhc.h, so this is mhc.h's iteration with Eps = DeepSeekV4Eps; with eps
// = 0 it is mhc exactly (tests/test_sinkhorn.cpp). Parameters convert from and to V4's fn, base,
// scale in src/ops/deepseek_v4.cpp.
#pragma once

#include "mhc.h"

namespace mhc::kernels {

struct DeepSeekV4Eps {
  static constexpr double value = kDeepSeekV4Eps;
};

// The variant at any eps, for tests (eps = 0 must be mhc).
template <typename Eps>
using DeepSeekV4Math = SigmaFamily<SinkhornMixing<Eps>, Eps>;

template <>
struct VariantMath<Variant::mhc_v4> : DeepSeekV4Math<DeepSeekV4Eps> {
  static void check_streams(int64_t n, const VariantOptions&) { check_stream_range("mhc-v4", n, kMaxStreams); }
  static constexpr ShapeNames shape_names = {"[n*C, 2n + n*n] for mhc-v4", "[2n + n*n]", "[3] (pre, post, res)"};
};

}  // namespace mhc::kernels
