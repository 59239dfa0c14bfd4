// The Cayley map and its backward (DESIGN.md §11), shared by the orthogonal variants: jpmhc's H_res
// is Cayley(B), go-mHC's O is Cayley(−A). For a skew-symmetric B [d, d] (d ≤ kMaxCayleyDim),
//     Cayley(B) = (I − B)⁻¹(I + B) = 2(I − B)⁻¹ − I,
// orthogonal with det +1 for every B. In double: it is d³ work on a few hundred numbers per token,
// and orthogonality to 1e-12 in fp64 (to rounding of each entry in fp32) needs the solve done in
// double. Plain scalar code for both backends, like the rest of variants/; on the CPU each entry
// point runs its loops with d a compile-time constant (with_cayley_dim), where they unroll and
// vectorise: build/bench_kernels' go-mHC pre backward (n = 4, d = 8, C = 512) took 10.5 ms with a
// runtime d and 9.2 ms with a constant (together with gomhc.h's dO without divisions).
#pragma once

#include <cmath>

#include "../streams.h"
#include "common.h"

namespace mhc::kernels {
namespace cayley_sized {  // the bodies, over a dimension that is an int or a std::integral_constant

// H = 2(I − B)⁻¹ − I by Gauss–Jordan elimination with partial pivoting. I − B is never singular:
// its symmetric part is I, so xᵀ(I − B)x = |x|² for every x.
template <typename Dim>
MHC_HD void exact(Dim d, const double* B, double* H) {
  double M[kMaxCayleyDim * kMaxCayleyDim];
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      M[i * d + j] = (i == j ? 1.0 : 0.0) - B[i * d + j];
      H[i * d + j] = i == j ? 2.0 : 0.0;
    }
  for (int k = 0; k < d; ++k) {
    int pivot = k;
    for (int i = k + 1; i < d; ++i)
      if (std::fabs(M[i * d + k]) > std::fabs(M[pivot * d + k])) pivot = i;
    if (pivot != k)
      for (int j = 0; j < d; ++j) {
        const double m = M[k * d + j], h = H[k * d + j];
        M[k * d + j] = M[pivot * d + j], H[k * d + j] = H[pivot * d + j];
        M[pivot * d + j] = m, H[pivot * d + j] = h;
      }
    // M's columns before k are already zero below and above the diagonal: only k + 1 … d − 1 change.
    const double inv = 1.0 / M[k * d + k];
    for (int j = k + 1; j < d; ++j) M[k * d + j] *= inv;
    for (int j = 0; j < d; ++j) H[k * d + j] *= inv;
    for (int i = 0; i < d; ++i) {
      const double f = M[i * d + k];
      if (i == k || f == 0.0) continue;
      for (int j = k + 1; j < d; ++j) M[i * d + j] -= f * M[k * d + j];
      for (int j = 0; j < d; ++j) H[i * d + j] -= f * H[k * d + j];
    }
  }
  for (int i = 0; i < d; ++i) H[i * d + i] -= 1.0;
}

// dB from dH through H = 2M⁻¹ − I, M = I − B: dB = 2·M⁻ᵀ·dH·M⁻ᵀ, and M⁻ᵀ = (H + I)ᵀ/2, so
// dB = ½·(H + I)ᵀ·dH·(H + I)ᵀ from the forward's H, with no second solve.
template <typename Dim>
MHC_HD void exact_backward(Dim d, const double* H, const double* dH, double* dB) {
  double S[kMaxCayleyDim * kMaxCayleyDim], W[kMaxCayleyDim * kMaxCayleyDim];  // H + I, and Sᵀ·dH
  for (int e = 0; e < d * d; ++e) S[e] = H[e] + (e % (d + 1) == 0 ? 1.0 : 0.0);
  for (int i = 0; i < d; ++i) {  // row i of Sᵀ·dH = Σ_k S[k, i]·dH[k, :]
    for (int j = 0; j < d; ++j) W[i * d + j] = 0;
    for (int k = 0; k < d; ++k) {
      const double s = S[k * d + i];
      for (int j = 0; j < d; ++j) W[i * d + j] += s * dH[k * d + j];
    }
  }
  for (int i = 0; i < d; ++i)  // (W·Sᵀ)[i, j] = ⟨W[i, :], S[j, :]⟩
    for (int j = 0; j < d; ++j) {
      double b = 0;
      for (int k = 0; k < d; ++k) b += W[i * d + k] * S[j * d + k];
      dB[i * d + j] = 0.5 * b;
    }
}

// C = A·B, all [d, d].
template <typename Dim>
MHC_HD void matmul(Dim d, const double* A, const double* B, double* C) {
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      double c = 0;
      for (int k = 0; k < d; ++k) c += A[i * d + k] * B[k * d + j];
      C[i * d + j] = c;
    }
}

// JPmHC's approximation, s ≥ 1 fixed-point steps of (I − B)·Y = I + B from Y_0 = I + 2B:
// Y_{i+1} = I + B·(I + Y_i), H = Y_s (= I + 2B + … + 2B^{s+1}, the Cayley series cut after
// B^{s+1}; it drifts from orthogonal, and diverges once ‖B‖ ≥ 1). iterates [s, d, d] keeps
// Y_0 … Y_{s−1} for the backward.
template <typename Dim>
MHC_HD void iterative(Dim d, int s, const double* B, double* iterates, double* H) {
  double shifted[kMaxCayleyDim * kMaxCayleyDim];  // I + Y_i
  for (int e = 0; e < d * d; ++e) iterates[e] = 2.0 * B[e] + (e % (d + 1) == 0 ? 1.0 : 0.0);
  for (int i = 0; i < s; ++i) {
    const double* Y = iterates + i * d * d;
    for (int e = 0; e < d * d; ++e) shifted[e] = Y[e] + (e % (d + 1) == 0 ? 1.0 : 0.0);
    double* next = i + 1 < s ? iterates + (i + 1) * d * d : H;
    matmul(d, B, shifted, next);
    for (int a = 0; a < d; ++a) next[a * d + a] += 1.0;
  }
}

// dB through cayley_iterative: Y_{i+1} = I + B·(I + Y_i) gives dB += dY_{i+1}·(I + Y_i)ᵀ and
// dY_i = Bᵀ·dY_{i+1}; Y_0 = I + 2B gives dB += 2·dY_0.
template <typename Dim>
MHC_HD void iterative_backward(Dim d, int s, const double* B, const double* iterates, const double* dH, double* dB) {
  double dY[kMaxCayleyDim * kMaxCayleyDim], previous[kMaxCayleyDim * kMaxCayleyDim];
  for (int e = 0; e < d * d; ++e) dY[e] = dH[e], dB[e] = 0;
  for (int i = s - 1; i >= 0; --i) {
    const double* Y = iterates + i * d * d;
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b) {
        double acc = 0, back = 0;
        for (int k = 0; k < d; ++k) {
          acc += dY[a * d + k] * (Y[b * d + k] + (b == k ? 1.0 : 0.0));
          back += B[k * d + a] * dY[k * d + b];
        }
        dB[a * d + b] += acc;
        previous[a * d + b] = back;
      }
    for (int e = 0; e < d * d; ++e) dY[e] = previous[e];
  }
  for (int e = 0; e < d * d; ++e) dB[e] += 2.0 * dY[e];
}

// f(d) with d a compile-time constant on the CPU. Under nvcc, f(d) with the runtime int: sixteen
// sizes of four bodies in every CUDA kernel took nvcc 25 minutes on cuda_kernels.cu (8 without),
// and a GPU thread keeps a d×d matrix in local memory either way.
template <typename F>
MHC_HD void with_cayley_dim(int d, F&& f) {
#ifdef __CUDACC__
  f(d);
#else
  with_constant<kMaxCayleyDim>(d, f);
#endif
}

}  // namespace cayley_sized

MHC_HD inline void cayley(int d, const double* B, double* H) {
  cayley_sized::with_cayley_dim(d, [&](auto D) { cayley_sized::exact(D, B, H); });
}
MHC_HD inline void cayley_backward(int d, const double* H, const double* dH, double* dB) {
  cayley_sized::with_cayley_dim(d, [&](auto D) { cayley_sized::exact_backward(D, H, dH, dB); });
}
MHC_HD inline void cayley_iterative(int d, int s, const double* B, double* iterates, double* H) {
  cayley_sized::with_cayley_dim(d, [&](auto D) { cayley_sized::iterative(D, s, B, iterates, H); });
}
MHC_HD inline void cayley_iterative_backward(int d, int s, const double* B, const double* iterates, const double* dH,
                                             double* dB) {
  cayley_sized::with_cayley_dim(d, [&](auto D) { cayley_sized::iterative_backward(D, s, B, iterates, dH, dB); });
}

}  // namespace mhc::kernels
