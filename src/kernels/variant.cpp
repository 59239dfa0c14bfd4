// Names of the residual family, and its per-variant facts (stream limits, parameter layouts,
// initial values) dispatched to each variant's header in variants/ (see include/mhc/variant.h).
#include "mhc/variant.h"

#include <stdexcept>

#include "coefficients.h"

namespace mhc {

Kind parse_kind(const std::string& name) {
  if (name == "residual") return Kind::residual;
  if (name == "hc") return Kind::hc;
  if (name == "mhc") return Kind::mhc;
  if (name == "mhc-lite" || name == "mhc_lite") return Kind::mhc_lite;
  if (name == "kromhc") return Kind::kromhc;
  if (name == "ihc") return Kind::ihc;
  throw std::invalid_argument("unknown residual kind '" + name + "' (accepted: " + kind_names() + ")");
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::residual: return "residual";
    case Kind::hc: return "hc";
    case Kind::mhc: return "mhc";
    case Kind::mhc_lite: return "mhc-lite";
    case Kind::kromhc: return "kromhc";
    case Kind::ihc: return "ihc";
  }
  return "?";
}

const char* kind_names() { return "residual, hc, mhc, mhc-lite, kromhc, ihc"; }

int factorial(int n) {
  int f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

using kernels::VariantMath;
using kernels::with_variant;

void check_streams(Kind kind, int64_t n) {
  with_variant(kind, [&](auto k) { VariantMath<decltype(k)::value>::check_streams(n); });
}

Layout layout(Kind kind, int64_t n, int64_t C) {
  check_streams(kind, n);
  return with_variant(kind, [&](auto k) { return VariantMath<decltype(k)::value>::layout(n, C); });
}

ShapeNames shape_names(Kind kind) {
  return with_variant(kind, [](auto k) { return VariantMath<decltype(k)::value>::shape_names; });
}

void initial_bias_and_alpha(Kind kind, int64_t n, int64_t lead, double stream_logit, double res_off_logit, float* bias,
                            float* alpha) {
  with_variant(kind, [&](auto k) {
    VariantMath<decltype(k)::value>::initial_bias_and_alpha(n, lead, stream_logit, res_off_logit, bias, alpha);
  });
}

}  // namespace mhc
