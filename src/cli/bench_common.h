// What the `mhc bench` commands share: wall-clock timing, the median, the machine's name, and the
// table style their flags choose.
#pragma once

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "args.h"
#include "mhc/table.h"

namespace mhc::cli {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t k = v.size() / 2;
  return v.size() % 2 ? v[k] : 0.5 * (v[k - 1] + v[k]);
}

inline std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// --json (one object per row) or --markdown (for docs/benchmarks.md), else aligned text; both at
// once are refused.
inline TableStyle table_style(const Args& a) {
  if (a.on("json") && a.on("markdown")) throw std::invalid_argument(a.command() + ": choose one of --json, --markdown");
  return a.on("json") ? TableStyle::json : a.on("markdown") ? TableStyle::markdown : TableStyle::text;
}

}  // namespace mhc::cli
