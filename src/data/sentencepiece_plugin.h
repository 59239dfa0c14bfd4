// The seam between mhc and SentencePiece. Debian's libsentencepiece carries its own copy of
// protobuf and exports it; libtorch_cpu exports another, and with both in one symbol namespace
// the process crashes while initialising. So SentencePiece lives in a plugin,
// libmhc_sentencepiece.so, opened with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): its own protobuf binds
// to itself, and mhc reaches it only through this abstract class (virtual calls need no symbols).
#pragma once

#include <string>
#include <vector>

namespace mhc::data {

class SentencePiece {
 public:
  virtual ~SentencePiece() = default;
  // Returns an error message, or "" on success.
  virtual std::string load(const std::string& serialized_model) = 0;
  virtual std::vector<int> encode(const std::string& line) const = 0;
  virtual std::string decode(const std::vector<int>& ids) const = 0;
  virtual int piece_to_id(const std::string& piece) const = 0;
  virtual int unk_id() const = 0;
  virtual int eos_id() const = 0;
  virtual int size() const = 0;
  // SentencePieceTrainer::Train with command-line style arguments; returns an error or "".
  virtual std::string train(const std::string& args) const = 0;
};

// The plugin's one entry point (extern "C", found with dlsym).
using NewSentencePiece = SentencePiece* (*)();
constexpr const char* kNewSentencePieceSymbol = "mhc_new_sentencepiece";
constexpr const char* kSentencePiecePlugin = "libmhc_sentencepiece.so";

}  // namespace mhc::data
