// What `mhc analyze`'s two sources share: a trained run's checkpoint (analyze.cpp) and a DeepSeek-V4
// checkpoint's connections (analyze_deepseek_v4.cpp) end in the same analysis.json and plots.
#pragma once

#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "args.h"

namespace mhc::cli {

// analyze's --deepseek-v4 mode, after its flags are parsed.
int analyze_deepseek_v4(const Args& a);

// H_res [..., n, n] -> its mean over tokens, as n rows (analysis.json's "mean_h_res" entries).
nlohmann::json mean_matrix(const torch::Tensor& H_res);

// Writes `report` as <out>/analysis.json (warning, in one line, about values that are not finite)
// and, with `plots`, draws its plots beside it.
void write_analysis(const std::string& out, const nlohmann::ordered_json& report, bool plots = true);

}  // namespace mhc::cli
