// LibTorch binding of the fused kernels: validation, registration, autograd.
//
// The ops are declared once (TORCH_LIBRARY) and implemented per dispatch key: CPU runs the
// framework-free kernels of src/kernels/cpu, Autograd wraps `pre`/`post` in autograd Functions
// whose forward saves what the fused backward needs (the raw projections g and norms r, a few
// numbers per token) and whose backward calls the fused backward ops. Because everything goes
// through the dispatcher, the same shared library gives autograd to the C++ trainer and to Python
// (torch.ops.load_library), and a CUDA backend only adds a TORCH_LIBRARY_IMPL(mhc, CUDA, …).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <sstream>

#include "../kernels/cpu/cpu_kernels.h"
#include "mhc/ops.h"
#include "op_args.h"

namespace mhc {

using torch::Tensor;
using ops::kind_or_throw;
using ops::ptr_or_null;

Kind ops::kind_or_throw(c10::string_view name) {
  try {
    return parse_kind(std::string(name));
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

Layout check_pre_args(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Kind kind,
                      int64_t sinkhorn_iters) {
  const char* op = "mhc.pre";
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be 3-D [N, n, C] (tokens, streams, width), got shape ",
                    shape_of(x));
  check_storage(op, x);
  for (auto [name, t] : {std::pair{"phi", &phi}, {"bias", &bias}, {"alpha", &alpha}})
    check_like(op, name, *t, x, coefficient_dtype(x.scalar_type()));
  TORCH_CHECK_VALUE(sinkhorn_iters >= 0 && sinkhorn_iters <= kMaxSinkhornIters, op,
                    ": sinkhorn_iters must be in [0, ", kMaxSinkhornIters, "], got ", sinkhorn_iters);
  const int64_t n = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(C >= 1, op, ": x's width C must be at least 1, got shape ", shape_of(x));
  Layout l;
  try {
    l = layout(kind, n, C);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, op, ": ", e.what(), " (x has shape ", shape_of(x), ")");
  }
  if (kind == Kind::residual) {
    TORCH_CHECK_VALUE(phi.numel() == 0 && bias.numel() == 0 && alpha.numel() == 0, op,
                      ": residual has no parameters; phi, bias and alpha must be empty");
    return l;
  }
  const bool hc = kind == Kind::hc, lite = kind == Kind::mhc_lite;
  check_shape(op, "phi", phi, {l.proj_rows, l.proj_cols},
              hc ? "[C, n + 2] for hc" : lite ? "[n*C, 2n + n!] for mhc-lite" : "[n*C, 2n + n*n] for mhc");
  check_shape(op, "bias", bias, {l.bias_size}, lite ? "[2n + n!]" : "[2n + n*n]");
  check_shape(op, "alpha", alpha, {l.alpha_size}, hc ? "[2] (s_alpha, s_beta)" : "[3] (pre, post, res)");
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
                             const Tensor& alpha, const Tensor& proj, const Tensor& rms, Kind kind,
                             int64_t sinkhorn_iters) {
  const char* op = "mhc.pre_bwd";
  const Layout l = check_pre_args(x, phi, bias, alpha, kind, sinkhorn_iters);
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
}

void ops::check_post_bwd_args(const Tensor& dout, const Tensor& x, const Tensor& y, const Tensor& H_post,
                              const Tensor& H_res) {
  check_post_args(x, y, H_post, H_res);
  check_like("mhc.post_bwd", "dout", dout, x, x.scalar_type());
  check_shape("mhc.post_bwd", "dout", dout, x.sizes(), "x's shape [N, n, C]");
}

namespace {

int kernel_threads() { return at::get_num_threads(); }

// ---------------------------------------------------------------------------------- CPU kernels
// bfloat16 storage runs the fp32 kernels on upcast copies and rounds the storage outputs back:
// the function the CUDA kernels compute (fp32 math on bf16 values, phi read as bf16), not a fused
// bf16 path — these CPUs have no bf16 arithmetic; the point is that a bf16 model runs, and can be
// checked, anywhere.
bool is_bf16(const Tensor& t) { return t.scalar_type() == torch::kBFloat16; }
Tensor upcast(const Tensor& t) { return t.to(torch::kFloat); }
Tensor downcast(const Tensor& t) { return t.to(torch::kBFloat16); }

// `pre`'s inputs for the CPU kernels.
struct PreArgs : ops::PreArgs {
  using ops::PreArgs::PreArgs;

  template <typename scalar_t>
  cpu::PreInputs<scalar_t> kernel_inputs() const {
    return {x.data_ptr<scalar_t>(), phi.data_ptr<scalar_t>(),   bias.data_ptr<scalar_t>(),
            alpha.data_ptr<scalar_t>(), x.size(0),                static_cast<int>(x.size(1)),
            x.size(2),                kind,                      static_cast<int>(sinkhorn_iters),
            kernel_threads()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> pre_fwd_cpu(const Tensor& x, const Tensor& phi,
                                                                       const Tensor& bias, const Tensor& alpha,
                                                                       c10::string_view kind, int64_t t) {
  if (is_bf16(x)) {
    check_pre_args(x, phi, bias, alpha, kind_or_throw(kind), t);
    auto out = pre_fwd_cpu(upcast(x), projection_weights(phi, torch::kBFloat16), bias, alpha, kind, t);
    std::get<0>(out) = downcast(std::get<0>(out));
    return out;
  }
  const PreArgs a(x, phi, bias, alpha, kind, t);
  const int64_t N = x.size(0), n = x.size(1), C = x.size(2), P = a.layout.proj_per_token;
  auto opts = x.options();
  Tensor h = torch::empty({N, C}, opts), H_pre = torch::empty({N, n}, opts), H_post = torch::empty({N, n}, opts),
         H_res = torch::empty({N, n, n}, opts), proj = torch::empty({N, P, a.layout.proj_cols}, opts),
         rms = torch::empty({N, P}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.pre", [&] {
    cpu::pre_forward(cpu::PreForwardParams<scalar_t>{
        a.kernel_inputs<scalar_t>(), h.data_ptr<scalar_t>(), H_pre.data_ptr<scalar_t>(), H_post.data_ptr<scalar_t>(),
        H_res.data_ptr<scalar_t>(), proj.data_ptr<scalar_t>(), rms.data_ptr<scalar_t>()});
  });
  return {h, H_pre, H_post, H_res, proj, rms};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pre_bwd_cpu(const Tensor& dh_, const c10::optional<Tensor>& dH_pre_,
                                                       const c10::optional<Tensor>& dH_post_,
                                                       const c10::optional<Tensor>& dH_res_, const Tensor& x,
                                                       const Tensor& phi, const Tensor& bias, const Tensor& alpha,
                                                       const Tensor& proj_, const Tensor& rms_, c10::string_view kind,
                                                       int64_t t) {
  ops::check_pre_bwd_args(dh_, dH_pre_, dH_post_, dH_res_, x, phi, bias, alpha, proj_, rms_, kind_or_throw(kind), t);
  if (is_bf16(x)) {
    auto out = pre_bwd_cpu(upcast(dh_), dH_pre_, dH_post_, dH_res_, upcast(x), projection_weights(phi, torch::kBFloat16),
                           bias, alpha, proj_, rms_, kind, t);
    std::get<0>(out) = downcast(std::get<0>(out));
    return out;
  }
  const PreArgs a(x, phi, bias, alpha, kind, t);
  const Tensor dh = dh_.contiguous();
  const ops::PreBackwardTensors b(a, proj_, rms_, dH_pre_, dH_post_, dH_res_);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.pre_backward", [&] {
    cpu::pre_backward(cpu::PreBackwardParams<scalar_t>{
        a.kernel_inputs<scalar_t>(), b.proj.data_ptr<scalar_t>(), b.rms.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(b.dH_pre), ptr_or_null<scalar_t>(b.dH_post), ptr_or_null<scalar_t>(b.dH_res),
        b.dx.data_ptr<scalar_t>(), b.dphi.data_ptr<scalar_t>(), b.dbias.data_ptr<scalar_t>(),
        b.dalpha.data_ptr<scalar_t>()});
  });
  return b.gradients();
}

Tensor post_cpu(const Tensor& x_, const Tensor& y_, const Tensor& H_post_, const Tensor& H_res_) {
  check_post_args(x_, y_, H_post_, H_res_);
  if (is_bf16(x_)) return downcast(post_cpu(upcast(x_), upcast(y_), H_post_, H_res_));
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  Tensor out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.post", [&] {
    cpu::post_forward(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                      H_post.data_ptr<scalar_t>(), H_res.data_ptr<scalar_t>(), x.size(0), static_cast<int>(x.size(1)),
                      x.size(2), kernel_threads());
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> post_bwd_cpu(const Tensor& dout_, const Tensor& x_, const Tensor& y_,
                                                        const Tensor& H_post_, const Tensor& H_res_) {
  ops::check_post_bwd_args(dout_, x_, y_, H_post_, H_res_);
  if (is_bf16(x_)) {
    auto out = post_bwd_cpu(upcast(dout_), upcast(x_), upcast(y_), H_post_, H_res_);
    std::get<0>(out) = downcast(std::get<0>(out)), std::get<1>(out) = downcast(std::get<1>(out));
    return out;
  }
  const Tensor x = x_.contiguous(), y = y_.contiguous(), H_post = H_post_.contiguous(), H_res = H_res_.contiguous();
  const Tensor dout = dout_.contiguous();
  Tensor dx = torch::empty_like(x), dy = torch::empty_like(y), dH_post = torch::empty_like(H_post),
         dH_res = torch::empty_like(H_res);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc.post_backward", [&] {
    cpu::post_backward(dx.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dH_post.data_ptr<scalar_t>(),
                       dH_res.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                       y.data_ptr<scalar_t>(), H_post.data_ptr<scalar_t>(), H_res.data_ptr<scalar_t>(), x.size(0),
                       static_cast<int>(x.size(1)), x.size(2), kernel_threads());
  });
  return {dx, dy, dH_post, dH_res};
}

// --------------------------------------------------------------------------------- op clock
std::atomic<bool> clock_enabled{false};
std::atomic<int64_t> clock_nanoseconds{0};

// Adds the wall time of one call to the op clock when it is enabled.
class ScopedOpClock {
 public:
  ScopedOpClock() : on_(clock_enabled.load(std::memory_order_relaxed)) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedOpClock() {
    if (on_)
      clock_nanoseconds += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

// An op implementation as registered: the same function, timed. Inner calls (the bf16 path calls
// the fp32 one) go to the untimed function, so nothing is counted twice.
template <auto fn>
struct Timed;
template <typename R, typename... Args, R (*fn)(Args...)>
struct Timed<fn> {
  static R call(Args... args) {
    const ScopedOpClock clock;
    return fn(args...);
  }
};

// ------------------------------------------------------------------------- dispatcher handles
using PreFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         const Tensor&, c10::string_view, int64_t);
using PreFwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                            const Tensor&, const Tensor&,
                                                                            c10::string_view, int64_t);
using PreBwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const c10::optional<Tensor>&, const c10::optional<Tensor>&, const c10::optional<Tensor>&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view,
    int64_t);
using PostFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using PostBwdFn = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                             const Tensor&, const Tensor&);

template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// ------------------------------------------------------------------------------------ autograd
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward under create_graph = true (autograd runs a backward with grad mode on exactly then):
// the fused backward kernels compute numbers, not a graph, so a gradient penalty would get a wrong
// second derivative from them. Instead the reference (the same function, in differentiable LibTorch
// ops) is re-run on the saved inputs and differentiated with a graph: the gradients agree with the
// fused ones to rounding and are differentiable to any order, at the reference's speed.
// The reference runs on views of the saved inputs: differentiating with respect to the inputs
// themselves would also follow paths between them (x reaches post both directly and through pre's
// h), which the outer backward already walks, and count those twice.
template <typename Recompute>
variable_list differentiable_backward(Recompute recompute, variable_list inputs, const variable_list& grads,
                                      int non_tensor_args) {
  for (Tensor& input : inputs) input = input.view_as(input);
  variable_list outputs = recompute(inputs), wanted, grad_outputs;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!grads[i].defined() || !outputs[i].requires_grad()) continue;
    wanted.push_back(outputs[i]);
    grad_outputs.push_back(grads[i]);
  }
  variable_list differentiable;
  for (const Tensor& input : inputs)
    if (input.requires_grad()) differentiable.push_back(input);
  variable_list result(inputs.size() + non_tensor_args);
  if (wanted.empty() || differentiable.empty()) return result;
  const variable_list g = torch::autograd::grad(wanted, differentiable, grad_outputs, /*retain_graph=*/true,
                                                /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t i = 0, k = 0; i < inputs.size(); ++i)
    if (inputs[i].requires_grad()) result[i] = g[k++];
  return result;
}

class PreFunction : public torch::autograd::Function<PreFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& phi, const Tensor& bias,
                               const Tensor& alpha, c10::string_view kind, int64_t t) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<PreFwdFn>("mhc::pre_fwd");
    auto [h, H_pre, H_post, H_res, proj, rms] = fwd.call(x, phi, bias, alpha, kind, t);
    ctx->save_for_backward({x, phi, bias, alpha, proj, rms});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["t"] = t;
    return {h, H_pre, H_post, H_res};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    if (torch::GradMode::is_enabled()) {  // create_graph: a gradient that is itself differentiable
      const Kind kind = kind_or_throw(ctx->saved_data["kind"].toStringRef());
      return differentiable_backward(
          [&](const variable_list& in) {
            const PreOutput o = reference::pre(in[0], in[1], in[2], in[3], kind, ctx->saved_data["t"].toInt());
            return variable_list{o.h, o.H_pre, o.H_post, o.H_res};
          },
          {s[0], s[1], s[2], s[3]}, grads, /*non_tensor_args=*/2);
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto bwd = op<PreBwdFn>("mhc::pre_bwd");
    const Tensor dh = grads[0].defined() ? grads[0] : torch::zeros({s[0].size(0), s[0].size(2)}, s[0].options());
    auto [dx, dphi, dbias, dalpha] = bwd.call(dh, grads[1], grads[2], grads[3], s[0], s[1], s[2], s[3], s[4], s[5],
                                              ctx->saved_data["kind"].toStringRef(), ctx->saved_data["t"].toInt());
    return {dx, dphi, dbias, dalpha, Tensor(), Tensor()};
  }
};

class PostFunction : public torch::autograd::Function<PostFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& y, const Tensor& H_post,
                        const Tensor& H_res) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<PostFn>("mhc::post");
    ctx->save_for_backward({x, y, H_post, H_res});
    return fwd.call(x, y, H_post, H_res);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    if (torch::GradMode::is_enabled())  // create_graph, as in PreFunction
      return differentiable_backward(
          [](const variable_list& in) { return variable_list{reference::post(in[0], in[1], in[2], in[3])}; }, s, grads,
          /*non_tensor_args=*/0);
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto bwd = op<PostBwdFn>("mhc::post_bwd");
    auto [dx, dy, dH_post, dH_res] = bwd.call(grads[0], s[0], s[1], s[2], s[3]);
    return {dx, dy, dH_post, dH_res};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> pre_autograd(const Tensor& x, const Tensor& phi, const Tensor& bias,
                                                        const Tensor& alpha, c10::string_view kind, int64_t t) {
  auto out = PreFunction::apply(x, phi, bias, alpha, kind, t);
  return {out[0], out[1], out[2], out[3]};
}

Tensor post_autograd(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  return PostFunction::apply(x, y, H_post, H_res);
}

}  // namespace

// ------------------------------------------------------------------------------ C++ front door
void op_clock::enable(bool on) { clock_enabled = on; }
void op_clock::reset() { clock_nanoseconds = 0; }
double op_clock::seconds() { return static_cast<double>(clock_nanoseconds.load()) * 1e-9; }

PreOutput pre(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha, Kind kind,
              int64_t sinkhorn_iters) {
  static auto handle = op<PreFn>("mhc::pre");
  auto [h, H_pre, H_post, H_res] = handle.call(x, phi, bias, alpha, kind_name(kind), sinkhorn_iters);
  return {h, H_pre, H_post, H_res};
}

Tensor post(const Tensor& x, const Tensor& y, const Tensor& H_post, const Tensor& H_res) {
  static auto handle = op<PostFn>("mhc::post");
  return handle.call(x, y, H_post, H_res);
}

}  // namespace mhc

TORCH_LIBRARY(mhc, m) {
  m.def("pre(Tensor x, Tensor phi, Tensor bias, Tensor alpha, str kind, int sinkhorn_iters=20)"
        " -> (Tensor h, Tensor H_pre, Tensor H_post, Tensor H_res)");
  m.def("post(Tensor x, Tensor y, Tensor H_post, Tensor H_res) -> Tensor");
  // Internal halves of the fused autograd: the forward also returns the projections g and norms r.
  m.def("pre_fwd(Tensor x, Tensor phi, Tensor bias, Tensor alpha, str kind, int sinkhorn_iters)"
        " -> (Tensor h, Tensor H_pre, Tensor H_post, Tensor H_res, Tensor proj, Tensor rms)");
  m.def("pre_bwd(Tensor dh, Tensor? dH_pre, Tensor? dH_post, Tensor? dH_res, Tensor x, Tensor phi,"
        " Tensor bias, Tensor alpha, Tensor proj, Tensor rms, str kind, int sinkhorn_iters)"
        " -> (Tensor dx, Tensor dphi, Tensor dbias, Tensor dalpha)");
  m.def("post_bwd(Tensor dout, Tensor x, Tensor y, Tensor H_post, Tensor H_res)"
        " -> (Tensor dx, Tensor dy, Tensor dH_post, Tensor dH_res)");
}

TORCH_LIBRARY_IMPL(mhc, CPU, m) {
  m.impl("pre", mhc::Timed<mhc::ops::pre_from<mhc::pre_fwd_cpu>>::call);
  m.impl("post", mhc::Timed<mhc::post_cpu>::call);
  m.impl("pre_fwd", mhc::Timed<mhc::pre_fwd_cpu>::call);
  m.impl("pre_bwd", mhc::Timed<mhc::pre_bwd_cpu>::call);
  m.impl("post_bwd", mhc::Timed<mhc::post_bwd_cpu>::call);
}

TORCH_LIBRARY_IMPL(mhc, Autograd, m) {
  m.impl("pre", mhc::pre_autograd);
  m.impl("post", mhc::post_autograd);
}
