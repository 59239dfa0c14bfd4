// Checkpoints in the safetensors format (8-byte little-endian header length, a JSON header of
// name -> {dtype, shape, data_offsets} plus "__metadata__", then the raw tensor bytes), with a
// SHA-256 of all tensor bytes in the metadata so a truncated or altered file is never loaded.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string_view>

#include "mhc/files.h"
#include "mhc/train.h"

namespace fs = std::filesystem;

namespace mhc::train {

namespace {

const std::vector<std::pair<torch::ScalarType, std::string>>& dtype_names() {
  static const std::vector<std::pair<torch::ScalarType, std::string>> names = {
      {torch::kFloat, "F32"}, {torch::kDouble, "F64"}, {torch::kBFloat16, "BF16"}, {torch::kHalf, "F16"},
      {torch::kLong, "I64"},  {torch::kInt, "I32"},    {torch::kByte, "U8"}};
  return names;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [type, name] : dtype_names())
    if (type == t) return name;
  throw std::invalid_argument(std::string("cannot checkpoint a tensor of dtype ") + c10::toString(t));
}

[[noreturn]] void corrupt(const std::string& path, const std::string& why) {
  throw std::invalid_argument("checkpoint " + path + " is unreadable: " + why);
}

// The JSON header of the safetensors file `path` (`file_size` bytes), given at least its first
// 8 + header-length bytes in `head`; stores the header length.
nlohmann::json parse_header(const std::string& path, const std::string& head, uint64_t file_size, uint64_t* header_size) {
  if (head.size() < 8) corrupt(path, "shorter than a safetensors header");
  std::memcpy(header_size, head.data(), 8);
  if (*header_size > file_size - 8 || *header_size > head.size() - 8)
    corrupt(path, "header length beyond the end of the file (truncated?)");
  try {
    return nlohmann::json::parse(head.substr(8, *header_size));
  } catch (const std::exception&) {
    corrupt(path, "its header is not valid JSON");
  }
}

std::map<std::string, std::string> metadata_of(const std::string& path, const nlohmann::json& header) {
  std::map<std::string, std::string> out;
  try {
    if (header.contains("__metadata__"))
      for (const auto& [k, v] : header.at("__metadata__").items()) out[k] = v.get<std::string>();
  } catch (const nlohmann::json::exception&) {
    corrupt(path, "its metadata are not strings");
  }
  return out;
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  nlohmann::ordered_json header;
  std::vector<torch::Tensor> blobs;
  Sha256 digest;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : checkpoint.tensors) {
    const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    digest.update(t.data_ptr(), bytes);
    blobs.push_back(t);
    offset += bytes;
  }
  auto metadata = checkpoint.metadata;
  metadata["sha256"] = digest.hex();
  header["__metadata__"] = metadata;
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');  // the data section starts 8-byte aligned
  const uint64_t header_size = json.size();
  std::string file(8 + header_size + offset, '\0');
  std::memcpy(file.data(), &header_size, 8);
  std::memcpy(file.data() + 8, json.data(), header_size);
  char* data = file.data() + 8 + header_size;
  for (const auto& t : blobs) {
    const size_t bytes = t.numel() * t.element_size();
    std::memcpy(data, t.data_ptr(), bytes);
    data += bytes;
  }
  write_file_atomic(path, file);
}

Checkpoint load_checkpoint(const std::string& path) {
  if (!fs::is_regular_file(path)) throw std::invalid_argument("checkpoint " + path + " does not exist");
  const std::string file = read_file(path);
  uint64_t header_size = 0;
  const nlohmann::json header = parse_header(path, file, file.size(), &header_size);
  const uint64_t data_size = file.size() - 8 - header_size;
  const char* data = file.data() + 8 + header_size;
  Checkpoint out;
  Sha256 digest;
  uint64_t expected_offset = 0;
  // Tensors in data order: the digest covers the bytes in the order they were written.
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [name, entry] : header.items())
    if (name != "__metadata__") order.emplace_back(entry.at("data_offsets").at(0).get<uint64_t>(), name);
  std::sort(order.begin(), order.end());
  try {
    for (const auto& [begin, name] : order) {
      const auto& entry = header.at(name);
      const uint64_t end = entry.at("data_offsets").at(1).get<uint64_t>();
      if (begin != expected_offset || end < begin || end > data_size) corrupt(path, "tensor '" + name + "' lies outside the file (truncated?)");
      torch::ScalarType type = torch::kFloat;
      bool known = false;
      for (const auto& [t, n] : dtype_names())
        if (n == entry.at("dtype").get<std::string>()) type = t, known = true;
      if (!known) corrupt(path, "tensor '" + name + "' has unsupported dtype " + entry.at("dtype").dump());
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(type));
      if (static_cast<uint64_t>(t.numel() * t.element_size()) != end - begin) corrupt(path, "tensor '" + name + "' has the wrong byte count");
      std::memcpy(t.data_ptr(), data + begin, end - begin);
      digest.update(data + begin, end - begin);
      out.tensors[name] = t;
      expected_offset = end;
    }
    if (expected_offset != data_size) corrupt(path, "trailing bytes after the last tensor");
  } catch (const nlohmann::json::exception&) {
    corrupt(path, "its header is not a safetensors header");
  }
  out.metadata = metadata_of(path, header);
  auto sum = out.metadata.find("sha256");
  if (sum == out.metadata.end()) corrupt(path, "no sha256 checksum in its metadata");
  if (sum->second != digest.hex()) corrupt(path, "checksum mismatch (the file was truncated or modified)");
  return out;
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  if (!fs::is_regular_file(path)) throw std::invalid_argument("checkpoint " + path + " does not exist");
  const uint64_t file_size = fs::file_size(path);
  std::ifstream in(path, std::ios::binary);
  std::string head(8, '\0');
  in.read(head.data(), 8);
  head.resize(static_cast<size_t>(in.gcount()));
  uint64_t header_size = 0;
  if (head.size() == 8) {
    std::memcpy(&header_size, head.data(), 8);
    if (header_size <= file_size - 8) {
      head.resize(8 + header_size);
      in.read(head.data() + 8, static_cast<std::streamsize>(header_size));
    }
  }
  return metadata_of(path, parse_header(path, head, file_size, &header_size));
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::is_directory(path)) {
    const fs::path latest = fs::path(path) / kLatestCheckpoint;
    if (!fs::exists(latest)) throw std::invalid_argument("run folder " + path + " has no checkpoint yet (no 'latest')");
    const fs::path target = fs::read_symlink(latest);  // relative to the run folder, as the trainer writes it
    return (target.is_absolute() ? target : fs::path(path) / target).string();
  }
  if (!fs::exists(path)) throw std::invalid_argument("checkpoint " + path + " does not exist");
  return path;
}

namespace {
constexpr std::string_view kCheckpointPrefix = "ckpt-", kCheckpointSuffix = ".safetensors";
}

std::string checkpoint_file_name(int64_t step) {
  std::string digits = std::to_string(step);
  if (digits.size() < 8) digits.insert(0, 8 - digits.size(), '0');
  return std::string(kCheckpointPrefix) + digits + std::string(kCheckpointSuffix);
}

bool is_checkpoint_file_name(const std::string& name) {
  const size_t affixes = kCheckpointPrefix.size() + kCheckpointSuffix.size();
  if (name.size() < affixes + 8 || name.compare(0, kCheckpointPrefix.size(), kCheckpointPrefix) != 0 ||
      name.compare(name.size() - kCheckpointSuffix.size(), kCheckpointSuffix.size(), kCheckpointSuffix) != 0)
    return false;
  const auto digits = std::string_view(name).substr(kCheckpointPrefix.size(), name.size() - affixes);
  return std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace mhc::train
