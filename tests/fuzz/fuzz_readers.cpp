// The suite's fuzz test of the checkpoint and settings readers: mutations of valid inputs (see
// mutator.h), a fixed seed so a failure reproduces, bounded by a count and a time budget.
// Usage: fuzz_readers [INPUTS [SECONDS [SEED]]]   (defaults: 200000 inputs, 40 s, seed 1)
// Passes when every input is accepted or refused with a std::exception. An input that crashes the
// reader stays in the scratch folder, whose path is printed first.
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <string>

#include "mutator.h"
#include "readers.h"

namespace fs = std::filesystem;
using mhc::fuzz::Reader;

namespace {

// Each input is written to a file (the readers take paths): in memory where the machine offers it.
std::string scratch_folder() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = (fs::is_directory("/dev/shm") ? std::string("/dev/shm") : tmp ? tmp : "/tmp") + "/mhc-fuzz.XXXXXX";
  if (!::mkdtemp(pattern.data())) throw std::runtime_error("cannot create a scratch folder " + pattern);
  return pattern;
}

}  // namespace

int main(int argc, char** argv) {
  const long inputs = argc > 1 ? std::stol(argv[1]) : 200000;
  const double seconds = argc > 2 ? std::stod(argv[2]) : 40;
  const unsigned long seed = argc > 3 ? std::stoul(argv[3]) : 1;
  const std::string scratch = scratch_folder();
  const std::string input_path = scratch + "/input";
  std::printf("fuzz: seed %lu, up to %ld inputs or %.0f s; a crashing input is left in %s\n", seed, inputs, seconds,
              input_path.c_str());
  std::fflush(stdout);

  std::map<Reader, std::vector<std::string>> valid;
  for (Reader r : mhc::fuzz::kReaders) {
    valid[r] = mhc::fuzz::valid_inputs(r, input_path);
    for (const auto& v : valid[r])
      if (!mhc::fuzz::read_as(r, v, input_path)) {
        std::printf("FAIL: a valid %s input is refused: nothing would be fuzzed\n", mhc::fuzz::reader_name(r));
        return 1;
      }
  }

  mhc::fuzz::Mutator mutator(seed);
  std::map<Reader, long> tried, accepted;
  const auto start = std::chrono::steady_clock::now();
  long done = 0;
  try {
    for (; done < inputs; ++done) {
      if (done % 256 == 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) break;
      const Reader r = mhc::fuzz::kReaders[done % 2];
      const auto& donors = valid[r];
      const std::string bytes = mutator.mutate(donors[mutator.below(donors.size())], donors, 1 << 16);
      ++tried[r];
      accepted[r] += mhc::fuzz::read_as(r, bytes, input_path);
    }
  } catch (...) {  // not a std::exception: the readers' contract is broken
    std::printf("FAIL: input %ld escaped with an exception not derived from std::exception; it is in %s\n", done,
                input_path.c_str());
    return 1;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (Reader r : mhc::fuzz::kReaders)
    std::printf("fuzz: %s: %ld inputs, %ld accepted, %ld refused with a std::exception\n", mhc::fuzz::reader_name(r),
                tried[r], accepted[r], tried[r] - accepted[r]);
  std::printf("fuzz: %ld inputs in %.1f s, 0 crashes\n", done, elapsed);
  fs::remove_all(scratch);
  return 0;
}
