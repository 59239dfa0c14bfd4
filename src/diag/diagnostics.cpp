// Signal-gain diagnostics of the connections' residual maps (see mhc/diag.h and DESIGN.md §5).
#include "mhc/diag.h"

#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mhc/ops.h"

namespace mhc::diag {

using torch::Tensor;

Tensor forward_gain(const Tensor& H) { return H.to(torch::kDouble).sum(-1).abs().amax(-1); }

Tensor backward_gain(const Tensor& H) { return H.to(torch::kDouble).sum(-2).abs().amax(-1); }

std::vector<Tensor> composite_maps(const std::vector<Tensor>& H) {
  std::vector<Tensor> P(H.size());
  for (size_t l = H.size(); l-- > 0;) {
    const Tensor h = H[l].to(torch::kDouble);
    P[l] = l + 1 == H.size() ? h : torch::matmul(P[l + 1], h);  // later maps act last: on the left
  }
  return P;
}

Stat over_tokens(const Tensor& per_token) {
  const Tensor t = per_token.to(torch::kDouble);
  return {t.max().item<double>(), t.mean().item<double>()};
}

StochasticError stochastic_error(const Tensor& H) {
  const Tensor h = H.to(torch::kDouble);
  return {(h.sum(-1) - 1).abs().max().item<double>(), (h.sum(-2) - 1).abs().max().item<double>(),
          h.min().item<double>()};
}

std::vector<SublayerDiagnostics> diagnose(const std::vector<SublayerRecord>& records) {
  std::vector<Tensor> H;
  for (const auto& r : records) {
    const int64_t n = r.mix.H_res.size(-1);
    H.push_back(r.mix.H_res.reshape({-1, n, n}));
  }
  const std::vector<Tensor> P = composite_maps(H);
  std::vector<SublayerDiagnostics> out;
  for (size_t l = 0; l < records.size(); ++l) {
    SublayerDiagnostics d;
    d.name = (l % 2 == 0 ? "attn " : "mlp ") + std::to_string(l / 2);
    d.forward_gain = over_tokens(forward_gain(H[l]));
    d.backward_gain = over_tokens(backward_gain(H[l]));
    d.composite_forward_gain = over_tokens(forward_gain(P[l]));
    d.composite_backward_gain = over_tokens(backward_gain(P[l]));
    d.error = stochastic_error(H[l]);
    const Tensor& pre = records[l].mix.H_pre;
    const Tensor& post = records[l].mix.H_post;
    d.pre_min = pre.min().item<double>(), d.pre_max = pre.max().item<double>();
    d.post_min = post.min().item<double>(), d.post_max = post.max().item<double>();
    out.push_back(d);
  }
  return out;
}

std::vector<SublayerDiagnostics> probe(GPT& model, const Tensor& tokens) {
  torch::NoGradGuard no_grad;
  std::vector<SublayerRecord> records;
  model->forward(tokens, &records);
  return diagnose(records);
}

Tensor probe_tokens(const data::WindowSampler& validation, int64_t windows) {
  return validation.ordered(0, std::min(windows, validation.windows())).first;
}

std::string to_json(const std::vector<SublayerDiagnostics>& diagnostics) {
  nlohmann::ordered_json j;
  auto column = [&](const char* key, auto value) {
    nlohmann::json values = nlohmann::json::array();
    for (const auto& d : diagnostics) values.push_back(value(d));
    j[key] = values;
  };
  using D = SublayerDiagnostics;
  column("sublayer", [](const D& d) { return d.name; });
  column("fwd_gain_max", [](const D& d) { return d.forward_gain.max; });
  column("fwd_gain_mean", [](const D& d) { return d.forward_gain.mean; });
  column("bwd_gain_max", [](const D& d) { return d.backward_gain.max; });
  column("bwd_gain_mean", [](const D& d) { return d.backward_gain.mean; });
  column("composite_fwd_max", [](const D& d) { return d.composite_forward_gain.max; });
  column("composite_fwd_mean", [](const D& d) { return d.composite_forward_gain.mean; });
  column("composite_bwd_max", [](const D& d) { return d.composite_backward_gain.max; });
  column("composite_bwd_mean", [](const D& d) { return d.composite_backward_gain.mean; });
  column("row_error", [](const D& d) { return d.error.row; });
  column("col_error", [](const D& d) { return d.error.column; });
  column("min_entry", [](const D& d) { return d.error.min_entry; });
  column("pre_min", [](const D& d) { return d.pre_min; });
  column("pre_max", [](const D& d) { return d.pre_max; });
  column("post_min", [](const D& d) { return d.post_min; });
  column("post_max", [](const D& d) { return d.post_max; });
  return j.dump();
}

std::string table(const std::vector<SublayerDiagnostics>& diagnostics) {
  std::ostringstream s;
  auto number = [&](double v, int width) {
    std::ostringstream c;
    if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e5)) c << std::scientific << std::setprecision(2) << v;
    else c << std::fixed << std::setprecision(5) << v;
    s << std::setw(width) << c.str();
  };
  s << "gains of H_res (single) and of P_l = H_res^(L-1)...H_res^(l) (composite), max and mean over probe tokens;\n"
       "doubly-stochastic error of H_res: max over tokens of |row sum - 1|, |column sum - 1|, and the smallest entry\n\n";
  s << std::left << std::setw(9) << "sublayer" << std::right;
  for (const char* h : {"fwd max", "fwd mean", "bwd max", "bwd mean", "P fwd max", "P fwd mean", "P bwd max",
                        "P bwd mean", "row err", "col err", "min entry"})
    s << std::setw(11) << h;
  s << std::setw(19) << "H_pre range" << std::setw(19) << "H_post range" << "\n";
  for (const auto& d : diagnostics) {
    s << std::left << std::setw(9) << d.name << std::right;
    for (double v : {d.forward_gain.max, d.forward_gain.mean, d.backward_gain.max, d.backward_gain.mean,
                     d.composite_forward_gain.max, d.composite_forward_gain.mean, d.composite_backward_gain.max,
                     d.composite_backward_gain.mean, d.error.row, d.error.column, d.error.min_entry})
      number(v, 11);
    number(d.pre_min, 10), number(d.pre_max, 9), number(d.post_min, 10), number(d.post_max, 9);
    s << "\n";
  }
  return s.str();
}

std::vector<std::vector<double>> sinkhorn_errors(GPT& model, const std::vector<SublayerRecord>& records,
                                                 const std::vector<int64_t>& iterations) {
  torch::NoGradGuard no_grad;
  const auto connections = model->connections();
  TORCH_CHECK(connections.size() == records.size(), "sinkhorn_errors: ", records.size(), " records for ",
              connections.size(), " connections");
  auto worst = [](const Tensor& H) {
    const StochasticError e = stochastic_error(H);
    return std::max(e.row, e.column);
  };
  std::vector<std::vector<double>> out;
  for (size_t l = 0; l < records.size(); ++l) {
    const auto& c = connections[l];
    std::vector<double> row;
    for (const int64_t t : iterations) {
      if (c->options().kind() != Kind::mhc) {
        row.push_back(worst(records[l].mix.H_res));
        continue;
      }
      const Tensor& x = records[l].x;
      const Tensor flat = x.reshape({-1, x.size(-2), x.size(-1)});
      row.push_back(worst(mhc::pre(flat, c->phi, c->bias, c->alpha, Kind::mhc, t).H_res));
    }
    out.push_back(row);
  }
  return out;
}

}  // namespace mhc::diag
