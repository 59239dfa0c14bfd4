// Test helper: rewrites a checkpoint with every value of one tensor set to VALUE (e.g. "1e30"),
// through the library's own reader and writer, so the file's format and checksum are what mhc
// writes: weights a diverged run could have produced, not a damaged file.
// Usage: fill_checkpoint_tensor CHECKPOINT TENSOR VALUE   (e.g. model/blocks.1.attn.qkv.weight; in place;
// a non-finite VALUE is refused by save_checkpoint)
#include <cstdio>
#include <exception>
#include <string>

#include "mhc/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: fill_checkpoint_tensor CHECKPOINT TENSOR VALUE\n");
    return 2;
  }
  try {
    const std::string path = mhc::train::resolve_checkpoint(argv[1]);
    mhc::train::Checkpoint checkpoint = mhc::train::load_checkpoint(path);
    const auto tensor = checkpoint.tensors.find(argv[2]);
    if (tensor == checkpoint.tensors.end()) {
      std::fprintf(stderr, "error: %s has no tensor %s\n", path.c_str(), argv[2]);
      return 2;
    }
    tensor->second.fill_(std::stod(argv[3]));
    mhc::train::save_checkpoint(path, checkpoint);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
