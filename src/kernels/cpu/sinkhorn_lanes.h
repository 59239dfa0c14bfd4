// H_res of W tokens at once for the Sinkhorn–Knopp variants (mhc, mhc-v4), one token per lane of a
// Simd<T> vector. Per token, the 2t normalisations are a chain of dependent sums, divisions and
// scalings (160 divisions at n = 4, t = 20) that leaves the core mostly idle; on vectors, W tokens
// cost what one did. It is variants/mhc.h's linear_iterates and linear_backward instantiated on
// vectors, so every lane computes exactly what the per-token code computes. The start (the exp of
// the shifted logits, and mhc.h's test that the linear domain is exact) stays per token; a group in
// which some token needs the log domain runs token by token instead (start returns false).
#pragma once

#include <type_traits>
#include <vector>

#include "../variants/mhc.h"
#include "simd.h"

namespace mhc::cpu {

// Whether a variant's per-token math is the σ family over Sinkhorn–Knopp, and with which eps.
template <typename Mixing>
struct SinkhornOf : std::false_type {};
template <typename Eps>
struct SinkhornOf<kernels::SinkhornMixing<Eps>> : std::true_type {
  using EpsType = Eps;
};
template <typename Math, typename = void>
struct HasSinkhornLanes : std::false_type {};
template <typename Math>
struct HasSinkhornLanes<Math, std::void_t<typename Math::MixingType>> : SinkhornOf<typename Math::MixingType> {};

template <typename T>
class SinkhornLanes {
 public:
  using V = typename Simd<T>::V;
  static constexpr int W = Simd<T>::W;

  // n streams, t ≥ 1 iterations; room for the 2t + 1 iterates the backward walks through.
  SinkhornLanes(int n, int t) : n_(n), t_(t), nn_(n * n), iterates_((2 * t + 1) * n * n), d_(n * n), start_(n * n) {}

  // Loads W tokens' res logits (lane l from res_logits[l], n² each) as the first iterate,
  // exp(H̃ − colmax). False when one of them needs the log domain (nothing is computed then).
  bool start(T eps, const T* const (&res_logits)[W]) {
    for (int l = 0; l < W; ++l) {
      bool exact = false;
      kernels::with_unrolled_streams(
          n_, [&](auto N) { exact = kernels::sinkhorn_linear_start(N, res_logits[l], start_.data()); });
      if (!exact && !(eps >= T(kernels::kLinearFloor))) return false;
      for (int e = 0; e < nn_; ++e) iterates_[e][l] = start_[e];
    }
    return true;
  }

  // After start: H_res of lane l into res[l] (n² each).
  void forward(T eps, T* const (&res)[W]) {
    iterate(eps, /*stride=*/0);  // in place: the forward needs only the last iterate
    for (int e = 0; e < nn_; ++e)
      for (int l = 0; l < W; ++l) res[l][e] = iterates_[e][l];
  }

  // After start: dlogits[l] = ∂⟨dres[l], H_res⟩/∂H̃_res for each lane (n² each).
  void backward(T eps, const T* const (&dres)[W], T* const (&dlogits)[W]) {
    iterate(eps, nn_);
    for (int e = 0; e < nn_; ++e)
      for (int l = 0; l < W; ++l) d_[e][l] = dres[l][e];
    kernels::with_unrolled_streams(
        n_, [&](auto N) { kernels::linear_backward(N, t_, Simd<T>::splat(eps), iterates_.data(), d_.data()); });
    for (int e = 0; e < nn_; ++e)
      for (int l = 0; l < W; ++l) dlogits[l][e] = d_[e][l];
  }

 private:
  // The 2t normalisations from the first iterate: each kept (stride n²) or in place (stride 0).
  void iterate(T eps, int stride) {
    kernels::with_unrolled_streams(
        n_, [&](auto N) { kernels::linear_iterates(N, t_, Simd<T>::splat(eps), iterates_.data(), stride); });
  }

  int n_, t_, nn_;
  std::vector<V> iterates_, d_;  // the iterates [(2t + 1)·n²] and the gradient [n²], lane = token
  std::vector<T> start_;         // one token's exp(H̃ − colmax)
};

}  // namespace mhc::cpu
