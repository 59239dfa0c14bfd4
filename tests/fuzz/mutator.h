// Random edits of valid inputs for the reader fuzz tests: the damage files suffer (bit flips,
// truncation, splices, random bytes) and the values parsers trip on (huge and negative numbers).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace mhc::fuzz {

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}
  // One to four edits of `input`; splices take their bytes from `donors` (other valid inputs) or
  // from the input itself. The result is at most max_size bytes.
  std::string mutate(std::string input, const std::vector<std::string>& donors, size_t max_size);
  // Uniform in [0, bound) (0 when bound is 0).
  size_t below(size_t bound);

 private:
  void flip_bits(std::string& s);
  void truncate(std::string& s);
  void splice(std::string& s, const std::vector<std::string>& donors);
  void random_bytes(std::string& s);
  void erase_run(std::string& s);
  void huge_number(std::string& s);
  void huge_word(std::string& s);
  std::mt19937_64 rng_;
};

}  // namespace mhc::fuzz
