// The coefficients of a tile of tokens for pre's kernels (pre.cpp), one object per thread over the
// call's view of the parameters (CallVariant): from the projections g and norms r to H_pre, H_post,
// H_res forward, and back to dg, dr, dbias, dalpha (../coefficients.h's per-token math). Token by
// token, or for the Sinkhorn–Knopp variants W tokens at once, one per vector lane (sinkhorn_lanes.h).
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "../coefficients.h"
#include "cpu_kernels.h"
#include "simd.h"
#include "sinkhorn_lanes.h"

namespace mhc::cpu {

// What every token of one call shares: the shared coefficient view plus the CPU's own sizes and
// the storage behind the permutation table.
template <typename T>
struct CallVariant : kernels::CoeffVariant<T> {
  int64_t C, K;
  bool centred;  // a LayerNorm read (Layout::centred)
  std::vector<int> perm_storage;

  explicit CallVariant(const PreInputs<T>& in) {
    const Layout l = layout(in.variant, in.n, in.C, in.options);
    this->variant = in.variant;
    this->n = in.n;
    this->t = in.sinkhorn_iters;
    this->options = in.options;
    this->bias = in.bias;
    this->alpha = in.alpha;
    this->m = l.proj_cols;
    this->P = l.proj_per_token;
    this->res_count = l.res_size;
    C = in.C;
    K = l.proj_rows;
    centred = l.centred;
    perm_storage = kernels::permutation_table(in.variant, in.n);
    this->perms = perm_storage.data();
  }
};

// Per thread: the coefficients of one tile's tokens, forward and backward; token by token, or for
// the Sinkhorn–Knopp variants W tokens at a time through SinkhornLanes (the σ gates and the chain
// rule through the logits per token, H_res per group). Padding lanes past the tile's last token
// repeat it and are discarded; nothing is accumulated for them.
template <typename T>
class TileCoefficients {
 public:
  static constexpr int W = Simd<T>::W;

  explicit TileCoefficients(const CallVariant<T>& v)
      : v_(v), scratch_(kernels::scratch_size(v)), dg_token_(v.P * v.m), dr_(std::max<int64_t>(v.P, 1)),
        zeros_(v.n * v.n, T(0)) {
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
        kernels::coefficients(v_, proj + tok * v_.P * v_.m, rms + tok * v_.P, scratch_.data(), cf_[0]);
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
        if (lanes_)
          return backward_lanes<Math>(t0, t1, proj, rms, dpre, H_pre, dbias, dalpha, dpost_of, dres_of, finish);
      }
      for (int64_t tok = t0; tok < t1; ++tok) {
        kernels::coefficients_backward(v_, proj + tok * v_.P * v_.m, rms + tok * v_.P, dpre + (tok - t0) * n,
                                       dpost_of(tok), dres_of(tok), scratch_.data(), dg_token_.data(), dr_.data(),
                                       dbias, dalpha, H_pre + (tok - t0) * n);
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

  void store(int64_t tok, const kernels::Coeffs<T>& cf, T* H_pre, T* H_post, T* H_res) const {
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
  kernels::Coeffs<T> cf_[W];
  std::optional<SinkhornLanes<T>> lanes_;
};

}  // namespace mhc::cpu
