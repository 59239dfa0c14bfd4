// The number formats of mhc/format.h.
#include "mhc/format.h"

#include <cmath>
#include <iomanip>
#include <sstream>

namespace mhc {

Format Format::scaled(double factor) const {
  Format f = *this;
  f.factor_ *= factor;
  return f;
}

Format Format::then(std::string suffix) const {
  Format f = *this;
  f.suffix_ += suffix;
  return f;
}

std::string Format::operator()(double value) const {
  if (std::isnan(value)) return "—";
  const double v = value * factor_;
  std::ostringstream s;
  switch (style_) {
    case Style::fixed: s << std::fixed << std::setprecision(digits_) << v; break;
    case Style::significant: s << std::setprecision(digits_) << v; break;
    case Style::scientific: s << std::scientific << std::setprecision(digits_) << v; break;
    case Style::readable:
      if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e5)) s << std::scientific << std::setprecision(2) << v;
      else s << std::fixed << std::setprecision(digits_) << v;
      break;
    case Style::automatic:
      if (v == std::floor(v) && std::abs(v) < 1e15) s << std::fixed << std::setprecision(0) << v;
      else s << std::setprecision(digits_) << v;
      break;
    case Style::count:
      if (v >= 1e6) s << std::fixed << std::setprecision(digits_) << v / 1e6 << "M";
      else if (v >= 1e3) s << std::fixed << std::setprecision(digits_) << v / 1e3 << "k";
      else s << std::fixed << std::setprecision(0) << v;
      break;
  }
  return s.str() + suffix_;
}

std::string duration_text(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  return s >= 60 ? std::to_string(s / 60) + "m" + (s % 60 < 10 ? "0" : "") + std::to_string(s % 60) + "s"
                 : std::to_string(s) + "s";
}

}  // namespace mhc
