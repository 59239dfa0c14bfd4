// AdamW with explicit state, and the learning-rate schedule.
#include <cmath>
#include <stdexcept>

#include "mhc/optimizer.h"

namespace mhc::train {

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_parameters, Options options)
    : options_(options) {
  for (const auto& [name, p] : named_parameters)
    slots_.push_back({name, p, torch::zeros_like(p), torch::zeros_like(p), p.dim() >= 2});
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
  for (auto& s : slots_) {
    if (!s.param.grad().defined()) continue;
    const torch::Tensor g = s.param.grad();
    s.m.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
    s.v.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
    if (s.decay) s.param.mul_(1.0 - lr * options_.weight_decay);
    const torch::Tensor denom = (s.v / bias2).sqrt_().add_(options_.eps);
    s.param.addcdiv_(s.m, denom, -lr / bias1);
  }
}

std::map<std::string, torch::Tensor> AdamW::state() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& s : slots_) out["adam_m/" + s.name] = s.m, out["adam_v/" + s.name] = s.v;
  return out;
}

void AdamW::load(const std::map<std::string, torch::Tensor>& state, int64_t steps_taken) {
  torch::NoGradGuard no_grad;
  auto load_one = [&](const std::string& key, torch::Tensor& target) {
    auto it = state.find(key);
    if (it == state.end() || it->second.sizes() != target.sizes())
      throw std::invalid_argument("checkpoint has no optimizer state '" + key + "' of shape " + c10::str(target.sizes()));
    target.copy_(it->second);
  };
  for (auto& s : slots_) load_one("adam_m/" + s.name, s.m), load_one("adam_v/" + s.name, s.v);
  step_ = steps_taken;
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak, double floor) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = total > warmup ? static_cast<double>(step - warmup) / static_cast<double>(total - warmup) : 1.0;
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

}  // namespace mhc::train
