// One table, three renderers: the rows a benchmark or report builds are written as aligned text
// for the terminal, a Markdown table for the docs, or one JSON object per line for scripts. A
// column is a header, a JSON key and a number format; a row is one value per column. Rows render
// one at a time, so a long benchmark shows each case as it is measured.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mhc/format.h"

namespace mhc {

enum class TableStyle { text, markdown, json };

struct Column {
  Column(std::string header, std::string key = "", Format format = Format::automatic())
      : header(std::move(header)), key(std::move(key)), format(format) {}
  std::string header;  // text and Markdown; empty: the column is in the JSON only
  std::string key;     // JSON; empty: the column is in the text and Markdown only
  Format format;
};

class Table {
 public:
  Table(std::vector<Column> columns, TableStyle style) : columns_(std::move(columns)), style_(style) {}
  // Text: the header line; Markdown: the header and its rule; JSON: nothing.
  std::string header() const;
  // One value per column: a number (written with the column's format), a string, null ("—"), a
  // boolean ("yes", "no"), or
  // an array (its elements joined by commas). Throws std::logic_error on a count that differs
  // from the columns'. In JSON, a number that is not finite is null.
  std::string row(const std::vector<nlohmann::ordered_json>& values) const;
  // The header, then every row.
  std::string render(const std::vector<std::vector<nlohmann::ordered_json>>& rows) const;

 private:
  std::string cell_text(const Column& column, const nlohmann::ordered_json& value) const;
  std::vector<Column> columns_;
  TableStyle style_;
};

}  // namespace mhc
