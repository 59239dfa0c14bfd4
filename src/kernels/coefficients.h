// Per-token coefficient math of every variant, forward and backward, as the kernels call it: the
// runtime kind turned into the variant's compile-time VariantMath (variants/*.h, one header per
// variant). One definition compiled for the CPU kernels and, under nvcc, for the CUDA kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "variants/common.h"
#include "variants/hc.h"
#include "variants/ihc.h"
#include "variants/kromhc.h"
#include "variants/mhc.h"
#include "variants/mhc_lite.h"
#include "variants/residual.h"

namespace mhc::kernels {

// Returns f(std::integral_constant<Kind, kind>{}) for the runtime kind, so that f can name
// VariantMath<decltype(k)::value> (beside with_streams, which does the same for n). Adding a
// variant adds its header above and its case here.
template <typename F>
MHC_HD decltype(auto) with_variant(Kind kind, F&& f) {
  switch (kind) {
    case Kind::hc: return f(std::integral_constant<Kind, Kind::hc>{});
    case Kind::mhc: return f(std::integral_constant<Kind, Kind::mhc>{});
    case Kind::mhc_lite: return f(std::integral_constant<Kind, Kind::mhc_lite>{});
    case Kind::kromhc: return f(std::integral_constant<Kind, Kind::kromhc>{});
    case Kind::ihc: return f(std::integral_constant<Kind, Kind::ihc>{});
    default: return f(std::integral_constant<Kind, Kind::residual>{});  // kinds are checked when parsed
  }
}

// The permutation table of the kinds that have one (mHC-lite), else empty.
inline std::vector<int> permutation_table(Kind kind, int n) {
  return kind == Kind::mhc_lite ? permutation_table(n) : std::vector<int>{};
}

// One token's coefficients. scratch: scratch_size(v) entries.
template <typename T>
MHC_HD inline void coefficients(const CoeffVariant<T>& v, const T* g, const T* r, T* scratch, Coeffs<T>& out) {
  with_variant(v.kind, [&](auto kind) { VariantMath<decltype(kind)::value>::forward(v, g, r, scratch, out); });
}

// Backward of `coefficients` for one token. Given dH_pre, dH_post, dH_res (dres) it writes
// dg [P, m] and dr [P] and accumulates dbias, dalpha. Also returns H_pre (needed for dx).
template <typename T>
MHC_HD inline void coefficients_backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                                         const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre) {
  with_variant(v.kind, [&](auto kind) {
    VariantMath<decltype(kind)::value>::backward(v, g, r, dpre, dpost, dres, scratch, dg, dr, dbias, dalpha, H_pre);
  });
}

// The scratch one token's coefficients (forward or backward) work in, in entries of T.
template <typename T>
MHC_HD inline int64_t scratch_size(const CoeffVariant<T>& v) {
  return with_variant(v.kind, [&](auto kind) { return VariantMath<decltype(kind)::value>::scratch_size(v); });
}

}  // namespace mhc::kernels
