// HyperConnection module: parameters, DESIGN.md §2 initialisation, and the pre/post front end; the
// stack of them, and DeepSeek-V4's HyperHead. The initialisations and the head's math are ops too
// (end of file), so that the Python modules (python/mhc/modules.py) run these definitions.
#include "mhc/module.h"

#include <optional>
#include <stdexcept>

namespace mhc {

using torch::Tensor;

BiasInit BiasInit::named(const std::string& name) {
  if (name == "paper") return {};
  if (name == "zero") return {0.0, 0.0};
  throw std::invalid_argument("unknown bias init '" + name + "' (accepted: paper, zero)");
}

void check(const HyperConnectionOptions& o) {
  check_streams(o.variant(), o.streams(), o.variant_options());
  if (o.dim() < 1) throw std::invalid_argument("dim (the width C) must be at least 1, got " + std::to_string(o.dim()));
  if (o.sublayer_index() < 0)
    throw std::invalid_argument("sublayer_index (the sublayer's place in the stack) must be at least 0, got " +
                                std::to_string(o.sublayer_index()));
  check_sinkhorn_iters(o.variant(), o.sinkhorn_iters());
}

Parameters initial_parameters(const HyperConnectionOptions& o) {
  check(o);
  const int64_t n = o.streams(), C = o.dim();
  const Layout l = layout(o.variant(), n, C, o.variant_options());
  const int64_t lead = o.sublayer_index() % n;  // the stream this sublayer reads and writes first
  // float32 whatever torch's default dtype: these are the fp32 masters (DESIGN.md §1).
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32);
  Parameters p{torch::zeros({l.proj_rows, l.proj_cols}, fp32), torch::zeros({l.bias_size}, fp32),
               torch::zeros({l.alpha_size}, fp32)};
  initial_bias_and_alpha(o.variant(), n, lead, o.bias_init().stream_logit, o.bias_init().res_off_logit,
                         p.bias.data_ptr<float>(), p.alpha.data_ptr<float>(), o.variant_options());
  return p;
}

HyperConnectionImpl::HyperConnectionImpl(const HyperConnectionOptions& options) : options_(options) {
  Parameters p;
  try {
    p = initial_parameters(options);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
  if (options.variant() == Variant::residual) {
    phi = p.phi, bias = p.bias, alpha = p.alpha;
  } else {
    phi = register_parameter("phi", p.phi);
    bias = register_parameter("bias", p.bias);
    alpha = register_parameter("alpha", p.alpha);
  }
}

PreOutput HyperConnectionImpl::pre(const Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 2, "HyperConnection.pre: x must be [..., n, C], got ", x.sizes());
  const int64_t n = x.size(-2), C = x.size(-1);
  TORCH_CHECK_VALUE(n == options_.streams() && C == options_.dim(), "HyperConnection.pre: x is [..., ", n, ", ", C,
                    "] but this connection has n = ", options_.streams(), " streams of width C = ", options_.dim());
  const Tensor flat = x.reshape({-1, n, C});
  // Parameters follow x's device and dtype (float32 under bfloat16 storage: they are the fp32
  // masters), so a double-precision check needs no second module.
  auto like = [&](const Tensor& t) { return t.to(x.device(), coefficient_dtype(x.scalar_type())); };
  const HyperConnectionOptions& o = options_;
  PreOutput out = o.use_reference() ? reference::pre(flat, like(phi), like(bias), like(alpha), o.variant(),
                                                     o.sinkhorn_iters(), o.variant_options())
                                    : mhc::pre_joint(flat, like(phi), like(bias), like(alpha), o.variant(),
                                                     o.sinkhorn_iters(), o.variant_options());
  // x_post: x for this sublayer's post; from the fused op its gradient joins pre's in the kernel.
  if (!out.x_post.defined()) out.x_post = flat;
  return shaped_like(out, x);
}

PreOutput HyperConnectionImpl::shaped_like(const PreOutput& flat, const Tensor& x) {
  const int64_t n = x.size(-2), C = x.size(-1);
  auto lead = x.sizes().slice(0, x.dim() - 2).vec();
  auto with = [&](std::vector<int64_t> tail) {
    auto s = lead;
    s.insert(s.end(), tail.begin(), tail.end());
    return s;
  };
  auto state = [&](const Tensor& t) { return t.defined() ? t.view(x.sizes()) : t; };  // x_post or x_next
  return {flat.h.view(with({C})),       flat.H_pre.view(with({n})), flat.H_post.view(with({n})),
          flat.H_res.view(with({n, n})), state(flat.x_post),          state(flat.x_next)};
}

Tensor HyperConnectionImpl::post(const Tensor& x, const Tensor& y, const PreOutput& mix) {
  TORCH_CHECK_VALUE(x.dim() >= 2, "HyperConnection.post: x must be [..., n, C], got ", x.sizes());
  const int64_t n = x.size(-2), C = x.size(-1);
  const Tensor flat = x.reshape({-1, n, C});
  const int64_t N = flat.size(0);
  auto y_sizes = x.sizes().vec();
  y_sizes.erase(y_sizes.end() - 2);  // x without its stream dim: [..., C]
  TORCH_CHECK_VALUE(y.sizes() == c10::IntArrayRef(y_sizes), "HyperConnection.post: y must be ", c10::IntArrayRef(y_sizes),
                    " (x without its stream dim), got ", y.sizes());
  const Tensor yf = y.reshape({N, C}), hp = mix.H_post.reshape({N, n}), hr = mix.H_res.reshape({N, n, n});
  const Tensor out = options_.use_reference() ? reference::post(flat, yf, hp, hr) : mhc::post(flat, yf, hp, hr);
  return out.view(x.sizes());
}

PreOutput HyperConnectionImpl::boundary(const Tensor& x, const Tensor& y, const PreOutput& before) {
  TORCH_CHECK_VALUE(x.dim() >= 2, "HyperConnection.boundary: x must be [..., n, C], got ", x.sizes());
  const int64_t n = x.size(-2), C = x.size(-1);
  TORCH_CHECK_VALUE(n == options_.streams() && C == options_.dim(), "HyperConnection.boundary: x is [..., ", n, ", ",
                    C, "] but this connection has n = ", options_.streams(), " streams of width C = ", options_.dim());
  const Tensor flat = x.reshape({-1, n, C});
  const int64_t N = flat.size(0);
  auto y_sizes = x.sizes().vec();
  y_sizes.erase(y_sizes.end() - 2);
  TORCH_CHECK_VALUE(y.sizes() == c10::IntArrayRef(y_sizes), "HyperConnection.boundary: y must be ",
                    c10::IntArrayRef(y_sizes), " (x without its stream dim), got ", y.sizes());
  auto like = [&](const Tensor& t) { return t.to(x.device(), coefficient_dtype(x.scalar_type())); };
  const Tensor yf = y.reshape({N, C}), hp = before.H_post.reshape({N, n}), hr = before.H_res.reshape({N, n, n});
  const HyperConnectionOptions& o = options_;
  const PreOutput out = o.use_reference() ? reference::boundary(flat, yf, hp, hr, like(phi), like(bias), like(alpha),
                                                                o.variant(), o.sinkhorn_iters(), o.variant_options())
                                          : mhc::boundary(flat, yf, hp, hr, like(phi), like(bias), like(alpha),
                                                          o.variant(), o.sinkhorn_iters(), o.variant_options());
  return shaped_like(out, x);
}

Tensor HyperConnectionImpl::forward(const Tensor& x, const std::function<Tensor(const Tensor&)>& sublayer,
                                   PreOutput* mix_out) {
  const PreOutput mix = pre(x);
  if (mix_out) *mix_out = mix;
  return post(mix.x_post, sublayer(mix.h), mix);
}

namespace {

// What a stack reports after each sublayer l: its input x_l, the coefficients mix_l, F's output y_l
// and the sublayer's output x_{l+1}.
using AfterSublayer =
    std::function<void(int64_t l, const Tensor& x, const PreOutput& mix, const Tensor& y, const Tensor& x_next)>;

// Sublayers [begin, end) on x: the first one's pre, then at every inner boundary the post of
// sublayer l and the pre of l + 1 as one op (boundary), then the last one's post. With no
// connections, the plain residual x + F(x) on x [..., 1, C].
Tensor run_sublayers(const std::vector<HyperConnection>& connections, const std::vector<Sublayer>& sublayers, Tensor x,
                     int64_t begin, int64_t end, const AfterSublayer& after) {
  if (connections.empty()) {
    for (int64_t l = begin; l < end; ++l) {
      const Tensor x_next = x + sublayers[l](x.squeeze(-2)).unsqueeze(-2);
      if (after) after(l, x, PreOutput{}, Tensor(), x_next);
      x = x_next;
    }
    return x;
  }
  if (begin == end) return x;
  auto connection = [&](int64_t l) { return connections[l]; };  // a holder of its own: its -> is not const
  PreOutput mix = connection(begin)->pre(x);
  Tensor post_input = mix.x_post;  // what sublayer l's post reads: pre's x_post, then each boundary's x_next
  for (int64_t l = begin; l < end; ++l) {
    const Tensor y = sublayers[l](mix.h);
    PreOutput next = l + 1 < end ? connection(l + 1)->boundary(post_input, y, mix) : PreOutput{};
    const Tensor x_next = l + 1 < end ? next.x_next : connection(l)->post(post_input, y, mix);
    if (after) after(l, x, mix, y, x_next);
    x = post_input = x_next;
    mix = std::move(next);
  }
  return x;
}

}  // namespace

Tensor forward_stack(const std::vector<HyperConnection>& connections, const std::vector<Sublayer>& sublayers,
                     const Tensor& x_in, const RecomputeOptions& recompute, std::vector<SublayerRecord>* record) {
  const int64_t L = static_cast<int64_t>(sublayers.size());
  TORCH_CHECK_VALUE(connections.empty() || static_cast<int64_t>(connections.size()) == L,
                    "forward_stack: ", connections.size(), " connections for ", L,
                    " sublayers (accepted: one per sublayer, or none for the plain residual)");
  TORCH_CHECK_VALUE(x_in.dim() >= 2, "forward_stack: x must be [..., n, C], got ", x_in.sizes());
  const int64_t every = group_size(recompute, x_in.size(-2), L);
  if (recompute.mode == Recompute::blocks && !record) {
    Tensor x = x_in;
    for (int64_t start = 0; start < L; start += every) {
      // The backward pass runs the segment again: it owns copies of what it calls.
      const int64_t stop = std::min(L, start + every);
      std::vector<Tensor> watched;  // F's own parameters are the caller's: a Sublayer is only a function
      for (int64_t l = start; l < stop && !connections.empty(); ++l)
        for (const Tensor& p : connections[l]->parameters()) watched.push_back(p);
      x = checkpoint(
          [connections, sublayers, start, stop](const Tensor& in) {
            return run_sublayers(connections, sublayers, in, start, stop, nullptr);
          },
          x, std::move(watched));
    }
    return x;
  }
  const bool discard = recompute.mode == Recompute::streams && !connections.empty() && !record;
  std::optional<StreamGroup> group;
  AfterSublayer after;
  if (record)
    after = [&](int64_t, const Tensor& x, const PreOutput& mix, const Tensor&, const Tensor&) {
      record->push_back({x, mix});
    };
  if (discard)
    after = [&](int64_t l, const Tensor&, const PreOutput& mix, const Tensor& y, const Tensor& x_next) {
      // x_next was made by the next connection's boundary op, or by this one's post: its rebuild follows that op.
      const HyperConnection& made_by = connections[l + 1 < L ? l + 1 : l];
      if (group) group->add(x_next, y, mix.H_post, mix.H_res, made_by->options().use_reference());
      if ((l + 1) % every == 0 && l + 1 < L) group.emplace(x_next);
    };
  if (discard) group.emplace(x_in);
  return run_sublayers(connections, sublayers, x_in, 0, L, after);
}

HyperConnectionStackImpl::HyperConnectionStackImpl(const HyperConnectionOptions& options, int64_t sublayers) {
  TORCH_CHECK_VALUE(sublayers >= 1, "HyperConnectionStack: need at least 1 sublayer, got ", sublayers);
  for (int64_t l = 0; l < sublayers; ++l)
    connections.push_back(
        register_module(std::to_string(l), HyperConnection(HyperConnectionOptions(options).sublayer_index(l))));
}

Tensor HyperConnectionStackImpl::forward(const Tensor& x, const std::vector<Sublayer>& sublayers,
                                         const RecomputeOptions& recompute, std::vector<SublayerRecord>* record) {
  TORCH_CHECK_VALUE(sublayers.size() == connections.size(), "HyperConnectionStack: ", sublayers.size(),
                    " sublayers given to a stack of ", connections.size());
  return forward_stack(connections, sublayers, x, recompute, record);
}

Tensor expand_streams(const Tensor& e, int64_t n) {
  TORCH_CHECK_VALUE(e.dim() >= 1 && n >= 1, "expand_streams: need e [..., C] and n >= 1, got ", e.sizes(), ", n = ", n);
  auto sizes = e.sizes().vec();
  sizes.insert(sizes.end() - 1, n);  // [..., C] -> [..., n, C]
  return e.unsqueeze(-2).expand(sizes).contiguous();
}

Tensor reduce_streams(const Tensor& x) { return x.sum(-2); }

namespace {

// HyperHead's initial φ = 0, b = 0, α = 0.01 for n streams of width C, float32 whatever torch's
// default dtype (they are the fp32 masters).
Parameters hyper_head_initial_parameters(int64_t streams, int64_t dim) {
  TORCH_CHECK_VALUE(streams >= 1 && streams <= kMaxStreams && dim >= 1, "HyperHead takes 1 to ", kMaxStreams,
                    " streams of width C >= 1, got n = ", streams, ", C = ", dim);
  const auto fp32 = torch::TensorOptions().dtype(torch::kFloat32);
  return {torch::zeros({streams * dim, streams}, fp32), torch::zeros({streams}, fp32), torch::full({1}, 0.01, fp32)};
}

// HyperHead's weights w [..., n] of x [..., n, C] from its parameters (n and C from φ [n·C, n]).
Tensor hyper_head_weights(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  TORCH_CHECK_VALUE(phi.dim() == 2 && phi.size(1) >= 1 && phi.size(0) % phi.size(1) == 0,
                    "HyperHead: phi must be [n·C, n], got ", phi.sizes());
  const int64_t n = phi.size(1), C = phi.size(0) / n;
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.size(-2) == n && x.size(-1) == C, "HyperHead: x must be [..., ", n, ", ", C,
                    "], got ", x.sizes());
  const auto math = coefficient_dtype(x.scalar_type());
  auto sizes = x.sizes().vec();
  sizes.pop_back();  // [..., n]
  const Tensor v = x.to(math).reshape({-1, n * C});
  const Tensor r = (v.square().mean(-1, true) + kRmsEps).sqrt();
  const Tensor z = alpha.to(v.device(), math) * (v.matmul(phi.to(v.device(), math)) / r) + bias.to(v.device(), math);
  return (z.sigmoid() + kDeepSeekV4Eps).view(sizes);
}

// HyperHead's output [..., C]: Σ_j w_j·x_j.
Tensor hyper_head(const Tensor& x, const Tensor& phi, const Tensor& bias, const Tensor& alpha) {
  return (hyper_head_weights(x, phi, bias, alpha).unsqueeze(-1) * x.to(coefficient_dtype(x.scalar_type())))
      .sum(-2)
      .to(x.scalar_type());
}

}  // namespace

HyperHeadImpl::HyperHeadImpl(int64_t streams, int64_t dim) {
  const Parameters p = hyper_head_initial_parameters(streams, dim);
  phi = register_parameter("phi", p.phi);
  bias = register_parameter("bias", p.bias);
  alpha = register_parameter("alpha", p.alpha);
}

Tensor HyperHeadImpl::weights(const Tensor& x) { return hyper_head_weights(x, phi, bias, alpha); }

Tensor HyperHeadImpl::forward(const Tensor& x) { return hyper_head(x, phi, bias, alpha); }

}  // namespace mhc

// The initialisations and HyperHead's math as ops too, so the Python front end builds and runs its
// modules on these definitions rather than second copies (DESIGN.md §2, §9). The head's ops are
// plain tensor ops: autograd differentiates through them on any device.
TORCH_LIBRARY_FRAGMENT(mhc, m) {
  m.def("initial_parameters(str variant, int streams, int dim, int sublayer_index=0, float stream_logit=1.0,"
        " float res_off_logit=-8.0, int sinkhorn_iters=20) -> (Tensor phi, Tensor bias, Tensor alpha)",
        [](c10::string_view variant, int64_t streams, int64_t dim, int64_t sublayer_index, double stream_logit,
           double res_off_logit, int64_t sinkhorn_iters) {
          try {
            const mhc::VariantSpec spec = mhc::parse_variant_spec(std::string(variant));
            const auto o = mhc::HyperConnectionOptions(spec.variant, streams, dim)
                               .variant_options(spec.options)
                               .sublayer_index(sublayer_index)
                               .sinkhorn_iters(sinkhorn_iters)
                               .bias_init({stream_logit, res_off_logit});
            const mhc::Parameters p = mhc::initial_parameters(o);
            return std::make_tuple(p.phi, p.bias, p.alpha);
          } catch (const std::invalid_argument& e) {
            TORCH_CHECK_VALUE(false, "mhc.initial_parameters: ", e.what());
          }
        });
  m.def("hyper_head_initial_parameters(int streams, int dim) -> (Tensor phi, Tensor bias, Tensor alpha)",
        [](int64_t streams, int64_t dim) {
          const mhc::Parameters p = mhc::hyper_head_initial_parameters(streams, dim);
          return std::make_tuple(p.phi, p.bias, p.alpha);
        });
  m.def("hyper_head_weights(Tensor x, Tensor phi, Tensor bias, Tensor alpha) -> Tensor", mhc::hyper_head_weights);
  m.def("hyper_head(Tensor x, Tensor phi, Tensor bias, Tensor alpha) -> Tensor", mhc::hyper_head);
}
