// Reading DeepSeek-V4's hyper-connection tensors out of its safetensors shards
// (mhc/deepseek_v4_checkpoint.h).
#include "mhc/deepseek_v4_checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <sstream>
#include <stdexcept>

#include "../common/safetensors.h"
#include "mhc/parse.h"
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

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << c10::IntArrayRef(shape);
  return s.str();
}

// Each file once, by device and inode (links and a second path to one file are not read again),
// the first name of each kept.
std::vector<std::string> distinct_files(const std::vector<std::string>& files) {
  std::vector<std::string> distinct;
  std::set<std::pair<dev_t, ino_t>> seen;
  for (const std::string& file : files) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) throw std::invalid_argument("--deepseek-v4: cannot read " + file);
    if (!seen.insert({st.st_dev, st.st_ino}).second) continue;
    require_utf8("--deepseek-v4: the shard", file);  // analysis.json names it
    distinct.push_back(file);
  }
  return distinct;
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
  return distinct_files(files);
}

// The name a sublayer's part has under the checkpoint's naming.
std::string part_name(bool native, int64_t layer, const std::string& kind, const std::string& part) {
  return native ? "layers." + std::to_string(layer) + ".hc_" + kind + "_" + part
                : "model.layers." + std::to_string(layer) + "." + kind + "_hc." + part;
}
std::string head_name(bool native, const std::string& part) {
  return native ? "hc_head_" + part : "model.hc_head.hc_" + part;
}

// ---- Names: a hyper-connection tensor's place, read without regex (a name of 200,000 digits
// overflowed std::regex's recursion) ----

constexpr size_t kMaxLayerDigits = 6;

// What a tensor's name says: the layer (-1: the head), "attn" or "ffn", the part, the naming.
struct Place {
  int64_t layer;
  std::string kind, part;
  bool native;
  bool operator<(const Place& o) const { return std::tie(layer, kind, part) < std::tie(o.layer, o.kind, o.part); }
};

bool take(std::string_view& s, std::string_view prefix) {
  if (s.substr(0, prefix.size()) != prefix) return false;
  s.remove_prefix(prefix.size());
  return true;
}

// One of `words` at the front of s, taken; empty when none is.
std::string take_one_of(std::string_view& s, std::initializer_list<std::string_view> words) {
  for (std::string_view w : words)
    if (take(s, w)) return std::string(w);
  return "";
}

// The layer index at the front of s, taken; nullopt without digits. Throws past kMaxLayerDigits.
std::optional<int64_t> take_layer(std::string_view& s, const std::string& name) {
  size_t digits = 0;
  while (digits < s.size() && s[digits] >= '0' && s[digits] <= '9') ++digits;
  if (digits == 0) return std::nullopt;
  if (digits > kMaxLayerDigits) throw std::invalid_argument("--deepseek-v4: tensor " + name.substr(0, 40) +
                                                           "…: layer index out of range");
  const int64_t layer = std::stoll(std::string(s.substr(0, digits)));
  s.remove_prefix(digits);
  return layer;
}

// layers.{l}.hc_{attn|ffn}_{part}, model.layers.{l}.{attn|ffn}_hc.{part}, hc_head_{part},
// model.hc_head.hc_{part}; nullopt for any other name (a tensor never read).
std::optional<Place> place_of(const std::string& name) {
  std::string_view s = name;
  Place p{-1, "", "", true};
  if (take(s, "hc_head_")) {
  } else if (take(s, "model.hc_head.hc_")) {
    p.native = false;
  } else {
    p.native = !take(s, "model.");
    if (!take(s, "layers.")) return std::nullopt;
    const std::optional<int64_t> layer = take_layer(s, name);
    if (!layer || !take(s, p.native ? ".hc_" : ".")) return std::nullopt;
    p.layer = *layer;
    p.kind = take_one_of(s, {"attn", "ffn"});
    if (p.kind.empty() || !take(s, p.native ? "_" : "_hc.")) return std::nullopt;
  }
  p.part = take_one_of(s, {"fn", "base", "scale"});
  if (p.part.empty() || !s.empty()) return std::nullopt;
  return p;
}

// ---- The index: where each part of each sublayer is ----

// Every hyper-connection tensor of the shards, by place, and which naming they use.
struct Found {
  std::vector<safetensors::Index> indexes;  // one per file
  std::map<Place, Located> parts;
  bool native = true;
};

Found find_connections(const std::vector<std::string>& files) {
  Found found;
  std::map<Place, std::string> name_of, file_of;  // the name and file each place was first seen with
  int native = 0, hf = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    found.indexes.push_back(safetensors::read_index(kLabel, files[f]));
    for (const auto& e : found.indexes.back().entries) {
      const std::optional<Place> place = place_of(e.name);
      if (!place) continue;  // not a hyper-connection tensor: never read
      (place->native ? native : hf)++;
      if (const auto seen = name_of.find(*place); seen != name_of.end()) {
        // Two spellings of one place ("layers.01" and "layers.1") would make one of them win silently.
        if (seen->second != e.name)
          throw std::invalid_argument("--deepseek-v4: tensors " + seen->second + " and " + e.name +
                                      " name the same sublayer's " + place->part + " (one name each, please)");
        // Model-parallel shards may each hold a copy of a tensor that is not split: the first is read.
        const Located& first = found.parts.at(*place);
        if (first.entry.type != e.type || first.entry.shape != e.shape)
          throw std::invalid_argument("--deepseek-v4: tensor " + e.name + " is in both " + file_of.at(*place) + " and " +
                                      files[f] + ", with different dtypes or shapes");
        continue;
      }
      name_of[*place] = e.name, file_of[*place] = files[f];
      if (e.type != torch::kFloat)
        throw std::invalid_argument("--deepseek-v4: " + e.name + " has dtype " + e.dtype +
                                    ", expected F32 (DeepSeek-V4 keeps its hyper-connection tensors in float32)");
      found.parts[*place] = {f, e};
    }
  }
  if (found.parts.empty() || found.parts.rbegin()->first.layer < 0)
    throw std::invalid_argument("--deepseek-v4: no DeepSeek-V4 hyper-connection tensors (layers.{l}.hc_attn_fn, … or "
                                "model.layers.{l}.attn_hc.fn, …) in " + std::to_string(files.size()) + " file(s)");
  if (native > 0 && hf > 0)
    throw std::invalid_argument("--deepseek-v4: the files mix native names (layers.{l}.hc_attn_fn) and Hugging Face "
                                "names (model.layers.{l}.attn_hc.fn)");
  found.native = native > 0;
  uint64_t bytes = 0;  // what the headers claim the connections take, before a byte of it is read
  for (const auto& [place, at] : found.parts) bytes += at.entry.end - at.entry.begin;
  if (bytes > kMaxConnectionBytes)
    throw std::invalid_argument("--deepseek-v4: the headers claim " + std::to_string(bytes) + " bytes of hyper-connection "
                                "tensors, above the limit of " + std::to_string(kMaxConnectionBytes) + " (DeepSeek-V4's "
                                "take about 0.34 GB)");
  return found;
}

// ---- Reading the parts ----

class Reader {
 public:
  Reader(DeepSeekV4Checkpoint& out, const Found& found) : out_(out), found_(found) {}

  // One sublayer's fn, base and scale; the first sublayer sets n and C.
  void read_sublayer(int64_t layer, const std::string& kind) {
    const Located& fn = need({layer, kind, "fn", true}, part_name(found_.native, layer, kind, "fn"));
    const Located& base = need({layer, kind, "base", true}, part_name(found_.native, layer, kind, "base"));
    const Located& scale = need({layer, kind, "scale", true}, part_name(found_.native, layer, kind, "scale"));
    if (out_.streams == 0) set_streams_and_width(fn, base);
    const int64_t n = out_.streams, C = out_.width;
    check_shapes({{&fn, {(2 + n) * n, n * C}}, {&base, {(2 + n) * n}}, {&scale, {3}}},
                 " (n = " + std::to_string(n) + " streams of width C = " + std::to_string(C) + ", from " +
                     part_name(found_.native, 0, "attn", "*") + ")");
    DeepSeekV4Sublayer s;
    s.name = kind + " " + std::to_string(layer);
    s.tensor_name = fn.entry.name;
    s.v4 = {read(fn), read(base), read(scale)};
    s.params = from_deepseek_v4(s.v4.fn, s.v4.base, s.v4.scale);
    out_.sublayers.push_back(std::move(s));
  }

  // The head's fn, base and scale, when the shards hold any of them.
  void read_head() {
    if (found_.parts.begin()->first.layer >= 0) return;
    const int64_t n = out_.streams, C = out_.width;
    const Located& fn = need({-1, "", "fn", true}, head_name(found_.native, "fn"));
    const Located& base = need({-1, "", "base", true}, head_name(found_.native, "base"));
    const Located& scale = need({-1, "", "scale", true}, head_name(found_.native, "scale"));
    check_shapes({{&fn, {n, n * C}}, {&base, {n}}, {&scale, {1}}},
                 " (n = " + std::to_string(n) + " streams of width C = " + std::to_string(C) + ")");
    out_.head = {read(fn), read(base), read(scale)};
  }

 private:
  const Located& need(const Place& place, const std::string& name) const {
    const auto it = found_.parts.find(place);
    if (it == found_.parts.end()) throw std::invalid_argument("--deepseek-v4: tensor " + name + " is missing");
    return it->second;
  }

  void set_streams_and_width(const Located& fn, const Located& base) {
    const int64_t n = base.entry.shape.size() == 1 ? deepseek_v4_streams(base.entry.shape[0]) : 0;
    if (n == 0)
      throw std::invalid_argument("--deepseek-v4: " + base.entry.name + " has shape " + shape_text(base.entry.shape) +
                                  ", expected [(2+n)·n] for n in [1, " + std::to_string(kMaxStreams) + "]");
    const auto& s = fn.entry.shape;
    if (s.size() != 2 || s[0] != (2 + n) * n || s[1] < n || s[1] % n != 0)
      throw std::invalid_argument("--deepseek-v4: " + fn.entry.name + " has shape " + shape_text(s) + ", expected [" +
                                  std::to_string((2 + n) * n) + ", n·C] for n = " + std::to_string(n) + " (from " +
                                  base.entry.name + ")");
    out_.streams = n, out_.width = s[1] / n;
  }

  static void check_shapes(const std::vector<std::pair<const Located*, std::vector<int64_t>>>& expected,
                           const std::string& why) {
    for (const auto& [at, want] : expected)
      if (at->entry.shape != want)
        throw std::invalid_argument("--deepseek-v4: " + at->entry.name + " has shape " + shape_text(at->entry.shape) +
                                    ", expected " + shape_text(want) + why);
  }

  // A part's values; one that is not finite is named here, not found later as an overflowing probe.
  torch::Tensor read(const Located& at) {
    out_.bytes_read += at.entry.end - at.entry.begin;
    const torch::Tensor t = safetensors::read_tensor(kLabel, out_.files[at.file], found_.indexes[at.file], at.entry);
    if (!torch::isfinite(t).all().item<bool>())
      throw std::invalid_argument("--deepseek-v4: tensor " + at.entry.name + " in " + out_.files[at.file] +
                                  " holds values that are not finite (NaN or inf): a damaged checkpoint");
    return t;
  }

  DeepSeekV4Checkpoint& out_;
  const Found& found_;
};

}  // namespace

DeepSeekV4Checkpoint read_deepseek_v4(const std::vector<std::string>& paths) {
  DeepSeekV4Checkpoint out;
  out.files = shard_files(paths);
  const Found found = find_connections(out.files);
  out.naming = found.native ? "native" : "Hugging Face";
  // Every layer 0 … L−1 has both sublayers, each all three tensors, of one n and C.
  Reader reader(out, found);
  const int64_t L = found.parts.rbegin()->first.layer + 1;
  for (int64_t l = 0; l < L; ++l)
    for (const std::string kind : {"attn", "ffn"}) reader.read_sublayer(l, kind);
  reader.read_head();
  return out;
}

}  // namespace mhc
