// One-line error reports: what the command line, the launcher and the tests print of an exception.
#pragma once

#include <exception>
#include <string>

namespace mhc {

// The message of an error without LibTorch's C++ backtrace (c10::Error carries one).
std::string error_message(const std::exception& e);

}  // namespace mhc
