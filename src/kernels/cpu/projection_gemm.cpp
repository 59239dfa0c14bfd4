// The three products of pre's projection (the interface: projection_gemm.h), small GEMMs with one
// short dimension (m ≤ 288, mHC at n = 16; a few dozen for most variants; the forward's dot-product
// form is tuned for the latter):
//   forward   g[rows, m]    = A[rows, K] · phi[K, m]
//   backward  dA[rows, K]  += dg[rows, m] · phi^T[m, K]
//             dphi[K, m]   += A^T[K, rows] · dg[rows, m]
// The two backward products share one register-blocked micro-kernel (gemm_micro): R output rows ×
// NV vectors of W lanes held in registers while the reduction runs, one operand broadcast from any
// strides, the other loaded as whole vectors from a row-major matrix; there phi^T is padded to
// mp = m rounded up to W rows. The forward product reads both operands along K and runs in
// dot-product form (gemm_dot), which also gives Σv² from the same loads. Both use simd.h's
// 32-byte vectors.
// Register tiles. gemm_micro: 8 rows × 3 vectors, 24 accumulators + 3 operands + 1 broadcast = 28
// of AVX-512VL's 32 vector registers (with AVX2's 16 GCC spills some; the result is the same), 11
// loads per 24 FMAs; gemm_tile picks 6 × 4 for a product exactly 4 vectors wide. dot_micro:
// 3 rows × 8 columns, 24 accumulators + 3 sums of squares + 3 rows + 1 phi^T vector = 31 registers.
#include "projection_gemm.h"

#include <algorithm>
#include <stdexcept>

namespace mhc::cpu {
namespace {

constexpr int kGemmRows = 8, kGemmVecs = 3;
constexpr int kDotRows = 3;  // × kDotCols (projection_gemm.h)

// c[i·cs + j0 + …] (+)= Σ_k a[i·as_i + k·as_k] · b[k·bs + j0 + …], i < R, NV·W columns.
template <typename T, int R, int NV>
void gemm_micro(int64_t kdim, const T* a, int64_t as_i, int64_t as_k, const T* b, int64_t bs, T* c, int64_t cs,
                bool accumulate) {
  using S = Simd<T>;
  using V = typename S::V;
  V acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = accumulate ? S::load(c + i * cs + v * S::W) : V{};
  for (int64_t k = 0; k < kdim; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = S::load(b + k * bs + v * S::W);
      keep_in_register(bv[v]);
    }
    for (int i = 0; i < R; ++i) {
      const V av = S::splat(a[i * as_i + k * as_k]);
      for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) S::store(c + i * cs + v * S::W, acc[i][v]);
}

template <typename T, int R>
void gemm_rows(int nv, int64_t kdim, const T* a, int64_t as_i, int64_t as_k, const T* b, int64_t bs, T* c, int64_t cs,
               bool accumulate) {
  switch (nv) {
    case 1: return gemm_micro<T, R, 1>(kdim, a, as_i, as_k, b, bs, c, cs, accumulate);
    case 2: return gemm_micro<T, R, 2>(kdim, a, as_i, as_k, b, bs, c, cs, accumulate);
    case 3: return gemm_micro<T, R, 3>(kdim, a, as_i, as_k, b, bs, c, cs, accumulate);
    default:  // 4 vectors: 6-row tiles only (gemm_tile), 24 accumulators
      if constexpr (R <= 6) return gemm_micro<T, R, 4>(kdim, a, as_i, as_k, b, bs, c, cs, accumulate);
      else throw std::logic_error("gemm_rows: a 4-vector panel takes at most 6 rows");
  }
}

// The register tile of gemm for a product `cols` wide: kGemmRows × kGemmVecs, except that a
// product exactly 4 vectors wide (mHC-lite's dphi: padded m = 32) takes 6 rows × 4 vectors where
// the CPU has 32 vector registers (AVX-512VL: 24 accumulators, 4 operands, 1 broadcast) rather
// than a 3-vector panel and a 1-vector one, which loads a broadcast for every FMA.
#ifdef __AVX512VL__
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif
struct GemmTile {
  int rows, vecs;
};
template <typename T>
GemmTile gemm_tile(int64_t cols) {
  if (kVectorRegisters >= 32 && cols / Simd<T>::W == 4) return {6, 4};
  return {kGemmRows, kGemmVecs};
}

// c[M, cols] (+)= a[M, kdim] · b[kdim, cols] for the vector-wide part of cols; returns the number
// of columns done (cols rounded down to W), the caller finishes the tail. Column panels outside,
// row blocks inside: the b panel a micro-kernel streams ([kdim, 2W], a few KiB for the short
// kdim of the backward products) stays in L1 while every row block of the tile reuses it.
template <typename T>
int64_t gemm(int64_t M, int64_t cols, int64_t kdim, const T* a, int64_t as_i, int64_t as_k, const T* b, int64_t bs,
             T* c, int64_t cs, bool accumulate) {
  constexpr int W = Simd<T>::W;
  const GemmTile tile = gemm_tile<T>(cols);
  const int64_t vec_cols = cols / W * W;
  for (int64_t j0 = 0; j0 < vec_cols; j0 += tile.vecs * W) {
    const int nv = static_cast<int>(std::min<int64_t>(tile.vecs, (vec_cols - j0) / W));
    for (int64_t i0 = 0; i0 < M; i0 += tile.rows) {
      const int R = static_cast<int>(std::min<int64_t>(tile.rows, M - i0));
      const T* ai = a + i0 * as_i;
      T* ci = c + i0 * cs + j0;
      switch (R) {
        case 1: gemm_rows<T, 1>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 2: gemm_rows<T, 2>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 3: gemm_rows<T, 3>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 4: gemm_rows<T, 4>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 5: gemm_rows<T, 5>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 6: gemm_rows<T, 6>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        case 7: gemm_rows<T, 7>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
        default: gemm_rows<T, 8>(nv, kdim, ai, as_i, as_k, b + j0, bs, ci, cs, accumulate); break;
      }
    }
  }
  return vec_cols;
}

// The forward projection in dot-product form: g[i][j] = Σ_k a[i·lda + k]·bt[j·ldb + k], both
// operands read along contiguous k (x rows and phi^T rows). A register tile of R rows × J columns
// keeps R·J vector accumulators, the R row vectors and one phi^T vector live: per W-wide step R + J
// loads feed R·J FMAs (R + J ≤ R·J/2 at 3 × 8, so the FMA units, not the loads, set the pace).
// With kSumSquares the tile also sums a² per row from the same loads (DeepSeek's fusion: the RMS
// norm costs no extra pass over x). Sums of length K in fp32 with W interleaved partial sums; the
// J accumulators of a row are reduced together (sum_lanes), so the horizontal sums cost a few
// shuffles per row, not W adds per column. bt holds J rows past `cols` (zero padding): only `cols`
// results are written.
//
// The first panel (kSumSquares) also prefetches the same block of the next tile's rows (`next`,
// next_rows of them, lda apart) into L2, one cache line per row at a time as its loop reaches it,
// so that the memory reads of the stream overlap the FMAs. Issued all at once before the block,
// the prefetches fill the miss buffers and stall the core (perf: 28% of the forward's own samples
// on that loop).
template <typename T, int R, bool kSumSquares>
void dot_micro(int64_t K, const T* a, int64_t lda, const T* bt, int64_t ldb, int cols, T* g, int64_t ldg, T* ss,
               bool accumulate, const T* next, int next_rows) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int J = kDotCols;
  V acc[R][J], sq[R];
  for (int i = 0; i < R; ++i) {
    sq[i] = V{};
    for (int j = 0; j < J; ++j) acc[i][j] = V{};
  }
  int64_t k = 0;
  for (; k + S::W <= K; k += S::W) {
    if constexpr (kSumSquares) {
      if (k % kLineValues<T> == 0)
        for (int i = 0; i < next_rows; ++i) __builtin_prefetch(next + i * lda + k, 0, 2);
    }
    V av[R];
    for (int i = 0; i < R; ++i) {
      av[i] = S::load(a + i * lda + k);
      if constexpr (kSumSquares) sq[i] += av[i] * av[i];
    }
    for (int j = 0; j < J; ++j) {
      V bv = S::load(bt + j * ldb + k);
      keep_in_register(bv);  // one load for R FMAs (GCC would fold it into each)
      for (int i = 0; i < R; ++i) acc[i][j] += av[i] * bv;
    }
  }
  if constexpr (kSumSquares)  // the block's last line, which the loop misses where K ends mid-vector
    for (int i = 0; i < next_rows; ++i) __builtin_prefetch(next + i * lda + K - 1, 0, 2);
  for (int i = 0; i < R; ++i) {
    T sums[J];
    sum_lanes<T, J>(acc[i], sums);
    for (int64_t kk = k; kk < K; ++kk)  // K not a multiple of the vector width
      for (int j = 0; j < J; ++j) sums[j] += a[i * lda + kk] * bt[j * ldb + kk];
    for (int j = 0; j < cols; ++j) g[i * ldg + j] = (accumulate ? g[i * ldg + j] : T(0)) + sums[j];
    if constexpr (kSumSquares) {
      T s = horizontal_sum<T>(sq[i]);
      for (int64_t kk = k; kk < K; ++kk) s += a[i * lda + kk] * a[i * lda + kk];
      ss[i] = (accumulate ? ss[i] : T(0)) + s;
    }
  }
}

template <typename T, int R>
void dot_rows(int64_t K, const T* a, int64_t lda, const T* bt, int64_t ldb, int cols, T* g, int64_t ldg, T* ss,
              bool accumulate, const T* next, int next_rows) {
  if (ss) return dot_micro<T, R, true>(K, a, lda, bt, ldb, cols, g, ldg, ss, accumulate, next, next_rows);
  return dot_micro<T, R, false>(K, a, lda, bt, ldb, cols, g, ldg, ss, accumulate, nullptr, 0);
}

// g[M, m] = a[M, K] · bt[m, K]^T and ss[M] = Σ_k a², blocked along K so that a row block of a
// ([R, kBlockK], 24 KiB of floats) stays in L1 while all the column panels of bt stream past it from L2.
// Every block ends in the horizontal sums of its R·J accumulators, so a block shorter than K pays
// them again: build/bench_kernels, medians of 7 interleaved runs, blocks of 512 → 2048: mhc pre
// forward 3.64 → 3.35 ms (C = 512), 8.68 → 6.82 ms (C = 1024); mhc-lite 4.85 → 4.43, 9.60 → 8.88.
// bt's rows are ldb apart and padded with zero rows to a multiple of kDotCols. The first column
// panel also sums the squares (every variant has m ≥ 2).
constexpr int64_t kBlockK = 2048;

template <typename T>
void gemm_dot(int64_t M, int64_t m, int64_t K, const T* a, int64_t lda, const T* bt, int64_t ldb, T* g, int64_t ldg,
              T* ss, const T* next_a, int64_t next_rows) {
  const int64_t block_k = m > kWideProjection ? 128 : kBlockK;
  for (int64_t k0 = 0; k0 < K; k0 += block_k) {
    const int64_t kc = std::min(block_k, K - k0);
    for (int64_t i0 = 0; i0 < M; i0 += kDotRows) {
      const int R = static_cast<int>(std::min<int64_t>(kDotRows, M - i0));
      const T* ai = a + i0 * lda + k0;
      // The same block of the next tile's rows, prefetched by the first panel.
      const int next_block_rows = static_cast<int>(std::clamp<int64_t>(next_rows - i0, 0, R));
      const T* next = next_block_rows ? next_a + i0 * lda + k0 : nullptr;
      for (int64_t j0 = 0; j0 < m; j0 += kDotCols) {
        const int cols = static_cast<int>(std::min<int64_t>(kDotCols, m - j0));
        const T* bj = bt + j0 * ldb + k0;
        T* gi = g + i0 * ldg + j0;
        T* si = j0 == 0 ? ss + i0 : nullptr;
        switch (R) {
          case 1: dot_rows<T, 1>(kc, ai, lda, bj, ldb, cols, gi, ldg, si, k0 > 0, next, next_block_rows); break;
          case 2: dot_rows<T, 2>(kc, ai, lda, bj, ldb, cols, gi, ldg, si, k0 > 0, next, next_block_rows); break;
          default: dot_rows<T, kDotRows>(kc, ai, lda, bj, ldb, cols, gi, ldg, si, k0 > 0, next, next_block_rows); break;
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void project_rows(const T* A, int64_t rows, int64_t K, int64_t m, const T* phiT, T* g, T* ss, const T* next_A,
                  int64_t next_rows) {
  gemm_dot(rows, m, K, A, K, phiT, staged_stride<T>(K), g, m, ss, next_A, next_rows);
}

template <typename T>
void project_rows_direct(const T* A, int64_t rows, int64_t K, int64_t m, const T* phi, T* g, T* ss) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int kBlock = 4;  // vectors of columns held in registers across the pass over K
  const int64_t vectors = (m + S::W - 1) / S::W;  // the last one partial where W does not divide m
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = A + r * K;
    T* g_r = g + r * m;
    for (int64_t first = 0; first < vectors; first += kBlock) {
      const int nv = static_cast<int>(std::min<int64_t>(kBlock, vectors - first));
      const T* phi_block = phi + first * S::W;
      // Even and odd k in accumulators of their own: two chains of FMAs hide each other's latency.
      // Rows k < K − 1 are loaded whole: a partial vector's extra lanes read row k + 1, inside phi,
      // and are never stored; the last row is read lane by lane.
      V even[kBlock] = {}, odd[kBlock] = {};
      int64_t k = 0;
      for (; k + 2 <= K - 1; k += 2) {
        const V a0 = S::splat(a[k]), a1 = S::splat(a[k + 1]);
        for (int i = 0; i < nv; ++i) {
          even[i] += a0 * S::load(phi_block + k * m + i * S::W);
          odd[i] += a1 * S::load(phi_block + (k + 1) * m + i * S::W);
        }
      }
      for (; k < K; ++k)
        for (int i = 0; i < nv; ++i)
          for (int lane = 0; lane < S::W && (first + i) * S::W + lane < m; ++lane)
            even[i][lane] += a[k] * phi_block[k * m + i * S::W + lane];
      for (int i = 0; i < nv; ++i)
        for (int lane = 0; lane < S::W && (first + i) * S::W + lane < m; ++lane)
          g_r[(first + i) * S::W + lane] = even[i][lane] + odd[i][lane];
    }
    V squares = {};
    int64_t k = 0;
    for (; k + S::W <= K; k += S::W) squares += S::load(a + k) * S::load(a + k);
    T sum_squares = horizontal_sum<T>(squares);
    for (; k < K; ++k) sum_squares += a[k] * a[k];
    ss[r] = sum_squares;
  }
}

template <typename T>
void project_rows_backward(const T* staged, const T* dg, int64_t rows, int64_t K, int64_t mp, const T* phiT_p, T* dA,
                           T* dphi_p) {
  const int64_t Ks = staged_stride<T>(K);
  const int64_t done = gemm(rows, K, mp, dg, mp, int64_t(1), phiT_p, Ks, dA, Ks, /*accumulate=*/false);
  for (int64_t r = 0; r < rows; ++r)  // columns past the last whole vector (C not a multiple of W)
    for (int64_t c = done; c < K; ++c) {
      T s = 0;
      for (int64_t j = 0; j < mp; ++j) s += dg[r * mp + j] * phiT_p[j * Ks + c];
      dA[r * Ks + c] = s;
    }
  gemm(K, mp, rows, staged, int64_t(1), Ks, dg, mp, dphi_p, mp, /*accumulate=*/true);
}

template void project_rows<float>(const float*, int64_t, int64_t, int64_t, const float*, float*, float*, const float*,
                                  int64_t);
template void project_rows<double>(const double*, int64_t, int64_t, int64_t, const double*, double*, double*,
                                   const double*, int64_t);
template void project_rows_direct<float>(const float*, int64_t, int64_t, int64_t, const float*, float*, float*);
template void project_rows_direct<double>(const double*, int64_t, int64_t, int64_t, const double*, double*, double*);
template void project_rows_backward<float>(const float*, const float*, int64_t, int64_t, int64_t, const float*, float*,
                                           float*);
template void project_rows_backward<double>(const double*, const double*, int64_t, int64_t, int64_t, const double*,
                                            double*, double*);

}  // namespace mhc::cpu
