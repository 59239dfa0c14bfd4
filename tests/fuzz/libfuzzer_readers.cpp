// The readers of readers.h under libFuzzer (coverage-guided, with AddressSanitizer and UBSan; built
// by build_libfuzzer.sh). An input's first byte picks the reader, the rest is the file. The
// mutations are mutator.h's on valid inputs, mixed with libFuzzer's own byte-level ones.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "mutator.h"
#include "readers.h"

using mhc::fuzz::Reader;

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

// Where each input is written for the readers (which take paths); removed when libFuzzer exits.
const std::string& scratch_path() {
  static const struct Scratch {
    std::string path = "/dev/shm/mhc-libfuzzer-" + std::to_string(::getpid());
    ~Scratch() { ::unlink(path.c_str()); }
  } scratch;
  return scratch.path;
}

Reader reader_of(uint8_t selector) { return mhc::fuzz::kReaders[selector % 2]; }

const std::vector<std::string>& valid(Reader reader) {
  static const std::vector<std::string> checkpoints = mhc::fuzz::valid_inputs(Reader::checkpoint, scratch_path());
  static const std::vector<std::string> configs = mhc::fuzz::valid_inputs(Reader::config, scratch_path());
  return reader == Reader::checkpoint ? checkpoints : configs;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // An exception not derived from std::exception escapes read_as, and libFuzzer reports it as a crash.
  mhc::fuzz::read_as(reader_of(data[0]), std::string(reinterpret_cast<const char*>(data) + 1, size - 1), scratch_path());
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  static mhc::fuzz::Mutator mutator(seed);
  if (max_size < 2) return LLVMFuzzerMutate(data, size, max_size);
  if (size > 0 && mutator.below(4) == 0) return LLVMFuzzerMutate(data, size, max_size);
  const uint8_t selector = size > 0 ? data[0] : static_cast<uint8_t>(mutator.below(2));
  const auto& donors = valid(reader_of(selector));
  // An empty input, or one time in eight, starts again from a valid input.
  std::string body = size == 0 || mutator.below(8) == 0 ? donors[mutator.below(donors.size())]
                                                        : std::string(reinterpret_cast<const char*>(data) + 1, size - 1);
  body = mutator.mutate(std::move(body), donors, max_size - 1);
  data[0] = selector;
  std::copy(body.begin(), body.end(), data + 1);
  return body.size() + 1;
}
