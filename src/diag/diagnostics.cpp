// Diagnostics of the connections (see mhc/diag.h and DESIGN.md §5): the signal gains of the
// residual maps, the use of the streams, and the collapse alarm.
#include "mhc/diag.h"

#include <fstream>
#include <iomanip>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mhc/format.h"
#include "mhc/ops.h"
#include "mhc/table.h"

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

Tensor stream_shares(const Tensor& x) {
  const Tensor energy = x.to(torch::kDouble).square().sum(-1);
  return energy / energy.sum(-1, /*keepdim=*/true).clamp_min(std::numeric_limits<double>::min());
}

Tensor effective_rank(const Tensor& x) {
  const Tensor v = x.to(torch::kDouble);
  const Tensor gram = torch::matmul(v, v.transpose(-1, -2));
  // LAPACK refuses a non-finite matrix (a forward pass that overflowed): those tokens get NaN, the
  // others their rank.
  const Tensor finite = torch::isfinite(gram).all(-1).all(-1);
  const int64_t n = x.size(-2);
  const Tensor eigenvalues =  // ascending
      torch::linalg_eigvalsh(torch::where(finite.unsqueeze(-1).unsqueeze(-1), gram, torch::eye(n, gram.options())));
  const Tensor largest = eigenvalues.select(-1, n - 1).unsqueeze(-1);
  const Tensor rounding = static_cast<double>(n) * std::numeric_limits<double>::epsilon() * largest;
  const Tensor singular = torch::where(eigenvalues > rounding, eigenvalues, torch::zeros_like(eigenvalues)).sqrt();
  const Tensor p = singular / singular.sum(-1, /*keepdim=*/true).clamp_min(std::numeric_limits<double>::min());
  const Tensor rank = (-torch::xlogy(p, p).sum(-1)).exp();
  return torch::where(finite, rank, torch::full_like(rank, std::numeric_limits<double>::quiet_NaN()));
}

Tensor frobenius_distance(const Tensor& H, const Tensor& reference) {
  return (H.to(torch::kDouble) - reference.to(torch::kDouble)).square().sum({-2, -1}).sqrt();
}

Tensor coefficient_entropy(const Tensor& h) {
  const Tensor a = h.to(torch::kDouble).abs();
  const Tensor q = a / a.sum(-1, /*keepdim=*/true).clamp_min(std::numeric_limits<double>::min());
  return -torch::xlogy(q, q).sum(-1);
}

Stat over_tokens(const Tensor& per_token) {
  const Tensor t = per_token.to(torch::kDouble);
  return {t.max().item<double>(), t.mean().item<double>(), t.min().item<double>()};
}

Tensor singular_values(const Tensor& H) {
  const Tensor h = H.to(torch::kDouble);
  // LAPACK refuses a non-finite matrix: those tokens get NaN, as in effective_rank.
  const Tensor finite = torch::isfinite(h).all(-1).all(-1);
  const Tensor safe = torch::where(finite.unsqueeze(-1).unsqueeze(-1), h, torch::eye(h.size(-1), h.options()));
  const Tensor sigma = torch::linalg_svdvals(safe);
  return torch::where(finite.unsqueeze(-1), sigma, torch::full_like(sigma, std::numeric_limits<double>::quiet_NaN()));
}

Tensor orthogonality_error(const Tensor& H) {
  const Tensor h = H.to(torch::kDouble);
  return (torch::matmul(h.transpose(-1, -2), h) - torch::eye(h.size(-1), h.options())).abs().amax({-2, -1});
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
    const Tensor sigma = singular_values(H[l]), composite_sigma = singular_values(P[l]);
    d.sigma_max = over_tokens(sigma.select(-1, 0)), d.sigma_min = over_tokens(sigma.select(-1, -1));
    d.composite_sigma_max = over_tokens(composite_sigma.select(-1, 0));
    d.composite_sigma_min = over_tokens(composite_sigma.select(-1, -1));
    d.orthogonality_error = orthogonality_error(H[l]).max().item<double>();
    const Tensor& pre = records[l].mix.H_pre;
    const Tensor& post = records[l].mix.H_post;
    d.pre_min = pre.min().item<double>(), d.pre_max = pre.max().item<double>();
    d.post_min = post.min().item<double>(), d.post_max = post.max().item<double>();
    const Tensor& x = records[l].x;
    const Tensor shares = stream_shares(x.reshape({-1, x.size(-2), x.size(-1)})).mean(0);
    d.share_max = shares.max().item<double>(), d.share_min = shares.min().item<double>();
    d.effective_rank = effective_rank(x).mean().item<double>();
    const int64_t n = d.streams = H[l].size(-1);
    const auto like = torch::TensorOptions().dtype(torch::kDouble);
    const Tensor uniform = torch::full({n, n}, 1.0 / static_cast<double>(n), like);
    d.identity_distance = frobenius_distance(H[l], torch::eye(n, like)).mean().item<double>();
    d.uniform_distance = frobenius_distance(H[l], uniform).mean().item<double>();
    d.pre_entropy = coefficient_entropy(pre).mean().item<double>();
    d.post_entropy = coefficient_entropy(post).mean().item<double>();
    out.push_back(d);
  }
  return out;
}

std::vector<SublayerDiagnostics> probe(GPT& model, const Tensor& tokens) {
  if (model->connections().empty()) return {};  // the plain residual: no coefficients to diagnose
  torch::NoGradGuard no_grad;
  std::vector<SublayerRecord> records;
  model->forward(tokens, &records);
  return diagnose(records);
}

Tensor probe_tokens(const data::WindowSampler& validation, int64_t windows) {
  return validation.ordered(0, std::min(windows, validation.windows())).first;
}

nlohmann::ordered_json to_json(const std::vector<SublayerDiagnostics>& diagnostics) {
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
  column("share_max", [](const D& d) { return d.share_max; });
  column("share_min", [](const D& d) { return d.share_min; });
  column("effective_rank", [](const D& d) { return d.effective_rank; });
  column("h_res_to_identity", [](const D& d) { return d.identity_distance; });
  column("h_res_to_uniform", [](const D& d) { return d.uniform_distance; });
  column("pre_entropy", [](const D& d) { return d.pre_entropy; });
  column("post_entropy", [](const D& d) { return d.post_entropy; });
  column("sigma_max_max", [](const D& d) { return d.sigma_max.max; });
  column("sigma_min_min", [](const D& d) { return d.sigma_min.min; });
  column("composite_sigma_max_max", [](const D& d) { return d.composite_sigma_max.max; });
  column("composite_sigma_max_mean", [](const D& d) { return d.composite_sigma_max.mean; });
  column("composite_sigma_min_min", [](const D& d) { return d.composite_sigma_min.min; });
  column("composite_sigma_min_mean", [](const D& d) { return d.composite_sigma_min.mean; });
  column("orth_error", [](const D& d) { return d.orthogonality_error; });
  return j;
}

std::string table(const std::vector<SublayerDiagnostics>& diagnostics) {
  const Format number = Format::readable(5);
  std::vector<Column> gain_columns = {{"sublayer"}};
  for (const char* h : {"fwd max", "fwd mean", "bwd max", "bwd mean", "P fwd max", "P fwd mean", "P bwd max", "P bwd mean",
                        "row err", "col err", "min entry", "H_pre min", "H_pre max", "H_post min", "H_post max"})
    gain_columns.push_back({h, "", number});
  const Table gains(gain_columns, TableStyle::text);
  std::string out =
      "gains of H_res (single) and of P_l = H_res^(L-1)...H_res^(l) (composite), max and mean over probe tokens;\n"
      "doubly-stochastic error of H_res: max over tokens of |row sum - 1|, |column sum - 1|, and the smallest entry\n\n" +
      gains.header();
  for (const auto& d : diagnostics)
    out += gains.row({d.name, d.forward_gain.max, d.forward_gain.mean, d.backward_gain.max, d.backward_gain.mean,
                      d.composite_forward_gain.max, d.composite_forward_gain.mean, d.composite_backward_gain.max,
                      d.composite_backward_gain.mean, d.error.row, d.error.column, d.error.min_entry, d.pre_min, d.pre_max,
                      d.post_min, d.post_max});
  std::vector<Column> spectrum_columns = {{"sublayer"}};
  for (const char* h : {"s_max max", "s_min min", "P s_max max", "P s_max mean", "P s_min min", "P s_min mean",
                        "orth err"})
    spectrum_columns.push_back({h, "", number});
  const Table spectra(spectrum_columns, TableStyle::text);
  out += "\nsingular values of H_res and of P_l: the largest (max over tokens) and the smallest (min over tokens),\n"
         "and for P_l their means; orthogonality error max |H_res^T H_res - I| over tokens (an orthogonal map has\n"
         "every singular value 1; products of doubly stochastic maps drive the smallest towards 0)\n\n" +
         spectra.header();
  for (const auto& d : diagnostics)
    out += spectra.row({d.name, d.sigma_max.max, d.sigma_min.min, d.composite_sigma_max.max, d.composite_sigma_max.mean,
                        d.composite_sigma_min.min, d.composite_sigma_min.mean, d.orthogonality_error});
  std::vector<Column> stream_columns = {{"sublayer"}};
  for (const char* h : {"share max", "share min", "eff rank", "|H-I|", "|H-J/n|", "H_pre ent", "H_post ent"})
    stream_columns.push_back({h, "", number});
  const Table streams(stream_columns, TableStyle::text);
  out += "\nstream use, means over probe tokens: each stream's share ||x_i||^2 / sum_j ||x_j||^2 of the input state\n"
         "(largest and smallest over streams), the state's effective rank (1: one signal in n copies, n: n orthogonal\n"
         "streams), the Frobenius distance of H_res from I and from J/n, the entropy (nats) of |H_pre| and |H_post|\n"
         "normalised to sum to 1 (ln n: every stream weighted alike)\n\n" +
         streams.header();
  for (const auto& d : diagnostics)
    out += streams.row({d.name, d.share_max, d.share_min, d.effective_rank, d.identity_distance, d.uniform_distance,
                        d.pre_entropy, d.post_entropy});
  return out;
}

StreamSummary summarize_streams(const std::vector<SublayerDiagnostics>& diagnostics) {
  StreamSummary summary;
  if (diagnostics.empty()) return summary;
  summary.streams = diagnostics.front().streams;
  const size_t first = diagnostics.size() > 1 ? 1 : 0;
  double rank = 0, share = 0;
  for (size_t l = first; l < diagnostics.size(); ++l)
    rank += diagnostics[l].effective_rank, share += diagnostics[l].share_max;
  const double count = static_cast<double>(diagnostics.size() - first);
  summary.effective_rank = rank / count, summary.largest_share = share / count;
  return summary;
}

bool collapsed(const StreamSummary& summary, const CollapseThresholds& thresholds) {
  return summary.streams > 1 && (summary.effective_rank < thresholds.rank || summary.largest_share > thresholds.share);
}

CollapseAlarm::CollapseAlarm(const CollapseThresholds& thresholds, int64_t streak)
    : thresholds_(thresholds), streak_(streak) {}

bool CollapseAlarm::observe(const StreamSummary& summary) {
  last_ = summary;
  streak_ = collapsed(summary, thresholds_) ? streak_ + 1 : 0;
  return streak_ == thresholds_.after;
}

nlohmann::ordered_json CollapseAlarm::to_json() const {
  return {{"effective_rank", last_.effective_rank}, {"largest_share", last_.largest_share}, {"streak", streak_},
          {"alarm", firing()}};
}

int64_t CollapseAlarm::logged_streak(const nlohmann::ordered_json& logged) {
  return logged.is_object() ? logged.value("streak", int64_t{0}) : 0;
}

std::string CollapseAlarm::warning(int64_t step) const {
  std::ostringstream s;
  s << std::setprecision(3) << "warning: stream collapse at step " << step << ": ";
  if (last_.effective_rank < thresholds_.rank)
    s << "effective rank " << last_.effective_rank << " < " << thresholds_.rank
      << (last_.largest_share > thresholds_.share ? " and " : "");
  if (last_.largest_share > thresholds_.share)
    s << "largest stream share " << last_.largest_share << " > " << thresholds_.share;
  s << " for " << streak_ << " diagnostics in a row (means over sublayers, n = " << last_.streams
    << "; metrics.jsonl \"collapse\")";
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
      const Variant variant = c->options().variant();
      if (variant != Variant::mhc && variant != Variant::mhc_v4) {
        row.push_back(worst(records[l].mix.H_res));
        continue;
      }
      const Tensor& x = records[l].x;
      const Tensor flat = x.reshape({-1, x.size(-2), x.size(-1)});
      row.push_back(worst(mhc::pre(flat, c->phi, c->bias, c->alpha, variant, t).H_res));
    }
    out.push_back(row);
  }
  return out;
}

}  // namespace mhc::diag
