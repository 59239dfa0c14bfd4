"""mhc.generate (python/mhc/generation.py): with the KV cache, a model built on the mhc modules gives
the uncached path's logits to fp32 rounding and the same tokens, across the context limit, for
every variant; bad arguments are refused with one line."""
import math

import pytest
import torch

import mhc
from tiny_gpt import TinyGPT

CASES = [("residual", 1), ("hc", 2), ("mhc", 4), ("mhc-v4", 4), ("mhc-lite", 3), ("kromhc", 4), ("ihc", 2)]


def model_of(variant, streams, seq_len=12):
    torch.manual_seed(0)
    model = TinyGPT(variant, streams, vocab=50, dim=16, heads=2, layers=2, seq_len=seq_len).eval()
    with torch.no_grad():  # at its initial scale the next token hardly depends on the context
        for name, p in model.named_parameters():
            if not name.startswith("connections"):
                p.mul_(10)
    return model


@pytest.mark.parametrize("variant,streams", CASES)
def test_cached_and_uncached_generation_agree_across_the_context(variant, streams):
    model = model_of(variant, streams)
    prompt = torch.tensor([[1, 2, 3], [7, 8, 9]])
    for options in (dict(temperature=0), dict(temperature=1.0, top_k=10, seed=5)):
        # 3 + 20 tokens through a 12-token context: the window restarts twice.
        cached = torch.stack(list(mhc.generate(model, prompt, 20, context=12, **options)), 1)
        uncached = torch.stack(list(mhc.generate(model, prompt, 20, context=12, kv_cache=False, **options)), 1)
        assert torch.equal(cached, uncached)
        alone = torch.stack(list(mhc.generate(model, prompt[:1], 20, context=12, **options)), 1)
        assert torch.equal(alone[0], cached[0])


def test_cached_logits_equal_the_forward_to_fp32_rounding():
    model = model_of("mhc", 4)
    tokens = torch.randint(50, (2, 12))
    with torch.inference_mode():
        reference = model(tokens, None)
        cache = mhc.KVCache(12)
        logits = [model(tokens[:, :5], cache)] + [model(tokens[:, t:t + 1], cache) for t in range(5, 12)]
    cached = torch.cat(logits, 1)
    # Two orders of a K-term fp32 sum differ by at most 2·K·eps of the sum of magnitudes; each of
    # the 2L sublayers and the head adds one such difference (K = 4·dim = 64, the MLP's).
    tolerance = (2 * 2 + 1) * 2 * 64 * torch.finfo(torch.float32).eps * (reference.abs().max().item() + 1)
    assert (cached - reference).abs().max().item() <= tolerance


def test_tokens_stream_one_step_at_a_time():
    model = model_of("mhc", 4)
    steps = mhc.generate(model, torch.tensor([[1, 2]]), 3, context=12, temperature=0)
    first = next(steps)
    assert first.shape == (1,)
    assert len(list(steps)) == 2


@pytest.mark.parametrize("call,message", [
    (dict(prompt=torch.zeros(1, 0, dtype=torch.long)), r"prompt must be \[B, T\] token ids with T >= 1, got \[1, 0\]"),
    (dict(prompt=torch.zeros(1, 13, dtype=torch.long)), "the prompt has 13 tokens, more than the context of 12"),
    (dict(max_new_tokens=-1), "max_new_tokens must be at least 0, got -1"),
    (dict(temperature=math.nan), "temperature must be a finite number >= 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(top_k=-2), "top_k must be at least 0"),
])
def test_bad_arguments_are_one_line_errors(call, message):
    arguments = dict(prompt=torch.tensor([[1, 2]]), max_new_tokens=3, temperature=0.8, top_k=40) | call
    with pytest.raises(ValueError, match=message):
        next(mhc.generate(model_of("mhc", 4), arguments.pop("prompt"), arguments.pop("max_new_tokens"), context=12,
                          **arguments))
    with pytest.raises(ValueError, match="13 tokens exceed the cache's capacity of 12"):
        mhc.KVCache(12).update(0, torch.zeros(1, 2, 13, 8), torch.zeros(1, 2, 13, 8))
