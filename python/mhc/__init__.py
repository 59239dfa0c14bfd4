"""mhc: hyper-connection residuals (HC, mHC, DeepSeek-V4's mHC, mHC-lite, KromHC, identity-HC) for PyTorch, on
the fused C++ ops.

    import torch, mhc
    hc = mhc.HyperConnection("mhc", streams=4, dim=512, sublayer_index=0)
    x = mhc.expand_streams(embeddings, 4)          # [..., C] -> [..., 4, C]
    x = hc(x, attention)                           # pre -> attention -> post
    out = mhc.reduce_streams(x)                    # [..., C]

mhc.HyperConnectionStack wraps L consecutive sublayers and can rebuild their n-stream states in the
backward pass instead of keeping them (recompute="streams"), for the memory.

DeepSeek-V4 checkpoints: mhc.from_deepseek_v4 / mhc.to_deepseek_v4 convert a connection's parameters
for variant "mhc-v4", and mhc.HyperHead ends the stream stack the V4 way. mhc.hf.apply_to_deepseek_v4
patches a loaded Hugging Face DeepSeek-V4 model onto the fused ops (needs transformers, imported on
first use of mhc.hf only).

The ops themselves are torch.ops.mhc.pre / torch.ops.mhc.post (see include/mhc/ops.h). `import mhc.sharding`
declares their DTensor strategies (sharded along the tokens, parameters replicated).

On the CPU, call mhc.keep_freed_memory() once at start (as the `mhc` CLI does): without it every
large tensor is fresh memory the kernel must fault in, often costing more than the ops themselves.
"""
import sys

from . import _library

library_path = _library.load()

from ._fake import register_fake_implementations  # noqa: E402  (needs the ops loaded)
from .deepseek_v4 import from_deepseek_v4, to_deepseek_v4  # noqa: E402
from .generation import KVCache, generate  # noqa: E402
from .memory import keep_freed_memory  # noqa: E402
from .modules import (RECOMPUTE, HyperConnection, HyperConnectionStack, HyperHead, Mix, expand_streams,  # noqa: E402
                      reduce_streams)

register_fake_implementations()
if "torch.distributed.tensor" in sys.modules:  # DTensor already loaded: its strategies cost nothing more (mhc.sharding)
    from . import sharding  # noqa: E402, F401


def __getattr__(name):
    # mhc.hf imports transformers, an optional dependency: only when first asked for.
    if name == "hf":
        import importlib
        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'mhc' has no attribute {name!r}")

VARIANTS = ("residual", "hc", "mhc", "mhc-v4", "mhc-lite", "kromhc", "ihc", "jpmhc", "gomhc")

__all__ = ["HyperConnection", "HyperConnectionStack", "HyperHead", "RECOMPUTE", "Mix", "expand_streams", "reduce_streams",
           "from_deepseek_v4", "to_deepseek_v4", "KVCache", "generate", "keep_freed_memory", "VARIANTS", "library_path"]
