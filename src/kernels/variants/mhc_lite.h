// mHC-lite's H_res (arXiv 2601.05732; DESIGN.md §2): a softmax mixture of the n! permutation
// matrices, exactly doubly stochastic by construction; H_pre and H_post are the σ family's
// (common.h). n ≤ kMaxStreamsLite: the mixture has n! weights.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "common.h"

namespace mhc::kernels {

// The n! permutations, lexicographic (k = 0 is the identity), as table[k·n + i] = σ_k(i). Host
// only: the CUDA kernels get a copy in device memory.
inline std::vector<int> permutation_table(int n) {
  std::vector<int> table, p(n);
  std::iota(p.begin(), p.end(), 0);
  do table.insert(table.end(), p.begin(), p.end());
  while (std::next_permutation(p.begin(), p.end()));
  return table;
}

// Σ_k softmax(z)_k·P_k over `count` permutation matrices of f items, accumulated in double and not
// yet rounded: H [f·f] and, where asked, the weights [count]; sigma_of(k, sigma) writes σ_k. An
// entry sums (f−1)! weights, and at f = 5 fp32 accumulation alone would put row and column sums
// ~1e-6 from 1. The exponentials are T's (an fp32 exp is a few times cheaper than a double one):
// every row and column sums the same set of them, and the sums and the division stay in double,
// so rows and columns still sum to 1 before the final rounding. Shared with KromHC's factors
// (kromhc.h).
template <typename T, typename SigmaOf>
MHC_HD inline void mix_permutations(const T* z, int64_t count, int f, SigmaOf sigma_of, double* H, double* weights) {
  for (int e = 0; e < f * f; ++e) H[e] = 0;
  T zmax = z[0];
  double total = 0;
  for (int64_t k = 1; k < count; ++k) zmax = std::max(zmax, z[k]);
  for (int64_t k = 0; k < count; ++k) {
    const double e = std::exp(z[k] - zmax);
    total += e;
    if (weights) weights[k] = e;
    int sigma[kMaxStreamsLite];
    sigma_of(k, sigma);
    for (int i = 0; i < f; ++i) H[i * f + sigma[i]] += e;
  }
  for (int e = 0; e < f * f; ++e) H[e] /= total;
  if (weights)
    for (int64_t k = 0; k < count; ++k) weights[k] /= total;
}

// H_res = Σ_k softmax(z)_k·P_k from the permutation table, rounded once.
template <typename T>
MHC_HD inline void permutation_mixture(const CoeffVariant<T>& v, const T* z, T* res) {
  const int n = v.n;
  double H[kMaxStreamsLite * kMaxStreamsLite];
  mix_permutations(
      z, v.res_count, n, [&](int64_t k, int* sigma) { for (int i = 0; i < n; ++i) sigma[i] = v.perms[k * n + i]; }, H,
      static_cast<double*>(nullptr));
  for (int e = 0; e < n * n; ++e) res[e] = T(H[e]);
}

// H_res = Σ_k softmax(z)_k·P_k over the σ family.
struct PermutationMixing {
  static int64_t res_size(int64_t n, const VariantOptions&) { return factorial(static_cast<int>(n)); }
  template <typename T>
  static MHC_HD int64_t work_size(const CoeffVariant<T>& v) {
    return v.res_count;  // the mixture weights
  }
  // The identity (the first permutation) at 0, every other at res_off_logit: H_res ≈ I.
  static void initial_res_logits(int64_t n, double res_off_logit, float* logits, const VariantOptions& options) {
    for (int64_t k = 0; k < res_size(n, options); ++k) logits[k] = k == 0 ? 0.f : float(res_off_logit);
  }

  template <typename T>
  static MHC_HD void res_forward(const CoeffVariant<T>& v, const T* z, T* res) {
    permutation_mixture(v, z, res);
  }
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>& v, const T* res_logits, const T* dres, T* work,
                                  T* dres_logits) {
    const int n = v.n;
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
};

template <>
struct VariantMath<Variant::mhc_lite> : SigmaFamily<PermutationMixing> {
  static void check_streams(int64_t n, const VariantOptions&) {
    check_stream_range("mhc-lite", n, kMaxStreamsLite, " (n! permutations)", "; for more streams use KromHC");
  }
  static constexpr ShapeNames shape_names = {"[n*C, 2n + n!] for mhc-lite", "[2n + n!]", "[3] (pre, post, res)"};
};

}  // namespace mhc::kernels
