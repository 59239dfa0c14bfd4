// KromHC's H_res (arXiv 2601.21579; DESIGN.md §2): a Kronecker product U_1 ⊗ … ⊗ U_K of small
// doubly stochastic factors, each an mHC-lite mixture of the f_k! permutations of f_k ∈ {2, 3}
// items, so H_res is exactly doubly stochastic at n = Π f_k up to 16 with Σ f_k! logits (2·log₂n at
// n = 2^K: U_k = [[p_k, 1−p_k], [1−p_k, p_k]], p_k = softmax of its two logits). H_pre and H_post
// are the σ family's (common.h). The factors are the 2s, then the 3s; U_1 indexes the most
// significant digit of the stream index.
#pragma once

#include "common.h"
#include "mhc_lite.h"

namespace mhc::kernels {

constexpr int kMaxKroneckerFactors = 4;  // 16 = 2⁴
constexpr int kMaxFactorSize = 3;
constexpr int kMaxFactorPerms = 6;       // 3!

// The factor sizes of n (2s first, then 3s) into f; returns K, or 0 when n < 2 or n has another
// prime factor.
MHC_HD inline int kronecker_factors(int n, int* f) {
  int K = 0;
  for (int p = 2; p <= kMaxFactorSize; ++p)
    while (n % p == 0 && K < kMaxKroneckerFactors) f[K++] = p, n /= p;
  return n == 1 ? K : 0;
}

// σ_k(i) of the k-th permutation of f items in lexicographic order (k = 0 is the identity): the
// factorial number system, so no table is needed on either backend.
MHC_HD inline void nth_permutation(int f, int k, int* sigma) {
  int left[kMaxFactorSize], count = f, radix = 1;
  for (int i = 0; i < f; ++i) left[i] = i;
  for (int i = 2; i < f; ++i) radix *= i;  // (f−1)!
  for (int i = 0; i < f; ++i) {
    const int pick = k / radix;
    k %= radix;
    sigma[i] = left[pick];
    for (int j = pick; j + 1 < count; ++j) left[j] = left[j + 1];
    --count;
    if (count > 0) radix /= count;
  }
}

MHC_HD inline int small_factorial(int f) { return f == 3 ? 6 : f == 2 ? 2 : 1; }

// The factors of one token: sizes, the stride of each digit, U_k row-major and each factor's
// mixture weights, in double (rounded once, where H_res is formed).
struct KroneckerFactors {
  int K, f[kMaxKroneckerFactors], stride[kMaxKroneckerFactors];
  double U[kMaxKroneckerFactors][kMaxFactorSize * kMaxFactorSize];
  double w[kMaxKroneckerFactors][kMaxFactorPerms];

  // U_k = Σ_m softmax(z_k)_m·P_m (mHC-lite's mixture), each factor's logits z_k consecutive in
  // res_logits.
  template <typename T>
  MHC_HD void build(int n, const T* res_logits) {
    K = kronecker_factors(n, f);
    int s = 1;
    for (int k = K - 1; k >= 0; --k) stride[k] = s, s *= f[k];
    const T* z = res_logits;
    for (int k = 0; k < K; ++k) {
      const int perms = small_factorial(f[k]), fk = f[k];
      mix_permutations(z, perms, fk, [&](int64_t m, int* sigma) { nth_permutation(fk, static_cast<int>(m), sigma); },
                       U[k], w[k]);
      z += perms;
    }
  }
  MHC_HD int digit(int k, int i) const { return i / stride[k] % f[k]; }
  // U_k's entry at the k-th digits of row i and column j.
  MHC_HD double entry(int k, int i, int j) const { return U[k][digit(k, i) * f[k] + digit(k, j)]; }
};

// H_res = U_1 ⊗ … ⊗ U_K over the σ family; no scratch beyond the logits (the factors fit in registers).
struct KroneckerMixing {
  static int64_t res_size(int64_t n, const VariantOptions&) {
    int f[kMaxKroneckerFactors];
    const int K = kronecker_factors(static_cast<int>(n), f);
    int64_t logits = 0;
    for (int k = 0; k < K; ++k) logits += small_factorial(f[k]);
    return logits;
  }
  template <typename T>
  static MHC_HD int64_t work_size(const CoeffVariant<T>&) { return 0; }
  // Per factor, the identity at 0 and every other permutation at res_off_logit: each U_k ≈ I.
  static void initial_res_logits(int64_t n, double res_off_logit, float* logits, const VariantOptions&) {
    int f[kMaxKroneckerFactors];
    const int K = kronecker_factors(static_cast<int>(n), f);
    for (int k = 0; k < K; ++k)
      for (int m = 0; m < small_factorial(f[k]); ++m) *logits++ = m == 0 ? 0.f : float(res_off_logit);
  }

  // H_res[i][j] = Π_k U_k[i_k][j_k], in double and rounded once: rows and columns sum to 1 within
  // one rounding of each entry.
  template <typename T>
  static MHC_HD void res_forward(const CoeffVariant<T>& v, const T* res_logits, T* res) {
    KroneckerFactors u;
    u.build(v.n, res_logits);
    for (int i = 0; i < v.n; ++i)
      for (int j = 0; j < v.n; ++j) {
        double h = 1;
        for (int k = 0; k < u.K; ++k) h *= u.entry(k, i, j);
        res[i * v.n + j] = T(h);
      }
  }

  // dU_k[a][b] = Σ over the entries (i, j) whose k-th digits are (a, b) of dH_res[i][j]·Π_{k'≠k} U_k'
  // (prefix and suffix products, no division: a factor may be exactly 0), then each factor's
  // mixture backward: dz_m = w_m·(⟨dU_k, P_m⟩ − Σ_m' w_m'·⟨dU_k, P_m'⟩). In double, like the forward:
  // at sharp logits that last difference cancels, and n² fp32 terms summed into each dU_k entry
  // would leave it with ~50x the reference's rounding error (measured at n = 12, ±80 logits).
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>& v, const T* res_logits, const T* dres, T*, T* dres_logits) {
    KroneckerFactors u;
    u.build(v.n, res_logits);
    double dU[kMaxKroneckerFactors][kMaxFactorSize * kMaxFactorSize] = {};
    for (int i = 0; i < v.n; ++i)
      for (int j = 0; j < v.n; ++j) {
        double e[kMaxKroneckerFactors], suffix[kMaxKroneckerFactors + 1];
        for (int k = 0; k < u.K; ++k) e[k] = u.entry(k, i, j);
        suffix[u.K] = 1;
        for (int k = u.K - 1; k >= 0; --k) suffix[k] = suffix[k + 1] * e[k];
        double prefix = 1;
        const double d = dres[i * v.n + j];
        for (int k = 0; k < u.K; ++k) {
          dU[k][u.digit(k, i) * u.f[k] + u.digit(k, j)] += d * prefix * suffix[k + 1];
          prefix *= e[k];
        }
      }
    T* dz = dres_logits;
    for (int k = 0; k < u.K; ++k) {
      const int f = u.f[k], perms = small_factorial(f);
      double da[kMaxFactorPerms], dot = 0;
      for (int m = 0; m < perms; ++m) {
        int sigma[kMaxFactorSize];
        nth_permutation(f, m, sigma);
        da[m] = 0;
        for (int a = 0; a < f; ++a) da[m] += dU[k][a * f + sigma[a]];
        dot += da[m] * u.w[k][m];
      }
      for (int m = 0; m < perms; ++m) dz[m] = T(u.w[k][m] * (da[m] - dot));
      dz += perms;
    }
  }
};

template <>
struct VariantMath<Variant::kromhc> : SigmaFamily<KroneckerMixing> {
  static void check_streams(int64_t n, const VariantOptions&) {
    int f[kMaxKroneckerFactors];
    if (n < 2 || n > kMaxStreams || kronecker_factors(static_cast<int>(n), f) == 0)
      throw std::invalid_argument("kromhc takes n = 2^a·3^b streams (2, 3, 4, 6, 8, 9, 12 or 16), got n = " +
                                  std::to_string(n));
  }
  static constexpr ShapeNames shape_names = {"[n*C, 2n + Σ f_k!] for kromhc (2n + 2·log2(n) at n = 2^K)",
                                             "[2n + Σ f_k!]", "[3] (pre, post, res)"};
};

}  // namespace mhc::kernels
