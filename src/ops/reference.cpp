// Plain-LibTorch reference of every variant (DESIGN.md §1–2), written for reading, not speed.
//
// This is the specification the fused kernels are tested against and the "eager" side of
// `mhc bench layer`. Autograd provides the backward. It follows DESIGN.md literally: the
// projection g = v·phi is divided by r after the product, Sinkhorn–Knopp normalises columns
// first and rows last, on logarithms (exact at any logit scale). bfloat16 storage
// (mhc/ops.h) computes in float32 on the bf16 values, with phi read as bf16.
#include <algorithm>
#include <numeric>

#include "mhc/ops.h"

namespace mhc::reference {

using torch::Tensor;
namespace idx = torch::indexing;

namespace {
// SK_t(exp(H̃)) written on logarithms: each normalisation subtracts a log-sum-exp, which is the same
// function at every logit scale (the linear form underflows to all-zero rows at sharp logits).
Tensor sinkhorn(const Tensor& logits, int64_t t) {  // logits [N, n, n]
  if (t == 0) return logits.exp();
  Tensor L = logits;
  for (int64_t it = 0; it < t; ++it) {
    L = L - L.logsumexp(/*dim=*/1, /*keepdim=*/true);  // columns
    L = L - L.logsumexp(/*dim=*/2, /*keepdim=*/true);  // rows
  }
  return L.exp();
}
}  // namespace

Tensor permutation_matrices(int64_t n, torch::ScalarType dtype) {
  std::vector<int64_t> sigma(n);
  std::iota(sigma.begin(), sigma.end(), 0);
  Tensor P = torch::zeros({factorial(static_cast<int>(n)), n, n}, torch::TensorOptions().dtype(dtype));
  int64_t k = 0;
  do {
    for (int64_t i = 0; i < n; ++i) P[k][i][sigma[i]] = 1;
    ++k;
  } while (std::next_permutation(sigma.begin(), sigma.end()));
  return P;
}

namespace {

Tensor math(const Tensor& storage) { return storage.to(coefficient_dtype(storage.scalar_type())); }

// One variant's coefficients of every token, in the order of the kernels' variants/*.h. x [N, n, C]
// in the math dtype, phi as projection_weights makes it.
struct Coefficients {
  Tensor H_pre, H_post, H_res;
};

Coefficients residual_coefficients(const Tensor& x) {
  const int64_t N = x.size(0);
  return {x.new_ones({N, 1}), x.new_ones({N, 1}), x.new_ones({N, 1, 1})};
}

// Per-stream RMSNorm, then x̄_i·[w_pre | w_post | W_res] through tanh.
Coefficients hc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  const int64_t n = x.size(1);
  const Tensor r = (x.square().mean(-1, true) + kRmsEps).sqrt();  // [N, n, 1]
  const Tensor u = (x.matmul(phi) / r).tanh();                     // [N, n, 2 + n]
  const Tensor a_pre = bias.slice(0, 0, n), b_post = bias.slice(0, n, 2 * n);
  const Tensor A_res = bias.slice(0, 2 * n).view({n, n});
  return {a_pre + alpha[0] * u.select(2, 0), b_post + alpha[1] * u.select(2, 1),
          A_res + alpha[0] * u.slice(2, 2).transpose(1, 2)};  // H_res [N, k, i] = tanh(x̄_i·W_res)[k]
}

// The σ family: one projection of the RMS-normalised flattened state, σ and 2σ for pre and post;
// `mixing` maps the res logits [N, res] to H_res [N, n, n] (identity-HC has none, and no α_res);
// pre_eps is added to H_pre (DeepSeek-V4).
template <typename Mixing>
Coefficients sigma_family_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                       Mixing mixing, double pre_eps = 0) {
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2);
  const Tensor v = x.reshape({N, n * C});
  const Tensor r = (v.square().mean(-1, true) + kRmsEps).sqrt();  // [N, 1]
  const Tensor g = v.matmul(phi) / r;                              // [N, m]
  const Tensor pre_logits = alpha[0] * g.slice(1, 0, n) + bias.slice(0, 0, n);
  const Tensor post_logits = alpha[1] * g.slice(1, n, 2 * n) + bias.slice(0, n, 2 * n);
  const Tensor res_logits =
      g.size(1) > 2 * n ? alpha[2] * g.slice(1, 2 * n) + bias.slice(0, 2 * n) : g.new_zeros({N, 0});
  return {pre_logits.sigmoid() + pre_eps, 2 * post_logits.sigmoid(), mixing(res_logits)};
}

Coefficients mhc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                              int64_t sinkhorn_iters) {
  const int64_t N = x.size(0), n = x.size(1);
  return sigma_family_coefficients(x, phi, bias, alpha, [&](const Tensor& res_logits) {
    return sinkhorn(res_logits.view({N, n, n}), sinkhorn_iters);
  });
}

// DeepSeek-V4 (DESIGN.md §9), written in V4's orientation: comb [N, j, k] = H̃_resᵀ, a softmax over
// the destination k plus eps, then 2t − 1 normalisations by (sum + eps), ending on the source j;
// H_res = combᵀ. The linear form is exact here at any logit scale: the softmax is shifted by its
// max, and after the floor every entry is at least eps.
Coefficients mhc_v4_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                 int64_t sinkhorn_iters) {
  const int64_t N = x.size(0), n = x.size(1);
  const double eps = kDeepSeekV4Eps;
  return sigma_family_coefficients(
      x, phi, bias, alpha,
      [&](const Tensor& res_logits) {
        Tensor comb = res_logits.view({N, n, n}).transpose(1, 2).softmax(2) + eps;
        comb = comb / (comb.sum(1, true) + eps);
        for (int64_t it = 1; it < sinkhorn_iters; ++it) {
          comb = comb / (comb.sum(2, true) + eps);
          comb = comb / (comb.sum(1, true) + eps);
        }
        return comb.transpose(1, 2).contiguous();
      },
      eps);
}

// Σ_k softmax(z)_k·P_k over the f! permutation matrices of f items: [N, f!] -> [N, f, f].
Tensor permutation_mixture(const Tensor& logits, int64_t f) {
  const Tensor P = permutation_matrices(f, logits.scalar_type()).to(logits.device()).view({-1, f * f});
  return logits.softmax(-1).matmul(P).view({logits.size(0), f, f});
}

Coefficients mhc_lite_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  const int64_t n = x.size(1);
  return sigma_family_coefficients(x, phi, bias, alpha,
                                   [&](const Tensor& res_logits) { return permutation_mixture(res_logits, n); });
}

// H_res = U_1 ⊗ … ⊗ U_K, U_k an mHC-lite mixture over f_k items; n's factors are its 2s, then its 3s.
Coefficients kromhc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  const int64_t N = x.size(0), n = x.size(1);
  return sigma_family_coefficients(x, phi, bias, alpha, [&](const Tensor& res_logits) {
    Tensor H = res_logits.new_ones({N, 1, 1});
    int64_t rest = n, offset = 0;
    for (int64_t f : {2, 3})
      for (; rest % f == 0; rest /= f) {
        const int64_t perms = f == 2 ? 2 : 6;
        const Tensor U = permutation_mixture(res_logits.slice(1, offset, offset + perms), f);
        offset += perms;
        const int64_t s = H.size(1);  // (H ⊗ U)[a·f + b, c·f + d] = H[a, c]·U[b, d]
        H = (H.view({N, s, 1, s, 1}) * U.view({N, 1, f, 1, f})).reshape({N, s * f, s * f});
      }
    return H;
  });
}

// The Cayley map (I − B)⁻¹(I + B) of skew B [N, d, d] by a linear solve, or with iters > 0 JPmHC's
// fixed-point steps Y ← I + B·(I + Y) from Y = I + 2B.
Tensor cayley(const Tensor& B, int64_t iters) {
  const Tensor I = torch::eye(B.size(1), B.options()).expand_as(B);
  if (iters == 0) return torch::linalg_solve(I - B, I + B);
  Tensor Y = I + 2 * B;
  for (int64_t i = 0; i < iters; ++i) Y = I + B.matmul(I + Y);
  return Y;
}

// go-mHC: A skew from the strict upper triangle (row-major), O = (I − A)(I + A)⁻¹ = Cayley(−A),
// H_res the block means of O's squares over s×s blocks.
Coefficients gomhc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                const VariantOptions& options) {
  const int64_t N = x.size(0), n = x.size(1), s = options.block_size, d = n * s;
  return sigma_family_coefficients(x, phi, bias, alpha, [&](const Tensor& theta) {
    const Tensor upper = torch::triu_indices(d, d, 1, torch::TensorOptions().device(x.device()));
    Tensor A = theta.new_zeros({N, d * d}).index_copy(1, upper[0] * d + upper[1], theta).view({N, d, d});
    A = A - A.transpose(1, 2);
    const Tensor O = cayley(-A, 0);
    return O.square().view({N, n, s, n, s}).sum({2, 4}) / double(s);
  });
}

// JPmHC: a LayerNorm read (no affine), three n×n logit blocks; H_pre the column means of the pre
// block's row softmaxes, H_post the row sums of the post block's column softmaxes, H_res the
// Cayley map of (β/2)·(Z − Zᵀ).
Coefficients jpmhc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                const VariantOptions& options) {
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2);
  const Tensor v = x.reshape({N, n * C});
  const Tensor centred = v - v.mean(-1, true);
  const Tensor u = centred / (centred.square().mean(-1, true) + kRmsEps).sqrt();
  const Tensor g = u.matmul(phi);  // [N, 3n²]
  auto block = [&](int64_t k) {
    return (alpha[k] * g.slice(1, k * n * n, (k + 1) * n * n) + bias.slice(0, k * n * n, (k + 1) * n * n)).view({N, n, n});
  };
  const Tensor Z = block(2);
  const Tensor B = 0.5 * options.cayley_scale * (Z - Z.transpose(1, 2));
  return {block(0).softmax(2).mean(1), block(1).softmax(1).sum(2), cayley(B, options.cayley_iters)};
}

Coefficients ihc_coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  const int64_t N = x.size(0), n = x.size(1);
  return sigma_family_coefficients(x, phi, bias, alpha, [&](const Tensor&) {
    return torch::eye(n, x.options()).expand({N, n, n}).contiguous();
  });
}

Coefficients coefficients(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Variant variant,
                          int64_t sinkhorn_iters, const VariantOptions& options) {
  switch (variant) {
    case Variant::hc: return hc_coefficients(x, phi, bias, alpha);
    case Variant::mhc: return mhc_coefficients(x, phi, bias, alpha, sinkhorn_iters);
    case Variant::mhc_v4: return mhc_v4_coefficients(x, phi, bias, alpha, sinkhorn_iters);
    case Variant::mhc_lite: return mhc_lite_coefficients(x, phi, bias, alpha);
    case Variant::kromhc: return kromhc_coefficients(x, phi, bias, alpha);
    case Variant::ihc: return ihc_coefficients(x, phi, bias, alpha);
    case Variant::jpmhc: return jpmhc_coefficients(x, phi, bias, alpha, options);
    case Variant::gomhc: return gomhc_coefficients(x, phi, bias, alpha, options);
    case Variant::residual: break;
  }
  return residual_coefficients(x);
}

}  // namespace

PreOutput pre(const Tensor& x_stored, const Tensor& phi_master, const Tensor& bias, const Tensor& alpha, Variant variant,
              int64_t sinkhorn_iters, const VariantOptions& options) {
  check_pre_args(x_stored, phi_master, bias, alpha, variant, sinkhorn_iters, options);
  const Tensor x = math(x_stored);
  const Coefficients c = coefficients(x, projection_weights(phi_master, x_stored.scalar_type()), bias, alpha, variant,
                                      sinkhorn_iters, options);
  const Tensor h = (c.H_pre.unsqueeze(-1) * x).sum(1).to(x_stored.scalar_type());
  return {h, c.H_pre, c.H_post, c.H_res, Tensor(), Tensor()};
}

Tensor post(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  check_post_args(x, y, H_post, H_res);
  return (H_res.matmul(math(x)) + H_post.unsqueeze(-1) * math(y).unsqueeze(1)).to(x.scalar_type());
}

PreOutput boundary(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res, const Tensor& phi,
                   const Tensor& bias, const Tensor& alpha, Variant variant, int64_t sinkhorn_iters,
                   const VariantOptions& options) {
  const Tensor x_next = reference::post(x, y, H_post, H_res);
  PreOutput out = reference::pre(x_next, phi, bias, alpha, variant, sinkhorn_iters, options);
  out.x_next = x_next;
  return out;
}

}  // namespace mhc::reference
