// The GPT of mhc/model.h: pre-norm sublayers wrapped by the residual family's connections.
#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>

#include "mhc/model.h"

namespace mhc {

using torch::Tensor;

namespace {

constexpr double kInitStd = 0.02;  // GPT-2's; output projections are further scaled by 1/sqrt(2L)

torch::nn::Linear linear(int64_t in, int64_t out, double std) {
  auto l = torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  torch::NoGradGuard no_grad;
  l->weight.normal_(0.0, std);
  return l;
}

// y = x·Wᵀ in x's dtype. Under bf16 the fp32 master weight is rounded for each use (autograd carries
// its gradient back to the master in fp32); the GEMM accumulates in fp32 on the CPU as on tensor
// cores (python/tests/test_platform.py checks the CPU's).
Tensor project(const torch::nn::Linear& layer, const Tensor& x) {
  return torch::linear(x, layer->weight.to(x.scalar_type()));
}

}  // namespace

StreamHead parse_stream_head(const std::string& name) {
  if (name == "sum") return StreamHead::sum;
  if (name == "hyper") return StreamHead::hyper;
  throw std::invalid_argument("--head '" + name + "' is not supported (accepted: sum, hyper)");
}

const char* stream_head_name(StreamHead head) { return head == StreamHead::hyper ? "hyper" : "sum"; }

void GPTConfig::check() const {
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
  if (vocab < 2) bad("vocabulary size must be at least 2, got " + std::to_string(vocab));
  if (dim < 2) bad("--dim must be at least 2, got " + std::to_string(dim));
  if (layers < 1) bad("--layers must be at least 1, got " + std::to_string(layers));
  if (heads < 1 || dim % heads != 0)
    bad("--heads " + std::to_string(heads) + " does not divide --dim " + std::to_string(dim) +
        " (accepted: a divisor of the width)");
  if ((dim / heads) % 2 != 0)
    bad("head size --dim/--heads = " + std::to_string(dim / heads) + " must be even (rotary embeddings rotate pairs)");
  if (seq_len < 1) bad("--seq-len must be at least 1, got " + std::to_string(seq_len));
  if (variant == Variant::residual && streams != 1)
    bad("--streams " + std::to_string(streams) + " with --variant residual: the plain residual has one stream");
  check_streams(variant, streams, variant_options);
  if (head == StreamHead::hyper && variant == Variant::residual)
    bad("--head hyper weighs the n streams, and the plain residual has one: use --head sum with --variant residual");
  if (dtype != torch::kFloat && dtype != torch::kBFloat16)
    bad(std::string("activation dtype ") + c10::toString(dtype) + " is not supported (accepted: float32, bfloat16)");
  if (recompute.every < 0)
    bad("recompute every " + std::to_string(recompute.every) + " sublayers: accepted are 0 (auto) or at least 1");
  const SinkhornIters iters = sinkhorn_iters_range(variant);
  if (sinkhorn_iters < 0 || sinkhorn_iters > iters.max)
    bad("--sinkhorn-iters must be in [0, " + std::to_string(iters.max) + "], got " + std::to_string(sinkhorn_iters));
  if (sinkhorn_iters < iters.min)
    bad("--sinkhorn-iters " + std::to_string(sinkhorn_iters) + " with --variant " + variant_name(variant) + ": " +
        iters.why_min + " (accepted: " + std::to_string(iters.min) + " to " + std::to_string(iters.max) + ")");
}

RMSNormImpl::RMSNormImpl(int64_t dim) { weight = register_parameter("weight", torch::ones({dim})); }

Tensor RMSNormImpl::forward(const Tensor& x_stored) {
  const Tensor x = x_stored.to(coefficient_dtype(x_stored.scalar_type()));  // bf16: the statistics in fp32
  return (x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + kRmsEps) * weight).to(x_stored.scalar_type());
}

AttentionImpl::AttentionImpl(const GPTConfig& c) : heads_(c.heads) {
  norm_ = register_module("norm", RMSNorm(c.dim));
  qkv_ = register_module("qkv", linear(c.dim, 3 * c.dim, kInitStd));
  out_ = register_module("out", linear(c.dim, c.dim, kInitStd / std::sqrt(2.0 * c.layers)));
  // Rotary embeddings (RoFormer), half-split pairs: position t rotates pair i by t·10000^(−2i/D).
  const int64_t half = c.dim / c.heads / 2;
  const Tensor inv_freq = torch::pow(10000.0, -torch::arange(half, torch::kDouble) / half);
  const Tensor angle = torch::outer(torch::arange(c.seq_len, torch::kDouble), inv_freq);
  cos_ = angle.cos().to(torch::kFloat);
  sin_ = angle.sin().to(torch::kFloat);
}

void AttentionImpl::match_tables(const Tensor& h) {
  if (cos_.device() == h.device() && cos_.scalar_type() == h.scalar_type()) return;
  c10::InferenceMode ordinary_tensors(false);  // the tables outlive a generation: training must be able to use them
  cos_ = cos_.to(h.device(), h.scalar_type()), sin_ = sin_.to(h.device(), h.scalar_type());
}

AttentionImpl::Projected AttentionImpl::project_rotated(const Tensor& h, const Tensor& cos, const Tensor& sin) {
  const int64_t B = h.size(0), T = h.size(1), C = h.size(2), D = C / heads_;
  const auto qkv = project(qkv_, norm_(h)).view({B, T, 3, heads_, D}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, D]
  auto rotate = [&](const Tensor& t) {
    const auto halves = t.chunk(2, -1);
    return torch::cat({halves[0] * cos - halves[1] * sin, halves[0] * sin + halves[1] * cos}, -1);
  };
  return {rotate(qkv[0]), rotate(qkv[1]), qkv[2]};
}

Tensor AttentionImpl::project_out(const Tensor& y) {
  return project(out_, y.transpose(1, 2).reshape({y.size(0), y.size(2), -1}));
}

Tensor AttentionImpl::causal(const Tensor& h, AttentionCache* cache, int64_t row) {
  match_tables(h);
  const int64_t T = h.size(1);
  const Projected p = project_rotated(h, cos_.slice(0, 0, T), sin_.slice(0, 0, T));
  if (cache) {
    cache->keys[row].slice(1, 0, T).copy_(p.k[0]);
    cache->values[row].slice(1, 0, T).copy_(p.v[0]);
  }
  return project_out(at::scaled_dot_product_attention(p.q, p.k, p.v, {}, 0.0, /*is_causal=*/true));
}

Tensor AttentionImpl::forward(const Tensor& h) { return causal(h, nullptr, 0); }

Tensor AttentionImpl::prefill(const Tensor& h, AttentionCache& cache, int64_t row) { return causal(h, &cache, row); }

Tensor AttentionImpl::decode(const Tensor& h, AttentionCache& cache, const std::vector<int64_t>& lengths,
                             const Tensor& positions) {
  using torch::indexing::Slice;
  match_tables(h);
  const int64_t B = h.size(0), half = cos_.size(1);
  const Projected p = project_rotated(h, cos_.index_select(0, positions).view({B, 1, 1, half}),
                                      sin_.index_select(0, positions).view({B, 1, 1, half}));
  const Tensor rows = torch::arange(B, positions.options());
  cache.keys.index_put_({rows, Slice(), positions}, p.k.squeeze(2));
  cache.values.index_put_({rows, Slice(), positions}, p.v.squeeze(2));
  const auto [shortest, longest] = std::minmax_element(lengths.begin(), lengths.end());
  const Tensor keys = cache.keys.slice(2, 0, *longest + 1), values = cache.values.slice(2, 0, *longest + 1);
  // Sequences of different lengths: each attends to its own positions only.
  std::optional<Tensor> mask;
  if (*shortest != *longest)
    mask = (torch::arange(*longest + 1, positions.options()).view({1, -1}) <= positions.view({-1, 1})).view({B, 1, 1, -1});
  return project_out(at::scaled_dot_product_attention(p.q, keys, values, mask));
}

MLPImpl::MLPImpl(const GPTConfig& c) {
  norm_ = register_module("norm", RMSNorm(c.dim));
  gate_ = register_module("gate", linear(c.dim, c.mlp_hidden(), kInitStd));
  up_ = register_module("up", linear(c.dim, c.mlp_hidden(), kInitStd));
  down_ = register_module("down", linear(c.mlp_hidden(), c.dim, kInitStd / std::sqrt(2.0 * c.layers)));
}

Tensor MLPImpl::forward(const Tensor& h) {
  const Tensor z = norm_(h);
  return project(down_, torch::silu(project(gate_, z)) * project(up_, z));
}

BlockImpl::BlockImpl(const GPTConfig& c, int64_t index) {
  attention = register_module("attn", Attention(c));
  mlp = register_module("mlp", MLP(c));
  if (c.variant == Variant::residual) return;
  auto options = [&](int64_t sublayer) {
    return HyperConnectionOptions(c.variant, c.streams, c.dim)
        .sublayer_index(sublayer)
        .sinkhorn_iters(c.sinkhorn_iters)
        .variant_options(c.variant_options)
        .bias_init(c.bias_init);
  };
  attention_connection = register_module("attn_hc", HyperConnection(options(2 * index)));
  mlp_connection = register_module("mlp_hc", HyperConnection(options(2 * index + 1)));
}

GPTImpl::GPTImpl(const GPTConfig& config) : config_(config) {
  config_.check();
  embed_ = register_module("embed", torch::nn::Embedding(config.vocab, config.dim));
  {
    torch::NoGradGuard no_grad;
    embed_->weight.normal_(0.0, kInitStd);
  }
  auto list = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < config.layers; ++l) {
    blocks_.push_back(Block(config, l));
    list->push_back(blocks_.back());
  }
  if (config.head == StreamHead::hyper) hyper_head_ = register_module("hc_head", HyperHead(config.streams, config.dim));
  final_norm_ = register_module("final_norm", RMSNorm(config.dim));
  head_ = register_module("head", linear(config.dim, config.vocab, kInitStd));
}

void GPTImpl::set_recompute(const RecomputeOptions& recompute) {
  GPTConfig c = config_;
  c.recompute = recompute;
  c.check();
  config_ = c;
}

std::vector<HyperConnection> GPTImpl::connections() const {
  std::vector<HyperConnection> out;
  for (const auto& b : blocks_)
    if (b->attention_connection) out.push_back(b->attention_connection), out.push_back(b->mlp_connection);
  return out;
}

Tensor GPTImpl::forward(const Tensor& tokens, std::vector<SublayerRecord>* record) {
  return logits(run_blocks(embed(tokens), 0, config_.layers, record));
}

Tensor GPTImpl::loss(const Tensor& tokens, const Tensor& targets) { return loss_of(forward(tokens), targets); }

Tensor GPTImpl::embed(const Tensor& tokens) {
  TORCH_CHECK_VALUE(tokens.dim() == 2 && tokens.size(1) <= config_.seq_len, "GPT: tokens must be [B, T] with T <= ",
                    config_.seq_len, ", got ", tokens.sizes());
  return expand_streams(embed_(tokens.to(embed_->weight.device())).to(config_.dtype), config_.streams);
}

Tensor GPTImpl::run_blocks(const Tensor& x, int64_t first, int64_t last, std::vector<SublayerRecord>* record) {
  return run_blocks_with(
      x, first, last, [](Attention& attention, int64_t, const Tensor& h) { return attention->forward(h); },
      config_.recompute, record);
}

Tensor GPTImpl::run_blocks_with(const Tensor& x, int64_t first, int64_t last, const AttentionCall& attend,
                                const RecomputeOptions& recompute, std::vector<SublayerRecord>* record) {
  TORCH_CHECK_VALUE(0 <= first && first <= last && last <= config_.layers, "GPT: blocks [", first, ", ", last,
                    ") (accepted: 0 <= first <= last <= ", config_.layers, ")");
  std::vector<Sublayer> sublayers;  // attention of block `first`, its MLP, …
  std::vector<HyperConnection> connections;
  for (int64_t b = first; b < last; ++b) {
    const Block& block = blocks_[b];
    // By value: with recomputation the backward calls the sublayers again, after this call returns.
    sublayers.push_back([attend, attention = block->attention, b](const Tensor& h) mutable { return attend(attention, b, h); });
    sublayers.push_back([mlp = block->mlp](const Tensor& h) mutable { return mlp->forward(h); });
    if (block->attention_connection) connections.push_back(block->attention_connection), connections.push_back(block->mlp_connection);
  }
  return forward_stack(connections, sublayers, x, recompute, record);
}

KVCache::KVCache(const GPTConfig& config, int64_t batch, torch::Device device) {
  if (batch < 1) throw std::invalid_argument("KV cache: batch must be at least 1, got " + std::to_string(batch));
  const auto options = torch::TensorOptions().dtype(config.dtype).device(device);
  for (int64_t l = 0; l < config.layers; ++l)
    layers.push_back({torch::zeros({batch, config.heads, config.seq_len, config.dim / config.heads}, options),
                      torch::zeros({batch, config.heads, config.seq_len, config.dim / config.heads}, options)});
  lengths.assign(batch, 0);
}

Tensor GPTImpl::prefill(const Tensor& tokens, KVCache& cache, int64_t row) {
  c10::InferenceMode inference;
  if (tokens.dim() != 1 || tokens.size(0) < 1 || tokens.size(0) > config_.seq_len)
    throw std::invalid_argument("GPT prefill: tokens must be [T] with 1 <= T <= " + std::to_string(config_.seq_len) +
                                " (the context), got " + c10::str(tokens.sizes()));
  if (row < 0 || row >= cache.batch())
    throw std::invalid_argument("GPT prefill: sequence " + std::to_string(row) + " is not in the cache (accepted: 0 to " +
                                std::to_string(cache.batch() - 1) + ")");
  const Tensor x = run_blocks_with(
      embed(tokens.view({1, -1})), 0, config_.layers,
      [&](Attention& attention, int64_t b, const Tensor& h) { return attention->prefill(h, cache.layers[b], row); },
      {}, nullptr);
  cache.lengths[row] = tokens.size(0);
  return logits(x)[0];
}

Tensor GPTImpl::decode(const Tensor& tokens, KVCache& cache) {
  c10::InferenceMode inference;
  if (tokens.dim() != 1 || tokens.size(0) != cache.batch())
    throw std::invalid_argument("GPT decode: tokens must be [" + std::to_string(cache.batch()) +
                                "] (one per sequence of the cache), got " + c10::str(tokens.sizes()));
  for (int64_t b = 0; b < cache.batch(); ++b)
    if (cache.lengths[b] >= config_.seq_len)
      throw std::invalid_argument("GPT decode: sequence " + std::to_string(b) + " fills the context (" +
                                  std::to_string(config_.seq_len) + " tokens): prefill a shorter window first");
  const Tensor positions = torch::tensor(cache.lengths, torch::TensorOptions(torch::kLong).device(embed_->weight.device()));
  const Tensor x = run_blocks_with(
      embed(tokens.view({-1, 1})), 0, config_.layers,
      [&](Attention& attention, int64_t b, const Tensor& h) {
        return attention->decode(h, cache.layers[b], cache.lengths, positions);
      },
      {}, nullptr);
  for (int64_t& length : cache.lengths) ++length;
  return logits(x).select(1, 0);
}

Tensor GPTImpl::logits(const Tensor& x) {
  return project(head_, final_norm_(hyper_head_ ? hyper_head_(x) : reduce_streams(x)));
}

Tensor GPTImpl::loss_of(const Tensor& logits, const Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.view({-1, config_.vocab}).to(torch::kFloat),
                                              targets.reshape({-1}).to(logits.device()));
}

}  // namespace mhc
