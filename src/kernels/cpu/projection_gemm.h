// The projection of pre's kernels (pre.cpp) as they call it: g = A·phi with the rows' Σ A² in one
// pass forward, dA = dg·phi^T and dphi += A^T·dg backward (the GEMMs: projection_gemm.cpp), and the
// layouts of their operands (phi^T padded, x's rows staged).
#pragma once

#include <cstdint>
#include <vector>

#include "simd.h"

namespace mhc::cpu {

// More columns than this (mHC at n ≥ 8, mHC-lite at n = 5) and phi^T no longer stays in L2 between
// tiles: pre.cpp's tiles of tokens and gemm_dot's blocks of K change size past it.
constexpr int64_t kWideProjection = 64;
// The forward's register tile is kDotCols columns of phi wide.
constexpr int kDotCols = 8;

inline int64_t padded(int64_t m, int W) { return (m + W - 1) / W * W; }

// phi [K, m] transposed into [rows, ld], rows ≥ m, ld ≥ K, the padding zero.
template <typename T>
std::vector<T> transpose_phi(const T* phi, int64_t K, int64_t m, int64_t rows, int64_t ld) {
  std::vector<T> phiT(rows * ld, T(0));
  for (int64_t c = 0; c < K; ++c)
    for (int64_t j = 0; j < m; ++j) phiT[j * ld + c] = phi[c * m + j];
  return phiT;
}

// Row stride of staged copies: rows of x sit nC floats apart (8 KiB at C = 512, n = 4), so the
// same column of every row maps to one L1 set and a product walking down a column (dphi's)
// thrashes it. A staged copy pads each row by one cache line; phi^T is stored the same way.
template <typename T>
int64_t staged_stride(int64_t K) {
  return padded(K, kLineValues<T>) + kLineValues<T>;
}

// Forward projection of `rows` contiguous rows of x: g[r][0..m) = A[r]·phi and ss[r] = Σ A[r]²,
// in one pass over x. phiT = phi^T with zero rows up to a multiple of kDotCols, [·, staged_stride(K)].
// The next tile's next_rows rows at next_A are prefetched into L2 meanwhile.
template <typename T>
void project_rows(const T* A, int64_t rows, int64_t K, int64_t m, const T* phiT, T* g, T* ss, const T* next_A,
                  int64_t next_rows);

// Few rows (decode: one token per sequence): transposing phi costs more than the product itself
// (at n = 4, C = 512 it was a quarter of a one-token pre), so project_rows_direct reads phi [K, m]
// as it is, one pass over phi for all the rows.
constexpr int64_t kDirectProjectionRows = 8;
template <typename T>
void project_rows_direct(const T* A, int64_t rows, int64_t K, int64_t m, const T* phi, T* g, T* ss);

// Backward of the projection for a tile: dA[r] = dg[r]·phi^T into a staged-layout buffer (rows
// Ks apart: writing dx's own rows, nC floats apart, would map a row block's lines to one L1 set),
// and dphi_p += A^T·dg (A staged). phiT_p is phi transposed and padded, [mp, staged_stride(K)].
template <typename T>
void project_rows_backward(const T* staged, const T* dg, int64_t rows, int64_t K, int64_t mp, const T* phiT_p, T* dA,
                           T* dphi_p);

}  // namespace mhc::cpu
