"""Generation with a KV cache for models built on the mhc modules (DESIGN.md §12), as `mhc sample`
does it in C++: the prompt runs as one batch (prefill), then each new token runs alone through the
stack (decode), its attention reading the keys and values of the tokens before it from the cache. A
token's n-stream state needs no cache: it depends only on its own path and the cached keys and
values. Under inference mode the connection ops save nothing for a backward.

A model takes part by accepting the cache:

    logits = model(tokens, cache)   # tokens [B, T] -> logits [B, T, vocab]

where the model reads the tokens' first position, cache.length, before its first layer, and
attention layer i calls `keys, values = cache.update(i, k, v)` with its new k, v [B, heads, T,
head_dim] and attends to the keys and values returned (every token so far, the new ones last). `mhc.generate` then yields tokens one at a time:

    for token in mhc.generate(model, prompt, 100, context=256, temperature=0):   # prompt [B, T]
        print(tokenizer.decode(token.tolist()))

The context: a window holds at most `context` tokens. When the next token would not fit, the window
restarts from its newest context // 2 tokens, which run again as a prompt: a cache cannot slide by
one, since every kept token's keys depend on the dropped ones through the layers below.
"""
import math
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor


class KVCache:
    """Each attention layer's keys and values for a batch of sequences, [B, heads, length, head_dim],
    in buffers of `capacity` positions allocated at a layer's first update."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: List[Tensor] = []
        self._values: List[Tensor] = []
        self._lengths: List[int] = []

    @property
    def length(self) -> int:
        """Tokens cached so far (layer 0's): the position of the next token."""
        return self._lengths[0] if self._lengths else 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Appends k, v [B, heads, T, head_dim] to layer `layer` -> its keys and values so far."""
        if layer == len(self._keys):  # layers register in order, at their first call
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self._keys.append(k.new_empty(shape))
            self._values.append(v.new_empty(shape))
            self._lengths.append(0)
        if not 0 <= layer < len(self._keys):
            raise ValueError(f"KVCache.update: layer {layer} out of order (accepted: 0 to {len(self._keys)})")
        start, end = self._lengths[layer], self._lengths[layer] + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KVCache.update: {end} tokens exceed the cache's capacity of {self.capacity}")
        self._keys[layer][:, :, start:end] = k
        self._values[layer][:, :, start:end] = v
        self._lengths[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]


def _check(prompt: Tensor, max_new_tokens: int, context: int, temperature: float, top_k: int) -> None:
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must be [B, T] token ids with T >= 1, got {list(prompt.shape)}")
    if not 1 <= prompt.shape[1] <= context:
        raise ValueError(f"generate: the prompt has {prompt.shape[1]} tokens, more than the context of {context} "
                         f"(accepted: 1 to {context})")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be at least 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"generate: top_k must be at least 0 (0: no cut), got {top_k}")


def _choose(logits: Tensor, temperature: float, top_k: int, rngs: List[torch.Generator]) -> Tensor:
    """Next tokens [B] from logits [B, vocab], sequence b drawing from rngs[b]."""
    logits = logits.double()
    if temperature == 0:
        return logits.argmax(-1)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probabilities = (logits / temperature).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=rng) for p, rng in zip(probabilities, rngs)])


def generate(model: Callable[[Tensor, Optional[KVCache]], Tensor], prompt: Tensor, max_new_tokens: int, *,
             context: int, temperature: float = 0.8, top_k: int = 40, seed: int = 1,
             kv_cache: bool = True) -> Iterator[Tensor]:
    """Yields max_new_tokens next tokens [B], one step at a time, continuing prompt [B, T] (1 <= T <=
    context) with `model` (see the module's note). temperature 0 is greedy; top_k 0 samples among
    all tokens; sequence b samples with seed + b. kv_cache=False runs every token's whole window through model(tokens, None), the
    reference the cached path is tested against: both see the same windows."""
    _check(prompt, max_new_tokens, context, temperature, top_k)
    # Sequence b draws from its own generator, seeded seed + b: it gets the same tokens in any batch.
    rngs = [torch.Generator().manual_seed(seed + b) for b in range(prompt.shape[0])]
    keep = max(1, context // 2)
    tokens, start = prompt, 0
    with torch.inference_mode():
        cache = KVCache(context) if kv_cache else None
        logits = model(tokens, cache)[:, -1]
        for step in range(max_new_tokens):
            token = _choose(logits, temperature, top_k, rngs).to(tokens.device)
            yield token
            if step + 1 == max_new_tokens:
                return
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            if tokens.shape[1] - start > context:  # the window restarts from its newest half
                start = tokens.shape[1] - keep
                cache = KVCache(context) if kv_cache else None
                logits = model(tokens[:, start:], cache)[:, -1]
            elif kv_cache:
                logits = model(tokens[:, -1:], cache)[:, -1]
            else:
                logits = model(tokens[:, start:], None)[:, -1]
