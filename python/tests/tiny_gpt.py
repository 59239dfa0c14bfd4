"""A small GPT on the Python modules, for the tests and benchmarks that need a whole model rather than
one connection (test_compile.py's compiled training step): token and position embeddings, n copies
as the streams (mhc.expand_streams), blocks of causal self-attention and a GELU MLP, each sublayer
with an RMSNorm inside and wrapped by mhc.HyperConnection, the streams summed (mhc.reduce_streams),
a final RMSNorm and the LM head; cross-entropy on the next token. The `mhc train` GPT (DESIGN.md §1)
in miniature, without rotary positions or SwiGLU, which the connections do not care about.
connection="pure" computes each connection with pure_torch.py's math on the same parameters instead
of the fused ops: the compiled pure-PyTorch baseline of python/bench.py --model."""
import functools

import torch
import torch.nn.functional as F
from torch import nn

import mhc
import pure_torch


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, h, cache=None, layer=0):
        """With an mhc.KVCache, the T tokens follow the cached ones (mhc/generation.py)."""
        B, T, C = h.shape
        q, k, v = self.qkv(self.norm(h)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v)
            past = k.shape[2] - T
            # Query t (position past + t) sees keys 0 … past + t.
            mask = torch.arange(past + T, device=h.device)[None, :] <= past + torch.arange(T, device=h.device)[:, None]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, h):
        return self.down(F.gelu(self.up(self.norm(h))))


class TinyGPT(nn.Module):
    def __init__(self, variant="mhc", streams=4, vocab=64, dim=32, heads=2, layers=2, seq_len=16, connection="ops"):
        super().__init__()
        if connection not in ("ops", "pure"):
            raise ValueError(f"TinyGPT: connection must be 'ops' or 'pure', got {connection!r}")
        self.streams, self.connection = streams, connection
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.sublayers = nn.ModuleList(m for _ in range(layers) for m in (Attention(dim, heads), MLP(dim)))
        self.connections = nn.ModuleList(mhc.HyperConnection(variant, streams, dim, sublayer_index=l)
                                         for l in range(2 * layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, cache=None):
        """tokens [B, T] -> logits [B, T, vocab]; with an mhc.KVCache, at positions after the cached tokens."""
        past = cache.length if cache is not None else 0
        x = mhc.expand_streams(self.embed(tokens) + self.position[past:past + tokens.shape[1]], self.streams)
        for i, (connection, sublayer) in enumerate(zip(self.connections, self.sublayers)):
            if self.connection == "pure":
                connection = functools.partial(pure_connection, connection)
            if cache is not None and isinstance(sublayer, Attention):
                x = connection(x, lambda h, attention=sublayer, layer=i // 2: attention(h, cache, layer))
            else:
                x = connection(x, sublayer)
        return self.head(self.norm(mhc.reduce_streams(x)))

    def loss(self, tokens, targets):
        return F.cross_entropy(self.forward(tokens).flatten(0, 1), targets.flatten())


def pure_connection(c, x, branch):
    """mhc.HyperConnection c's forward(x, branch) in pure_torch.py's math, on c's parameters."""
    flat, lead = x.reshape(-1, c.streams, c.dim), x.shape[:-2]
    h, _, H_post, H_res = pure_torch.pre(flat, c.phi, c.bias, c.alpha, c.variant, c.sinkhorn_iters)
    y = branch(h.view(*lead, c.dim)).reshape(-1, c.dim)
    return pure_torch.post(flat, y, H_post, H_res).view(x.shape)
