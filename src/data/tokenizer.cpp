// Tokenizers: bytes (for tests and any script) and SentencePiece BPE trained on the corpus.
// Both end every line with a newline token and every document with a document break, so sentence
// and document boundaries survive tokenization.
#include <dlfcn.h>

#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "mhc/data.h"
#include "mhc/files.h"
#include "sentencepiece_plugin.h"

namespace mhc::data {

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kDocumentBreak = 256;
  std::string kind() const override { return "byte"; }
  int64_t vocab_size() const override { return 257; }
  std::vector<int32_t> encode_document(const std::string& text) const override {
    auto ids = encode_text(text);
    ids.push_back('\n');
    ids.push_back(kDocumentBreak);
    return ids;
  }
  std::vector<int32_t> encode_text(const std::string& text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) out += id == kDocumentBreak ? '\n' : static_cast<char>(id);
    return out;
  }
  std::string serialize() const override { return {}; }
};

// Opens the plugin once (see sentencepiece_plugin.h): beside the executable, one folder up (tests),
// or in the build folder this library was compiled for.
NewSentencePiece sentencepiece_factory() {
  static NewSentencePiece factory = [] {
    namespace fs = std::filesystem;
    const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path();
    std::string tried;
    for (const fs::path& dir : {exe, exe.parent_path(), fs::path(MHC_PLUGIN_DIR)}) {
      const fs::path plugin = dir / kSentencePiecePlugin;
      if (!fs::exists(plugin)) {
        tried += (tried.empty() ? "" : ", ") + dir.string();
        continue;
      }
      void* handle = ::dlopen(plugin.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (!handle) throw std::runtime_error(std::string("cannot open the SentencePiece plugin: ") + ::dlerror());
      auto f = reinterpret_cast<NewSentencePiece>(::dlsym(handle, kNewSentencePieceSymbol));
      if (!f) throw std::runtime_error(plugin.string() + " lacks " + kNewSentencePieceSymbol);
      return f;
    }
    throw std::runtime_error(std::string("the BPE tokenizer needs ") + kSentencePiecePlugin + ", not found in " + tried +
                             " (build it, or use --tokenizer byte)");
  }();
  return factory;
}

std::unique_ptr<SentencePiece> new_sentencepiece() { return std::unique_ptr<SentencePiece>(sentencepiece_factory()()); }

// SentencePiece sees one sentence at a time and drops '\n', so the newline is a user-defined piece
// of its own, appended after each line; the document break is SentencePiece's </s>.
constexpr const char* kNewlinePiece = "<n>";

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::string& model_bytes) : sp_(new_sentencepiece()), bytes_(model_bytes) {
    const std::string error = sp_->load(model_bytes);
    if (!error.empty()) throw std::invalid_argument("cannot load the SentencePiece model: " + error);
    newline_ = sp_->piece_to_id(kNewlinePiece);
    if (newline_ == sp_->unk_id() || sp_->eos_id() < 0)
      throw std::invalid_argument("the SentencePiece model lacks the <n> or </s> piece (not made by mhc)");
  }
  std::string kind() const override { return "bpe"; }
  int64_t vocab_size() const override { return sp_->size(); }
  std::vector<int32_t> encode_document(const std::string& text) const override {
    auto ids = encode_text(text);
    ids.push_back(newline_);
    ids.push_back(sp_->eos_id());
    return ids;
  }
  std::vector<int32_t> encode_text(const std::string& text) const override {
    std::vector<int32_t> ids;
    std::istringstream in(text);
    bool first = true;
    for (std::string line; std::getline(in, line); first = false) {
      if (!first) ids.push_back(newline_);
      const std::vector<int> piece_ids = sp_->encode(line);
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      out += sp_->decode(run);
      run.clear();
    };
    for (int32_t id : ids) {
      if (id == newline_ || id == sp_->eos_id()) {
        flush();
        out += '\n';  // a document break after a newline leaves a blank line
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }
  std::string serialize() const override { return bytes_; }

 private:
  std::unique_ptr<SentencePiece> sp_;
  std::string bytes_;
  int newline_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> train_bpe(const std::vector<std::string>& documents, int64_t vocab, int threads,
                                     const std::string& scratch_dir) {
  const std::string sentences = scratch_dir + "/bpe-input.txt", prefix = scratch_dir + "/bpe";
  std::string text;
  for (const auto& d : documents) text += d + '\n';
  write_file_atomic(sentences, text);
  std::ostringstream args;
  args << "--input=" << sentences << " --model_prefix=" << prefix << " --model_type=bpe --vocab_size=" << vocab
       << " --character_coverage=1.0 --user_defined_symbols=" << kNewlinePiece
       << " --bos_id=-1 --eos_id=2 --unk_id=0 --pad_id=-1 --normalization_rule_name=identity"
       << " --input_sentence_size=2000000 --shuffle_input_sentence=true --num_threads=" << threads
       << " --minloglevel=2";
  const std::string error = new_sentencepiece()->train(args.str());
  std::filesystem::remove(sentences);
  if (!error.empty())
    throw std::invalid_argument("SentencePiece could not train a " + std::to_string(vocab) +
                                "-piece BPE vocabulary on this data: " + error);
  std::string model = read_file(prefix + ".model");
  std::filesystem::remove(prefix + ".model");
  std::filesystem::remove(prefix + ".vocab");
  return std::make_unique<BpeTokenizer>(model);
}

std::unique_ptr<Tokenizer> tokenizer_from_bytes(const std::string& kind, const std::string& bytes) {
  if (kind == "byte") return byte_tokenizer();
  if (kind == "bpe") return std::make_unique<BpeTokenizer>(bytes);
  throw std::invalid_argument("unknown tokenizer '" + kind + "' (accepted: bpe, byte)");
}

}  // namespace mhc::data
