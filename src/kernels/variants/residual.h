// The plain residual's coefficients (DESIGN.md §1): n = 1 and H_pre = H_post = H_res = 1, no
// parameters, so x' = x + F(x) through the same ops as every other variant.
#pragma once

#include "common.h"

namespace mhc::kernels {

template <>
struct VariantMath<Variant::residual> {
  static void check_streams(int64_t n, const VariantOptions&) {
    if (n != 1) throw std::invalid_argument("residual takes exactly 1 stream, got n = " + std::to_string(n));
  }
  static Layout layout(int64_t, int64_t, const VariantOptions&) { return {0, 0, 0, 0, 0, 1}; }
  static constexpr ShapeNames shape_names = {"[0, 0] (no parameters)", "[0]", "[0]"};
  static void initial_bias_and_alpha(int64_t, int64_t, double, double, float*, float*, const VariantOptions&) {}

  template <typename T>
  static MHC_HD int64_t scratch_size(const CoeffVariant<T>&) {
    return 0;
  }

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
