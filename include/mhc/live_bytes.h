// The bytes of live CPU tensors, counted by an allocator installed over LibTorch's CPU allocator:
// the memory a training step's activations really take, which RSS (inflated by the allocator's
// caching and the process's other mappings) only approximates. `mhc bench memory` reads it.
//
//     mhc::live_bytes::install();          // once; tensors allocated before are not counted
//     mhc::live_bytes::reset_peak();
//     … one training step …
//     int64_t peak = mhc::live_bytes::peak() - live_before;
#pragma once

#include <cstdint>

namespace mhc::live_bytes {

// Routes every later CPU tensor allocation through the counter. Idempotent; it stays installed for
// the life of the process (storages it counted may outlive any scope).
void install();
bool installed();
// Bytes of counted storages not yet freed, and the most there were since the last reset_peak().
int64_t live();
int64_t peak();
// Sets the peak to the bytes live now.
void reset_peak();

}  // namespace mhc::live_bytes
