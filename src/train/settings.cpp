// The settings of a training run: every flag of `mhc train` with its default (the `tiny` preset),
// the other presets, the TOML reader and config.json.
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "../common/json.h"
#include "mhc/data.h"
#include "mhc/files.h"
#include "mhc/parse.h"
#include "mhc/settings.h"

namespace mhc::train {

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name != "cuda" && name.rfind("cuda:", 0) != 0)
    throw std::invalid_argument("--device '" + name + "' is not a device (accepted: cpu, cuda, cuda:N)");
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (count == 0)
    throw std::invalid_argument("--device " + name + ": no CUDA GPU is usable here (a CPU-only LibTorch, or no GPU " +
                                "visible; accepted here: cpu)");
  const int64_t index = name == "cuda" ? 0 : parse_integer("--device cuda:N", name.substr(5), 0, count - 1);
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(index)};
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  throw std::invalid_argument("--dtype '" + name + "' is not supported (accepted: float32, bfloat16)");
}

// A count with no bound of its own (a step number, an interval in steps).
constexpr int64_t kNoLimit = INT64_MAX;

int default_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

const std::vector<SettingSpec>& setting_specs() {
  static const std::vector<SettingSpec> specs = {
      // what is trained
      {"variant", "mhc", "residual variant: residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc (also "
       "--residual)", {}, false, {}, "residual"},
      {"streams", "4", "n, the number of residual streams (residual: always 1)", IntegerRange{1, kMaxStreams}, false},
      {"sinkhorn-iters", "20", "t, Sinkhorn–Knopp iterations (mhc, mhc-v4)", IntegerRange{0, kMaxSinkhornIters}, false},
      {"cayley-iters", "0", "jpmhc: 0 for the exact Cayley map, s for the paper's s fixed-point steps",
       IntegerRange{0, kMaxCayleyIters}, false, "0"},
      {"cayley-scale", "0.1", "jpmhc: beta, the scale of the skew matrix the Cayley map takes", RealRange{1e-30, 1e30},
       false, "0.1"},
      {"block-size", "2", "gomhc: s, the side of the blocks of the orthogonal matrix's squares (1 or 2)",
       IntegerRange{1, 2}, false, "2"},
      {"bias-init", "paper", "initial connection logits: paper, zero", {}, false},
      {"head", "sum", "end of the stream stack: sum (of the streams) or hyper (DeepSeek-V4's learned per-token "
       "weighted sum)", {}, false, "sum"},
      {"layers", "4", "transformer blocks (each = attention + MLP sublayer)", IntegerRange{1, 1024}, false},
      {"dim", "128", "C, the width of each stream", IntegerRange{2, 1 << 16}, false},
      {"heads", "4", "attention heads (must divide --dim)", IntegerRange{1, 1 << 12}, false},
      {"seq-len", "128", "tokens per training window", IntegerRange{1, 1 << 20}, false},
      // on what
      {"data", "brown", "'brown' (the Brown corpus) or a UTF-8 text file or folder of them (at most " +
       byte_count_text(data::kMaxCorpusBytes) + " in all)", {}, false},
      {"tokenizer", "bpe", "bpe (SentencePiece, trained on the training split) or byte", {}, false},
      {"vocab", "4096", "BPE vocabulary size", IntegerRange{2, 1 << 20}, false},
      // how
      {"steps", "400", "optimizer steps (the cosine schedule ends here)", IntegerRange{1, int64_t(1) << 40}, false},
      {"batch", "16", "windows per micro-batch, over all ranks (each takes batch / WORLD_SIZE)", IntegerRange{1, 1 << 20}, false},
      {"accum", "1", "micro-batches per optimizer step (gradient accumulation)", IntegerRange{1, 1 << 20}, false},
      {"lr", "0.003", "peak learning rate", RealRange{0, 1e30}, false},
      {"min-lr", "0.0003", "learning rate at the end of the cosine", RealRange{0, 1e30}, false},
      {"warmup", "40", "linear warmup steps", IntegerRange{0, kNoLimit}, false},
      {"weight-decay", "0.1", "AdamW decoupled weight decay (matrices only)", RealRange{0, 1e3}, false},
      {"beta1", "0.9", "AdamW beta1", RealRange{0, 0.999999}, false},
      {"beta2", "0.95", "AdamW beta2", RealRange{0, 0.999999}, false},
      {"clip", "1.0", "gradient clipping by global norm (0: off)", RealRange{0, 1e30}, false},
      {"seed", "1337", "seed of the initialisation and the data order", IntegerRange{0, kNoLimit}, false},
      {"dtype", "float32", "activations: float32, or bfloat16 (fp32 master weights, coefficients and loss)", {}, false,
       "float32"},
      // run settings (a resumed run may change them)
      {"out", "runs/default", "output folder: config.json, metrics.jsonl, checkpoints", {}, true},
      {"data-dir", "data", "where the corpus is installed and token caches are kept", {}, true},
      {"device", "cpu", "where the model trains: cpu, cuda, cuda:N", {}, true},
      {"threads", std::to_string(default_threads()), "CPU threads", IntegerRange{1, 1024}, true},
      {"recompute", "none", "what the backward pass rebuilds instead of keeping: none; streams (the connections' "
       "n-stream states, F not re-run; a no-op for the plain residual); blocks (whole groups of sublayers, F included)", {}, true},
      {"recompute-every", "auto", "L_r, sublayers per recomputed group: auto (streams: the stack in equal groups of at "
       "most 12; blocks: round(sqrt(n·L/(n+2))), L sublayers) or a whole number >= 1", {}, true},
      {"eval-every", "50", "validation every N steps (0: only at the end)", IntegerRange{0, kNoLimit}, true},
      {"eval-batches", "8", "validation batches per evaluation (0: the whole split)", IntegerRange{0, 1 << 30}, true},
      {"diag-every", "10", "signal-gain diagnostics into metrics.jsonl every N steps and at the end (0: never)", IntegerRange{0, kNoLimit}, true},
      {"diag-batch", "4", "validation windows in the diagnostics' fixed probe batch", IntegerRange{1, 1 << 20}, true},
      {"collapse-rank", "1.2", "stream-collapse alarm: a diagnostic counts as collapsed when the streams' effective "
       "rank (1 to n, mean over sublayers) is below this (0: never)", RealRange{0, 1e6}, true},
      {"collapse-share", "0.9", "... or when the largest stream's share of the state's energy (1/n to 1) is above this "
       "(1: never)", RealRange{0, 1}, true},
      {"collapse-after", "5", "collapsed diagnostics in a row that fire the alarm: one warning line, \"alarm\": true "
       "in metrics.jsonl", IntegerRange{1, kNoLimit}, true},
      {"ckpt-every", "100", "checkpoint every N steps (and at the end, and on SIGINT/SIGTERM)", IntegerRange{0, kNoLimit}, true},
      {"keep", "2", "checkpoints kept (older ones are deleted)", IntegerRange{1, 1 << 20}, true},
      {"stop-after", "0", "stop with a checkpoint after this step (0: run all --steps)", IntegerRange{0, kNoLimit}, true},
      {"max-bad-steps", "5", "stop after this many non-finite steps in a row", IntegerRange{1, 1 << 20}, true},
      {"sample-tokens", "48", "tokens sampled at the end of training (0: none)", IntegerRange{0, 1 << 20}, true},
      {"dist-timeout", "120", "seconds any rank may wait for another in a collective before exiting with an error", RealRange{0.001, 1e6}, true},
      {"pipeline-stages", "1", "S, pipeline stages: the blocks split into S contiguous stages balanced by cost, one rank "
       "each (WORLD_SIZE = S x data-parallel replicas; micro-batches: --accum)", IntegerRange{1, 1 << 20}, true},
      {"schedule", "1f1b", "pipeline schedule: 1f1b (one forward, one backward: at most S micro-batches in flight) or "
       "gpipe (every forward, then every backward)", {}, true},
      {"pipe-dtype", "auto", "dtype of the stream state and its gradient between pipeline stages: auto (the "
       "activations' --dtype), float32 or bfloat16 (the coefficients never travel)", {}, true},
  };
  return specs;
}

const SettingSpec& setting_spec(const std::string& name) {
  for (const auto& spec : setting_specs())
    if (spec.name == name) return spec;
  throw std::logic_error("no setting named " + name);
}

const std::map<std::string, std::map<std::string, std::string>>& presets() {
  static const std::map<std::string, std::map<std::string, std::string>> table = {
      {"tiny", {}},
      // C = 512: the width at which the connection's overhead is measured (mhc bench train).
      {"small",
       {{"dim", "512"}, {"layers", "6"}, {"heads", "8"}, {"seq-len", "256"}, {"batch", "8"}, {"steps", "1000"},
        {"lr", "0.001"}, {"min-lr", "0.0001"}, {"warmup", "100"}, {"eval-every", "100"}, {"ckpt-every", "200"}}},
      // 24 blocks = 48 sublayers, narrow: the stability experiment of DESIGN.md §5.
      {"deep",
       {{"dim", "64"}, {"layers", "24"}, {"heads", "2"}, {"seq-len", "128"}, {"batch", "16"}, {"steps", "300"},
        {"lr", "0.003"}, {"min-lr", "0.0003"}, {"warmup", "30"}, {"eval-every", "50"}}},
  };
  return table;
}

const std::string& Settings::str(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) throw std::logic_error("setting " + name + " was never resolved");
  return it->second;
}

int64_t Settings::integer(const std::string& name) const {
  return parse_integer("--" + name, str(name), setting_spec(name).range);
}

double Settings::real(const std::string& name) const { return parse_real("--" + name, str(name), setting_spec(name).range); }

std::string Settings::to_json() const {
  nlohmann::ordered_json j;
  for (const auto& spec : setting_specs()) {
    const std::string& v = str(spec.name);
    if (std::holds_alternative<IntegerRange>(spec.range)) j[spec.name] = std::stoll(v);
    else if (std::holds_alternative<RealRange>(spec.range)) j[spec.name] = std::stod(v);
    else j[spec.name] = v;
  }
  return j.dump(2) + "\n";
}

void Settings::require_utf8() const {
  for (const auto& spec : setting_specs())
    if (std::holds_alternative<std::monostate>(spec.range)) mhc::require_utf8("--" + spec.name, str(spec.name));
}

Settings Settings::from_json(const std::string& json) {
  Settings s;
  const auto j = parse_bounded_json(json);
  for (const auto& spec : setting_specs()) {
    const std::string& key = !j.contains(spec.name) && !spec.old_name.empty() && j.contains(spec.old_name)
                                 ? spec.old_name : spec.name;
    if (!j.contains(key)) {
      // A setting added after the run was written: run settings take their default, the others
      // the value every earlier run had, if there is one.
      if (!spec.run && spec.before_it_existed.empty())
        throw std::invalid_argument("the run's settings lack '" + spec.name + "'");
      s.values[spec.name] = spec.run ? spec.default_value : spec.before_it_existed;
      continue;
    }
    const auto& v = j.at(key);
    s.values[spec.name] = v.is_string() ? v.get<std::string>() : v.dump();  // numbers: shortest exact form
  }
  return s;
}

// The variant's own options from their flags; the others keep their defaults, as --sinkhorn-iters
// means nothing to a variant without Sinkhorn–Knopp (and `mhc compare` passes one set of flags to
// every variant it trains).
VariantOptions Settings::variant_options() const {
  const Variant variant = parse_variant(str("variant"));
  VariantOptions o;
  if (variant == Variant::jpmhc) {
    o.cayley_iters = static_cast<int>(integer("cayley-iters"));
    o.cayley_scale = real("cayley-scale");
  }
  if (variant == Variant::gomhc) o.block_size = static_cast<int>(integer("block-size"));
  return o;
}

GPTConfig Settings::model_config(int64_t vocab) const {
  GPTConfig c;
  c.vocab = vocab;
  c.variant = parse_variant(str("variant"));
  c.streams = integer("streams");
  c.sinkhorn_iters = integer("sinkhorn-iters");
  c.variant_options = variant_options();
  c.bias_init = BiasInit::named(str("bias-init"));
  c.head = parse_stream_head(str("head"));
  c.layers = integer("layers");
  c.dim = integer("dim");
  c.heads = integer("heads");
  c.seq_len = integer("seq-len");
  c.dtype = parse_dtype(str("dtype"));
  c.recompute.mode = parse_recompute(str("recompute"));
  const std::string& every = str("recompute-every");
  try {
    c.recompute.every = every == "auto" ? 0 : parse_integer("--recompute-every", every, 1, 1 << 20);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string(e.what()) + " (accepted: auto or a whole number >= 1)");
  }
  c.check();
  return c;
}

std::map<std::string, std::string> read_toml(const std::string& path) {
  // A settings file is a few dozen lines; the bound keeps a wrong path (a log, a device) from being
  // read whole, and reading it ourselves refuses folders and devices that toml++ reads as empty.
  constexpr int64_t kMaxConfigBytes = 1 << 20;
  const std::string text = read_input_file(path, "config", kMaxConfigBytes);
  toml::table table;
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    std::ostringstream s;
    s << "config " << path << ": " << e.description() << " (line " << e.source().begin.line << ")";
    throw std::invalid_argument(s.str());
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, node] : table) {
    std::string name(key.str());
    bool known = false;
    for (const auto& s : setting_specs()) {
      if (!s.old_name.empty() && s.old_name == name) name = s.name;
      known |= s.name == name;
    }
    if (!known) throw std::invalid_argument("config " + path + ": unknown key '" + name + "' (keys are the flags of `mhc train --help`)");
    std::ostringstream text;
    text.precision(17);
    if (auto v = node.value_exact<std::string>()) text << *v;
    else if (auto i = node.value_exact<int64_t>()) text << *i;
    else if (auto f = node.value_exact<double>()) text << *f;
    else throw std::invalid_argument("config " + path + ": '" + name + "' must be a string or a number");
    out[name] = text.str();
  }
  return out;
}

}  // namespace mhc::train
