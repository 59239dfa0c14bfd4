// The pieces of `mhc train`, each against values worked out by hand: corpus text, tokenizers, the
// window order, the GPT's shape and causality, AdamW and the schedule, safetensors checkpoints.
// The command-line behaviour (resume, kill, signals, errors) is tested by train_cli.sh.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "helpers.h"
#include "mhc/checkpoint.h"
#include "mhc/data.h"
#include "mhc/files.h"
#include "mhc/optimizer.h"
#include "mhc/settings.h"

namespace fs = std::filesystem;

namespace mhc::test {
namespace {

std::string scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mhc-test-" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void write(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

TEST(Corpus, BrownTagsAreStrippedAndPunctuationAttached) {
  const std::string tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( in/in 1/2/cd )/) ./.\n\n\n"
      "\tIt's/pps+bez over/rp ./.\n";
  EXPECT_EQ(data::brown_to_text(tagged), "The jury said \"no evidence\", (in 1/2).\nIt's over.");
}

TEST(Corpus, FileIsSplitByParagraphAndEveryTwentiethGoesToValidation) {
  const std::string dir = scratch("corpus");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "paragraph " + std::to_string(i) + "\nsecond line\n\n";
  write(dir + "/text.txt", text);
  const data::Corpus c = data::load_corpus(dir + "/text.txt", dir);
  ASSERT_EQ(c.train.size(), 38u);
  ASSERT_EQ(c.val.size(), 2u);
  EXPECT_EQ(c.val[0], "paragraph 19\nsecond line");
  EXPECT_EQ(c.val[1], "paragraph 39\nsecond line");
}

TEST(Corpus, BadDataIsRefusedWithOneLine) {
  const std::string dir = scratch("bad-corpus");
  write(dir + "/latin1.txt", "caf\xe9\n\nmore\n");
  write(dir + "/empty.txt", "  \n\n");
  EXPECT_EQ(error_of([&] { data::load_corpus(dir + "/latin1.txt", dir); }),
            "data file " + dir + "/latin1.txt is not UTF-8 text (invalid byte at offset 3)");
  EXPECT_EQ(error_of([&] { data::load_corpus(dir + "/empty.txt", dir); }), "data " + dir + "/empty.txt holds no text");
  EXPECT_EQ(error_of([&] { data::load_corpus(dir + "/none.txt", dir); }),
            "data " + dir + "/none.txt does not exist (give a UTF-8 file or folder, or 'brown')");
  EXPECT_NE(error_of([&] { data::load_corpus("brown", dir); }).find("the Brown corpus is not installed"), std::string::npos);
}

TEST(Tokenizer, BytesRoundTripWithLineAndDocumentBreaks) {
  const auto tok = data::byte_tokenizer();
  const std::string text = "héllo\nworld";
  const auto ids = tok->encode_document(text);
  EXPECT_EQ(ids.size(), std::string(text).size() + 2);
  EXPECT_EQ(ids.back(), 256);
  EXPECT_EQ(tok->decode(ids), text + "\n\n");
  EXPECT_EQ(tok->decode(tok->encode_text(text)), text);
}

TEST(Tokenizer, BpeTrainsOnTheDocumentsAndRoundTrips) {
  const std::string dir = scratch("bpe");
  std::vector<std::string> docs;
  for (int i = 0; i < 200; ++i) docs.push_back("the cat sat on the mat number " + std::to_string(i) + "\nand then it slept");
  const auto tok = data::train_bpe(docs, 300, 1, dir);
  EXPECT_EQ(tok->vocab_size(), 300);
  const std::string text = "the cat sat on the mat\nand then it slept";
  const auto ids = tok->encode_text(text);
  EXPECT_LT(ids.size(), text.size() / 2);  // merges were learned
  EXPECT_EQ(tok->decode(ids), text);
  // The serialized model rebuilds the same tokenizer (what a checkpoint carries).
  const auto again = data::tokenizer_from_bytes("bpe", tok->serialize());
  EXPECT_EQ(again->encode_document(text), tok->encode_document(text));
}

TEST(Windows, EachEpochIsAPermutationAndDependsOnlyOnThePosition) {
  std::vector<int32_t> tokens(101);
  for (int i = 0; i <= 100; ++i) tokens[i] = i;
  const data::WindowSampler s(tokens, 10, 7, "training");
  ASSERT_EQ(s.windows(), 10);
  auto [x, y] = s.batch(0, 10);
  std::set<int64_t> starts;
  for (int b = 0; b < 10; ++b) {
    starts.insert(x[b][0].item<int64_t>());
    EXPECT_TRUE(torch::equal(y[b], x[b] + 1));  // targets are the inputs shifted by one
  }
  EXPECT_EQ(starts.size(), 10u);
  // Windows 3..7 read alone equal windows 3..7 of the whole epoch: the position is the whole state.
  EXPECT_TRUE(torch::equal(s.batch(3, 5).first, x.slice(0, 3, 8)));
  EXPECT_FALSE(torch::equal(s.batch(10, 10).first, x));  // the next epoch is another order
  EXPECT_EQ(error_of([&] { data::WindowSampler(tokens, 101, 0, "validation"); }),
            "--seq-len 101 is longer than the validation split (101 tokens)");
}

GPTConfig small_config(Variant variant, int64_t n) {
  GPTConfig c;
  c.vocab = 50, c.dim = 16, c.layers = 2, c.heads = 2, c.seq_len = 12, c.variant = variant, c.streams = n;
  return c;
}

TEST(Model, EveryVariantIsCausalAndStartsNearUniform) {
  struct Case {
    Variant variant;
    int64_t n;
    StreamHead head = StreamHead::sum;
  };
  for (auto [variant, n, head] : std::vector<Case>{{Variant::residual, 1}, {Variant::hc, 4}, {Variant::mhc, 4}, {Variant::mhc_v4, 4},
                                 {Variant::mhc_v4, 4, StreamHead::hyper}, {Variant::mhc_lite, 3}, {Variant::kromhc, 8},
                                 {Variant::ihc, 2}, {Variant::jpmhc, 4}, {Variant::gomhc, 4}}) {
    SCOPED_TRACE(std::string(variant_name(variant)) + " head " + stream_head_name(head));
    torch::manual_seed(0);
    GPTConfig config = small_config(variant, n);
    config.head = head;
    GPT model(config);
    EXPECT_EQ(model->connections().size(), variant == Variant::residual ? 0u : 4u);
    const torch::Tensor tokens = torch::randint(50, {3, 12}, torch::kLong);
    const torch::Tensor logits = model->forward(tokens);
    ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{3, 12, 50}));
    // Changing token 8 leaves the logits of positions 0..7 exactly as they were.
    torch::Tensor changed = tokens.clone();
    changed.select(1, 8).add_(1).remainder_(50);
    const torch::Tensor after = model->forward(changed);
    EXPECT_TRUE(torch::equal(after.slice(1, 0, 8), logits.slice(1, 0, 8)));
    EXPECT_FALSE(torch::equal(after.slice(1, 8), logits.slice(1, 8)));
    // Small initial weights: the loss starts within 0.05 nats of ln(vocab).
    EXPECT_NEAR(model->loss(tokens, tokens).item<double>(), std::log(50.0), 0.05);
  }
}

TEST(Model, BadShapesAreRefused) {
  GPTConfig c = small_config(Variant::mhc, 4);
  c.heads = 5;
  EXPECT_EQ(error_of([&] { c.check(); }), "--heads 5 does not divide --dim 16 (accepted: a divisor of the width)");
  c = small_config(Variant::mhc_lite, 6);
  EXPECT_NE(error_of([&] { c.check(); }).find("mhc-lite takes 1 to 5 streams"), std::string::npos);
  c = small_config(Variant::residual, 4);
  EXPECT_EQ(error_of([&] { c.check(); }), "--streams 4 with --variant residual: the plain residual has one stream");
  c = small_config(Variant::residual, 1);
  c.head = StreamHead::hyper;
  EXPECT_EQ(error_of([&] { c.check(); }),
            "--head hyper weighs the n streams, and the plain residual has one: use --head sum with --variant residual");
  c = small_config(Variant::mhc_v4, 4);
  c.sinkhorn_iters = 0;
  EXPECT_EQ(error_of([&] { c.check(); }),
            "--sinkhorn-iters 0 with --variant mhc-v4: its softmax is the first normalisation (accepted: 1 to 100)");
  EXPECT_EQ(error_of([] { parse_stream_head("mean"); }), "--head 'mean' is not supported (accepted: sum, hyper)");
}

TEST(Optimizer, AdamWStepMatchesTheClosedFormAndDecaysOnlyMatrices) {
  torch::Tensor w = torch::full({2, 2}, 1.0).requires_grad_(true), b = torch::full({2}, 1.0).requires_grad_(true);
  train::AdamW adam({{"w", w}, {"b", b}}, {0.9, 0.95, 1e-8, 0.5});
  w.mutable_grad() = torch::full({2, 2}, 0.2);
  b.mutable_grad() = torch::full({2}, 0.2);
  adam.step(0.1);
  // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) ≈ lr; decay multiplies w by 1 − lr·wd.
  const double update = 0.1 * 0.2 / (0.2 + 1e-8);
  EXPECT_NEAR(w[0][0].item<double>(), 1.0 * (1 - 0.1 * 0.5) - update, 1e-6);
  EXPECT_NEAR(b[0].item<double>(), 1.0 - update, 1e-6);
  EXPECT_EQ(adam.state().size(), 4u);
}

TEST(Optimizer, ScheduleWarmsUpLinearlyThenFollowsTheCosine) {
  EXPECT_DOUBLE_EQ(train::learning_rate(0, 100, 10, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(train::learning_rate(9, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(train::learning_rate(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(train::learning_rate(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);  // halfway: the mean of peak and floor
  EXPECT_NEAR(train::learning_rate(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

TEST(Checkpoint, RoundTripIsBitExactAndDamageIsRefused) {
  const std::string dir = scratch("ckpt");
  train::Checkpoint c;
  c.tensors["model/w"] = torch::randn({3, 5});
  c.tensors["adam_m/w"] = torch::randn({3, 5}, torch::kDouble);
  c.tensors["tokenizer"] = torch::arange(7, torch::kByte);
  c.metadata["step"] = "12";
  const std::string path = dir + "/c.safetensors";
  train::save_checkpoint(path, c);
  const train::Checkpoint back = train::load_checkpoint(path);
  for (const auto& [name, t] : c.tensors) EXPECT_TRUE(torch::equal(back.tensors.at(name), t)) << name;
  EXPECT_EQ(back.metadata.at("step"), "12");

  std::string bytes = read_file(path);
  write(dir + "/flipped.safetensors", bytes.substr(0, bytes.size() - 9) + char(bytes[bytes.size() - 9] ^ 1) + bytes.substr(bytes.size() - 8));
  EXPECT_EQ(error_of([&] { train::load_checkpoint(dir + "/flipped.safetensors"); }),
            "checkpoint " + dir + "/flipped.safetensors is unreadable: checksum mismatch (the file was truncated or modified)");
  write(dir + "/truncated.safetensors", bytes.substr(0, bytes.size() - 4));
  EXPECT_NE(error_of([&] { train::load_checkpoint(dir + "/truncated.safetensors"); }).find("outside the file (truncated?)"),
            std::string::npos);
  write(dir + "/text.safetensors", "hello world, not a checkpoint");
  EXPECT_NE(error_of([&] { train::load_checkpoint(dir + "/text.safetensors"); }).find("is unreadable"), std::string::npos);
}

// An update that overflows a weight (here weight decay times a huge learning rate) leaves a
// non-finite parameter; saving it is refused, nothing is written, and the earlier checkpoint stays.
TEST(Checkpoint, NonFiniteWeightsAreNeverWritten) {
  const std::string dir = scratch("nonfinite");
  const std::string path = dir + "/ckpt-00000001.safetensors";
  torch::Tensor w = torch::full({2, 2}, 3e38f).requires_grad_(true);
  train::Checkpoint c;
  c.tensors["model/w"] = w.detach().clone();
  train::save_checkpoint(path, c);
  train::AdamW adam({{"w", w}}, {0.9, 0.999, 1e-8, /*weight_decay=*/1.0});
  w.mutable_grad() = torch::ones_like(w);
  adam.step(1e30);
  ASSERT_FALSE(torch::isfinite(w).all().item<bool>());
  c.tensors["model/w"] = w;
  const std::string error = error_of([&] { train::save_checkpoint(path, c); });
  EXPECT_NE(error.find("not writing checkpoint " + path + ": tensor 'model/w' holds non-finite values"), std::string::npos)
      << error;
  EXPECT_TRUE(torch::equal(train::load_checkpoint(path).tensors.at("model/w"), torch::full({2, 2}, 3e38f)));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "a temporary file was left";
}

TEST(Checkpoint, FileNamesAreTheStepPaddedAndNothingElseIsOne) {
  EXPECT_EQ(train::checkpoint_file_name(40), "ckpt-00000040.safetensors");
  EXPECT_EQ(train::checkpoint_file_name(123456789), "ckpt-123456789.safetensors");
  for (int64_t step : {0, 7, 123456789}) EXPECT_TRUE(train::is_checkpoint_file_name(train::checkpoint_file_name(step)));
  // --overwrite and --keep delete what these accept: a user's files next to the run must not match.
  for (const char* other : {"ckpt-notes.safetensors", "ckpt-40.safetensors", "ckpt-00000040.safetensors.tmp",
                            "my-ckpt-00000040.safetensors", "ckpt-0000004x.safetensors", "latest", "config.json"})
    EXPECT_FALSE(train::is_checkpoint_file_name(other)) << other;
}

TEST(Settings, TomlKeysAreTheFlagNames) {
  const std::string dir = scratch("toml");
  write(dir + "/ok.toml", "variant = \"hc\"\nlr = 0.002\nsteps = 7\n");
  const auto v = train::read_toml(dir + "/ok.toml");
  EXPECT_EQ(v.at("variant"), "hc");
  // The name before the rename still reads, as the new one.
  write(dir + "/old.toml", "residual = \"mhc-lite\"\n");
  EXPECT_EQ(train::read_toml(dir + "/old.toml").at("variant"), "mhc-lite");
  EXPECT_EQ(std::stod(v.at("lr")), 0.002);
  EXPECT_EQ(v.at("steps"), "7");
  write(dir + "/bad.toml", "learning_rate = 1\n");
  EXPECT_EQ(error_of([&] { train::read_toml(dir + "/bad.toml"); }),
            "config " + dir + "/bad.toml: unknown key 'learning_rate' (keys are the flags of `mhc train --help`)");
}

// A run written before a setting existed: run settings take their default, --dtype the float32
// every earlier run had, and a missing model-defining setting is refused.
TEST(Settings, RunsWrittenBeforeASettingExistedStillRead) {
  nlohmann::json j;
  for (const auto& spec : train::setting_specs()) j[spec.name] = spec.default_value;
  j.erase("dtype"), j.erase("device");
  j["threads"] = "1";
  const train::Settings s = train::Settings::from_json(j.dump());
  EXPECT_EQ(s.str("dtype"), "float32");
  EXPECT_EQ(s.str("device"), "cpu");
  // A run written when --variant was --residual.
  j.erase("variant"), j["residual"] = "kromhc";
  EXPECT_EQ(train::Settings::from_json(j.dump()).str("variant"), "kromhc");
  j.erase("dim");
  EXPECT_EQ(error_of([&] { train::Settings::from_json(j.dump()); }), "the run's settings lack 'dim'");
}

}  // namespace
}  // namespace mhc::test
