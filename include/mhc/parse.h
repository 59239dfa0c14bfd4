// Numbers from text (flags, config files) with one-line errors naming the flag and the range. A
// range is declared once, beside the flag or setting it bounds, and every reader goes through it.
#pragma once

#include <cstdint>
#include <string>
#include <variant>

namespace mhc {

struct IntegerRange {
  int64_t min, max;
};
struct RealRange {
  double min, max;
};
// What a flag or setting accepts: any text, a whole number in a range, or a real number in one.
using ValueRange = std::variant<std::monostate, IntegerRange, RealRange>;

// A whole number in [min, max]; throws std::invalid_argument "FLAG must be a whole number in [min, max], got 'TEXT'".
int64_t parse_integer(const std::string& flag, const std::string& text, int64_t min, int64_t max);
// A finite real number in [min, max]; throws std::invalid_argument naming the flag and the range.
double parse_real(const std::string& flag, const std::string& text, double min, double max);
// The same through a declared range; std::logic_error when `range` is not of that kind (a reader
// asking a text flag for a number is the program's error, not the user's).
int64_t parse_integer(const std::string& flag, const std::string& text, const ValueRange& range);
double parse_real(const std::string& flag, const std::string& text, const ValueRange& range);

// Text that a JSON file will hold (a path in config.json or analysis.json) must be UTF-8: throws
// std::invalid_argument "WHAT 'TEXT' is not valid UTF-8 (…)", the invalid bytes shown as \xNN.
void require_utf8(const std::string& what, const std::string& text);

}  // namespace mhc
