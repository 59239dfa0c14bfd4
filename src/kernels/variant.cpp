// Names of the residual family, and its per-variant facts (stream limits, parameter layouts,
// initial values) dispatched to each variant's header in variants/, and the Sinkhorn–Knopp
// iteration counts each variant takes (see include/mhc/variant.h).
#include "mhc/variant.h"

#include <stdexcept>

#include "coefficients.h"

namespace mhc {

Variant parse_variant(const std::string& name) {
  if (name == "residual") return Variant::residual;
  if (name == "hc") return Variant::hc;
  if (name == "mhc") return Variant::mhc;
  if (name == "mhc-v4" || name == "mhc_v4") return Variant::mhc_v4;
  if (name == "mhc-lite" || name == "mhc_lite") return Variant::mhc_lite;
  if (name == "kromhc") return Variant::kromhc;
  if (name == "ihc") return Variant::ihc;
  throw std::invalid_argument("unknown variant '" + name + "' (accepted: " + variant_names() + ")");
}

const char* variant_name(Variant variant) {
  switch (variant) {
    case Variant::residual: return "residual";
    case Variant::hc: return "hc";
    case Variant::mhc: return "mhc";
    case Variant::mhc_v4: return "mhc-v4";
    case Variant::mhc_lite: return "mhc-lite";
    case Variant::kromhc: return "kromhc";
    case Variant::ihc: return "ihc";
  }
  return "?";
}

const char* variant_names() { return "residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc"; }

int factorial(int n) {
  int f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

using kernels::VariantMath;
using kernels::with_variant;

void check_streams(Variant variant, int64_t n) {
  with_variant(variant, [&](auto k) { VariantMath<decltype(k)::value>::check_streams(n); });
}

SinkhornIters sinkhorn_iters_range(Variant variant) {
  if (variant == Variant::mhc_v4) return {1, kMaxSinkhornIters, "its softmax is the first normalisation"};
  return {0, kMaxSinkhornIters, nullptr};
}

void check_sinkhorn_iters(Variant variant, int64_t t) {
  const SinkhornIters range = sinkhorn_iters_range(variant);
  if (t < 0 || t > range.max)
    throw std::invalid_argument("sinkhorn_iters must be in [0, " + std::to_string(range.max) + "], got " +
                                std::to_string(t));
  if (t < range.min)
    throw std::invalid_argument(std::string(variant_name(variant)) + " needs sinkhorn_iters in [" +
                                std::to_string(range.min) + ", " + std::to_string(range.max) + "] (" + range.why_min +
                                "), got " + std::to_string(t));
}

Layout layout(Variant variant, int64_t n, int64_t C) {
  check_streams(variant, n);
  return with_variant(variant, [&](auto k) { return VariantMath<decltype(k)::value>::layout(n, C); });
}

ShapeNames shape_names(Variant variant) {
  return with_variant(variant, [](auto k) { return VariantMath<decltype(k)::value>::shape_names; });
}

void initial_bias_and_alpha(Variant variant, int64_t n, int64_t lead, double stream_logit, double res_off_logit, float* bias,
                            float* alpha) {
  with_variant(variant, [&](auto k) {
    VariantMath<decltype(k)::value>::initial_bias_and_alpha(n, lead, stream_logit, res_off_logit, bias, alpha);
  });
}

}  // namespace mhc
