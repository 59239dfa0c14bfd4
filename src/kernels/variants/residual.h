// The plain residual's coefficients (DESIGN.md §1): n = 1 and H_pre = H_post = H_res = 1, no
// parameters, so x' = x + F(x) through the same ops as every other variant.
#pragma once

#include "common.h"

namespace mhc::kernels {

template <>
struct VariantMath<Kind::residual> {
  template <typename T>
  static MHC_HD void forward(const CoeffVariant<T>&, const T*, const T*, T*, Coeffs<T>& out) {
    out.pre[0] = out.post[0] = out.res[0] = T(1);
  }
  template <typename T>
  static MHC_HD void backward(const CoeffVariant<T>&, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*,
                              T*, T* H_pre) {
    H_pre[0] = T(1);
  }
};

}  // namespace mhc::kernels
