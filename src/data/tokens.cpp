// The token cache (a corpus is tokenized once; later runs read two binary files) and the window
// sampler that turns a token stream into batches in a resumable order.
#include <omp.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <random>
#include <stdexcept>

#include "mhc/data.h"
#include "mhc/files.h"

namespace fs = std::filesystem;

namespace mhc::data {

namespace {

// Token file: magic, count, vocabulary, SHA-256 of the ids (hex), then the ids as int32.
constexpr char kTokenMagic[8] = {'M', 'H', 'C', 'T', 'O', 'K', '1', '\n'};
constexpr size_t kDigestChars = 64;
constexpr size_t kHeaderBytes = sizeof(kTokenMagic) + 2 * sizeof(uint64_t) + kDigestChars;

std::string ids_digest(const std::vector<int32_t>& ids) {
  Sha256 d;
  d.update(ids.data(), ids.size() * sizeof(int32_t));
  return d.hex();
}

void write_tokens(const std::string& path, const std::vector<int32_t>& ids, int64_t vocab) {
  std::string bytes(kHeaderBytes + ids.size() * sizeof(int32_t), '\0');
  char* p = bytes.data();
  const uint64_t count = ids.size(), v = static_cast<uint64_t>(vocab);
  std::memcpy(p, kTokenMagic, sizeof(kTokenMagic));
  std::memcpy(p + 8, &count, 8);
  std::memcpy(p + 16, &v, 8);
  std::memcpy(p + 24, ids_digest(ids).data(), kDigestChars);
  std::memcpy(p + kHeaderBytes, ids.data(), ids.size() * sizeof(int32_t));
  write_file_atomic(path, bytes);
}

// Empty optional-like result (false) when the file is missing, truncated or fails its digest.
bool read_tokens(const std::string& path, int64_t vocab, std::vector<int32_t>& ids) {
  if (!fs::exists(path)) return false;
  const std::string bytes = read_file(path);
  uint64_t count = 0, v = 0;
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kTokenMagic, 8) != 0) return false;
  std::memcpy(&count, bytes.data() + 8, 8);
  std::memcpy(&v, bytes.data() + 16, 8);
  if (v != static_cast<uint64_t>(vocab) || bytes.size() != kHeaderBytes + count * sizeof(int32_t)) return false;
  ids.resize(count);
  std::memcpy(ids.data(), bytes.data() + kHeaderBytes, count * sizeof(int32_t));
  return ids_digest(ids) == bytes.substr(24, kDigestChars);
}

std::vector<int32_t> encode_all(const Tokenizer& tok, const std::vector<std::string>& documents) {
  std::vector<std::vector<int32_t>> parts(documents.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (size_t i = 0; i < documents.size(); ++i) parts[i] = tok.encode_document(documents[i]);
  std::vector<int32_t> ids;
  for (const auto& p : parts) ids.insert(ids.end(), p.begin(), p.end());
  return ids;
}

}  // namespace

TokenizedCorpus tokenize_corpus(const std::string& source, const std::string& data_dir, const std::string& tokenizer,
                                int64_t vocab, int threads, std::unique_ptr<Tokenizer> given) {
  if (tokenizer != "bpe" && tokenizer != "byte")
    throw std::invalid_argument("unknown --tokenizer '" + tokenizer + "' (accepted: bpe, byte)");
  constexpr int64_t kMinBpeVocab = 256, kMaxVocab = 1 << 20;
  if (tokenizer == "bpe" && (vocab < kMinBpeVocab || vocab > kMaxVocab))
    throw std::invalid_argument("--vocab " + std::to_string(vocab) + " is out of range for a BPE tokenizer (accepted: " +
                                std::to_string(kMinBpeVocab) + " to " + std::to_string(kMaxVocab) + ")");
  Corpus corpus = load_corpus(source, data_dir);
  if (tokenizer == "byte") vocab = byte_tokenizer()->vocab_size();

  Sha256 key;
  key.update(corpus.fingerprint + '\0' + tokenizer + '\0' + std::to_string(vocab) + "\0v1");
  const std::string dir = (fs::path(data_dir) / "cache" / (corpus.name + "-" + key.hex().substr(0, 12))).string();
  const std::string model_path = dir + "/tokenizer.model", train_path = dir + "/train.bin", val_path = dir + "/val.bin";

  TokenizedCorpus out;
  out.cache_dir = dir;
  const bool cached_model = tokenizer == "byte" || fs::exists(model_path);
  const std::string cached_bytes = tokenizer == "byte" || !cached_model ? std::string() : read_file(model_path);
  const bool same_as_given = !given || (cached_model && (tokenizer == "byte" || cached_bytes == given->serialize()));
  if (cached_model && same_as_given) {
    out.tokenizer = tokenizer_from_bytes(tokenizer, cached_bytes);
    if (read_tokens(train_path, vocab, out.train) && read_tokens(val_path, vocab, out.val)) return out;
  }
  ensure_writable_dir(dir);
  if (given) {
    out.tokenizer = std::move(given);
    if (tokenizer == "bpe") write_file_atomic(model_path, out.tokenizer->serialize());
  } else if (!cached_model) {
    std::cout << "data: training a " << vocab << "-piece BPE tokenizer on " << corpus.train.size() << " "
              << corpus.name << " documents (cached in " << dir << ")\n";
    out.tokenizer = train_bpe(corpus.train, vocab, threads, dir);
    write_file_atomic(model_path, out.tokenizer->serialize());
  }
  omp_set_num_threads(threads);
  out.train = encode_all(*out.tokenizer, corpus.train);
  out.val = encode_all(*out.tokenizer, corpus.val);
  write_tokens(train_path, out.train, vocab);
  write_tokens(val_path, out.val, vocab);
  std::cout << "data: " << corpus.name << " tokenized: " << out.train.size() << " train / " << out.val.size()
            << " validation tokens\n";
  return out;
}

WindowSampler::WindowSampler(const std::vector<int32_t>& tokens, int64_t seq_len, uint64_t seed,
                             const std::string& split_name)
    : tokens_(tokens), seq_len_(seq_len), windows_(0), seed_(seed) {
  if (seq_len < 1) throw std::invalid_argument("--seq-len must be at least 1, got " + std::to_string(seq_len));
  windows_ = tokens.size() > 0 ? (static_cast<int64_t>(tokens.size()) - 1) / seq_len : 0;
  if (windows_ < 1)
    throw std::invalid_argument("--seq-len " + std::to_string(seq_len) + " is longer than the " + split_name +
                                " split (" + std::to_string(tokens.size()) + " tokens)");
}

std::pair<torch::Tensor, torch::Tensor> WindowSampler::batch(int64_t position, int64_t count) const {
  std::vector<int64_t> ids(count);
  int64_t epoch = -1;
  std::vector<int64_t> order;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = position + i, e = p / windows_;
    if (e != epoch) {  // Fisher–Yates with a generator seeded by (seed, epoch) alone
      epoch = e;
      order.resize(windows_);
      std::iota(order.begin(), order.end(), 0);
      std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
      for (int64_t k = windows_ - 1; k > 0; --k) std::swap(order[k], order[rng() % static_cast<uint64_t>(k + 1)]);
    }
    ids[i] = order[p % windows_];
  }
  return gather(ids);
}

std::pair<torch::Tensor, torch::Tensor> WindowSampler::ordered(int64_t first, int64_t count) const {
  std::vector<int64_t> ids(count);
  for (int64_t i = 0; i < count; ++i) ids[i] = (first + i) % windows_;
  return gather(ids);
}

std::pair<torch::Tensor, torch::Tensor> WindowSampler::gather(const std::vector<int64_t>& window_ids) const {
  const int64_t B = window_ids.size(), T = seq_len_;
  torch::Tensor x = torch::empty({B, T}, torch::kLong), y = torch::empty({B, T}, torch::kLong);
  int64_t* xp = x.data_ptr<int64_t>();
  int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* w = tokens_.data() + window_ids[b] * T;
    for (int64_t t = 0; t < T; ++t) xp[b * T + t] = w[t], yp[b * T + t] = w[t + 1];
  }
  return {x, y};
}

}  // namespace mhc::data
