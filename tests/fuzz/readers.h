// What the reader fuzz tests attack: the safetensors checkpoint reader (header alone, and the whole
// file) and the TOML settings reader, each given a file's bytes, with valid inputs to mutate.
#pragma once

#include <string>
#include <vector>

namespace mhc::fuzz {

enum class Reader { checkpoint, config };
inline constexpr Reader kReaders[] = {Reader::checkpoint, Reader::config};
const char* reader_name(Reader reader);

// Writes `bytes` to scratch_path and reads it as `reader` says: true when accepted, false when
// refused with an exception derived from std::exception (the readers' contract). Anything else —
// another exception, a crash — escapes, and is the finding.
bool read_as(Reader reader, const std::string& bytes, const std::string& scratch_path);

// Valid inputs, each accepted by read_as: checkpoints written by save_checkpoint (every dtype it
// supports, metadata, an empty tensor) and settings files using every kind of value.
std::vector<std::string> valid_inputs(Reader reader, const std::string& scratch_path);

}  // namespace mhc::fuzz
