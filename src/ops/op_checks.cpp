// The argument checks of the mhc ops (op_args.h, mhc/ops.h): every public op's and reachable
// backward half's inputs get a one-line error naming the tensor, its shape or dtype, and what is
// accepted, before any kernel reads them. Shared by the CPU (op_cpu.cpp) and CUDA (op_cuda.cpp)
// implementations.
#include <torch/torch.h>

#include <sstream>

#include "mhc/ops.h"
#include "op_args.h"

namespace mhc {

using torch::Tensor;

VariantSpec ops::variant_or_throw(c10::string_view spec) {
  try {
    return parse_variant_spec(std::string(spec));
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "mhc.pre: ", e.what());
  }
}

namespace {

std::string shape_of(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_storage(const char* op, const Tensor& x) {
  const auto d = x.scalar_type();
  TORCH_CHECK_TYPE(d == torch::kFloat || d == torch::kDouble || d == torch::kBFloat16, op,
                   ": x must be float32, float64 or bfloat16, got ", d);
}

// `name` must have dtype `expected` — x's own, or its coefficient dtype — and x's device.
void check_like(const char* op, const char* name, const Tensor& t, const Tensor& x, torch::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, op, ": ", name, " must be ", expected, " when x is ", x.scalar_type(),
                   x.scalar_type() == torch::kBFloat16 ? " (bfloat16 storage keeps parameters and coefficients in float32)"
                                                      : " (all inputs share one dtype)",
                   ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

void check_shape(const char* op, const char* name, const Tensor& t, c10::IntArrayRef expected, const char* what) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must be ", what, " = ", expected, ", got ",
                    shape_of(t));
}

}  // namespace

torch::ScalarType coefficient_dtype(torch::ScalarType x) { return x == torch::kBFloat16 ? torch::kFloat : x; }

Tensor projection_weights(const Tensor& phi, torch::ScalarType x) {
  return x == torch::kBFloat16 ? phi.to(torch::kBFloat16).to(torch::kFloat) : phi;
}

Layout check_pre_args(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Variant variant,
                      int64_t sinkhorn_iters, const VariantOptions& options) {
  const char* op = "mhc.pre";
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be 3-D [N, n, C] (tokens, streams, width), got shape ",
                    shape_of(x));
  check_storage(op, x);
  for (auto [name, t] : {std::pair{"phi", &phi}, {"bias", &bias}, {"alpha", &alpha}})
    check_like(op, name, *t, x, coefficient_dtype(x.scalar_type()));
  try {
    check_sinkhorn_iters(variant, sinkhorn_iters);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, op, ": ", e.what());
  }
  const int64_t n = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(C >= 1, op, ": x's width C must be at least 1, got shape ", shape_of(x));
  Layout l;
  try {
    l = layout(variant, n, C, options);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, op, ": ", e.what(), " (x has shape ", shape_of(x), ")");
  }
  if (variant == Variant::residual) {
    TORCH_CHECK_VALUE(phi.numel() == 0 && bias.numel() == 0 && alpha.numel() == 0, op,
                      ": residual has no parameters; phi, bias and alpha must be empty");
    return l;
  }
  const ShapeNames expected = shape_names(variant);
  check_shape(op, "phi", phi, {l.proj_rows, l.proj_cols}, expected.phi);
  check_shape(op, "bias", bias, {l.bias_size}, expected.bias);
  check_shape(op, "alpha", alpha, {l.alpha_size}, expected.alpha);
  return l;
}

void check_post_args(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  const char* op = "mhc.post";
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be 3-D [N, n, C], got shape ", shape_of(x));
  check_storage(op, x);
  check_like(op, "y", y, x, x.scalar_type());
  for (auto [name, t] : {std::pair{"H_post", &H_post}, {"H_res", &H_res}})
    check_like(op, name, *t, x, coefficient_dtype(x.scalar_type()));
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(n >= 1 && n <= kMaxStreams, op, ": n must be 1 to ", kMaxStreams, ", got x of shape ",
                    shape_of(x));
  check_shape(op, "y", y, {N, C}, "[N, C]");
  check_shape(op, "H_post", H_post, {N, n}, "[N, n]");
  check_shape(op, "H_res", H_res, {N, n, n}, "[N, n, n]");
}

void ops::check_pre_bwd_args(const Tensor& dh, const c10::optional<Tensor>& dH_pre, const c10::optional<Tensor>& dH_post,
                             const c10::optional<Tensor>& dH_res, const Tensor& x, const Tensor& phi, const Tensor& bias,
                             const Tensor& alpha, const Tensor& proj, const Tensor& rms, const VariantSpec& spec,
                             int64_t sinkhorn_iters, const c10::optional<Tensor>& dx_add) {
  const char* op = "mhc.pre_bwd";
  const Layout l = check_pre_args(x, phi, bias, alpha, spec.variant, sinkhorn_iters, spec.options);
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2);
  const auto coefficients = coefficient_dtype(x.scalar_type());
  check_like(op, "dh", dh, x, x.scalar_type());
  check_shape(op, "dh", dh, {N, C}, "[N, C]");
  check_like(op, "proj", proj, x, coefficients);
  check_shape(op, "proj", proj, {N, l.proj_per_token, l.proj_cols}, "pre_fwd's proj [N, P, m]");
  check_like(op, "rms", rms, x, coefficients);
  check_shape(op, "rms", rms, {N, l.proj_per_token}, "pre_fwd's rms [N, P]");
  const std::vector<int64_t> nn = {N, n, n};
  for (auto [name, g, shape, what] : {std::tuple{"dH_pre", &dH_pre, std::vector<int64_t>{N, n}, "[N, n]"},
                                      {"dH_post", &dH_post, std::vector<int64_t>{N, n}, "[N, n]"},
                                      {"dH_res", &dH_res, nn, "[N, n, n]"}}) {
    if (!g->has_value() || !(*g)->defined()) continue;
    check_like(op, name, **g, x, coefficients);
    check_shape(op, name, **g, shape, what);
  }
  if (dx_add.has_value() && dx_add->defined()) {
    check_like(op, "dx_add", *dx_add, x, x.scalar_type());
    check_shape(op, "dx_add", *dx_add, x.sizes(), "x's shape [N, n, C]");
  }
}

void ops::check_post_bwd_args(const Tensor& dout, const Tensor& x, const Tensor& y, const Tensor& H_post,
                              const Tensor& H_res) {
  check_post_args(x, y, H_post, H_res);
  check_like("mhc.post_bwd", "dout", dout, x, x.scalar_type());
  check_shape("mhc.post_bwd", "dout", dout, x.sizes(), "x's shape [N, n, C]");
}

}  // namespace mhc
