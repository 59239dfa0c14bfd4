// How every command writes a number for people: a format is chosen once per column or message
// ("3 decimals", "7 significant digits", "1.2k") and applied to many values, so the progress line,
// the reports and the benchmark tables agree on what "0.123" means. JSON keeps the number itself.
#pragma once

#include <string>

namespace mhc {

class Format {
 public:
  // 3.14159 -> fixed(2) "3.14", significant(3) "3.14", scientific(1) "3.1e+00", count() "3".
  static Format fixed(int digits) { return {Style::fixed, digits}; }
  static Format significant(int digits) { return {Style::significant, digits}; }
  static Format scientific(int digits) { return {Style::scientific, digits}; }
  // 1234567 -> "1.2M", 1234 -> "1.2k", 12 -> "12": counts in logs and messages.
  static Format count() { return {Style::count, 1}; }
  // fixed(digits) from 1e-3 to 1e5 (and 0), scientific(2) outside: gains near 1 and errors near 0 alike.
  static Format readable(int digits) { return {Style::readable, digits}; }
  // Whole numbers exactly ("4", "123456789"), others to 6 significant digits.
  static Format automatic() { return {Style::automatic, 6}; }
  // The value times `factor`, then `suffix`: percent(1) writes 0.123 as "12.3%".
  Format scaled(double factor) const;
  Format then(std::string suffix) const;
  static Format percent(int digits) { return fixed(digits).scaled(100).then("%"); }
  static Format ratio(int digits) { return fixed(digits).then("x"); }

  // NaN reads as "—": a value the row does not have (the plain residual's H_res error).
  std::string operator()(double value) const;

 private:
  enum class Style { fixed, significant, scientific, count, automatic, readable };
  Format(Style style, int digits) : style_(style), digits_(digits) {}
  Style style_;
  int digits_;
  double factor_ = 1;
  std::string suffix_;
};

// "42s", "3m07s": a duration in the progress line.
std::string duration_text(double seconds);

}  // namespace mhc
