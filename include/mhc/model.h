// A GPT whose residual stream is any member of the residual family (DESIGN.md §1):
//
//   tokens -> embedding e -> x_0 = [e, …, e] (n streams) -> L blocks × (attention, MLP) -> sum of
//   streams (or DeepSeek-V4's HyperHead) -> RMSNorm -> LM head
//
// Each sublayer F is RMSNorm -> attention (rotary positions, causal) or RMSNorm -> SwiGLU MLP, and
// is wrapped by one HyperConnection: h = H_pre·x, y = F(h), x' = H_res·x + H_post^T·y. With the
// plain residual (n = 1) the update is x' = x + F(x) with no connection op at all, so it is the
// honest baseline every variant is timed against.
#pragma once

#include <torch/torch.h>

#include "mhc/module.h"

namespace mhc {

// How the stream stack ends before the final norm: the plain sum of the streams, or DeepSeek-V4's
// learned per-token weighted sum (HyperHead, mhc/module.h).
enum class StreamHead { sum, hyper };
// Parses "sum" or "hyper"; throws std::invalid_argument naming the value and the accepted names.
StreamHead parse_stream_head(const std::string& name);
const char* stream_head_name(StreamHead head);

struct GPTConfig {
  int64_t vocab = 4096;
  int64_t dim = 128;
  int64_t layers = 4;  // blocks; each has an attention and an MLP sublayer
  int64_t heads = 4;
  int64_t seq_len = 128;
  Variant variant = Variant::mhc;
  int64_t streams = 4;
  int64_t sinkhorn_iters = 20;
  VariantOptions variant_options = {};  // jpmhc's Cayley steps and scale, gomhc's block size
  BiasInit bias_init = {};
  StreamHead head = StreamHead::sum;
  // The activations' dtype: float32, or bfloat16 (mixed precision: the sublayers compute on bf16
  // activations with bf16 copies of their weights; parameters, their gradients, the norms'
  // statistics, the softmax, the connections' coefficients and the loss stay float32).
  torch::ScalarType dtype = torch::kFloat;
  // What the backward pass recomputes instead of keeping (mhc/recompute.h). It changes memory and
  // time, never a result.
  RecomputeOptions recompute = {};
  // Throws std::invalid_argument naming the first bad value and what is accepted.
  void check() const;
  // SwiGLU's hidden width: 8/3·dim (same parameter count as a 4·dim GELU MLP), rounded up to 32.
  int64_t mlp_hidden() const { return (8 * dim / 3 + 31) / 32 * 32; }
};

class RMSNormImpl : public torch::nn::Module {
 public:
  explicit RMSNormImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

// The keys (rotated) and values one attention layer has seen, for each sequence of a batch
// (DESIGN.md §12): [B, heads, seq_len, head_dim], in the activations' dtype.
struct AttentionCache {
  torch::Tensor keys, values;
};

// A batch of B sequences' KV cache for every attention layer of a GPT. Sequence b holds its first
// lengths[b] positions; each sequence runs at its own position. A token's n-stream state needs no
// cache: it depends only on its own path through the stack and the cached keys and values.
struct KVCache {
  // Room for seq_len positions per sequence: the rotary tables and the model's context end there.
  KVCache(const GPTConfig& config, int64_t batch, torch::Device device);
  int64_t batch() const { return static_cast<int64_t>(lengths.size()); }
  std::vector<AttentionCache> layers;  // one per block
  std::vector<int64_t> lengths;        // [B]
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const GPTConfig& config);
  // h [B, T, C] -> [B, T, C], causal over the T tokens.
  torch::Tensor forward(const torch::Tensor& h);
  // forward() of sequence `row`'s first T tokens, h [1, T, C], that also stores their keys and
  // values in cache rows [0, T).
  torch::Tensor prefill(const torch::Tensor& h, AttentionCache& cache, int64_t row);
  // One new token per sequence, h [B, 1, C], sequence b at position lengths[b] (positions: the same
  // as an int64 tensor [B]): stores its key and value there and attends to the sequence's
  // lengths[b] + 1 keys. -> [B, 1, C]
  torch::Tensor decode(const torch::Tensor& h, AttentionCache& cache, const std::vector<int64_t>& lengths,
                       const torch::Tensor& positions);

 private:
  struct Projected {
    torch::Tensor q, k, v;  // [B, heads, T, head_dim], q and k rotated
  };
  // forward(), also storing the keys and values in `cache` rows [0, T) of sequence `row` when given.
  torch::Tensor causal(const torch::Tensor& h, AttentionCache* cache, int64_t row);
  // qkv of h [B, T, C] with positions' rotations: cos and sin broadcastable to [B, heads, T, head_dim/2].
  Projected project_rotated(const torch::Tensor& h, const torch::Tensor& cos, const torch::Tensor& sin);
  // The rotary tables on h's device and dtype.
  void match_tables(const torch::Tensor& h);
  // attention output y [B, heads, T, head_dim] -> [B, T, C]
  torch::Tensor project_out(const torch::Tensor& y);
  int64_t heads_;
  RMSNorm norm_{nullptr};
  torch::nn::Linear qkv_{nullptr}, out_{nullptr};
  torch::Tensor cos_, sin_;  // rotary tables [T_max, head_dim / 2], recomputed (not saved)
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const GPTConfig& config);
  torch::Tensor forward(const torch::Tensor& h);

 private:
  RMSNorm norm_{nullptr};
  torch::nn::Linear gate_{nullptr}, up_{nullptr}, down_{nullptr};
};
TORCH_MODULE(MLP);

// One block: attention and MLP sublayers, each with its connection (none for the plain residual).
// GPT::forward runs the blocks' sublayers as one stack (forward_stack), so that recomputation groups
// may span blocks.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GPTConfig& config, int64_t index);
  Attention attention{nullptr};
  MLP mlp{nullptr};
  HyperConnection attention_connection{nullptr}, mlp_connection{nullptr};
};
TORCH_MODULE(Block);

class GPTImpl : public torch::nn::Module {
 public:
  explicit GPTImpl(const GPTConfig& config);
  // tokens [B, T] int64 (on any device: they are moved to the model's) -> logits [B, T, vocab] in
  // the activations' dtype; with `record`, also every connection's input and
  // coefficients in depth order (nothing for the plain residual).
  torch::Tensor forward(const torch::Tensor& tokens, std::vector<SublayerRecord>* record = nullptr);
  // Mean cross-entropy of next-token prediction, in nats.
  torch::Tensor loss(const torch::Tensor& tokens, const torch::Tensor& targets);
  // forward() in three parts, for pipeline stages (mhc/pipeline.h): tokens -> the n-stream state
  // x_0 [B, T, n, C]; blocks [first, last) on a stream state; the state after the last block ->
  // logits, or -> the mean cross-entropy against targets.
  torch::Tensor embed(const torch::Tensor& tokens);
  torch::Tensor run_blocks(const torch::Tensor& x, int64_t first, int64_t last,
                           std::vector<SublayerRecord>* record = nullptr);
  torch::Tensor logits(const torch::Tensor& x);
  torch::Tensor loss_of(const torch::Tensor& logits, const torch::Tensor& targets);
  // Inference with a KV cache (DESIGN.md §12), in inference mode (no autograd):
  // prefill runs tokens [T] (1 <= T <= seq_len) as sequence `row`'s first T tokens, replacing what
  // its cache held, -> logits [T, vocab]: forward()'s for those tokens, to fp32 rounding.
  torch::Tensor prefill(const torch::Tensor& tokens, KVCache& cache, int64_t row);
  // decode runs one new token per sequence, tokens [B], each at its sequence's next position (every
  // sequence must have room: lengths[b] < seq_len) -> logits [B, vocab]. The connections' pre and
  // post run as the fused boundary op between sublayers, with nothing saved for a backward.
  torch::Tensor decode(const torch::Tensor& tokens, KVCache& cache);
  const GPTConfig& config() const { return config_; }
  // The recomputation policy is a run setting: it changes memory and time, never a result, so a
  // model may switch it between steps (a resumed run, `mhc bench memory`).
  void set_recompute(const RecomputeOptions& recompute);
  // The sublayers' connections in depth order (attention of block 0, MLP of block 0, …); empty for
  // the plain residual.
  std::vector<HyperConnection> connections() const;

 private:
  // How a block's attention sublayer runs: forward(), prefill() or decode() of block b.
  using AttentionCall = std::function<torch::Tensor(Attention&, int64_t block, const torch::Tensor& h)>;
  torch::Tensor run_blocks_with(const torch::Tensor& x, int64_t first, int64_t last, const AttentionCall& attend,
                                const RecomputeOptions& recompute, std::vector<SublayerRecord>* record);
  GPTConfig config_;
  torch::nn::Embedding embed_{nullptr};
  std::vector<Block> blocks_;
  HyperHead hyper_head_{nullptr};  // StreamHead::hyper only
  RMSNorm final_norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(GPT);

}  // namespace mhc
