"""DeepSeek-V4's hyper-connection parameters and this library's `mhc-v4` layout (DESIGN.md §9).

V4 stores a sublayer's connection as fn [(2+n)·n, n·C] (rows [pre | post | comb], comb row-major
[j = source, k = destination]), base [(2+n)·n] and scale [3], and applies comb transposed. The
conversions swap the comb block's (j, k) as they transpose fn into phi: exact, differentiable, and
written once, in C++ (src/ops/deepseek_v4.cpp), so that both languages share them.

    phi, bias, alpha = mhc.from_deepseek_v4(state["layers.0.hc_attn_fn"], state["layers.0.hc_attn_base"],
                                            state["layers.0.hc_attn_scale"])
    hc = mhc.HyperConnection("mhc-v4", streams=4, dim=C)
    with torch.no_grad():
        hc.phi.copy_(phi); hc.bias.copy_(bias); hc.alpha.copy_(alpha)

The head (hc_head_fn, hc_head_base, hc_head_scale) needs no reordering: mhc.HyperHead's phi is
hc_head_fn transposed.
"""
import torch
from torch import Tensor


def from_deepseek_v4(fn: Tensor, base: Tensor, scale: Tensor):
    """V4's (fn, base, scale) -> mhc-v4's (phi [n·C, 2n + n²], bias [2n + n²], alpha [3])."""
    return torch.ops.mhc.from_deepseek_v4(fn, base, scale)


def to_deepseek_v4(phi: Tensor, bias: Tensor, alpha: Tensor):
    """mhc-v4's (phi, bias, alpha) -> V4's (fn [(2+n)·n, n·C], base [(2+n)·n], scale [3])."""
    return torch.ops.mhc.to_deepseek_v4(phi, bias, alpha)
