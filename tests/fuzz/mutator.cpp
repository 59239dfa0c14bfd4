// The edits of mutator.h.
#include "mutator.h"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace mhc::fuzz {

namespace {

// Text numbers at and past the edges of every integer and floating type a reader converts to.
const char* const kHugeNumbers[] = {"18446744073709551615", "18446744073709551616", "9223372036854775807",
                                    "9223372036854775808",  "-9223372036854775808", "-1",
                                    "4294967296",           "2147483648",           "1e308",
                                    "1e999",                "-1e999",               "nan",
                                    "inf",                  "-0",                   "0",
                                    "99999999999999999999999999999999999999999999"};
// Binary 64-bit values for length and offset fields (the safetensors header length is the first 8 bytes).
const uint64_t kHugeWords[] = {0, 1, 7, 8, 0x7fffffffffffffffull, 0x8000000000000000ull, ~0ull, 0xffffffffull, 1ull << 32};

}  // namespace

size_t Mutator::below(size_t bound) { return bound == 0 ? 0 : static_cast<size_t>(rng_() % bound); }

std::string Mutator::mutate(std::string input, const std::vector<std::string>& donors, size_t max_size) {
  const size_t edits = 1 + below(4);
  for (size_t i = 0; i < edits; ++i) {
    switch (below(7)) {
      case 0: flip_bits(input); break;
      case 1: truncate(input); break;
      case 2: splice(input, donors); break;
      case 3: random_bytes(input); break;
      case 4: erase_run(input); break;
      case 5: huge_number(input); break;
      default: huge_word(input); break;
    }
  }
  if (input.size() > max_size) input.resize(max_size);
  return input;
}

void Mutator::flip_bits(std::string& s) {
  if (s.empty()) return;
  for (size_t k = 1 + below(8); k > 0; --k) s[below(s.size())] ^= static_cast<char>(1u << below(8));
}

void Mutator::truncate(std::string& s) { s.resize(below(s.size() + 1)); }

void Mutator::splice(std::string& s, const std::vector<std::string>& donors) {
  const std::string donor = donors.empty() || below(4) == 0 ? s : donors[below(donors.size())];
  if (donor.empty()) return;
  const size_t from = below(donor.size()), length = 1 + below(std::min<size_t>(donor.size() - from, 256));
  const size_t at = below(s.size() + 1);
  if (below(2) == 0) s.insert(at, donor, from, length);
  else s.replace(at, std::min(length, s.size() - at), donor, from, length);
}

void Mutator::random_bytes(std::string& s) {
  const size_t at = below(s.size() + 1), length = 1 + below(16);
  std::string noise(length, '\0');
  for (auto& c : noise) c = static_cast<char>(rng_());
  s.replace(at, std::min(length, s.size() - at), noise);
}

void Mutator::erase_run(std::string& s) {
  if (s.empty()) return;
  const size_t at = below(s.size());
  s.erase(at, 1 + below(std::min<size_t>(s.size() - at, 64)));
}

// Replaces the run of digits at or after a random position (or inserts, when there is none).
void Mutator::huge_number(std::string& s) {
  const std::string number = kHugeNumbers[below(std::size(kHugeNumbers))];
  const auto is_digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  const auto begin = std::find_if(s.begin() + below(s.size() + 1), s.end(), is_digit);
  if (begin == s.end()) {
    s.insert(below(s.size() + 1), number);
    return;
  }
  const auto end = std::find_if_not(begin, s.end(), is_digit);
  s.replace(begin, end, number);
}

void Mutator::huge_word(std::string& s) {
  if (s.size() < 8) return;
  const uint64_t word = kHugeWords[below(std::size(kHugeWords))];
  const size_t at = below(2) == 0 ? 0 : below(s.size() - 7);  // the header length half of the time
  std::memcpy(s.data() + at, &word, 8);
}

}  // namespace mhc::fuzz
