// Per-token coefficient math of every variant (DESIGN.md §2–3), forward and backward: the
// logits, σ, Sinkhorn–Knopp and its backward, the permutation mixture, HC's tanh gates. A few
// dozen numbers per token, so plain scalar code; one definition compiled for the CPU kernels and,
// under nvcc, for the CUDA kernels (MHC_HD), so both backends compute the same function.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "mhc/variant.h"

#ifdef __CUDACC__
#define MHC_HD __host__ __device__
#else
#define MHC_HD
#endif

namespace mhc::kernels {

// Calls f(std::integral_constant<int, n>{}) for the runtime stream count n ≤ kMaxStreams: per-token
// loops over streams unroll fully, and their accumulators stay in registers, when n is a constant.
template <typename F>
MHC_HD void with_streams(int n, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// mHC-lite's n! permutations, lexicographic (k = 0 is the identity), as table[k·n + i] = σ_k(i);
// empty for the other kinds. Host only: the CUDA kernels get a copy in device memory.
inline std::vector<int> permutation_table(Kind kind, int n) {
  std::vector<int> table;
  if (kind != Kind::mhc_lite) return table;
  std::vector<int> p(n);
  std::iota(p.begin(), p.end(), 0);
  do table.insert(table.end(), p.begin(), p.end());
  while (std::next_permutation(p.begin(), p.end()));
  return table;
}

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

// What the coefficient math of one call needs (a view: the permutation table lives elsewhere).
template <typename T>
struct CoeffVariant {
  Kind kind;
  int n;
  int64_t m, P;        // columns of phi; projections per token
  int64_t res_count;   // entries behind H_res: n² logits (mHC, HC) or n! mixture weights (mHC-lite)
  int t;
  const T* bias;
  const T* alpha;
  const int* perms;    // mHC-lite: perms[k·n + i] = σ_k(i), lexicographic, k = 0 is identity
};

// One token's coefficients.
template <typename T>
struct Coeffs {
  T pre[kMaxStreams];
  T post[kMaxStreams];
  T res[kMaxStreams * kMaxStreams];
};

template <typename T>
MHC_HD inline T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

// ---------------------------------------------------------------------------------------------
// Sinkhorn–Knopp on an N×N matrix, N a compile-time stream count so the 2t normalisations of a
// few dozen numbers unroll fully (they are the bulk of the per-token coefficient work).
// SK_t(exp(H̃)) = t × (columns, rows) starting from exp(H̃); t = 0 is exp(H̃) itself.

// M0 = exp(H̃ − colmax); the first column normalisation cancels the shift exactly. Returns whether
// the linear domain is exact for these logits (every shifted logit ≥ −kLinearSpread, see above).
template <typename T, int N>
MHC_HD inline bool sinkhorn_linear_start(const T* logits, T* M) {
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

// Y = X / (sums along columns or rows); X and Y may alias.
template <typename T, int N, bool kByCols>
MHC_HD inline void normalize(const T* X, T* Y) {
  for (int a = 0; a < N; ++a) {
    T s = 0;
    for (int b = 0; b < N; ++b) s += X[kByCols ? b * N + a : a * N + b];
    const T inv = T(1) / s;
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      Y[e] = X[e] * inv;
    }
  }
}

// Backward of Y = X / s, in place on d (dY → dX): dX = (dY − Σ_axis dY⊙Y) / s.
template <typename T, int N, bool kByCols>
MHC_HD inline void normalize_backward(const T* X, const T* Y, T* d) {
  for (int a = 0; a < N; ++a) {
    T s = 0, dot = 0;
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      s += X[e];
      dot += d[e] * Y[e];
    }
    const T inv = T(1) / s;
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      d[e] = (d[e] - dot) * inv;
    }
  }
}

// The same normalisation on logarithms: Y = X − logsumexp along columns or rows; X and Y may alias.
template <typename T, int N, bool kByCols>
MHC_HD inline void log_normalize(const T* X, T* Y) {
  for (int a = 0; a < N; ++a) {
    T mx = X[kByCols ? a : a * N];
    for (int b = 1; b < N; ++b) mx = std::max(mx, X[kByCols ? b * N + a : a * N + b]);
    T s = 0;
    for (int b = 0; b < N; ++b) s += std::exp(X[kByCols ? b * N + a : a * N + b] - mx);
    const T lse = mx + std::log(s);
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      Y[e] = X[e] - lse;
    }
  }
}

// Backward of Y = X − logsumexp(X), in place on d: dX = dY − exp(Y)·Σ_axis dY (exp(Y) is the softmax).
template <typename T, int N, bool kByCols>
MHC_HD inline void log_normalize_backward(const T* Y, T* d) {
  for (int a = 0; a < N; ++a) {
    T sum = 0;
    for (int b = 0; b < N; ++b) sum += d[kByCols ? b * N + a : a * N + b];
    for (int b = 0; b < N; ++b) {
      const int e = kByCols ? b * N + a : a * N + b;
      d[e] -= std::exp(Y[e]) * sum;
    }
  }
}

// Writes the iterates into work [(2t+1)·N²] when `keep` (for the backward), else in place in M;
// returns whether they are linear (M_s) or logarithms (ℓ_s). The last one is at work + 2t·N²,
// or in M.
template <typename T, int N>
MHC_HD inline bool sinkhorn_iterates(const T* logits, int t, T* M, bool keep) {
  constexpr int nn = N * N;
  const int stride = keep ? nn : 0;
  if (sinkhorn_linear_start<T, N>(logits, M)) {
    for (int it = 0; it < t; ++it) {
      T* X = M + 2 * it * stride;
      normalize<T, N, true>(X, X + stride);
      normalize<T, N, false>(X + stride, X + 2 * stride);
    }
    return true;
  }
  for (int e = 0; e < nn; ++e) M[e] = logits[e];
  for (int it = 0; it < t; ++it) {
    T* X = M + 2 * it * stride;
    log_normalize<T, N, true>(X, X + stride);
    log_normalize<T, N, false>(X + stride, X + 2 * stride);
  }
  return false;
}

template <typename T, int N>
MHC_HD inline void sinkhorn_forward(const T* logits, int t, T* M) {
  if (t == 0) {  // no projection at all: H_res = exp(H̃)
    for (int e = 0; e < N * N; ++e) M[e] = std::exp(logits[e]);
    return;
  }
  if (!sinkhorn_iterates<T, N>(logits, t, M, /*keep=*/false))
    for (int e = 0; e < N * N; ++e) M[e] = std::exp(M[e]);
}

// dlogits = ∂⟨dres, SK_t(exp(logits))⟩/∂logits. Recomputes the iterates into work [(2t+1)·N²]
// (never stored across the forward) and walks back through them.
template <typename T, int N>
MHC_HD inline void sinkhorn_backward(const T* logits, int t, const T* dres, T* work, T* dlogits) {
  constexpr int nn = N * N;
  if (t == 0) {
    for (int e = 0; e < nn; ++e) dlogits[e] = dres[e] * std::exp(logits[e]);
    return;
  }
  for (int e = 0; e < nn; ++e) dlogits[e] = dres[e];
  const T* it = work;  // iterate s lives at work + s·nn
  if (sinkhorn_iterates<T, N>(logits, t, work, /*keep=*/true)) {
    for (int s = 2 * t; s >= 2; s -= 2) {
      normalize_backward<T, N, false>(it + (s - 1) * nn, it + s * nn, dlogits);
      normalize_backward<T, N, true>(it + (s - 2) * nn, it + (s - 1) * nn, dlogits);
    }
    // Through exp; the column-max shift is a constant (the first column normalisation cancels it).
    for (int e = 0; e < nn; ++e) dlogits[e] *= it[e];
    return;
  }
  for (int e = 0; e < nn; ++e) dlogits[e] *= std::exp(it[2 * t * nn + e]);  // through H_res = exp(ℓ_2t)
  for (int s = 2 * t; s >= 2; s -= 2) {
    log_normalize_backward<T, N, false>(it + s * nn, dlogits);
    log_normalize_backward<T, N, true>(it + (s - 1) * nn, dlogits);
  }
}

// ---------------------------------------------------------------------------------------------
// Coefficients of one token from its projections g [P, m] and norms r [P].
// mHC / mHC-lite logits H̃ = α_group·g/r + b.
template <typename T>
MHC_HD inline void mhc_logits(const CoeffVariant<T>& v, const T* g, T r, T* logits) {
  for (int64_t j = 0; j < v.m; ++j) {
    const int group = j < v.n ? 0 : j < 2 * v.n ? 1 : 2;
    logits[j] = v.alpha[group] * (g[j] / r) + v.bias[j];  // the reference's rounding order
  }
}

// H_res = Σ_k softmax(z)_k·P_k. Accumulated in double and rounded once: an entry sums (n−1)!
// weights, and at n = 5 fp32 accumulation alone would put row and column sums ~1e-6 from 1.
template <typename T>
MHC_HD inline void permutation_mixture(const CoeffVariant<T>& v, const T* z, T* res) {
  const int n = v.n;
  double acc[kMaxStreamsLite * kMaxStreamsLite] = {};
  double zmax = z[0], total = 0;
  for (int64_t k = 1; k < v.res_count; ++k) zmax = std::max<double>(zmax, z[k]);
  for (int64_t k = 0; k < v.res_count; ++k) {
    const double e = std::exp(double(z[k]) - zmax);
    total += e;
    const int* sigma = v.perms + k * n;
    for (int i = 0; i < n; ++i) acc[i * n + sigma[i]] += e;
  }
  for (int e = 0; e < n * n; ++e) res[e] = T(acc[e] / total);
}

template <typename T>
MHC_HD inline void softmax(const T* z, int64_t count, T* out) {
  T zmax = z[0];
  for (int64_t k = 1; k < count; ++k) zmax = std::max(zmax, z[k]);
  T s = 0;
  for (int64_t k = 0; k < count; ++k) s += (out[k] = std::exp(z[k] - zmax));
  const T inv = T(1) / s;
  for (int64_t k = 0; k < count; ++k) out[k] *= inv;
}

// scratch: at least m entries (mHC's SK runs in place in out.res).
template <typename T>
MHC_HD inline void coefficients(const CoeffVariant<T>& v, const T* g, const T* r, T* scratch, Coeffs<T>& out) {
  const int n = v.n;
  switch (v.kind) {
    case Kind::residual:
      out.pre[0] = out.post[0] = out.res[0] = T(1);
      return;
    case Kind::hc: {
      const T s_alpha = v.alpha[0], s_beta = v.alpha[1];
      for (int i = 0; i < n; ++i) {
        const T* gi = g + i * v.m;
        const T inv_r = T(1) / r[i];
        out.pre[i] = v.bias[i] + s_alpha * std::tanh(gi[0] * inv_r);
        out.post[i] = v.bias[n + i] + s_beta * std::tanh(gi[1] * inv_r);
        for (int k = 0; k < n; ++k)
          out.res[k * n + i] = v.bias[2 * n + k * n + i] + s_alpha * std::tanh(gi[2 + k] * inv_r);
      }
      return;
    }
    case Kind::mhc:
    case Kind::mhc_lite: {
      T* logits = scratch;
      mhc_logits(v, g, r[0], logits);
      for (int i = 0; i < n; ++i) {
        out.pre[i] = sigmoid(logits[i]);
        out.post[i] = T(2) * sigmoid(logits[n + i]);
      }
      if (v.kind == Kind::mhc) {
        with_streams(n, [&](auto N) { sinkhorn_forward<T, N()>(logits + 2 * n, v.t, out.res); });
      } else {
        permutation_mixture(v, logits + 2 * n, out.res);
      }
      return;
    }
  }
}

// Backward of `coefficients` for one token. Given dH_pre, dH_post, dH_res (dres) it writes
// dg [P, m] and dr [P] and accumulates dbias, dalpha. Also returns H_pre (needed for dx).
// scratch: at least m + res_count + (2t+1)·n² entries.
template <typename T>
MHC_HD inline void coefficients_backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                           const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre) {
  const int n = v.n;
  switch (v.kind) {
    case Kind::residual:
      H_pre[0] = T(1);
      return;
    case Kind::hc: {
      const T s_alpha = v.alpha[0], s_beta = v.alpha[1];
      for (int i = 0; i < n; ++i) {
        const T* gi = g + i * v.m;
        T* dgi = dg + i * v.m;
        const T inv_r = T(1) / r[i];
        T dri = 0;
        // column j of this stream's projection, its tanh, and the coefficient gradient behind it
        auto gate = [&](int64_t j, T scale, T dcoef, T& dscale) {
          const T u = std::tanh(gi[j] * inv_r);
          dscale += dcoef * u;
          const T dz = scale * dcoef * (T(1) - u * u);
          dgi[j] = dz * inv_r;
          dri -= dz * gi[j] * inv_r * inv_r;
          return u;
        };
        H_pre[i] = v.bias[i] + s_alpha * gate(0, s_alpha, dpre[i], dalpha[0]);
        gate(1, s_beta, dpost[i], dalpha[1]);
        for (int k = 0; k < n; ++k) gate(2 + k, s_alpha, dres[k * n + i], dalpha[0]);
        dr[i] = dri;
        dbias[i] += dpre[i];
        dbias[n + i] += dpost[i];
        for (int k = 0; k < n; ++k) dbias[2 * n + k * n + i] += dres[k * n + i];
      }
      return;
    }
    case Kind::mhc:
    case Kind::mhc_lite: {
      T* logits = scratch;
      T* dlogits = scratch + v.m;  // m entries
      T* work = dlogits + v.m;
      mhc_logits(v, g, r[0], logits);
      for (int i = 0; i < n; ++i) {
        const T s_pre = sigmoid(logits[i]), s_post = sigmoid(logits[n + i]);
        H_pre[i] = s_pre;
        dlogits[i] = dpre[i] * s_pre * (T(1) - s_pre);
        dlogits[n + i] = dpost[i] * T(2) * s_post * (T(1) - s_post);
      }
      const T* res_logits = logits + 2 * n;
      T* dres_logits = dlogits + 2 * n;
      if (v.kind == Kind::mhc) {
        with_streams(n, [&](auto N) { sinkhorn_backward<T, N()>(res_logits, v.t, dres, work, dres_logits); });
      } else {
        T* weights = work;
        softmax(res_logits, v.res_count, weights);
        T dot = 0;
        for (int64_t k = 0; k < v.res_count; ++k) {  // da_k = ⟨dH_res, P_k⟩: a gather
          const int* sigma = v.perms + k * n;
          T da = 0;
          for (int i = 0; i < n; ++i) da += dres[i * n + sigma[i]];
          dres_logits[k] = da;
          dot += da * weights[k];
        }
        for (int64_t k = 0; k < v.res_count; ++k) dres_logits[k] = weights[k] * (dres_logits[k] - dot);
      }
      // Through H̃ = α·g/r + b.
      const T inv_r = T(1) / r[0];
      T dr0 = 0;
      for (int64_t j = 0; j < v.m; ++j) {
        const int group = j < n ? 0 : j < 2 * n ? 1 : 2;
        const T a = v.alpha[group];
        dg[j] = a * dlogits[j] * inv_r;
        dalpha[group] += dlogits[j] * (g[j] / r[0]);
        dbias[j] += dlogits[j];
        dr0 -= a * g[j] * dlogits[j] * inv_r * inv_r;
      }
      dr[0] = dr0;
      return;
    }
  }
}

template <typename T>
MHC_HD inline int64_t scratch_size(const CoeffVariant<T>& v) {
  return 2 * v.m + v.res_count + (2 * int64_t(v.t) + 1) * v.n * v.n;
}


}  // namespace mhc::kernels
