// The targets of readers.h, through the library's own entry points.
#include "readers.h"

#include <exception>

#include "mhc/checkpoint.h"
#include "mhc/files.h"
#include "mhc/parse.h"
#include "mhc/settings.h"

namespace mhc::fuzz {

namespace {

bool read_checkpoint(const std::string& path) {
  train::read_checkpoint_metadata(path);
  const train::Checkpoint checkpoint = train::load_checkpoint(path);
  for (const auto& [name, tensor] : checkpoint.tensors) tensor.sum();  // every byte the reader claims is really there
  return true;
}

// Reads the settings file and converts every value as training would, huge numbers included.
bool read_config(const std::string& path) {
  const auto values = train::read_toml(path);
  for (const auto& spec : train::setting_specs()) {
    const auto it = values.find(spec.name);
    if (it == values.end()) continue;
    if (std::holds_alternative<IntegerRange>(spec.range)) parse_integer("--" + spec.name, it->second, spec.range);
    if (std::holds_alternative<RealRange>(spec.range)) parse_real("--" + spec.name, it->second, spec.range);
  }
  return true;
}

std::string checkpoint_bytes(const std::string& path, const train::Checkpoint& checkpoint) {
  train::save_checkpoint(path, checkpoint);
  return read_file(path);
}

}  // namespace

const char* reader_name(Reader reader) { return reader == Reader::checkpoint ? "checkpoint" : "config"; }

bool read_as(Reader reader, const std::string& bytes, const std::string& scratch_path) {
  write_file_atomic(scratch_path, bytes);
  try {
    return reader == Reader::checkpoint ? read_checkpoint(scratch_path) : read_config(scratch_path);
  } catch (const std::exception&) {
    return false;
  }
}

std::vector<std::string> valid_inputs(Reader reader, const std::string& scratch_path) {
  if (reader == Reader::config)
    return {"residual = \"mhc-lite\"\nstreams = 3\nlr = 0.001\n",
            "# a run\ndim = 64\nlayers = 2\nheads = 2\nbeta2 = 9.5e-1\nclip = 0\ndata = 'text.txt'\nseed = 0\n",
            "steps = 100\nwarmup = 10\nmin-lr = 1e-5\nweight-decay = 0.0\ndtype = \"bfloat16\"\ndist-timeout = 1.5\n"};
  torch::manual_seed(0);
  train::Checkpoint small;
  small.tensors = {{"model/w", torch::randn({3, 4})},
                   {"model/b", torch::randn({4}, torch::kDouble)},
                   {"model/h", torch::randn({2, 2}).to(torch::kBFloat16)},
                   {"model/g", torch::randn({2}).to(torch::kHalf)},
                   {"rng/state", torch::arange(5, torch::kLong)},
                   {"data/position", torch::tensor({7}, torch::kInt)},
                   {"tokenizer", torch::tensor({104, 105}, torch::kByte)},
                   {"empty", torch::empty({0, 3})}};
  small.metadata = {{"format", "mhc-1"}, {"step", "12"}, {"config", "{\"dim\": 32}"}};
  train::Checkpoint bare;
  bare.tensors = {{"only", torch::ones({1})}};
  return {checkpoint_bytes(scratch_path, small), checkpoint_bytes(scratch_path, bare)};
}

}  // namespace mhc::fuzz
