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

}  // namespace mhc
