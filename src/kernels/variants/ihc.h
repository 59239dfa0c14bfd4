// Identity-HC (DESIGN.md §2): H_res = I with the σ family's dynamic H_pre and H_post (common.h). The
// ablation the literature uses to ask whether learned mixing helps at all: the streams are never
// mixed, only read (pre) and written (post) with learned per-token weights. No res logits, so phi
// has 2n columns and alpha is [alpha_pre, alpha_post].
#pragma once

#include "common.h"

namespace mhc::kernels {

struct IdentityMixing {
  static int64_t res_size(int64_t, const VariantOptions&) { return 0; }
  template <typename T>
  static MHC_HD int64_t work_size(const CoeffVariant<T>&) { return 0; }
  static void initial_res_logits(int64_t, double, float*, const VariantOptions&) {}

  template <typename T>
  static MHC_HD void res_forward(const CoeffVariant<T>& v, const T*, T* res) {
    for (int i = 0; i < v.n; ++i)
      for (int j = 0; j < v.n; ++j) res[i * v.n + j] = T(i == j);
  }
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>&, const T*, const T*, T*, T*) {}  // H_res is constant
};

template <>
struct VariantMath<Variant::ihc> : SigmaFamily<IdentityMixing> {
  static void check_streams(int64_t n, const VariantOptions&) { check_stream_range("ihc", n, kMaxStreams); }
  static constexpr ShapeNames shape_names = {"[n*C, 2n] for ihc", "[2n]", "[2] (pre, post)"};
};

}  // namespace mhc::kernels
