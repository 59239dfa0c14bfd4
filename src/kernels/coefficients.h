// Per-token coefficient math of every variant, forward and backward, as the kernels call it: the
// runtime variant turned into the variant's compile-time VariantMath (variants/*.h, one header per
// variant). One definition compiled for the CPU kernels and, under nvcc, for the CUDA kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "variants/common.h"
#include "variants/gomhc.h"
#include "variants/hc.h"
#include "variants/ihc.h"
#include "variants/jpmhc.h"
#include "variants/kromhc.h"
#include "variants/mhc.h"
#include "variants/mhc_v4.h"
#include "variants/mhc_lite.h"
#include "variants/residual.h"

namespace mhc::kernels {

// Returns f(std::integral_constant<Variant, variant>{}) for the runtime variant, so that f can name
// VariantMath<decltype(k)::value> (beside with_streams, which does the same for n). Adding a
// variant adds its header above and its case here.
template <typename F>
MHC_HD decltype(auto) with_variant(Variant variant, F&& f) {
  switch (variant) {
    case Variant::hc: return f(std::integral_constant<Variant, Variant::hc>{});
    case Variant::mhc: return f(std::integral_constant<Variant, Variant::mhc>{});
    case Variant::mhc_v4: return f(std::integral_constant<Variant, Variant::mhc_v4>{});
    case Variant::mhc_lite: return f(std::integral_constant<Variant, Variant::mhc_lite>{});
    case Variant::kromhc: return f(std::integral_constant<Variant, Variant::kromhc>{});
    case Variant::ihc: return f(std::integral_constant<Variant, Variant::ihc>{});
    case Variant::jpmhc: return f(std::integral_constant<Variant, Variant::jpmhc>{});
    case Variant::gomhc: return f(std::integral_constant<Variant, Variant::gomhc>{});
    default: return f(std::integral_constant<Variant, Variant::residual>{});  // variants are checked when parsed
  }
}

// The permutation table of the variants that have one (mHC-lite), else empty.
inline std::vector<int> permutation_table(Variant variant, int n) {
  return variant == Variant::mhc_lite ? permutation_table(n) : std::vector<int>{};
}

// One token's coefficients. scratch: scratch_size(v) entries.
template <typename T>
MHC_HD inline void coefficients(const CoeffVariant<T>& v, const T* g, const T* r, T* scratch, Coeffs<T>& out) {
  with_variant(v.variant, [&](auto variant) { VariantMath<decltype(variant)::value>::forward(v, g, r, scratch, out); });
}

// Backward of `coefficients` for one token. Given dH_pre, dH_post, dH_res (dres) it writes
// dg [P, m] and dr [P] and accumulates dbias, dalpha. Also returns H_pre (needed for dx).
template <typename T>
MHC_HD inline void coefficients_backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre,
                                         const T* dpost, const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha,
                                         T* H_pre) {
  with_variant(v.variant, [&](auto variant) {
    VariantMath<decltype(variant)::value>::backward(v, g, r, dpre, dpost, dres, scratch, dg, dr, dbias, dalpha, H_pre);
  });
}

// The scratch one token's coefficients (forward or backward) work in, in entries of T.
template <typename T>
MHC_HD inline int64_t scratch_size(const CoeffVariant<T>& v) {
  return with_variant(v.variant, [&](auto variant) { return VariantMath<decltype(variant)::value>::scratch_size(v); });
}

}  // namespace mhc::kernels
