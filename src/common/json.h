// JSON that a user's file supplies (a checkpoint's or a shard's header, a run's settings), parsed
// with its nesting bounded. nlohmann's parser is iterative, but printing the value and other walks
// of it recurse, so a header of 100,000 nested arrays crashed every command that read it.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace mhc {

constexpr int kMaxJsonDepth = 64;  // a safetensors header nests 3 levels, the settings 1

// Throws std::invalid_argument "JSON nested deeper than 64 levels" past the bound, and
// nlohmann::json::parse_error on text that is not JSON.
nlohmann::json parse_bounded_json(const std::string& text);

}  // namespace mhc
