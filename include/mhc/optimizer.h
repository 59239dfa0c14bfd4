// The optimiser of a training run: AdamW with an explicit state (checkpoints hold it as is), and
// the learning-rate schedule, linear warmup then cosine.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace mhc::train {

// AdamW (Loshchilov & Hutter: decoupled weight decay). Matrices decay; vectors — norm gains, the
// connections' biases and scalar gains — do not.
class AdamW {
 public:
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  };
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_parameters, Options options);
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  // name -> tensor for "adam_m/<param>", "adam_v/<param>"; load() requires every one of them.
  std::map<std::string, torch::Tensor> state() const;
  void load(const std::map<std::string, torch::Tensor>& state, int64_t steps_taken);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, m, v;
    bool decay;
  };
  std::vector<Slot> slots_;
  Options options_;
  int64_t step_ = 0;
};

// Linear warmup over `warmup` steps to `peak`, then cosine to `floor` at step `total`.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double peak, double floor);

}  // namespace mhc::train
