// Conversions between DeepSeek-V4's fn/base/scale and mhc-v4's phi/bias/alpha (mhc/deepseek_v4.h),
// and their ops torch.ops.mhc.from_deepseek_v4 / to_deepseek_v4 (registered in op_schema.cpp).
#include "mhc/deepseek_v4.h"

#include <array>
#include <sstream>

#include "mhc/variant.h"

namespace mhc {

using torch::Tensor;

int64_t deepseek_v4_streams(int64_t rows) {
  for (int64_t n = 1; n <= kMaxStreams; ++n)
    if ((2 + n) * n == rows) return n;
  return 0;
}

namespace {

std::string shape_of(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// The order of V4's rows in phi's columns (and back: swapping (j, k) is its own inverse):
// pre and post in place, res column 2n + k·n + j ← V4 row 2n + j·n + k.
Tensor v4_order(int64_t n, const torch::Device& device) {
  std::vector<int64_t> order(static_cast<size_t>((2 + n) * n));
  for (int64_t m = 0; m < 2 * n; ++m) order[m] = m;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j) order[2 * n + k * n + j] = 2 * n + j * n + k;
  return torch::tensor(order, torch::kLong).to(device);
}

void check_dtype(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, op, ": ", name,
                   " must be float32 (DeepSeek-V4 keeps its hyper-connection tensors in float32) or float64, got ",
                   t.scalar_type());
}

// Checks one connection's three tensors in either layout (V4's fn/base/scale, or phi/bias/alpha:
// `names`); n comes from the vector's (2+n)·n entries.
void check_connection(const char* op, const char* const names[3], const Tensor& weights, const Tensor& vector,
                      const Tensor& gains, bool v4) {
  const std::array<const Tensor*, 3> tensors{&weights, &vector, &gains};
  for (size_t i = 0; i < 3; ++i) check_dtype(op, names[i], *tensors[i]);
  TORCH_CHECK_TYPE(weights.scalar_type() == vector.scalar_type() && vector.scalar_type() == gains.scalar_type(), op,
                   ": ", names[0], ", ", names[1], " and ", names[2], " must share one dtype, got ",
                   weights.scalar_type(), ", ", vector.scalar_type(), " and ", gains.scalar_type());
  TORCH_CHECK_VALUE(weights.device() == vector.device() && vector.device() == gains.device(), op, ": ", names[0], ", ",
                    names[1], " and ", names[2], " must be on one device, got ", weights.device(), ", ",
                    vector.device(), " and ", gains.device());
  const int64_t n = vector.dim() == 1 ? deepseek_v4_streams(vector.size(0)) : 0;
  TORCH_CHECK_VALUE(n > 0, op, ": ", names[1], " must be [(2+n)·n] for n in [1, ", kMaxStreams,
                    "] (24 at n = 4), got ", shape_of(vector));
  const int64_t rows = (2 + n) * n;
  const int64_t row_dim = v4 ? 0 : 1;  // fn [rows, n·C], phi [n·C, rows]
  const bool ok = weights.dim() == 2 && weights.size(row_dim) == rows && weights.size(1 - row_dim) >= n &&
                  weights.size(1 - row_dim) % n == 0;
  const std::string expected = v4 ? "[" + std::to_string(rows) + ", n·C]" : "[n·C, " + std::to_string(rows) + "]";
  TORCH_CHECK_VALUE(ok, op, ": ", names[0], " must be ", expected, " for n = ", n, " (from ", names[1], " ",
                    shape_of(vector), ") and a width C ≥ 1, got ", shape_of(weights));
  TORCH_CHECK_VALUE(gains.sizes() == c10::IntArrayRef{3}, op, ": ", names[2], " must be [3] (pre, post, ",
                    v4 ? "comb" : "res", "), got ", shape_of(gains));
}

}  // namespace

ConnectionParams from_deepseek_v4(const Tensor& fn, const Tensor& base, const Tensor& scale) {
  static const char* const names[3] = {"fn", "base", "scale"};
  check_connection("mhc.from_deepseek_v4", names, fn, base, scale, /*v4=*/true);
  const int64_t n = deepseek_v4_streams(base.size(0));
  const Tensor order = v4_order(n, fn.device());
  return {fn.index_select(0, order).t().contiguous(), base.index_select(0, order), scale.clone()};
}

DeepSeekV4Params to_deepseek_v4(const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  static const char* const names[3] = {"phi", "bias", "alpha"};
  check_connection("mhc.to_deepseek_v4", names, phi, bias, alpha, /*v4=*/false);
  const int64_t n = deepseek_v4_streams(bias.size(0));
  const Tensor order = v4_order(n, phi.device());
  return {phi.index_select(1, order).t().contiguous(), bias.index_select(0, order), alpha.clone()};
}

}  // namespace mhc
