// libmhc_sentencepiece.so: SentencePiece behind the abstract class of sentencepiece_plugin.h.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "sentencepiece_plugin.h"

namespace {

class Plugin final : public mhc::data::SentencePiece {
 public:
  std::string load(const std::string& serialized_model) override {
    const auto status = sp_.LoadFromSerializedProto(serialized_model);
    return status.ok() ? "" : status.ToString();
  }
  std::vector<int> encode(const std::string& line) const override {
    std::vector<int> ids;
    sp_.Encode(line, &ids);
    return ids;
  }
  std::string decode(const std::vector<int>& ids) const override {
    std::string text;
    sp_.Decode(ids, &text);
    return text;
  }
  int piece_to_id(const std::string& piece) const override { return sp_.PieceToId(piece); }
  int unk_id() const override { return sp_.unk_id(); }
  int eos_id() const override { return sp_.eos_id(); }
  int size() const override { return sp_.GetPieceSize(); }
  std::string train(const std::string& args) const override {
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    return status.ok() ? "" : status.ToString();
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) mhc::data::SentencePiece* mhc_new_sentencepiece() { return new Plugin(); }
