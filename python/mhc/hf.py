"""Hugging Face's DeepSeek-V4 (transformers.models.deepseek_v4) on the fused ops, in place
(DESIGN.md §9 and §13): apply_to_deepseek_v4(model), in the manner of Liger-Kernel's
apply_liger_kernel_to_*, rebinds the forward of a loaded model's decoder layers, hyper-connections
and hyper-head to instance methods that call torch.ops.mhc.*. No parameter is copied, renamed or
converted in storage: V4's fn/base/scale become mhc-v4's phi/bias/alpha inside every forward
(mhc.from_deepseek_v4, differentiable, so gradients land on fn/base/scale), and checkpoints load and
save as they are.

    from transformers import DeepseekV4ForCausalLM
    import mhc.hf
    model = DeepseekV4ForCausalLM.from_pretrained(path)
    mhc.hf.apply_to_deepseek_v4(model)

Inside a decoder layer the attention's post and the FFN's pre run as one op (torch.ops.mhc.boundary),
and so do a layer's FFN post and the next layer's attention pre: the layer before computes the next
layer's pre in the same pass and hands it over with the state it returns (a layer that receives
another state computes its own). Under gradient checkpointing each layer is a pure function of its
input, as checkpointing re-runs it, so there the hand-over between layers is off.

Needs transformers (the version scripts/setup.sh pins); `import mhc` itself does not.
"""
import types
from functools import partial

import torch
from torch import Tensor

try:
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as v4
except ImportError as e:  # transformers is optional for the rest of the package
    raise ImportError(f"mhc.hf needs transformers with DeepSeek-V4 (transformers==5.23.0): {e}") from None

from .deepseek_v4 import from_deepseek_v4
from .modules import Mix, coefficient_dtype, fused_boundary, fused_post, fused_pre

ACCEPTED = (v4.DeepseekV4Model, v4.DeepseekV4ForCausalLM)
# The library's RMS and V4 eps (include/mhc/variant.h: kRmsEps, kDeepSeekV4Eps); HF reads them
# from the config, so a model configured otherwise would compute another function.
LIBRARY_EPS = 1e-6
VARIANT = "mhc-v4"


def apply_to_deepseek_v4(model) -> None:
    """Patches a DeepseekV4Model or DeepseekV4ForCausalLM in place: every decoder layer's attention
    and FFN hyper-connections and the hyper-head run on the fused ops. Parameters, their names and
    the state dict are untouched. Applying it twice is harmless."""
    if not isinstance(model, ACCEPTED):
        raise TypeError(f"mhc.hf.apply_to_deepseek_v4: got {type(model).__module__}.{type(model).__name__}; accepted: "
                        f"{', '.join(t.__name__ for t in ACCEPTED)} (transformers.models.deepseek_v4)")
    base = model.model if isinstance(model, v4.DeepseekV4ForCausalLM) else model
    config = base.config
    for name in ("hc_eps", "rms_norm_eps"):
        if getattr(config, name) != LIBRARY_EPS:
            raise ValueError(f"mhc.hf.apply_to_deepseek_v4: config.{name} is {getattr(config, name)}, but the fused "
                             f"ops compute DeepSeek-V4's mHC with {LIBRARY_EPS} (the released models' value)")
    if not 1 <= config.hc_sinkhorn_iters <= 100:
        raise ValueError(f"mhc.hf.apply_to_deepseek_v4: config.hc_sinkhorn_iters must be in [1, 100] for {VARIANT}, "
                         f"got {config.hc_sinkhorn_iters}")
    layers = list(base.layers)
    links = [_Link() for _ in layers]
    for layer, link, following, following_link in zip(layers, links, layers[1:] + [None], links[1:] + [None]):
        link.following = None if following is None else (following.attn_hc, following_link)
        layer._mhc_link = link  # a plain object: not a submodule, so no state-dict entry
        layer.forward = types.MethodType(_decoder_layer_forward, layer)
        for connection in (layer.attn_hc, layer.ffn_hc):
            connection.forward = types.MethodType(_connection_forward, connection)
    base.hc_head.forward = types.MethodType(_head_forward, base.hc_head)


class _Link:
    """A decoder layer's place in the stack: the next layer's attention connection and link
    (following; None for the last layer), and what the layer before computed for this one
    (inbox: the state it returned, with this layer's h and Mix)."""

    def __init__(self):
        self.following = None
        self.inbox = None


def _parameters(connection, x: Tensor):
    """mhc-v4's phi, bias, alpha from a DeepseekV4HyperConnection's fn, base, scale, in the
    coefficient dtype that goes with x (HF keeps them fp32; a model cast whole to bf16 has bf16 ones)."""
    like = dict(device=x.device, dtype=coefficient_dtype(x.dtype))
    return from_deepseek_v4(connection.fn.to(**like), connection.base.to(**like), connection.scale.to(**like))


def _post_input(mix: Mix) -> Tensor:
    """The state the post of mix's sublayer reads: pre_joint's alias of x, or the boundary's x_next
    (either way its second gradient joins inside the kernel that made it)."""
    return mix.x_post if mix.x_post is not None else mix.x_next


def _pre(connection, x: Tensor):
    """x [..., n, C] -> (h [..., C], Mix with x_post), the fused pre of one connection."""
    return fused_pre(x, _parameters(connection, x), VARIANT, connection.hc_sinkhorn_iters)


def _boundary(connection, mix: Mix, y: Tensor):
    """The post of mix's sublayer (output y [..., C]) and `connection`'s pre as one op ->
    (h [..., C], the Mix of `connection`, whose x_next is the state between the two)."""
    x = _post_input(mix)
    return fused_boundary(x, y, mix, _parameters(connection, x), VARIANT, connection.hc_sinkhorn_iters)


def _post(mix: Mix, y: Tensor) -> Tensor:
    return fused_post(_post_input(mix), y, mix)


def _fused_layer(layer, hidden_states: Tensor, input_ids=None, hand_over: bool = True, **kwargs) -> Tensor:
    """DeepseekV4DecoderLayer.forward's function on the fused ops: x' = post·F(h) + combᵀ·x twice,
    H_res (row k = destination) being V4's comb transposed."""
    link = layer._mhc_link
    inbox, link.inbox = link.inbox, None
    if inbox is not None and inbox[0] is hidden_states:
        h, mix = inbox[1], inbox[2]
    else:
        h, mix = _pre(layer.attn_hc, hidden_states)
    attn_output, _ = layer.self_attn(layer.input_layernorm(h), **kwargs)
    h, mix = _boundary(layer.ffn_hc, mix, attn_output)
    mlp_output = layer.mlp(layer.post_attention_layernorm(h), input_ids=input_ids)
    if not hand_over or link.following is None:
        return _post(mix, mlp_output)
    following_connection, following_link = link.following
    h, following_mix = _boundary(following_connection, mix, mlp_output)
    following_link.inbox = (following_mix.x_next, h, following_mix)
    return following_mix.x_next


def _decoder_layer_forward(self, hidden_states: Tensor, input_ids=None, **kwargs) -> Tensor:
    # This instance method hides the class's forward, which GradientCheckpointingLayer wrapped with
    # its checkpointing: do what that wrapper does (a checkpointed layer keeps no cache, which the
    # re-run would update twice).
    if self.gradient_checkpointing and self.training:
        if kwargs.get("past_key_values") is not None:
            kwargs["past_key_values"] = None
        return self._gradient_checkpointing_func(partial(_fused_layer, self, input_ids=input_ids, hand_over=False,
                                                         **kwargs), hidden_states)
    return _fused_layer(self, hidden_states, input_ids=input_ids, **kwargs)


def _connection_forward(self, hidden_streams: Tensor):
    """DeepseekV4HyperConnection.forward's contract, (post, comb, collapsed), from the fused pre."""
    lead, n, C = hidden_streams.shape[:-2], self.hc_mult, hidden_streams.shape[-1]
    h, _, H_post, H_res = torch.ops.mhc.pre(hidden_streams.reshape(-1, n, C), *_parameters(self, hidden_streams),
                                            VARIANT, self.hc_sinkhorn_iters)
    return H_post.view(*lead, n), H_res.transpose(-1, -2).view(*lead, n, n), h.view(*lead, C)


def _head_forward(self, x: Tensor) -> Tensor:
    """DeepseekV4HyperHead.forward on mhc.HyperHead's op; its phi is hc_fn transposed."""
    return torch.ops.mhc.hyper_head(x, self.hc_fn.t(), self.hc_base, self.hc_scale)
