// The safetensors reader shared by the checkpoints and the DeepSeek-V4 import (safetensors.h).
#include "safetensors.h"

#include "json.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace mhc::safetensors {

// The safetensors format's own bound on the header, so that a damaged length allocates nothing large.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const std::vector<FileDtype>& file_dtypes() {
  static const std::vector<FileDtype> dtypes = {
      {"BOOL", 8, torch::kBool},         {"U8", 8, torch::kByte},          {"I8", 8, torch::kChar},
      {"F8_E5M2", 8, torch::kFloat8_e5m2}, {"F8_E4M3", 8, torch::kFloat8_e4m3fn}, {"F8_E8M0", 8, torch::kFloat8_e8m0fnu},
      {"I16", 16, torch::kShort},        {"U16", 16, torch::kUInt16},      {"F16", 16, torch::kHalf},
      {"BF16", 16, torch::kBFloat16},    {"I32", 32, torch::kInt},         {"U32", 32, torch::kUInt32},
      {"F32", 32, torch::kFloat},        {"F64", 64, torch::kDouble},      {"I64", 64, torch::kLong},
      {"U64", 64, torch::kUInt64},       {"C64", 64, torch::kComplexFloat},
      {"F4", 4, std::nullopt},           {"F6_E2M3", 6, std::nullopt},     {"F6_E3M2", 6, std::nullopt}};
  return dtypes;
}

std::string dtype_name(torch::ScalarType type) {
  for (const FileDtype& d : file_dtypes())
    if (d.type == type) return d.name;
  throw std::invalid_argument(std::string("cannot store a tensor of dtype ") + c10::toString(type) + " as safetensors");
}

void unreadable(const std::string& label, const std::string& path, const std::string& why) {
  throw std::invalid_argument(label + " " + path + " is unreadable: " + why);
}

nlohmann::json parse_header(const std::string& label, const std::string& path, const std::string& head,
                            uint64_t file_size, uint64_t* header_size) {
  if (head.size() < 8) unreadable(label, path, "shorter than a safetensors header");
  std::memcpy(header_size, head.data(), 8);
  if (*header_size > file_size - 8 || *header_size > head.size() - 8)
    unreadable(label, path, "header length beyond the end of the file (truncated?)");
  nlohmann::json header;
  try {
    header = parse_bounded_json(head.substr(8, *header_size));
  } catch (const nlohmann::json::exception&) {
    unreadable(label, path, "its header is not valid JSON");
  } catch (const std::invalid_argument& e) {
    unreadable(label, path, "its header's " + std::string(e.what()));
  }
  if (!header.is_object()) unreadable(label, path, "its header is not a JSON object");
  return header;
}

nlohmann::json read_header(const std::string& label, const std::string& path, uint64_t* header_size) {
  const uint64_t file_size = std::filesystem::file_size(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(label + " " + path + " cannot be opened");
  std::string head(8, '\0');
  in.read(head.data(), 8);
  head.resize(static_cast<size_t>(in.gcount()));
  if (head.size() == 8) {
    uint64_t size = 0;
    std::memcpy(&size, head.data(), 8);
    if (size > kMaxHeaderBytes)
      unreadable(label, path, "header length " + std::to_string(size) + " bytes, over the format's limit of " +
                                  std::to_string(kMaxHeaderBytes) + " (not safetensors, or damaged)");
    if (size <= file_size - 8) {  // else parse_header says so
      head.resize(8 + size);
      in.read(head.data() + 8, static_cast<std::streamsize>(size));
    }
  }
  return parse_header(label, path, head, file_size, header_size);
}

namespace {

Entry entry_of(const std::string& label, const std::string& path, const std::string& name, const nlohmann::json& entry) {
  const auto bad = [&](const std::string& key, const std::string& what) {
    unreadable(label, path, "tensor '" + name + "': '" + key + "' " + what);
  };
  if (!entry.is_object()) unreadable(label, path, "tensor '" + name + "' is not a JSON object");
  Entry out{name, "", 0, std::nullopt, {}, 0, 0};
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) bad("dtype", "is missing or not a string");
  const auto known = std::find_if(file_dtypes().begin(), file_dtypes().end(),
                                  [&](const FileDtype& d) { return d.name == dtype->get<std::string>(); });
  if (known == file_dtypes().end()) bad("dtype", "is not a safetensors dtype: " + dtype->dump());
  out.dtype = known->name, out.bits = known->bits, out.type = known->type;
  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) bad("shape", "is missing or not a list");
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned()) bad("shape", "holds " + d.dump() + ", not a size");
    if (d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      bad("shape", "holds " + d.dump() + ", larger than a dimension can be (at most " + std::to_string(INT64_MAX) + ")");
    out.shape.push_back(d.get<int64_t>());
  }
  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !offsets->at(0).is_number_unsigned() ||
      !offsets->at(1).is_number_unsigned())
    bad("data_offsets", "is not two byte offsets");
  out.begin = offsets->at(0).get<uint64_t>();
  out.end = offsets->at(1).get<uint64_t>();
  return out;
}

}  // namespace

std::vector<Entry> entries(const std::string& label, const std::string& path, const nlohmann::json& header,
                           uint64_t data_size) {
  std::vector<Entry> out;
  for (const auto& [name, entry] : header.items())
    if (name != "__metadata__") out.push_back(entry_of(label, path, name, entry));
  // By (begin, end): an empty tensor may share its offset with the next one.
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return std::pair(a.begin, a.end) < std::pair(b.begin, b.end); });
  uint64_t expected_offset = 0;
  for (const auto& e : out) {
    if (e.begin != expected_offset || e.end < e.begin || e.end > data_size)
      unreadable(label, path, "tensor '" + e.name + "' lies outside the file (truncated?)");
    uint64_t bits = static_cast<uint64_t>(e.bits);  // packed sub-byte dtypes fill whole bytes
    for (const int64_t d : e.shape)
      if (__builtin_mul_overflow(bits, static_cast<uint64_t>(d), &bits)) bits = UINT64_MAX;
    if (bits % 8 != 0 || bits / 8 != e.end - e.begin)
      unreadable(label, path, "tensor '" + e.name + "' has the wrong byte count for its dtype and shape");
    expected_offset = e.end;
  }
  if (expected_offset != data_size) unreadable(label, path, "trailing bytes after the last tensor");
  return out;
}

Index read_index(const std::string& label, const std::string& path) {
  uint64_t header_size = 0;
  const nlohmann::json header = read_header(label, path, &header_size);
  Index index;
  index.data_begin = 8 + header_size;
  index.entries = entries(label, path, header, std::filesystem::file_size(path) - index.data_begin);
  return index;
}

torch::Tensor read_tensor(const std::string& label, const std::string& path, const Index& index, const Entry& entry) {
  if (!entry.type) unreadable(label, path, "tensor '" + entry.name + "' has dtype " + entry.dtype + ", which torch cannot hold");
  torch::Tensor t = torch::empty(entry.shape, torch::TensorOptions().dtype(*entry.type));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(index.data_begin + entry.begin));
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(entry.end - entry.begin));
  if (!in || static_cast<uint64_t>(in.gcount()) != entry.end - entry.begin)
    unreadable(label, path, "tensor '" + entry.name + "' could not be read (the file changed while being read?)");
  return t;
}

}  // namespace mhc::safetensors
