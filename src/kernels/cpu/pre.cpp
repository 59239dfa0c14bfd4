// Fused CPU kernels for `pre`: coefficients + pre-mix, forward and backward (DESIGN.md §2–3).
//
// Work is split across OpenMP threads by tiles of tokens (tile_tokens, backward_tile_tokens). For
// one tile:
//   1. projection: g = v·phi and Σv² in the same pass over x (the rows v are whole tokens for
//      mHC/mHC-lite, single streams for HC, so one routine serves both: x viewed as [N·P, K]);
//   2. per token, the coefficients from (g, r): sigmoid / Sinkhorn–Knopp / permutation mixture /
//      tanh gates, all in registers-sized scratch (Sinkhorn–Knopp for W tokens at once, one per
//      vector lane: sinkhorn_lanes.h);
//   3. h = H_pre·x while the tile is still in cache.
// Backward recomputes the coefficients (and the 2t Sinkhorn iterates, in scratch, per token or per
// group of W tokens) from the saved projections g and r, and walks back through them. phi's gradient is a reduction
// over tokens: each thread accumulates into its own buffer and the buffers are summed in a fixed
// order afterwards, so the result is deterministic for a given thread count and free of atomics.
//
// The boundary kernels (cpu_kernels.h) are these tile loops with the post of the sublayer before
// fused in: forward, each tile of x_next is written (post_tokens.h) just before it is projected;
// backward, each tile of x_next's gradient stays in a per-thread buffer and post's backward runs on
// it. What cannot be fused: the backward's coefficient gradients of the post (dH_post, dH_res) need
// x_next's whole gradient for their token, which exists only after the pre's backward of that
// tile, so the post's backward follows the pre's per tile rather than sharing its passes; and the
// forward's post cannot start before the sublayer before has produced y, so the first pre and the
// last post of a stack stay separate ops.
//
// Outputs of kNonTemporalBytes or more go to memory with non-temporal stores (simd.h): h, dx, and at
// a boundary the post's dx and dy. x_next is stored through the cache: its tile is projected at once.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <vector>

#include "../coefficients.h"
#include "cpu_kernels.h"
#include "post_tokens.h"
#include "simd.h"
#include "sinkhorn_lanes.h"

namespace mhc::cpu {
namespace {

using kernels::Coeffs;
using kernels::coefficients;
using kernels::coefficients_backward;
using kernels::scratch_size;

constexpr int64_t kTileTokens = 16;
// A wide projection (m > 64 columns: mHC at n ≥ 8, mHC-lite at n = 5; phi is 1.3 MiB at n = 8 and
// 9.4 MiB at n = 16 for C = 512) no longer stays in L2 between tiles, so every tile streams phi^T
// and its dphi partial from L3 or memory: there a tile of 64 tokens, 4x the reuse per byte, and K
// blocks of 128 keep a [m, 128] panel of phi^T in L2 for all its row blocks. Narrow projections
// keep tiles of 16 tokens and K blocks of kBlockK.
constexpr int64_t kWideProjection = 64;
int64_t tile_tokens(int64_t m) { return m > kWideProjection ? 64 : kTileTokens; }
// The backward's tiles hold at least kBackwardRows projection rows (64 tokens of mHC; HC has n rows
// per token: 64/n tokens, at least tile_tokens): dphi += A^T·dg read-modify-writes its [K, mp]
// partial once per tile, and short tiles leave that pass a large share of the product.
// build/bench_kernels, 2 threads: 16 → 32 tokens, medians of three interleaved runs, mhc pre
// backward 11.2 → 8.7 ms (C = 512), 22.5 → 18.2 ms (C = 1024). 32 → 64 tokens, medians of 7: mhc
// 7.95 → 7.72 ms and 16.0 → 14.8 ms, mhc-lite 9.80 → 8.92 and 18.7 → 17.0 ms; a tile's cycles in
// dphi's product fell 15% (rdtsc per phase), although its working set (staged x, dA, phi^T, the
// partial: 1.4 MiB at C = 512) no longer fits the 1 MiB L2. HC at n = 4 keeps 16 tokens.
constexpr int64_t kBackwardRows = 64;
int64_t backward_tile_tokens(int64_t m, int64_t P) {
  return std::max(tile_tokens(m), kBackwardRows / std::max<int64_t>(P, 1));
}

// What every token of one call shares: the shared coefficient view plus the CPU's own sizes and
// the storage behind the permutation table.
template <typename T>
struct CallVariant : kernels::CoeffVariant<T> {
  int64_t C, K;
  std::vector<int> perm_storage;

  explicit CallVariant(const PreInputs<T>& in) {
    const Layout l = layout(in.variant, in.n, in.C);
    this->variant = in.variant;
    this->n = in.n;
    this->t = in.sinkhorn_iters;
    this->bias = in.bias;
    this->alpha = in.alpha;
    this->m = l.proj_cols;
    this->P = l.proj_per_token;
    this->res_count = l.res_size;
    C = in.C;
    K = l.proj_rows;
    perm_storage = kernels::permutation_table(in.variant, in.n);
    this->perms = perm_storage.data();
  }
};

// ---------------------------------------------------------------------------------------------
// The three products of the projection are small GEMMs with one short dimension (m ≤ 288, mHC at
// n = 16; a few dozen for most variants; the forward's dot-product form is tuned for the latter):
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
constexpr int kGemmRows = 8, kGemmVecs = 3;
constexpr int kDotRows = 3, kDotCols = 8;

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

int64_t padded(int64_t m, int W) { return (m + W - 1) / W * W; }

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
template <typename T>
void project_rows(const T* A, int64_t rows, int64_t K, int64_t m, const T* phiT, T* g, T* ss, const T* next_A,
                  int64_t next_rows) {
  gemm_dot(rows, m, K, A, K, phiT, staged_stride<T>(K), g, m, ss, next_A, next_rows);
}

// Backward of the projection for a tile: dA[r] = dg[r]·phi^T into a staged-layout buffer (rows
// Ks apart: writing dx's own rows, nC floats apart, would map a row block's lines to one L1 set),
// and dphi_p += A^T·dg (A staged). phiT_p is phi transposed and padded, [mp, staged_stride(K)].
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

// Per thread: the coefficients of one tile's tokens, forward and backward; token by token, or for
// the Sinkhorn–Knopp variants W tokens at a time through SinkhornLanes (the σ gates and the chain
// rule through the logits per token, H_res per group). Padding lanes past the tile's last token
// repeat it and are discarded; nothing is accumulated for them.
template <typename T>
class TileCoefficients {
 public:
  static constexpr int W = Simd<T>::W;

  explicit TileCoefficients(const CallVariant<T>& v)
      : v_(v), scratch_(scratch_size(v)), dg_token_(v.P * v.m), dr_(std::max<int64_t>(v.P, 1)), zeros_(v.n * v.n, T(0)) {
    kernels::with_variant(v.variant, [&](auto k) {
      if constexpr (HasSinkhornLanes<kernels::VariantMath<decltype(k)::value>>::value)
        if (lanes_apply()) logits_.resize(2 * W * v.m), lanes_.emplace(v.n, v.t);
    });
  }

  // H_pre, H_post, H_res of tokens [t0, t1) from their projections and norms.
  void forward(int64_t t0, int64_t t1, const T* proj, const T* rms, T* H_pre, T* H_post, T* H_res) {
    kernels::with_variant(v_.variant, [&](auto k) {
      using Math = kernels::VariantMath<decltype(k)::value>;
      if constexpr (HasSinkhornLanes<Math>::value) {
        if (lanes_) return forward_lanes<Math>(t0, t1, proj, rms, H_pre, H_post, H_res);
      }
      for (int64_t tok = t0; tok < t1; ++tok) {
        coefficients(v_, proj + tok * v_.P * v_.m, rms + tok * v_.P, scratch_.data(), cf_[0]);
        store(tok, cf_[0], H_pre, H_post, H_res);
      }
    });
  }

  // For tokens [t0, t1): their rows of dg (P rows each, `mp` apart, from the tile's first token),
  // the rms term's weight per row (rms_coef), H_pre (per token of the tile); dbias and dalpha
  // accumulated in token order. dpre [t1 − t0, n]; dH_post, dH_res may be null (zeros).
  void backward(int64_t t0, int64_t t1, const T* proj, const T* rms, const T* dpre, const T* dH_post, const T* dH_res,
                T* dg, int64_t mp, T* rms_coef, T* H_pre, T* dbias, T* dalpha) {
    const int n = v_.n;
    auto dpost_of = [&](int64_t tok) { return dH_post ? dH_post + tok * n : zeros_.data(); };
    auto dres_of = [&](int64_t tok) { return dH_res ? dH_res + tok * n * n : zeros_.data(); };
    // dg_token and dr of token tok into the tile's rows.
    auto finish = [&](int64_t tok) {
      for (int64_t q = 0; q < v_.P; ++q) {  // into the tile's padded rows (padding stays zero)
        std::copy(dg_token_.data() + q * v_.m, dg_token_.data() + (q + 1) * v_.m, dg + ((tok - t0) * v_.P + q) * mp);
        rms_coef[(tok - t0) * v_.P + q] = dr_[q] / (T(v_.K) * rms[tok * v_.P + q]);
      }
    };
    kernels::with_variant(v_.variant, [&](auto k) {
      using Math = kernels::VariantMath<decltype(k)::value>;
      if constexpr (HasSinkhornLanes<Math>::value) {
        if (lanes_) return backward_lanes<Math>(t0, t1, proj, rms, dpre, H_pre, dbias, dalpha, dpost_of, dres_of, finish);
      }
      for (int64_t tok = t0; tok < t1; ++tok) {
        coefficients_backward(v_, proj + tok * v_.P * v_.m, rms + tok * v_.P, dpre + (tok - t0) * n, dpost_of(tok),
                              dres_of(tok), scratch_.data(), dg_token_.data(), dr_.data(), dbias, dalpha,
                              H_pre + (tok - t0) * n);
        finish(tok);
      }
    });
  }

 private:
  // The lanes need t ≥ 1 (t = 0 is exp(H̃) unshifted) and unrolled stream loops.
  bool lanes_apply() const { return v_.t >= 1 && v_.n <= kernels::kUnrolledStreams; }

  // backward's W-token groups (see the class note): the gates and the chain rule per token, H_res
  // per group on the lanes or, when a token needs the log domain, token by token.
  template <typename Math, typename DPost, typename DRes, typename Finish>
  void backward_lanes(int64_t t0, int64_t t1, const T* proj, const T* rms, const T* dpre, T* H_pre, T* dbias, T* dalpha,
                      const DPost& dpost_of, const DRes& dres_of, const Finish& finish) {
    using Eps = typename HasSinkhornLanes<Math>::EpsType;
    const T eps = T(Eps::value);
    const int n = v_.n;
    const int64_t m = v_.m;
    for (int64_t g = t0; g < t1; g += W) {
      const T* res_logits[W];
      const T* dres[W];
      T* dres_logits[W];
      for (int l = 0; l < W; ++l) {
        const int64_t tok = std::min(g + l, t1 - 1);
        T* logits = logits_.data() + 2 * l * m;
        Math::backward_gates(v_, proj + tok * m, rms + tok, dpre + (tok - t0) * n, dpost_of(tok), logits,
                             logits + m, H_pre + (tok - t0) * n);
        res_logits[l] = logits + 2 * n;
        dres[l] = dres_of(tok);
        dres_logits[l] = logits + m + 2 * n;
      }
      if (lanes_->start(eps, res_logits)) {
        lanes_->backward(eps, dres, dres_logits);
      } else {
        for (int l = 0; l < W; ++l)
          Math::MixingType::res_backward(v_, res_logits[l], dres[l], scratch_.data(), dres_logits[l]);
      }
      for (int64_t tok = g; tok < std::min(g + W, t1); ++tok) {
        const T* dlogits = logits_.data() + 2 * (tok - g) * m + m;
        Math::backward_logits(v_, proj + tok * m, rms + tok, dlogits, dg_token_.data(), dr_.data(), dbias, dalpha);
        finish(tok);
      }
    }
  }

  template <typename Math>
  void forward_lanes(int64_t t0, int64_t t1, const T* proj, const T* rms, T* H_pre, T* H_post, T* H_res) {
    using Eps = typename HasSinkhornLanes<Math>::EpsType;
    const T eps = T(Eps::value);
    const int64_t m = v_.m;
    for (int64_t g = t0; g < t1; g += W) {
      const T* res_logits[W];
      T* res[W];
      for (int l = 0; l < W; ++l) {
        const int64_t tok = std::min(g + l, t1 - 1);
        Math::gates(v_, proj + tok * m, rms + tok, logits_.data() + l * m, cf_[l]);
        res_logits[l] = logits_.data() + l * m + 2 * v_.n;
        res[l] = cf_[l].res;
      }
      if (lanes_->start(eps, res_logits)) {
        lanes_->forward(eps, res);
      } else {
        for (int l = 0; l < W; ++l) Math::MixingType::res_forward(v_, res_logits[l], cf_[l].res);
      }
      for (int64_t tok = g; tok < std::min(g + W, t1); ++tok) store(tok, cf_[tok - g], H_pre, H_post, H_res);
    }
  }

  void store(int64_t tok, const Coeffs<T>& cf, T* H_pre, T* H_post, T* H_res) const {
    const int n = v_.n;
    std::copy(cf.pre, cf.pre + n, H_pre + tok * n);
    std::copy(cf.post, cf.post + n, H_post + tok * n);
    std::copy(cf.res, cf.res + n * n, H_res + tok * n * n);
  }

  const CallVariant<T>& v_;
  std::vector<T> scratch_, dg_token_, dr_, zeros_;
  // For the Sinkhorn–Knopp variants: W tokens' logits [m] (forward), or logits and dlogits [2m]
  // (backward), and the lanes.
  std::vector<T> logits_;
  Coeffs<T> cf_[W];
  std::optional<SinkhornLanes<T>> lanes_;
};

// h = Σ_i w[i]·x_i for one token's n streams (rows of C), stored past the cache or not (simd.h).
template <bool kNonTemporal, typename T>
void mix_streams(T* h, const T* x, const T* w, int n, int64_t C) {
  using S = Simd<T>;
  using V = typename S::V;
  int64_t c = 0;
  for (; c + S::W <= C; c += S::W) {
    V acc = S::splat(w[0]) * S::load(x + c);
    for (int i = 1; i < n; ++i) acc += S::splat(w[i]) * S::load(x + i * C + c);
    put<kNonTemporal>(h + c, acc);
  }
  for (; c < C; ++c) {  // C not a multiple of the vector width (never past the cache)
    T acc = w[0] * x[c];
    for (int i = 1; i < n; ++i) acc += w[i] * x[i * C + c];
    h[c] = acc;
  }
}

// The terms of one stream's gradient in pre's backward: dx_i = w·dh + rms_coef·x_i + dA_i (+ add_i).
// x and dA are null for the plain residual (no projection), add where x has no other use.
template <typename T>
struct DxTerms {
  T w;
  const T* dh;
  T rms_coef;
  const T* x;
  const T* dA;
  const T* add;
};

// One stream's row of dx, each element written once: one loop per combination of terms (kProj:
// x and dA given; kAdd: add given), since a test inside the one loop costs 30% of the whole backward.
template <bool kNonTemporal, bool kProj, bool kAdd, typename T>
void write_dx_row(T* dx, const DxTerms<T>& t, int64_t C) {
  using S = Simd<T>;
  // The sum at one column, for a vector of W (load = S::load) or one element.
  auto value = [&](auto load, auto w, auto coef) {
    auto a = w * load(t.dh);
    if constexpr (kProj) a = a + coef * load(t.x) + load(t.dA);
    if constexpr (kAdd) a = a + load(t.add);
    return a;
  };
  const auto w = S::splat(t.w), coef = S::splat(t.rms_coef);
  int64_t c = 0;
  for (; c + S::W <= C; c += S::W)
    put<kNonTemporal>(dx + c, value([&](const T* p) { return S::load(p + c); }, w, coef));
  for (; c < C; ++c) dx[c] = value([&](const T* p) { return p[c]; }, t.w, t.rms_coef);  // never past the cache
}

template <bool kNonTemporal, typename T>
void write_dx(T* dx, const DxTerms<T>& t, int64_t C) {
  if (t.x && t.add) write_dx_row<kNonTemporal, true, true>(dx, t, C);
  else if (t.x) write_dx_row<kNonTemporal, true, false>(dx, t, C);
  else if (t.add) write_dx_row<kNonTemporal, false, true>(dx, t, C);
  else write_dx_row<kNonTemporal, false, false>(dx, t, C);
}

// ---------------------------------------------------------------------------------------------
// pre's forward; with `post`, the boundary's: each tile of p.in.x (= x_next) is first written by
// the post before, and projected while in cache.
template <typename T>
void forward_tiles(const PreForwardParams<T>& p, const PostInputs<T>* post, T* x_next) {
  const CallVariant<T> v(p.in);
  const int n = p.in.n;
  const int64_t C = p.in.C, m = v.m, per_tile = tile_tokens(m), tiles = (p.in.N + per_tile - 1) / per_tile;
  const std::vector<T> phiT = transpose_phi(p.in.phi, v.K, m, padded(m, kDotCols), staged_stride<T>(v.K));
  const bool nt_h = bypasses_cache(p.h, C, p.in.N * C);

#pragma omp parallel num_threads(thread_count(p.in.threads))
  {
    std::vector<T> ss(per_tile * v.P);
    TileCoefficients<T> coefficients(v);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t t0 = tile * per_tile, t1 = std::min(p.in.N, t0 + per_tile);
      const int64_t next_tokens = std::max<int64_t>(0, std::min(p.in.N, t1 + per_tile) - t1);
      if (post) post_forward_tokens(x_next, *post, t0, t1, n, C);
      // Prefetched for the next tile: what it reads from memory (the post's x at a boundary).
      const T* next_read = (post ? post->x : p.in.x) + t1 * n * C;
      project_rows(p.in.x + t0 * n * C, (t1 - t0) * v.P, v.K, m, phiT.data(), p.proj + t0 * v.P * m, ss.data(),
                   next_read, next_tokens * v.P);
      for (int64_t row = t0 * v.P; row < t1 * v.P; ++row)
        p.rms[row] = std::sqrt(ss[row - t0 * v.P] / T(v.K) + T(kRmsEps));
      coefficients.forward(t0, t1, p.proj, p.rms, p.H_pre, p.H_post, p.H_res);
      for (int64_t tok = t0; tok < t1; ++tok) {
        with_flag(nt_h, [&](auto nt) {
          mix_streams<decltype(nt)::value>(p.h + tok * C, p.in.x + tok * n * C, p.H_pre + tok * n, n, C);
        });
      }
    }
    non_temporal_fence();
  }
}

// pre's backward; with `post`, the boundary's: the tile of x_next's gradient (p.dx unused) stays in
// a per-thread buffer, and the post's backward runs on it at once.
template <typename T>
void backward_tiles(const PreBackwardParams<T>& p, const PostInputs<T>* post, const PostGradients<T>* post_grads) {
  const CallVariant<T> v(p.in);
  const int n = p.in.n;
  const int64_t C = p.in.C, K = v.K, m = v.m, mp = padded(m, Simd<T>::W);
  const int64_t per_tile = backward_tile_tokens(v.m, v.P), tiles = (p.in.N + per_tile - 1) / per_tile;
  const Layout l = layout(p.in.variant, n, C);
  const int threads = thread_count(p.in.threads);

  const std::vector<T> phiT_p = transpose_phi(p.in.phi, K, m, mp, staged_stride<T>(K));
  // What goes to memory, past the cache when large: x's gradient, or at a boundary (where
  // x_next's gradient stays in the tile) the post's gradients of x and y.
  const bool nt_dx = !post && bypasses_cache(p.dx, C, p.in.N * n * C);
  const bool nt_post = post && post_gradients_bypass_cache(*post_grads, p.in.N, n, C);

  // Per-thread partial sums of dphi (padded, [K, mp]), dbias, dalpha; each thread's slice starts
  // on its own cache line so no two threads write one line.
  const int64_t partial_len = K * mp + l.bias_size + l.alpha_size;
  const int64_t stride = (partial_len + 15) / 16 * 16;
  std::vector<T> partials(stride * threads, T(0));

#pragma omp parallel num_threads(threads)
  {
    T* dphi_p = partials.data() + stride * omp_get_thread_num();
    T* dbias = dphi_p + K * mp;
    T* dalpha = dbias + l.bias_size;
    TileCoefficients<T> coefficients(v);
    std::vector<T> dg(per_tile * v.P * mp, T(0)), dpre(per_tile * n);
    std::vector<T> H_pre(per_tile * n), rms_coef(per_tile * std::max<int64_t>(v.P, 1));
    const int64_t Ks = staged_stride<T>(K);
    // x's rows of the tile, and the projection's part of dx, both in the staged layout.
    std::vector<T> staged(per_tile * v.P * Ks), dA(per_tile * v.P * Ks);
    std::vector<T> dx_tile(post ? per_tile * n * C : 0);  // the boundary's x_next gradient
    // Where stream i of token tok sits in a staged-layout buffer: its own row for HC, a slice of
    // the token's row for mHC / mHC-lite.
    auto stream_in = [&](std::vector<T>& buffer, int64_t tok_in_tile, int i) -> T* {
      return v.P == n ? buffer.data() + (tok_in_tile * n + i) * Ks : buffer.data() + tok_in_tile * Ks + i * C;
    };
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t t0 = tile * per_tile, t1 = std::min(p.in.N, t0 + per_tile);
      for (int64_t tok = t0; tok < t1; ++tok) {
        const T* dh = p.dh + tok * C;
        for (int i = 0; i < n; ++i) {  // one pass: stage x_i, and dH_pre[i] = ⟨dh, x_i⟩ (+ any given)
          const T* xi = p.in.x + (tok * n + i) * C;
          T* out = v.P ? stream_in(staged, tok - t0, i) : nullptr;
          T acc = p.dH_pre ? p.dH_pre[tok * n + i] : T(0);
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < C; ++c) {
            if (v.P) out[c] = xi[c];
            acc += dh[c] * xi[c];
          }
          dpre[(tok - t0) * n + i] = acc;
        }
      }
      coefficients.backward(t0, t1, p.proj, p.rms, dpre.data(), p.dH_post, p.dH_res, dg.data(), mp, rms_coef.data(),
                            H_pre.data(), dbias, dalpha);
      if (v.P) project_rows_backward(staged.data(), dg.data(), (t1 - t0) * v.P, K, mp, phiT_p.data(), dA.data(), dphi_p);
      // dx_i = H_pre[i]·dh + dr·x_i/(K·r) (the rms term, per projection row) + (dg·phi^T)_i
      // (+ dx_add_i, the gradient from x's other uses): each element of dx written once.
      for (int64_t tok = t0; tok < t1; ++tok) {
        T* dx = post ? dx_tile.data() + (tok - t0) * n * C : p.dx + tok * n * C;
        for (int i = 0; i < n; ++i) {
          DxTerms<T> terms{H_pre[(tok - t0) * n + i], p.dh + tok * C, T(0), nullptr, nullptr,
                           p.dx_add ? p.dx_add + (tok * n + i) * C : nullptr};
          if (v.P) {  // the plain residual has no projection
            terms.rms_coef = rms_coef[(tok - t0) * v.P + (v.P == n ? i : 0)];
            terms.x = stream_in(staged, tok - t0, i);
            terms.dA = stream_in(dA, tok - t0, i);
          }
          with_flag(nt_dx, [&](auto nt) { write_dx<decltype(nt)::value>(dx + i * C, terms, C); });
        }
      }
      if (post) {
        with_flag(nt_post, [&](auto nt) {
          post_backward_tokens<decltype(nt)::value>(*post_grads, dx_tile.data(), *post, t0, t1, n, C);
        });
      }
    }
    non_temporal_fence();
  }

  // Sum the partials in thread order: deterministic for a given thread count.
  auto sum_partials = [&](int64_t offset, int64_t e) {
    T s = 0;
    for (int th = 0; th < threads; ++th) s += partials[th * stride + offset + e];
    return s;
  };
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < K; ++c)
    for (int64_t j = 0; j < m; ++j) p.dphi[c * m + j] = sum_partials(c * mp, j);
  for (int64_t e = 0; e < l.bias_size; ++e) p.dbias[e] = sum_partials(K * mp, e);
  for (int64_t e = 0; e < l.alpha_size; ++e) p.dalpha[e] = sum_partials(K * mp + l.bias_size, e);
}

}  // namespace

template <typename T>
void pre_forward(const PreForwardParams<T>& p) {
  forward_tiles<T>(p, nullptr, nullptr);
}

template <typename T>
void pre_backward(const PreBackwardParams<T>& p) {
  backward_tiles<T>(p, nullptr, nullptr);
}

template <typename T>
void boundary_forward(const PostInputs<T>& post, T* x_next, const PreForwardParams<T>& pre) {
  if (pre.in.x != x_next) throw std::invalid_argument("boundary_forward: pre.in.x must be x_next, the buffer it writes");
  forward_tiles(pre, &post, x_next);
}

template <typename T>
void boundary_backward(const PostInputs<T>& post, const PostGradients<T>& post_grads, const PreBackwardParams<T>& pre) {
  backward_tiles(pre, &post, &post_grads);
}

template void pre_forward<float>(const PreForwardParams<float>&);
template void pre_forward<double>(const PreForwardParams<double>&);
template void pre_backward<float>(const PreBackwardParams<float>&);
template void pre_backward<double>(const PreBackwardParams<double>&);
template void boundary_forward<float>(const PostInputs<float>&, float*, const PreForwardParams<float>&);
template void boundary_forward<double>(const PostInputs<double>&, double*, const PreForwardParams<double>&);
template void boundary_backward<float>(const PostInputs<float>&, const PostGradients<float>&,
                                       const PreBackwardParams<float>&);
template void boundary_backward<double>(const PostInputs<double>&, const PostGradients<double>&,
                                        const PreBackwardParams<double>&);

}  // namespace mhc::cpu
