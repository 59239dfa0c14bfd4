// Fused CPU kernels for `pre`: coefficients + pre-mix, forward and backward (DESIGN.md §2–3).
//
// Work is split across OpenMP threads by tiles of tokens (tile_tokens, backward_tile_tokens). For
// one tile:
//   1. projection: g = v·phi and Σv² in the same pass over x (the rows v are whole tokens for
//      mHC/mHC-lite, single streams for HC, so one routine serves both: x viewed as [N·P, K];
//      projection_gemm.h);
//   2. per token, the coefficients from (g, r): sigmoid / Sinkhorn–Knopp / permutation mixture /
//      tanh gates, all in registers-sized scratch (tile_coefficients.h: Sinkhorn–Knopp for W tokens
//      at once, one per vector lane);
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
//
// A LayerNorm read (jpmhc, Layout::centred) projects with phi's columns centred, phi_c = phi −
// 1·mean_rows(phi), so that v·phi_c = (v − mean)·phi with no second pass over x; r is then the
// standard deviation, from a pass over each token while its tile is in cache. Backward, the
// norm's term of dx is dr·(x − mean)/(K·r) and phi's gradient is phi_c's with its column means
// removed.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "cpu_kernels.h"
#include "post_tokens.h"
#include "projection_gemm.h"
#include "simd.h"
#include "tile_coefficients.h"

namespace mhc::cpu {
namespace {

constexpr int64_t kTileTokens = 16;
// A wide projection (m > kWideProjection columns; phi is 1.3 MiB at n = 8 and 9.4 MiB at n = 16 for
// C = 512) no longer stays in L2 between tiles, so every tile streams phi^T and its dphi partial
// from L3 or memory: there a tile of 64 tokens, 4x the reuse per byte, and K blocks of 128
// (projection_gemm.cpp) keep a [m, 128] panel of phi^T in L2 for all its row blocks. Narrow
// projections keep tiles of 16 tokens and K blocks of kBlockK.
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

// phi [K, m] with each column's mean subtracted: the weights a centred read projects with.
template <typename T>
std::vector<T> centred_columns(const T* phi, int64_t K, int64_t m) {
  std::vector<T> mean(m, T(0)), out(phi, phi + K * m);
  for (int64_t c = 0; c < K; ++c)
    for (int64_t j = 0; j < m; ++j) mean[j] += phi[c * m + j];
  for (int64_t c = 0; c < K; ++c)
    for (int64_t j = 0; j < m; ++j) out[c * m + j] -= mean[j] / T(K);
  return out;
}

// The mean of a token's K values, and their standard deviation with the norm's eps.
template <typename T>
T token_mean(const T* v, int64_t K) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < K; ++c) sum += v[c];
  return sum / T(K);
}
template <typename T>
T token_deviation(const T* v, int64_t K, T mean) {
  T ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < K; ++c) ss += (v[c] - mean) * (v[c] - mean);
  return std::sqrt(ss / T(K) + T(kRmsEps));
}

// The weights the projection reads: phi, or its centred copy (kept in `storage`) for a centred read.
template <typename T>
const T* projection_phi(const CallVariant<T>& v, const T* phi, std::vector<T>& storage) {
  if (!v.centred) return phi;
  storage = centred_columns(phi, v.K, v.m);
  return storage.data();
}

// ---------------------------------------------------------------------------------------------
// pre's forward; with `post`, the boundary's: each tile of p.in.x (= x_next) is first written by
// the post before, and projected while in cache.
template <typename T>
void forward_tiles(const PreForwardParams<T>& p, const PostInputs<T>* post, T* x_next) {
  const CallVariant<T> v(p.in);
  const int n = p.in.n;
  const int64_t C = p.in.C, m = v.m, per_tile = tile_tokens(m), tiles = (p.in.N + per_tile - 1) / per_tile;
  const bool direct = p.in.N * v.P <= kDirectProjectionRows;
  std::vector<T> centred_phi;
  const T* phi = projection_phi(v, p.in.phi, centred_phi);
  const std::vector<T> phiT =
      direct ? std::vector<T>() : transpose_phi(phi, v.K, m, padded(m, kDotCols), staged_stride<T>(v.K));
  const bool nt_h = bypasses_cache(p.h, C, p.in.N * C);

#pragma omp parallel num_threads(thread_count(p.in.threads, tiles))
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
      if (direct)
        project_rows_direct(p.in.x + t0 * n * C, (t1 - t0) * v.P, v.K, m, phi, p.proj + t0 * v.P * m, ss.data());
      else
        project_rows(p.in.x + t0 * n * C, (t1 - t0) * v.P, v.K, m, phiT.data(), p.proj + t0 * v.P * m, ss.data(),
                     next_read, next_tokens * v.P);
      for (int64_t row = t0 * v.P; row < t1 * v.P; ++row) {
        const T* token = p.in.x + row * v.K;
        p.rms[row] = v.centred ? token_deviation(token, v.K, token_mean(token, v.K))
                               : std::sqrt(ss[row - t0 * v.P] / T(v.K) + T(kRmsEps));
      }
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

// What every thread of pre's backward reads, derived once per call (backward_tiles). At a
// boundary, `post` is the post before and post_grads its gradients (out); both are null otherwise.
template <typename T>
struct BackwardCall {
  const PreBackwardParams<T>& p;
  const PostInputs<T>* post;
  const PostGradients<T>* post_grads;
  const CallVariant<T> v;
  const Layout l;
  const int n;
  const int64_t C, K, m, mp, Ks, per_tile;
  std::vector<T> centred_phi;   // a centred read's weights (projection_phi)
  const std::vector<T> phiT_p;  // phi^T (centred, for a centred read) padded to mp rows, Ks apart
  // What goes to memory, past the cache when large: x's gradient, or at a boundary (where
  // x_next's gradient stays in the tile) the post's gradients of x and y.
  const bool nt_dx, nt_post;

  BackwardCall(const PreBackwardParams<T>& p_, const PostInputs<T>* post_, const PostGradients<T>* post_grads_)
      : p(p_), post(post_), post_grads(post_grads_), v(p_.in),
        l(layout(p_.in.variant, p_.in.n, p_.in.C, p_.in.options)), n(p_.in.n), C(p_.in.C), K(v.K), m(v.m),
        mp(padded(m, Simd<T>::W)), Ks(staged_stride<T>(K)),
        per_tile(backward_tile_tokens(m, v.P)),
        phiT_p(transpose_phi(projection_phi(v, p_.in.phi, centred_phi), K, m, mp, Ks)),
        nt_dx(!post && bypasses_cache(p_.dx, C, p_.in.N * n * C)),
        nt_post(post && post_gradients_bypass_cache(*post_grads, p_.in.N, n, C)) {}
};

// One thread's share of pre's backward: tile after tile in the same buffers, accumulating into the
// thread's own partial sums of dphi (padded, [K, mp]), dbias and dalpha (from `partials` on).
template <typename T>
class TileBackward {
 public:
  TileBackward(const BackwardCall<T>& call, T* partials)
      : call_(call), dphi_(partials), dbias_(partials + call.K * call.mp), dalpha_(dbias_ + call.l.bias_size),
        coefficients_(call.v), dg_(call.per_tile * call.v.P * call.mp, T(0)), dpre_(call.per_tile * call.n),
        H_pre_(call.per_tile * call.n), rms_coef_(call.per_tile * std::max<int64_t>(call.v.P, 1)),
        means_(call.v.centred ? call.per_tile : 0),
        staged_(call.per_tile * call.v.P * call.Ks), dA_(call.per_tile * call.v.P * call.Ks),
        dx_tile_(call.post ? call.per_tile * call.n * call.C : 0) {}

  // Tokens [t0, t1): their dx (at a boundary, the post's gradients) and their share of the partials.
  void run(int64_t t0, int64_t t1) {
    const BackwardCall<T>& c = call_;
    stage(t0, t1);
    coefficients_.backward(t0, t1, c.p.proj, c.p.rms, dpre_.data(), c.p.dH_post, c.p.dH_res, dg_.data(), c.mp,
                           rms_coef_.data(), H_pre_.data(), dbias_, dalpha_);
    if (c.v.P)
      project_rows_backward(staged_.data(), dg_.data(), (t1 - t0) * c.v.P, c.K, c.mp, c.phiT_p.data(), dA_.data(),
                            dphi_);
    if (c.v.centred) centre_norm_term(t0, t1);
    write_tile_dx(t0, t1);
    if (c.post) {
      with_flag(c.nt_post, [&](auto nt) {
        post_backward_tokens<decltype(nt)::value>(*c.post_grads, dx_tile_.data(), *c.post, t0, t1, c.n, c.C);
      });
    }
  }

 private:
  // One pass over the tile's x: stage each x_i, and dH_pre[i] = ⟨dh, x_i⟩ (+ any given) into dpre.
  void stage(int64_t t0, int64_t t1) {
    const PreBackwardParams<T>& p = call_.p;
    const int n = call_.n;
    const int64_t C = call_.C, P = call_.v.P;
    for (int64_t tok = t0; tok < t1; ++tok) {
      const T* dh = p.dh + tok * C;
      for (int i = 0; i < n; ++i) {
        const T* xi = p.in.x + (tok * n + i) * C;
        T* out = P ? stream_in(staged_, tok - t0, i) : nullptr;
        T acc = p.dH_pre ? p.dH_pre[tok * n + i] : T(0);
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < C; ++c) {
          if (P) out[c] = xi[c];
          acc += dh[c] * xi[c];
        }
        dpre_[(tok - t0) * n + i] = acc;
      }
      if (call_.v.centred) means_[tok - t0] = token_mean(p.in.x + tok * n * C, call_.K);
    }
  }

  // A centred read's norm term is dr·(x − mean)/(K·r), not dr·x/(K·r): write_tile_dx adds
  // rms_coef·x, so the tile's dA (one projection row per token) takes −rms_coef·mean here.
  void centre_norm_term(int64_t t0, int64_t t1) {
    for (int64_t tok = t0; tok < t1; ++tok) {
      const T shift = rms_coef_[tok - t0] * means_[tok - t0];
      T* dA = dA_.data() + (tok - t0) * call_.Ks;
#pragma omp simd
      for (int64_t c = 0; c < call_.K; ++c) dA[c] -= shift;
    }
  }

  // dx_i = H_pre[i]·dh + dr·x_i/(K·r) (the rms term, per projection row) + (dg·phi^T)_i
  // (+ dx_add_i, the gradient from x's other uses): each element of dx written once. At a boundary
  // dx is x_next's gradient, into the tile's buffer.
  void write_tile_dx(int64_t t0, int64_t t1) {
    const PreBackwardParams<T>& p = call_.p;
    const int n = call_.n;
    const int64_t C = call_.C, P = call_.v.P;
    for (int64_t tok = t0; tok < t1; ++tok) {
      T* dx = call_.post ? dx_tile_.data() + (tok - t0) * n * C : p.dx + tok * n * C;
      for (int i = 0; i < n; ++i) {
        DxTerms<T> terms{H_pre_[(tok - t0) * n + i], p.dh + tok * C, T(0), nullptr, nullptr,
                         p.dx_add ? p.dx_add + (tok * n + i) * C : nullptr};
        if (P) {  // the plain residual has no projection
          terms.rms_coef = rms_coef_[(tok - t0) * P + (P == n ? i : 0)];
          terms.x = stream_in(staged_, tok - t0, i);
          terms.dA = stream_in(dA_, tok - t0, i);
        }
        with_flag(call_.nt_dx, [&](auto nt) { write_dx<decltype(nt)::value>(dx + i * C, terms, C); });
      }
    }
  }

  // Where stream i of the tile's token tok sits in a staged-layout buffer: its own row for HC, a
  // slice of the token's row for mHC / mHC-lite.
  T* stream_in(std::vector<T>& buffer, int64_t tok, int i) {
    const int64_t Ks = call_.Ks;
    return call_.v.P == call_.n ? buffer.data() + (tok * call_.n + i) * Ks : buffer.data() + tok * Ks + i * call_.C;
  }

  const BackwardCall<T>& call_;
  T *dphi_, *dbias_, *dalpha_;
  TileCoefficients<T> coefficients_;
  std::vector<T> dg_, dpre_, H_pre_, rms_coef_;
  std::vector<T> means_;        // a centred read's token means
  std::vector<T> staged_, dA_;  // x's rows of the tile, and the projection's part of dx, in the staged layout
  std::vector<T> dx_tile_;      // at a boundary: the tile of x_next's gradient
};

// dphi, dbias and dalpha: each thread's partials (`stride` apart) summed in thread order, so the
// result is deterministic for a given thread count.
template <typename T>
void sum_partials(const BackwardCall<T>& call, const std::vector<T>& partials, int64_t stride, int threads) {
  const int64_t K = call.K, m = call.m, mp = call.mp;
  auto sum = [&](int64_t offset, int64_t e) {
    T s = 0;
    for (int th = 0; th < threads; ++th) s += partials[th * stride + offset + e];
    return s;
  };
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < K; ++c)
    for (int64_t j = 0; j < m; ++j) call.p.dphi[c * m + j] = sum(c * mp, j);
  // A centred read projected with phi_c = phi − 1·mean_rows(phi): phi's gradient is phi_c's with
  // each column's mean removed.
  if (call.v.centred) {
    const std::vector<T> centred = centred_columns(call.p.dphi, K, m);
    std::copy(centred.begin(), centred.end(), call.p.dphi);
  }
  for (int64_t e = 0; e < call.l.bias_size; ++e) call.p.dbias[e] = sum(K * mp, e);
  for (int64_t e = 0; e < call.l.alpha_size; ++e) call.p.dalpha[e] = sum(K * mp + call.l.bias_size, e);
}

// pre's backward; with `post`, the boundary's: the tile of x_next's gradient (p.dx unused) stays in
// a per-thread buffer, and the post's backward runs on it at once.
template <typename T>
void backward_tiles(const PreBackwardParams<T>& p, const PostInputs<T>* post, const PostGradients<T>* post_grads) {
  const BackwardCall<T> call(p, post, post_grads);
  const int64_t tiles = (p.in.N + call.per_tile - 1) / call.per_tile;
  const int threads = thread_count(p.in.threads, tiles);
  // Per-thread partial sums of dphi (padded, [K, mp]), dbias, dalpha; each thread's slice starts
  // on its own cache line so no two threads write one line.
  const int64_t partial_len = call.K * call.mp + call.l.bias_size + call.l.alpha_size;
  const int64_t stride = (partial_len + 15) / 16 * 16;
  std::vector<T> partials(stride * threads, T(0));

#pragma omp parallel num_threads(threads)
  {
    TileBackward<T> thread_tiles(call, partials.data() + stride * omp_get_thread_num());
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t t0 = tile * call.per_tile;
      thread_tiles.run(t0, std::min(p.in.N, t0 + call.per_tile));
    }
    non_temporal_fence();
  }
  sum_partials(call, partials, stride, threads);
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
  if (pre.in.x != x_next)
    throw std::invalid_argument("boundary_forward: pre.in.x must be x_next, the buffer it writes");
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
