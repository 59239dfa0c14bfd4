// The safetensors format, read a piece at a time: an 8-byte little-endian header length, a JSON
// header of name -> {dtype, shape, data_offsets} (plus "__metadata__"), then the tensors' bytes.
// The header is parsed and every entry checked (dtype, shape, byte range, and that the entries tile
// the data exactly) without reading the data, so one tensor of a many-GB file costs its own bytes.
// Used by the checkpoints (src/train/checkpoint.cpp) and by `mhc analyze --deepseek-v4`. Errors are
// std::invalid_argument: "<label> <path> is unreadable: <why>", naming the tensor and key at fault.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

namespace mhc::safetensors {

// Every dtype the format defines: its name ("F32", "F8_E4M3", "F4", …), its width in bits, and the
// torch dtype it reads as, where torch has one (the packed 4- and 6-bit floats have none). A file
// holding any of them is read; only a tensor whose dtype torch lacks cannot be.
struct FileDtype {
  const char* name;
  int bits;
  std::optional<torch::ScalarType> type;
};
const std::vector<FileDtype>& file_dtypes();
// The name a torch dtype is written under; throws std::invalid_argument for one the format lacks.
std::string dtype_name(torch::ScalarType type);

[[noreturn]] void unreadable(const std::string& label, const std::string& path, const std::string& why);

// The JSON header of the file `path` (`file_size` bytes), given at least its first 8 + header-length
// bytes in `head`; stores the header length.
nlohmann::json parse_header(const std::string& label, const std::string& path, const std::string& head,
                            uint64_t file_size, uint64_t* header_size);

// Reads the header of `path` alone (its 8 + header-length first bytes; at most 100 MB, the format's
// limit).
nlohmann::json read_header(const std::string& label, const std::string& path, uint64_t* header_size);

struct Entry {
  std::string name;
  std::string dtype;                        // the file's name for it
  int bits;                                 // per element
  std::optional<torch::ScalarType> type;    // none: torch has no such dtype (read_tensor refuses it)
  std::vector<int64_t> shape;
  uint64_t begin, end;  // byte range in the data section
};

// Every tensor of the header, by offset, checked to tile a data section of data_size bytes exactly.
std::vector<Entry> entries(const std::string& label, const std::string& path, const nlohmann::json& header,
                           uint64_t data_size);

// A file's entries, its data section starting at data_begin.
struct Index {
  uint64_t data_begin = 0;
  std::vector<Entry> entries;
};
Index read_index(const std::string& label, const std::string& path);

// One tensor's bytes, read from the file at its offsets; refuses a dtype torch lacks, naming it.
torch::Tensor read_tensor(const std::string& label, const std::string& path, const Index& index, const Entry& entry);

}  // namespace mhc::safetensors
