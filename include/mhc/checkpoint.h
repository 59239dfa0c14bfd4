// A checkpoint file and a run folder's checkpoint names: one safetensors file of tensors and string
// metadata, checksummed, written atomically. What a run puts in it: mhc/run_state.h.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/torch.h>

namespace mhc::train {

// Tensors (model/…, adam_m/…, adam_v/…, tokenizer, rng/…) and string metadata; metadata["format"]
// is kCheckpointFormat and metadata["sha256"] the digest of the whole file (its own 64 digits read
// as zeros), checked on every load.
struct Checkpoint {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};
inline constexpr const char* kCheckpointFormat = "mhc-checkpoint-2";
// Writes atomically (temporary name, fsync, rename), adding "format" and "sha256" to the metadata.
// Refuses (std::runtime_error, nothing written) a floating-point tensor with a non-finite value: a
// checkpoint is never the carrier of a diverged run, and the run's earlier checkpoints stay.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);
// Throws std::invalid_argument naming the file (and the key at fault) when it is missing, not a
// regular file, truncated, not safetensors, of another format, or fails its checksum.
Checkpoint load_checkpoint(const std::string& path);
// A checkpoint's metadata (format, step, config, …) from its header alone: no tensor is read and
// the checksum is not verified. Throws std::invalid_argument like load_checkpoint.
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);
// A run folder (its `latest`: a symlink, or a regular file where a copy followed the link) or a
// checkpoint file -> the checkpoint file's path; throws std::invalid_argument saying what is there
// when it is not a checkpoint file.
std::string resolve_checkpoint(const std::string& path);

// A run folder's checkpoints are ckpt-<step, at least 8 digits>.safetensors, and `latest` is a
// symlink to the newest; --overwrite and --keep remove these names and nothing else. A run holds
// the folder's lock (FolderLock) for its whole life.
inline constexpr const char* kLatestCheckpoint = "latest";
std::string checkpoint_file_name(int64_t step);
bool is_checkpoint_file_name(const std::string& name);

}  // namespace mhc::train
