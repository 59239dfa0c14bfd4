// DeepSeek-V4's hyper-connection weights read out of its safetensors shards (DESIGN.md §9), for
// `mhc analyze --deepseek-v4`. Only those tensors are read, each by the offsets in its file's
// header: a real shard is many GB, and the connections are a few MB of it.
//
// Names accepted (one spelling per checkpoint):
//   native        layers.{l}.hc_attn_{fn,base,scale}, layers.{l}.hc_ffn_{…}, hc_head_{fn,base,scale}
//   Hugging Face  model.layers.{l}.attn_hc.{fn,base,scale}, model.layers.{l}.ffn_hc.{…},
//                 model.hc_head.hc_{fn,base,scale}
// Every other tensor (attention, experts, mtp.*) is skipped unread.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "mhc/deepseek_v4.h"

namespace mhc {

struct DeepSeekV4Sublayer {
  std::string name;         // "attn 0", "ffn 0", … in depth order
  std::string tensor_name;  // its fn's name in the file, e.g. "layers.0.hc_attn_fn"
  DeepSeekV4Params v4;      // as stored
  ConnectionParams params;  // converted for mhc-v4 (from_deepseek_v4)
};

struct DeepSeekV4Checkpoint {
  std::vector<std::string> files;  // the shards read, sorted
  std::string naming;              // "native" or "Hugging Face"
  int64_t streams = 0, width = 0;  // n and C
  std::vector<DeepSeekV4Sublayer> sublayers;
  DeepSeekV4Params head;           // hc_fn [n, n·C], hc_base [n], hc_scale [1]; undefined when absent
  uint64_t bytes_read = 0;         // tensor bytes read (the headers aside)
};

// `paths`: safetensors files, or folders whose *.safetensors files are read. Throws
// std::invalid_argument in one line naming the file or tensor at fault: a missing path, a truncated
// or malformed file, no hyper-connection tensors, a tensor missing from a sublayer (or a layer
// missing from 0 … L−1), a dtype other than F32, a shape inconsistent with n and C, a tensor in two
// shards, native and Hugging Face names mixed.
//
// Memory is bounded by what is read, never by what the headers claim: each header at most the
// format's 100 MB, each distinct file (by device and inode) read once, and the connection tensors
// at most kMaxConnectionBytes in all (DeepSeek-V4's, n = 4, C = 7168, 61 layers: 0.34 GB).
inline constexpr uint64_t kMaxConnectionBytes = uint64_t(2) << 30;
DeepSeekV4Checkpoint read_deepseek_v4(const std::vector<std::string>& paths);

}  // namespace mhc
