// The three renderers of mhc/table.h.
#include "mhc/table.h"

#include <algorithm>
#include <stdexcept>

namespace mhc {

namespace {

// A text column is as wide as its header, with room for a typical number; the first (the row's
// name) is left-aligned, the numbers right-aligned.
size_t text_width(const Column& column) { return std::max<size_t>(column.header.size(), 8); }

std::string pad(const std::string& text, size_t width, bool left) {
  // Width in characters, not bytes: "—" and "±" are one each.
  size_t shown = 0;
  for (unsigned char c : text) shown += (c & 0xC0) != 0x80;
  const std::string fill(width > shown ? width - shown : 0, ' ');
  return left ? text + fill : fill + text;
}

bool shown_in_tables(const Column& column) { return !column.header.empty(); }

}  // namespace

std::string Table::cell_text(const Column& column, const nlohmann::ordered_json& value) const {
  if (value.is_null()) return "—";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "yes" : "no";
  if (value.is_number()) return column.format(value.get<double>());
  std::string joined;
  for (const auto& element : value) joined += (joined.empty() ? "" : ",") + cell_text(column, element);
  return joined;
}

std::string Table::header() const {
  std::string line;
  switch (style_) {
    case TableStyle::json: return "";
    case TableStyle::text:
      for (size_t i = 0; i < columns_.size(); ++i)
        if (shown_in_tables(columns_[i]))
          line += (line.empty() ? "" : "  ") + pad(columns_[i].header, text_width(columns_[i]), i == 0);
      return line + "\n";
    case TableStyle::markdown: {
      std::string rule = "|";
      for (const Column& c : columns_)
        if (shown_in_tables(c)) line += " " + c.header + " |", rule += "---|";
      return "|" + line + "\n" + rule + "\n";
    }
  }
  return "";
}

std::string Table::row(const std::vector<nlohmann::ordered_json>& values) const {
  if (values.size() != columns_.size())
    throw std::logic_error("a table row of " + std::to_string(values.size()) + " values for " +
                           std::to_string(columns_.size()) + " columns");
  std::string line;
  for (size_t i = 0; i < columns_.size(); ++i) {
    const Column& c = columns_[i];
    switch (style_) {
      case TableStyle::json:
        // {"key": value, …}: the spacing every reader of these lines has seen so far.
        if (!c.key.empty()) line += (line.empty() ? "{" : ", ") + nlohmann::json(c.key).dump() + ": " + values[i].dump();
        break;
      case TableStyle::text:
        if (shown_in_tables(c)) line += (line.empty() ? "" : "  ") + pad(cell_text(c, values[i]), text_width(c), i == 0);
        break;
      case TableStyle::markdown:
        if (shown_in_tables(c)) line += (line.empty() ? "| " : " ") + cell_text(c, values[i]) + " |";
        break;
    }
  }
  return line + (style_ == TableStyle::json ? "}" : "") + "\n";
}

std::string Table::render(const std::vector<std::vector<nlohmann::ordered_json>>& rows) const {
  std::string out = header();
  for (const auto& values : rows) out += row(values);
  return out;
}

}  // namespace mhc
