// JSON that a user's file supplies (a checkpoint's or a shard's header, a run's settings or log),
// parsed with its nesting bounded. nlohmann's parser is iterative, but printing the value and other
// walks of it recurse, so a header of 100,000 nested arrays crashed every command that read it.
#pragma once

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace mhc {

constexpr int kMaxJsonDepth = 64;  // a safetensors header nests 3 levels, the settings 1, a log line 3

// Throws std::invalid_argument "JSON nested deeper than 64 levels" past the bound, and
// nlohmann::json::parse_error on text that is not JSON. Json: nlohmann::json, or ordered_json to
// keep the keys in the file's order.
template <class Json = nlohmann::json>
Json parse_bounded_json(const std::string& text) {
  return Json::parse(text, [](int depth, typename Json::parse_event_t event, Json&) {
    const bool opens = event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth)
      throw std::invalid_argument("JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  });
}

}  // namespace mhc
