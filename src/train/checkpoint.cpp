// Checkpoints in the safetensors format (8-byte little-endian header length, a JSON header of
// name -> {dtype, shape, data_offsets} plus "__metadata__", then the raw tensor bytes), with a
// SHA-256 of the whole file in the metadata so a truncated or altered file is never loaded.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string_view>

#include "../common/safetensors.h"
#include "mhc/files.h"
#include "mhc/checkpoint.h"

namespace fs = std::filesystem;

namespace mhc::train {

namespace {

// Format 1 digested the tensor bytes alone, so its header (step, lr, data position, dtypes) could
// change unnoticed.
constexpr const char* kUncheckedFormat = "mhc-checkpoint-1";

// The digest covers every byte of the file, with its own value replaced by this placeholder.
constexpr std::string_view kDigestKey = "\"sha256\":\"";
const std::string kDigestPlaceholder(64, '0');

[[noreturn]] void corrupt(const std::string& path, const std::string& why) {
  safetensors::unreadable("checkpoint", path, why);
}

std::string file_type_name(fs::file_type type) {
  switch (type) {
    case fs::file_type::directory: return "a directory";
    case fs::file_type::fifo: return "a FIFO";
    case fs::file_type::character: return "a character device";
    case fs::file_type::block: return "a block device";
    case fs::file_type::socket: return "a socket";
    case fs::file_type::symlink: return "a symlink";
    default: return "not a regular file";
  }
}

// Refuses anything but an existing regular file, saying what is there instead.
void expect_regular_file(const std::string& path) {
  const fs::file_status status = fs::status(path);
  if (!fs::exists(status)) throw std::invalid_argument("checkpoint " + path + " does not exist");
  if (!fs::is_regular_file(status))
    throw std::invalid_argument("checkpoint " + path + " is " + file_type_name(status.type()) + ", not a checkpoint file");
}

// The metadata, after checking the format: the digest scheme depends on it, so it comes first.
std::map<std::string, std::string> metadata_of(const std::string& path, const nlohmann::json& header) {
  std::map<std::string, std::string> out;
  const auto metadata = header.find("__metadata__");
  if (metadata == header.end() || !metadata->is_object()) corrupt(path, "no __metadata__ object in its header");
  for (const auto& [k, v] : metadata->items()) {
    if (!v.is_string()) corrupt(path, "metadata '" + k + "' is not a string");
    out[k] = v.get<std::string>();
  }
  const auto format = out.find("format");
  if (format == out.end()) corrupt(path, "no metadata 'format' (not an mhc checkpoint)");
  if (format->second == kUncheckedFormat)
    throw std::invalid_argument("checkpoint " + path + " has the old format " + kUncheckedFormat +
                                ", whose header is not under its checksum; it cannot be loaded safely (retrain, or "
                                "use an older mhc)");
  if (format->second != kCheckpointFormat)
    corrupt(path, "metadata 'format' is '" + format->second + "', expected '" + kCheckpointFormat + "'");
  return out;
}

// SHA-256 of `file` with the 64 digits at `digest_at` read as the placeholder.
std::string file_digest(const std::string& file, size_t digest_at) {
  Sha256 digest;
  digest.update(file.data(), digest_at);
  digest.update(kDigestPlaceholder);
  const size_t rest = digest_at + kDigestPlaceholder.size();
  digest.update(file.data() + rest, file.size() - rest);
  return digest.hex();
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  nlohmann::ordered_json header;
  std::vector<torch::Tensor> blobs;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : checkpoint.tensors) {
    const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    if (t.is_floating_point() && !torch::isfinite(t).all().item<bool>())
      throw std::runtime_error("not writing checkpoint " + path + ": tensor '" + name +
                               "' holds non-finite values (an update overflowed? try a lower --lr); the earlier "
                               "checkpoints are kept");
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", safetensors::dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    blobs.push_back(t);
    offset += bytes;
  }
  auto metadata = checkpoint.metadata;
  metadata["format"] = kCheckpointFormat;
  metadata["sha256"] = kDigestPlaceholder;
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
    if (bytes > 0) std::memcpy(data, t.data_ptr(), bytes);  // an empty tensor may have no storage
    data += bytes;
  }
  // Metadata values are JSON strings, whose quotes are escaped: the key appears once, unquoted.
  const size_t digest_at = 8 + json.find(std::string(kDigestKey) + kDigestPlaceholder) + kDigestKey.size();
  const std::string digest = file_digest(file, digest_at);
  std::memcpy(file.data() + digest_at, digest.data(), digest.size());
  write_file_atomic(path, file);
}

Checkpoint load_checkpoint(const std::string& path) {
  expect_regular_file(path);
  const std::string file = read_file(path);
  uint64_t header_size = 0;
  const nlohmann::json header = safetensors::parse_header("checkpoint", path, file, file.size(), &header_size);
  Checkpoint out;
  out.metadata = metadata_of(path, header);
  const char* data = file.data() + 8 + header_size;
  // The layout first (a truncated file says so), then the checksum, then the tensors.
  const std::vector<safetensors::Entry> entries =
      safetensors::entries("checkpoint", path, header, file.size() - 8 - header_size);

  const auto sum = out.metadata.find("sha256");
  if (sum == out.metadata.end()) corrupt(path, "no sha256 checksum in its metadata");
  const size_t key_at = file.substr(8, header_size).find(std::string(kDigestKey) + sum->second + "\"");
  if (sum->second.size() != kDigestPlaceholder.size() || key_at == std::string::npos ||
      file_digest(file, 8 + key_at + kDigestKey.size()) != sum->second)
    corrupt(path, "checksum mismatch (the file was truncated or modified)");

  for (const auto& e : entries) {
    if (!e.type) corrupt(path, "tensor '" + e.name + "' has dtype " + e.dtype + ", which no checkpoint holds");
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(*e.type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    out.tensors[e.name] = t;
  }
  return out;
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  expect_regular_file(path);
  uint64_t header_size = 0;
  return metadata_of(path, safetensors::read_header("checkpoint", path, &header_size));
}

std::string resolve_checkpoint(const std::string& path) {
  if (!fs::is_directory(path)) {
    expect_regular_file(path);
    return path;
  }
  const fs::path latest = fs::path(path) / kLatestCheckpoint;
  const fs::file_status link = fs::symlink_status(latest);
  if (!fs::exists(link)) throw std::invalid_argument("run folder " + path + " has no checkpoint yet (no 'latest')");
  // A regular file is the checkpoint itself: what copies that follow links (cp -rL, rsync -L) leave.
  if (fs::is_regular_file(link)) return latest.string();
  if (!fs::is_symlink(link))
    throw std::invalid_argument("run folder " + path + ": 'latest' is " + file_type_name(link.type()) + ", not a checkpoint");
  const fs::path target = fs::read_symlink(latest);  // relative to the run folder, as the trainer writes it
  const fs::path resolved = target.is_absolute() ? target : fs::path(path) / target;
  const fs::file_status status = fs::status(resolved);
  if (!fs::exists(status))
    throw std::invalid_argument("run folder " + path + ": 'latest' points at " + target.string() + ", which does not exist");
  if (!fs::is_regular_file(status))
    throw std::invalid_argument("run folder " + path + ": 'latest' points at " + target.string() + ", which is " +
                                file_type_name(status.type()) + ", not a checkpoint");
  return resolved.string();
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
