// Number parsing shared by the command line and the settings of a run (see mhc/parse.h).
#include "mhc/parse.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace mhc {

int64_t parse_integer(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < min || v > max)
    throw std::invalid_argument(flag + " must be a whole number in [" + std::to_string(min) + ", " +
                                std::to_string(max) + "], got '" + text + "'");
  return v;
}

double parse_real(const std::string& flag, const std::string& text, double min, double max) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(v) || v < min || v > max) {
    std::ostringstream s;
    s << flag << " must be a number in [" << min << ", " << max << "], got '" << text << "'";
    throw std::invalid_argument(s.str());
  }
  return v;
}

int64_t parse_integer(const std::string& flag, const std::string& text, const ValueRange& range) {
  const auto* r = std::get_if<IntegerRange>(&range);
  if (!r) throw std::logic_error(flag + " is read as a whole number but was not declared with an integer range");
  return parse_integer(flag, text, r->min, r->max);
}

double parse_real(const std::string& flag, const std::string& text, const ValueRange& range) {
  const auto* r = std::get_if<RealRange>(&range);
  if (!r) throw std::logic_error(flag + " is read as a number but was not declared with a real range");
  return parse_real(flag, text, r->min, r->max);
}

namespace {

// The length of the UTF-8 sequence at text[i] (1 to 4), or 0 where the bytes are not one: a bad
// lead byte, a missing or stray continuation byte, an overlong form, a surrogate, or past U+10FFFF.
size_t utf8_length(const std::string& text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  const size_t length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC2 ? 2 : 0;
  if (length == 0 || lead > 0xF4 || i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k)
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  const unsigned char second = byte(i + 1);
  if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second >= 0xA0) || (lead == 0xF0 && second < 0x90) ||
      (lead == 0xF4 && second >= 0x90))
    return 0;
  return length;
}

}  // namespace

void require_utf8(const std::string& what, const std::string& text) {
  bool valid = true;
  std::string shown;
  for (size_t i = 0; i < text.size();) {
    const size_t length = utf8_length(text, i);
    if (length > 0) {
      shown += text.substr(i, length), i += length;
      continue;
    }
    static const char* kHex = "0123456789abcdef";
    const auto b = static_cast<unsigned char>(text[i++]);
    shown += std::string("\\x") + kHex[b >> 4] + kHex[b & 15];
    valid = false;
  }
  if (!valid)
    throw std::invalid_argument(what + " '" + shown + "' is not valid UTF-8 (it is written into a JSON file, which " +
                                "holds UTF-8 text; accepted: a UTF-8 name)");
}

}  // namespace mhc
