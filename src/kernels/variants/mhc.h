// mHC's H_res (DeepSeek, arXiv 2512.24880; DESIGN.md §2–3): Sinkhorn–Knopp, t alternating column
// and row normalisations of exp(H̃_res), approximately doubly stochastic; H_pre and H_post are the
// σ family's (common.h).
#pragma once

#include "common.h"

namespace mhc::kernels {

// Sinkhorn–Knopp runs in the linear domain (2t·n² multiplies) whenever that is exact, and in the log
// domain (each normalisation subtracts a log-sum-exp: 2t·n² exps) otherwise. Why the test below
// suffices: let every entry of M0 = exp(H̃ − colmax) lie in [m, 1], m = e^-S. Every iterate is a
// diagonal scaling D1·M0·D2, and after any normalisation the opposite scaling's entries differ by at
// most a factor 1/m (each is one over a sum whose terms differ by at most that factor). So every
// entry of every iterate stays ≥ m²/n. With S ≤ 32 and n ≤ 16 that is ≥ 1e-29: normal fp32 numbers,
// full relative precision, nothing flushed to zero, so the linear iteration computes SK_t(exp(H̃))
// to rounding. A wider spread (a whole row far below its columns' maxima, as in trained models with
// sharp logits) would underflow there, and the row normalisation cannot restore what was lost.
constexpr double kLinearSpread = 32.0;

// ---------------------------------------------------------------------------------------------
// Sinkhorn–Knopp on an N×N matrix. N is a compile-time stream count (std::integral_constant) up to
// kUnrolledStreams, so the 2t normalisations of a few dozen numbers unroll fully (they are the bulk
// of the per-token coefficient work), and a plain int beyond: unrolling n² = 256 entries for every
// n up to 16 would multiply the CUDA build's time (ptxas) for little gain.
// SK_t(exp(H̃)) = t × (columns, rows) starting from exp(H̃); t = 0 is exp(H̃) itself.

// M0 = exp(H̃ − colmax); the first column normalisation cancels the shift exactly. Returns whether
// the linear domain is exact for these logits (every shifted logit ≥ −kLinearSpread, see above).
template <typename T, typename Dim>
MHC_HD inline bool sinkhorn_linear_start(Dim N, const T* logits, T* M) {
  bool exact = true;
  for (int j = 0; j < N; ++j) {
    T colmax = logits[j];
    for (int k = 1; k < N; ++k) colmax = std::max(colmax, logits[k * N + j]);
    for (int k = 0; k < N; ++k) {
      const T shifted = logits[k * N + j] - colmax;
      exact = exact && shifted >= T(-kLinearSpread);
      M[k * N + j] = std::exp(shifted);
    }
  }
  return exact;
}

// DeepSeek-V4's form of the iteration (mhc_v4.h, DESIGN.md §9) differs only by an `eps`: the first
// column normalisation adds eps to every entry (V4's `softmax + eps`), and every later one divides
// by (sum + eps). eps = 0 is plain SK, computed exactly as before (x + 0 and x / (s + 0) round to
// themselves). Each normalisation below is Y = X / (Σ_axis X + denom_eps) + floor.

// The linear-domain functions below are also instantiated with T a vector of W tokens' entries
// (the CPU kernels run W tokens per call: ../cpu/sinkhorn_lanes.h), hence T{} for 0 and 1 / x.

// Y = X / (sums along columns or rows + denom_eps) + floor; X and Y may alias.
template <bool kByCols, typename T, typename Dim>
MHC_HD inline void normalize(Dim N, const T* X, T* Y, T denom_eps, T floor) {
  for (int a = 0; a < N; ++a) {
    T s{};
    for (int b = 0; b < N; ++b) s += X[kByCols ? b * N + a : a * N + b];
    const T inv = 1 / (s + denom_eps);
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      Y[e] = X[e] * inv + floor;
    }
  }
}

// Backward of `normalize`, in place on d (dY → dX): dX = (dY − Σ_axis dY⊙(Y − floor)) / (s + denom_eps).
template <bool kByCols, typename T, typename Dim>
MHC_HD inline void normalize_backward(Dim N, const T* X, const T* Y, T* d, T denom_eps, T floor) {
  for (int a = 0; a < N; ++a) {
    T s{}, dot{};
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      s += X[e];
      dot += d[e] * (Y[e] - floor);
    }
    const T inv = 1 / (s + denom_eps);
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      d[e] = (d[e] - dot) * inv;
    }
  }
}

// log(e^a + e^b) without overflow; b = −inf gives a.
template <typename T>
MHC_HD inline T log_add_exp(T a, T b) {
  const T hi = std::max(a, b), lo = std::min(a, b);
  return lo == -INFINITY ? hi : hi + std::log1p(std::exp(lo - hi));
}

// The same normalisation on logarithms: Y = log(exp(X) / (Σ_axis exp(X) + denom_eps) + floor);
// X and Y may alias.
template <bool kByCols, typename T, typename Dim>
MHC_HD inline void log_normalize(Dim N, const T* X, T* Y, T denom_eps, T floor) {
  for (int a = 0; a < N; ++a) {
    T mx = X[kByCols ? a : a * N];
    for (int b = 1; b < N; ++b) mx = std::max(mx, X[kByCols ? b * N + a : a * N + b]);
    T s = 0;
    for (int b = 0; b < N; ++b) s += std::exp(X[kByCols ? b * N + a : a * N + b] - mx);
    T lse = mx + std::log(s);
    if (denom_eps > 0) lse = log_add_exp(lse, T(std::log(denom_eps)));
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      Y[e] = X[e] - lse;
      if (floor > 0) Y[e] = log_add_exp(Y[e], T(std::log(floor)));
    }
  }
}

// Backward of `log_normalize`, in place on d: through the floor, dP = dY·(1 − floor·e^−Y); then
// dX = dP − p·Σ_axis dP with p = e^Y − floor, the normalised value (the softmax when denom_eps = 0).
template <bool kByCols, typename T, typename Dim>
MHC_HD inline void log_normalize_backward(Dim N, const T* Y, T* d, T floor) {
  for (int a = 0; a < N; ++a) {
    T sum = 0;
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      if (floor > 0) d[e] *= T(1) - floor * std::exp(-Y[e]);
      sum += d[e];
    }
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      d[e] -= (std::exp(Y[e]) - floor) * sum;
    }
  }
}

// With eps ≥ e^-kLinearSpread the linear domain is exact at any spread: the first normalisation's
// exp(H̃ − colmax)/colsum is a softmax (each column's largest entry is 1, so nothing that matters
// underflows: a lost entry is below 1e-38 and then gets eps added), and after the floor every entry
// lies in [eps, 1 + eps], within the ratio that the spread argument above needs.
constexpr double kLinearFloor = 1.2664165549094176e-14;  // e^-32

// The denominators' eps and the floor of normalisation s (0-based) of the 2t: V4 floors the first.
template <typename T>
MHC_HD inline T denom_eps_of(int s, T eps) { return s == 0 ? T{} : eps; }
template <typename T>
MHC_HD inline T floor_of(int s, T eps) { return s == 0 ? eps : T{}; }

// The 2t normalisations in the linear domain from M = exp(H̃ − colmax) (sinkhorn_linear_start) to
// SK_t: in place with stride 0, else iterate s at M + s·stride.
template <typename T, typename Dim>
MHC_HD inline void linear_iterates(Dim N, int t, T eps, T* M, int stride) {
  for (int s = 0; s < 2 * t; s += 2) {
    T* X = M + s * stride;
    normalize<true>(N, X, X + stride, denom_eps_of(s, eps), floor_of(s, eps));
    normalize<false>(N, X + stride, X + 2 * stride, eps, T{});
  }
}

// Backward of linear_iterates and of the exp before it, in place on d (dres in, dlogits out), the
// 2t + 1 iterates at it + s·N².
template <typename T, typename Dim>
MHC_HD inline void linear_backward(Dim N, int t, T eps, const T* it, T* d) {
  const int nn = N * N;
  for (int s = 2 * t; s >= 2; s -= 2) {
    normalize_backward<false>(N, it + (s - 1) * nn, it + s * nn, d, eps, T{});
    normalize_backward<true>(N, it + (s - 2) * nn, it + (s - 1) * nn, d, denom_eps_of(s - 2, eps),
                             floor_of(s - 2, eps));
  }
  // Through exp; the column-max shift is a constant (the first column normalisation cancels it).
  for (int e = 0; e < nn; ++e) d[e] *= it[e];
}

// Writes the iterates into work [(2t+1)·N²] when `keep` (for the backward), else in place in M;
// returns whether they are linear (M_s) or logarithms (ℓ_s). The last one is at work + 2t·N²,
// or in M.
template <typename T, typename Dim>
MHC_HD inline bool sinkhorn_iterates(Dim N, const T* logits, int t, T eps, T* M, bool keep) {
  const int nn = N * N;
  const int stride = keep ? nn : 0;
  const bool exact = sinkhorn_linear_start(N, logits, M);
  if (exact || eps >= T(kLinearFloor)) {
    linear_iterates(N, t, eps, M, stride);
    return true;
  }
  for (int e = 0; e < nn; ++e) M[e] = logits[e];
  for (int s = 0; s < 2 * t; s += 2) {
    T* X = M + s * stride;
    log_normalize<true>(N, X, X + stride, denom_eps_of(s, eps), floor_of(s, eps));
    log_normalize<false>(N, X + stride, X + 2 * stride, eps, T(0));
  }
  return false;
}

template <typename T, typename Dim>
MHC_HD inline void sinkhorn_forward(Dim N, const T* logits, int t, T eps, T* M) {
  if (t == 0) {  // no projection at all: H_res = exp(H̃)
    for (int e = 0; e < N * N; ++e) M[e] = std::exp(logits[e]);
    return;
  }
  if (!sinkhorn_iterates(N, logits, t, eps, M, /*keep=*/false))
    for (int e = 0; e < N * N; ++e) M[e] = std::exp(M[e]);
}

// dlogits = ∂⟨dres, SK_t(exp(logits))⟩/∂logits. Recomputes the iterates into work [(2t+1)·N²]
// (never stored across the forward) and walks back through them.
template <typename T, typename Dim>
MHC_HD inline void sinkhorn_backward(Dim N, const T* logits, int t, T eps, const T* dres, T* work, T* dlogits) {
  const int nn = N * N;
  if (t == 0) {
    for (int e = 0; e < nn; ++e) dlogits[e] = dres[e] * std::exp(logits[e]);
    return;
  }
  for (int e = 0; e < nn; ++e) dlogits[e] = dres[e];
  const T* it = work;  // iterate s lives at work + s·nn
  if (sinkhorn_iterates(N, logits, t, eps, work, /*keep=*/true)) {
    linear_backward(N, t, eps, it, dlogits);
    return;
  }
  for (int e = 0; e < nn; ++e) dlogits[e] *= std::exp(it[2 * t * nn + e]);  // through H_res = exp(ℓ_2t)
  for (int s = 2 * t; s >= 2; s -= 2) {
    log_normalize_backward<false>(N, it + s * nn, dlogits, T(0));
    log_normalize_backward<true>(N, it + (s - 1) * nn, dlogits, floor_of(s - 2, eps));
  }
}

// H_res = SK_t(exp(H̃_res)) over the σ family; Eps::value is V4's eps (0: plain SK).
template <typename Eps = NoEps>
struct SinkhornMixing {
  static int64_t res_size(int64_t n, const VariantOptions&) { return n * n; }
  // The 2t + 1 iterates the backward walks through.
  template <typename T>
  static MHC_HD int64_t work_size(const CoeffVariant<T>& v) {
    return (2 * int64_t(v.t) + 1) * v.n * v.n;
  }
  // Off-diagonal logits res_off_logit, diagonal 0: H_res ≈ I.
  static void initial_res_logits(int64_t n, double res_off_logit, float* logits, const VariantOptions&) {
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = 0; i < n; ++i) logits[k * n + i] = k == i ? 0.f : float(res_off_logit);
  }

  template <typename T>
  static MHC_HD void res_forward(const CoeffVariant<T>& v, const T* res_logits, T* res) {
    with_unrolled_streams(v.n, [&](auto N) { sinkhorn_forward(N, res_logits, v.t, T(Eps::value), res); });
  }
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>& v, const T* res_logits, const T* dres, T* work,
                                  T* dres_logits) {
    with_unrolled_streams(v.n, [&](auto N) {
      sinkhorn_backward(N, res_logits, v.t, T(Eps::value), dres, work, dres_logits);
    });
  }
};

template <>
struct VariantMath<Variant::mhc> : SigmaFamily<SinkhornMixing<>> {
  static void check_streams(int64_t n, const VariantOptions&) { check_stream_range("mhc", n, kMaxStreams); }
  static constexpr ShapeNames shape_names = {"[n*C, 2n + n*n] for mhc", "[2n + n*n]", "[3] (pre, post, res)"};
};

}  // namespace mhc::kernels
