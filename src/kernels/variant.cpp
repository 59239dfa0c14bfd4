// Names, stream limits and parameter layouts of the residual family (see include/mhc/variant.h).
#include "mhc/variant.h"

#include <stdexcept>

namespace mhc {

Kind parse_kind(const std::string& name) {
  if (name == "residual") return Kind::residual;
  if (name == "hc") return Kind::hc;
  if (name == "mhc") return Kind::mhc;
  if (name == "mhc-lite" || name == "mhc_lite") return Kind::mhc_lite;
  throw std::invalid_argument("unknown residual kind '" + name + "' (accepted: " + kind_names() + ")");
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::residual: return "residual";
    case Kind::hc: return "hc";
    case Kind::mhc: return "mhc";
    case Kind::mhc_lite: return "mhc-lite";
  }
  return "?";
}

const char* kind_names() { return "residual, hc, mhc, mhc-lite"; }

int factorial(int n) {
  int f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return f;
}

void check_streams(Kind kind, int64_t n) {
  const std::string k = kind_name(kind);
  if (kind == Kind::residual && n != 1)
    throw std::invalid_argument("residual takes exactly 1 stream, got n = " + std::to_string(n));
  if ((kind == Kind::hc || kind == Kind::mhc) && (n < 1 || n > kMaxStreams))
    throw std::invalid_argument(k + " takes 1 to " + std::to_string(kMaxStreams) + " streams, got n = " +
                                std::to_string(n));
  if (kind == Kind::mhc_lite && (n < 1 || n > kMaxStreamsLite))
    throw std::invalid_argument("mhc-lite takes 1 to " + std::to_string(kMaxStreamsLite) +
                                " streams (n! permutations), got n = " + std::to_string(n) +
                                "; for more streams use KromHC");
}

Layout layout(Kind kind, int64_t n, int64_t C) {
  check_streams(kind, n);
  switch (kind) {
    case Kind::residual: return {0, 0, 0, 0, 0, 1};
    // One projection per stream: x̄_i·[w_pre | w_post | W_res]; alpha = [s_alpha, s_beta].
    case Kind::hc: return {C, n + 2, 2 * n + n * n, 2, n, n * n};
    case Kind::mhc: return {n * C, 2 * n + n * n, 2 * n + n * n, 3, 1, n * n};
    case Kind::mhc_lite: {
      const int64_t perms = factorial(static_cast<int>(n));
      return {n * C, 2 * n + perms, 2 * n + perms, 3, 1, perms};
    }
  }
  throw std::invalid_argument("unknown residual kind");
}

}  // namespace mhc
