// The one-line error messages of mhc/errors.h.
#include "mhc/errors.h"

#include <c10/util/Exception.h>

namespace mhc {

std::string error_message(const std::exception& e) {
  if (auto* c10e = dynamic_cast<const c10::Error*>(&e)) return c10e->what_without_backtrace();
  return e.what();
}

}  // namespace mhc
