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

// V4's rows of `t` along `dim` ([pre | post | res], res by (j = source, k = destination)) in the
// order of phi's columns (res by (k, j)), and back: the res block's n×n pairs transposed, which is
// its own inverse. Views and one concatenation, no index tensor: the op traces under torch.compile.
Tensor swap_res_pairs(const Tensor& t, int64_t dim, int64_t n) {
  std::vector<c10::SymInt> pairs = t.sym_sizes().vec(), flat = pairs;
  pairs[dim] = n, pairs.insert(pairs.begin() + dim + 1, c10::SymInt(n));
  flat[dim] = n * n;
  const Tensor res = t.narrow_symint(dim, 2 * n, n * n).reshape_symint(pairs).transpose(dim, dim + 1).reshape_symint(flat);
  return torch::cat({t.narrow_symint(dim, 0, 2 * n), res}, dim);
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
  return {swap_res_pairs(fn, 0, n).t().contiguous(), swap_res_pairs(base, 0, n), scale.clone()};
}

DeepSeekV4Params to_deepseek_v4(const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  static const char* const names[3] = {"phi", "bias", "alpha"};
  check_connection("mhc.to_deepseek_v4", names, phi, bias, alpha, /*v4=*/false);
  const int64_t n = deepseek_v4_streams(bias.size(0));
  return {swap_res_pairs(phi, 1, n).t().contiguous(), swap_res_pairs(bias, 0, n), alpha.clone()};
}

}  // namespace mhc
