// Names of the residual family, and its per-variant facts (stream limits, parameter layouts,
// initial values) dispatched to each variant's header in variants/, the options of the orthogonal
// variants and the spec strings that carry them, and the Sinkhorn–Knopp iteration counts each
// variant takes (see include/mhc/variant.h).
#include "mhc/variant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <vector>

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
  if (name == "jpmhc") return Variant::jpmhc;
  if (name == "gomhc") return Variant::gomhc;
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
    case Variant::jpmhc: return "jpmhc";
    case Variant::gomhc: return "gomhc";
  }
  return "?";
}

const char* variant_names() { return "residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc"; }

namespace {

// The options a variant takes, as the spec names them.
std::vector<std::string> option_keys(Variant variant) {
  if (variant == Variant::jpmhc) return {"cayley_iters", "cayley_scale"};
  if (variant == Variant::gomhc) return {"block_size"};
  return {};
}

std::string joined(const std::vector<std::string>& words) {
  std::string out;
  for (const std::string& w : words) out += (out.empty() ? "" : ", ") + w;
  return out;
}

// std::invalid_argument unless `key` is one of the variant's options.
void check_option_key(Variant variant, const std::string& key) {
  const std::vector<std::string> keys = option_keys(variant);
  if (std::find(keys.begin(), keys.end(), key) == keys.end())
    throw std::invalid_argument(std::string(variant_name(variant)) + " takes no option '" + key + "' (accepted: " +
                                (keys.empty() ? "none" : joined(keys)) + ")");
}

// One "key=value" of a spec into options; std::invalid_argument naming what is wrong.
void set_option(Variant variant, const std::string& item, VariantOptions& options) {
  const size_t eq = item.find('=');
  const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
  check_option_key(variant, key);
  try {
    size_t used = 0;
    if (key == "cayley_scale") {
      options.cayley_scale = std::stod(value, &used);
    } else {
      const int number = std::stoi(value, &used);
      (key == "block_size" ? options.block_size : options.cayley_iters) = number;
    }
    if (used != value.size()) throw std::invalid_argument("trailing characters");
  } catch (const std::exception&) {
    throw std::invalid_argument("option " + key + " of " + variant_name(variant) + " needs a number, got '" + value +
                                "'");
  }
}

}  // namespace

VariantSpec parse_variant_spec(const std::string& spec) {
  const size_t colon = spec.find(':');
  VariantSpec out{parse_variant(spec.substr(0, colon)), {}};
  if (colon == std::string::npos) return out;
  std::stringstream items(spec.substr(colon + 1));
  for (std::string item; std::getline(items, item, ':');) set_option(out.variant, item, out.options);
  check_variant_options(out.variant, out.options);
  return out;
}

std::string variant_spec(Variant variant, const VariantOptions& options) {
  const VariantOptions defaults;
  std::vector<std::string> items;
  if (options.block_size != defaults.block_size) items.push_back("block_size=" + std::to_string(options.block_size));
  if (options.cayley_iters != defaults.cayley_iters)
    items.push_back("cayley_iters=" + std::to_string(options.cayley_iters));
  if (options.cayley_scale != defaults.cayley_scale) {
    char scale[32];
    std::snprintf(scale, sizeof scale, "%.17g", options.cayley_scale);  // round-trips the double
    items.push_back(std::string("cayley_scale=") + scale);
  }
  std::string out = variant_name(variant);
  for (const std::string& item : items) out += ":" + item;
  return out;
}

void check_variant_options(Variant variant, const VariantOptions& options) {
  const VariantOptions defaults;  // an option left at its default is no option set
  if (options.block_size != defaults.block_size) check_option_key(variant, "block_size");
  if (options.cayley_iters != defaults.cayley_iters) check_option_key(variant, "cayley_iters");
  if (options.cayley_scale != defaults.cayley_scale) check_option_key(variant, "cayley_scale");
  if (options.block_size != 1 && options.block_size != 2)
    throw std::invalid_argument("gomhc takes block_size 1 or 2, got " + std::to_string(options.block_size));
  if (options.cayley_iters < 0 || options.cayley_iters > kMaxCayleyIters)
    throw std::invalid_argument("jpmhc takes cayley_iters in [0, " + std::to_string(kMaxCayleyIters) +
                                "] (0 = the exact Cayley map), got " + std::to_string(options.cayley_iters));
  if (!std::isfinite(options.cayley_scale) || options.cayley_scale <= 0)
    throw std::invalid_argument("jpmhc takes a finite cayley_scale > 0, got " + std::to_string(options.cayley_scale));
}

int factorial(int n) {
  int f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

using kernels::VariantMath;
using kernels::with_variant;

void check_streams(Variant variant, int64_t n, const VariantOptions& options) {
  check_variant_options(variant, options);
  with_variant(variant, [&](auto k) { VariantMath<decltype(k)::value>::check_streams(n, options); });
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

Layout layout(Variant variant, int64_t n, int64_t C, const VariantOptions& options) {
  check_streams(variant, n, options);
  return with_variant(variant, [&](auto k) { return VariantMath<decltype(k)::value>::layout(n, C, options); });
}

ShapeNames shape_names(Variant variant) {
  return with_variant(variant, [](auto k) { return VariantMath<decltype(k)::value>::shape_names; });
}

void initial_bias_and_alpha(Variant variant, int64_t n, int64_t lead, double stream_logit, double res_off_logit,
                            float* bias, float* alpha, const VariantOptions& options) {
  with_variant(variant, [&](auto k) {
    VariantMath<decltype(k)::value>::initial_bias_and_alpha(n, lead, stream_logit, res_off_logit, bias, alpha, options);
  });
}

}  // namespace mhc
