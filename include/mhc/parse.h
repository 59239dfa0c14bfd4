// Numbers from text (flags, config files) with one-line errors naming the flag and the range.
#pragma once

#include <cstdint>
#include <string>

namespace mhc {

// A whole number in [min, max]; throws std::invalid_argument "FLAG must be a whole number in [min, max], got 'TEXT'".
int64_t parse_integer(const std::string& flag, const std::string& text, int64_t min, int64_t max);
// A finite real number in [min, max]; throws std::invalid_argument naming the flag and the range.
double parse_real(const std::string& flag, const std::string& text, double min, double max);

}  // namespace mhc
