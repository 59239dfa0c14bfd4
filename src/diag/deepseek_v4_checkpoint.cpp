// Reading DeepSeek-V4's hyper-connection tensors out of its safetensors shards
// (mhc/deepseek_v4_checkpoint.h).
#include "mhc/deepseek_v4_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "../common/safetensors.h"
#include "mhc/variant.h"

namespace fs = std::filesystem;

namespace mhc {

namespace {

constexpr const char* kLabel = "safetensors file";

// Where one tensor is: its file and entry.
struct Located {
  size_t file = 0;
  safetensors::Entry entry;
};

// One connection's (or the head's) three tensors, keyed "fn", "base", "scale".
using Parts = std::map<std::string, Located>;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << c10::IntArrayRef(shape);
  return s.str();
}

std::vector<std::string> shard_files(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const std::string& path : paths) {
    const fs::file_status status = fs::status(path);
    if (!fs::exists(status)) throw std::invalid_argument("--deepseek-v4: " + path + " does not exist");
    if (fs::is_directory(status)) {
      size_t before = files.size();
      for (const auto& e : fs::directory_iterator(path))
        if (e.path().extension() == ".safetensors" && e.is_regular_file()) files.push_back(e.path().string());
      if (files.size() == before)
        throw std::invalid_argument("--deepseek-v4: folder " + path + " holds no .safetensors files");
    } else if (fs::is_regular_file(status)) {
      files.push_back(path);
    } else {
      throw std::invalid_argument("--deepseek-v4: " + path + " is neither a safetensors file nor a folder of them");
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

// The name a sublayer's part has under the checkpoint's naming.
std::string part_name(bool native, int64_t layer, const std::string& kind, const std::string& part) {
  return native ? "layers." + std::to_string(layer) + ".hc_" + kind + "_" + part
                : "model.layers." + std::to_string(layer) + "." + kind + "_hc." + part;
}
std::string head_name(bool native, const std::string& part) {
  return native ? "hc_head_" + part : "model.hc_head.hc_" + part;
}

}  // namespace

DeepSeekV4Checkpoint read_deepseek_v4(const std::vector<std::string>& paths) {
  DeepSeekV4Checkpoint out;
  out.files = shard_files(paths);
  static const std::regex native_layer(R"(layers\.(\d+)\.hc_(attn|ffn)_(fn|base|scale))"),
      hf_layer(R"(model\.layers\.(\d+)\.(attn|ffn)_hc\.(fn|base|scale))"), native_head(R"(hc_head_(fn|base|scale))"),
      hf_head(R"(model\.hc_head\.hc_(fn|base|scale))");

  std::vector<safetensors::Index> indexes;
  std::map<std::pair<int64_t, std::string>, Parts> layers;  // (layer, "attn" | "ffn") -> parts
  Parts head;
  std::map<std::string, std::string> seen;  // tensor name -> its file
  int native = 0, hf = 0;
  for (size_t f = 0; f < out.files.size(); ++f) {
    indexes.push_back(safetensors::read_index(kLabel, out.files[f]));
    for (const auto& e : indexes.back().entries) {
      std::smatch m;
      Parts* parts = nullptr;
      std::string part;
      if (std::regex_match(e.name, m, native_layer) || std::regex_match(e.name, m, hf_layer)) {
        (e.name[0] == 'l' ? native : hf)++;
        if (m[1].length() > 6) throw std::invalid_argument("--deepseek-v4: tensor " + e.name + ": layer index out of range");
        parts = &layers[{std::stoll(m[1].str()), m[2].str()}];
        part = m[3].str();
      } else if (std::regex_match(e.name, m, native_head) || std::regex_match(e.name, m, hf_head)) {
        (e.name[0] == 'h' ? native : hf)++;
        parts = &head;
        part = m[1].str();
      } else {
        continue;  // not a hyper-connection tensor: never read
      }
      // Model-parallel shards may each hold a copy of a tensor that is not split: the first is read.
      if (const auto dup = seen.find(e.name); dup != seen.end()) {
        const Located& first = (*parts)[part];
        if (first.entry.type != e.type || first.entry.shape != e.shape)
          throw std::invalid_argument("--deepseek-v4: tensor " + e.name + " is in both " + dup->second + " and " +
                                      out.files[f] + ", with different dtypes or shapes");
        continue;
      }
      seen[e.name] = out.files[f];
      if (e.type != torch::kFloat)
        throw std::invalid_argument("--deepseek-v4: " + e.name + " has dtype " + safetensors::dtype_name(e.type) +
                                    ", expected F32 (DeepSeek-V4 keeps its hyper-connection tensors in float32)");
      (*parts)[part] = {f, e};
    }
  }
  if (layers.empty())
    throw std::invalid_argument("--deepseek-v4: no DeepSeek-V4 hyper-connection tensors (layers.{l}.hc_attn_fn, … or "
                                "model.layers.{l}.attn_hc.fn, …) in " + std::to_string(out.files.size()) + " file(s)");
  if (native > 0 && hf > 0)
    throw std::invalid_argument("--deepseek-v4: the files mix native names (layers.{l}.hc_attn_fn) and Hugging Face "
                                "names (model.layers.{l}.attn_hc.fn)");
  const bool is_native = native > 0;
  out.naming = is_native ? "native" : "Hugging Face";

  auto read = [&](const Located& at) {
    out.bytes_read += at.entry.end - at.entry.begin;
    return safetensors::read_tensor(kLabel, out.files[at.file], indexes[at.file], at.entry);
  };
  auto need = [&](const Parts& parts, const std::string& part, const std::string& name) -> const Located& {
    const auto it = parts.find(part);
    if (it == parts.end()) throw std::invalid_argument("--deepseek-v4: tensor " + name + " is missing");
    return it->second;
  };
  // Every layer 0 … L−1 has both sublayers, each all three tensors, of one n and C.
  const int64_t L = layers.rbegin()->first.first + 1;
  for (int64_t l = 0; l < L; ++l)
    for (const std::string kind : {"attn", "ffn"}) {
      const auto it = layers.find({l, kind});
      const Parts empty;
      const Parts& parts = it == layers.end() ? empty : it->second;
      const Located& fn = need(parts, "fn", part_name(is_native, l, kind, "fn"));
      const Located& base = need(parts, "base", part_name(is_native, l, kind, "base"));
      const Located& scale = need(parts, "scale", part_name(is_native, l, kind, "scale"));
      if (out.streams == 0) {  // n and C from the first sublayer
        const int64_t n = base.entry.shape.size() == 1 ? deepseek_v4_streams(base.entry.shape[0]) : 0;
        if (n == 0)
          throw std::invalid_argument("--deepseek-v4: " + base.entry.name + " has shape " + shape_text(base.entry.shape) +
                                      ", expected [(2+n)·n] for n in [1, " + std::to_string(kMaxStreams) + "]");
        const auto& s = fn.entry.shape;
        if (s.size() != 2 || s[0] != (2 + n) * n || s[1] < n || s[1] % n != 0)
          throw std::invalid_argument("--deepseek-v4: " + fn.entry.name + " has shape " + shape_text(s) + ", expected [" +
                                      std::to_string((2 + n) * n) + ", n·C] for n = " + std::to_string(n) + " (from " +
                                      base.entry.name + ")");
        out.streams = n, out.width = s[1] / n;
      }
      const int64_t n = out.streams, C = out.width;
      const std::string from = " (n = " + std::to_string(n) + " streams of width C = " + std::to_string(C) + ", from " +
                               part_name(is_native, 0, "attn", "*") + ")";
      for (const auto& [at, want] : {std::pair{&fn, std::vector<int64_t>{(2 + n) * n, n * C}},
                                     {&base, std::vector<int64_t>{(2 + n) * n}}, {&scale, std::vector<int64_t>{3}}})
        if (at->entry.shape != want)
          throw std::invalid_argument("--deepseek-v4: " + at->entry.name + " has shape " + shape_text(at->entry.shape) +
                                      ", expected " + shape_text(want) + from);
      DeepSeekV4Sublayer s;
      s.name = std::string(kind) + " " + std::to_string(l);
      s.tensor_name = fn.entry.name;
      s.v4 = {read(fn), read(base), read(scale)};
      s.params = from_deepseek_v4(s.v4.fn, s.v4.base, s.v4.scale);
      out.sublayers.push_back(std::move(s));
    }
  if (!head.empty()) {
    const int64_t n = out.streams, C = out.width;
    const Located& fn = need(head, "fn", head_name(is_native, "fn"));
    const Located& base = need(head, "base", head_name(is_native, "base"));
    const Located& scale = need(head, "scale", head_name(is_native, "scale"));
    for (const auto& [at, want] : {std::pair{&fn, std::vector<int64_t>{n, n * C}}, {&base, std::vector<int64_t>{n}},
                                   {&scale, std::vector<int64_t>{1}}})
      if (at->entry.shape != want)
        throw std::invalid_argument("--deepseek-v4: " + at->entry.name + " has shape " + shape_text(at->entry.shape) +
                                    ", expected " + shape_text(want) + " (n = " + std::to_string(n) +
                                    " streams of width C = " + std::to_string(C) + ")");
    out.head = {read(fn), read(base), read(scale)};
  }
  return out;
}

}  // namespace mhc
