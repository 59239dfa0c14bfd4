"""nn.Module front end: one sublayer's connection, parameters made by the library's own
initialisation (torch.ops.mhc.initial_parameters, DESIGN.md §2).

Parameters (the names and layouts a checkpoint holds; see include/mhc/variant.h):
    phi   [K, m]  projection weights, columns [pre | post | res]
                  hc:       K = C,   m = n + 2    (w_pre | w_post | W_res, column 2+k feeds H_res row k)
                  mhc:      K = n*C, m = 2n + n*n (res logits row-major, row k = destination stream)
                  mhc-v4:   as mhc (DeepSeek-V4's fn/base/scale convert with mhc.from_deepseek_v4)
                  mhc-lite: K = n*C, m = 2n + n!  (permutations in lexicographic order, identity first)
                  kromhc:   K = n*C, m = 2n + Σ f_k! (n = f_1·…·f_K, the 2s then the 3s; per factor its
                            f_k! permutations as mhc-lite orders them; U_1 is the most significant digit)
                  ihc:      K = n*C, m = 2n       (H_res = I)
                  jpmhc:    K = n*C, m = 3n*n     (three n×n logit blocks, row-major; read through a LayerNorm)
                  gomhc:    K = n*C, m = 2n + d(d-1)/2 (d = n·block_size; the skew matrix's upper triangle)
    bias  [B]     hc: a_pre (n) | b_post (n) | A_res (n*n, row-major); σ variants: logit biases as phi's columns
    alpha [A]     hc: [s_alpha, s_beta]; σ variants: [alpha_pre, alpha_post, alpha_res] (ihc: no alpha_res)
The plain residual has none. vec(x) is the token's n×C state flattened stream-major.
"""
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn


def coefficient_dtype(storage: torch.dtype) -> torch.dtype:
    """The dtype of the parameters and coefficients that go with x of dtype `storage`: float32 for
    bfloat16 storage (mixed precision), the storage dtype otherwise."""
    return torch.float32 if storage == torch.bfloat16 else storage


class Mix(NamedTuple):
    """The coefficients pre() made for each token, which post() consumes."""
    H_pre: Tensor   # [..., n]
    H_post: Tensor  # [..., n]
    H_res: Tensor   # [..., n, n], row k is the destination stream
    # From pre(): x as post should read it (torch.ops.mhc.pre_joint's alias of x): passed to post
    # instead of x, its gradient joins the one through pre inside pre's backward kernel.
    x_post: Optional[Tensor] = None  # [..., n, C]
    # From boundary(): the state x_next its post made and its pre read, which the post of the same
    # sublayer reads in turn (its gradient from there likewise joins inside the boundary's kernel).
    x_next: Optional[Tensor] = None  # [..., n, C]


def fused_pre(x: Tensor, parameters, variant: str, sinkhorn_iters: int):
    """The fused pre of x [..., n, C] with parameters (phi, bias, alpha) in the coefficient dtype
    -> (h [..., C], Mix with x_post). HyperConnection and mhc.hf call it."""
    lead, n, C = x.shape[:-2], x.shape[-2], x.shape[-1]
    h, H_pre, H_post, H_res, x_post = torch.ops.mhc.pre_joint(x.reshape(-1, n, C), *parameters, variant, sinkhorn_iters)
    return h.view(*lead, C), Mix(H_pre.view(*lead, n), H_post.view(*lead, n), H_res.view(*lead, n, n),
                                 x_post=x_post.view(x.shape))


def fused_post(x: Tensor, y: Tensor, mix: Mix) -> Tensor:
    """x [..., n, C], y [..., C] and mix's H_post, H_res -> x_next [..., n, C]."""
    n, C = x.shape[-2], x.shape[-1]
    return torch.ops.mhc.post(x.reshape(-1, n, C), y.reshape(-1, C), mix.H_post.reshape(-1, n),
                              mix.H_res.reshape(-1, n, n)).view(x.shape)


def fused_boundary(x: Tensor, y: Tensor, before: Mix, parameters, variant: str, sinkhorn_iters: int):
    """The post of `before`'s sublayer (x [..., n, C], its output y [..., C]) and the pre with
    `parameters` as one op -> (h [..., C], Mix whose x_next is the state between the two)."""
    lead, n, C = x.shape[:-2], x.shape[-2], x.shape[-1]
    x_next, h, H_pre, H_post, H_res = torch.ops.mhc.boundary(
        x.reshape(-1, n, C), y.reshape(-1, C), before.H_post.reshape(-1, n), before.H_res.reshape(-1, n, n),
        *parameters, variant, sinkhorn_iters)
    return h.view(*lead, C), Mix(H_pre.view(*lead, n), H_post.view(*lead, n), H_res.view(*lead, n, n),
                                 x_next=x_next.view(x.shape))


class HyperConnection(nn.Module):
    """Wraps one sublayer F: h = H_pre·x, y = F(h), x_next = H_res·x + H_post^T·y.

    variant: "residual" (streams must be 1), "hc", "mhc" (Sinkhorn–Knopp, sinkhorn_iters in
    [0, 100]), "mhc-v4" (DeepSeek-V4's mHC, sinkhorn_iters in [1, 100]), "mhc-lite" (streams ≤ 5), "kromhc" (streams 2, 3, 4, 6, 8, 9, 12 or 16), "ihc"
    (H_res = I), "jpmhc" (H_res orthogonal, the Cayley map; "jpmhc:cayley_iters=2:cayley_scale=0.1" for the
    paper's two fixed-point steps) or "gomhc" (H_res orthostochastic; "gomhc:block_size=1" for n up to 16,
    block_size 2 takes n ≤ 8); streams ≤ 16. sublayer_index l picks the stream l mod n that the
    initial biases favour; stream_logit / res_off_logit are the initial bias magnitudes
    (1 and -8 in the papers; 0 and 0 make mHC a plain residual mean at step 0).
    """

    def __init__(self, variant: str, streams: int, dim: int, sublayer_index: int = 0, sinkhorn_iters: int = 20,
                 stream_logit: float = 1.0, res_off_logit: float = -8.0):
        super().__init__()
        self.variant, self.streams, self.dim, self.sinkhorn_iters = variant, streams, dim, sinkhorn_iters
        # Checks every option (n, C, sublayer_index, sinkhorn_iters) as the C++ module does.
        phi, bias, alpha = torch.ops.mhc.initial_parameters(variant, streams, dim, sublayer_index, stream_logit,
                                                            res_off_logit, sinkhorn_iters)
        if variant == "residual":  # no parameters; empty buffers still follow .to(device)
            for name, t in (("phi", phi), ("bias", bias), ("alpha", alpha)):
                self.register_buffer(name, t, persistent=False)
        else:
            self.phi, self.bias, self.alpha = nn.Parameter(phi), nn.Parameter(bias), nn.Parameter(alpha)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, streams={self.streams}, dim={self.dim}, sinkhorn_iters={self.sinkhorn_iters}"

    def _check(self, x: Tensor, where: str) -> None:
        if x.dim() < 2 or x.shape[-2:] != (self.streams, self.dim):
            raise ValueError(f"HyperConnection.{where}: x must be [..., {self.streams}, {self.dim}], "
                             f"got {list(x.shape)}")

    def _parameters_like(self, x: Tensor):
        # Parameters follow x's device and dtype — float32 under bfloat16 storage, where they are
        # the fp32 masters and the coefficients stay fp32 too.
        like = dict(device=x.device, dtype=coefficient_dtype(x.dtype))
        return self.phi.to(**like), self.bias.to(**like), self.alpha.to(**like)

    def _check_y(self, x: Tensor, y: Tensor, where: str) -> None:
        if y.shape != x.shape[:-2] + x.shape[-1:]:
            raise ValueError(f"HyperConnection.{where}: y must be {list(x.shape[:-2] + x.shape[-1:])}, got {list(y.shape)}")

    def pre(self, x: Tensor):
        """x [..., n, C] -> (h [..., C], Mix)."""
        self._check(x, "pre")
        return fused_pre(x, self._parameters_like(x), self.variant, self.sinkhorn_iters)

    def post(self, x: Tensor, y: Tensor, mix: Mix) -> Tensor:
        """x [..., n, C] (best: mix.x_post, or mix.x_next from boundary()), y [..., C] -> x_next [..., n, C]."""
        self._check(x, "post")
        self._check_y(x, y, "post")
        return fused_post(x, y, mix)

    def boundary(self, x: Tensor, y: Tensor, before: Mix):
        """This connection's pre of the state the sublayer before it makes, post(x, y, before), as
        one op (torch.ops.mhc.boundary: fused on the CPU): x [..., n, C] (best: what the sublayer
        before's post would read, before.x_post or before.x_next), y [..., C] -> (h [..., C], Mix),
        the Mix's x_next being that state [..., n, C]."""
        self._check(x, "boundary")
        self._check_y(x, y, "boundary")
        return fused_boundary(x, y, before, self._parameters_like(x), self.variant, self.sinkhorn_iters)

    def forward(self, x: Tensor, branch: Callable[[Tensor], Tensor]) -> Tensor:
        h, mix = self.pre(x)
        return self.post(mix.x_post, branch(h), mix)


RECOMPUTE = ("none", "streams", "blocks")


class HyperConnectionStack(nn.Module):
    """The connections of L consecutive sublayers, run as one stack so that the backward pass can
    rebuild what the forward pass did not keep (include/mhc/recompute.h, DESIGN.md §6):

        recompute="none"     every n-stream state stays saved for the backward pass;
        recompute="streams"  of each group of `recompute_every` sublayers only the group's input
                             state stays (with each y and the coefficients); the inner states are
                             freed and rebuilt by the fused post op when the backward pass needs
                             them. F is not re-run. A no-op for variant "residual";
        recompute="blocks"   whole groups, F included, are re-run in the backward pass
                             (torch.utils.checkpoint).

    Between two sublayers the post of the first and the pre of the second run as one op
    (HyperConnection.boundary). All three policies give bit-identical values and gradients.
    recompute_every=None (auto) is, for
    "streams", the whole stack in the fewest equal groups of at most 12 sublayers, and for "blocks"
    round(sqrt(n·L/(n+2))) (include/mhc/recompute.h says why). Sublayer l's connection is built
    with sublayer_index=l.
    """

    def __init__(self, variant: str, streams: int, dim: int, sublayers: int, sinkhorn_iters: int = 20,
                 stream_logit: float = 1.0, res_off_logit: float = -8.0):
        super().__init__()
        if sublayers < 1:
            raise ValueError(f"HyperConnectionStack: need at least 1 sublayer, got {sublayers}")
        self.variant, self.streams = variant, streams
        self.connections = nn.ModuleList(
            HyperConnection(variant, streams, dim, l, sinkhorn_iters, stream_logit, res_off_logit) for l in range(sublayers))

    def forward(self, x: Tensor, sublayers: Sequence[Callable[[Tensor], Tensor]], recompute: str = "none",
                recompute_every: Optional[int] = None) -> Tensor:
        """x [..., n, C]; sublayers[l] maps [..., C] -> [..., C] -> x after the stack, [..., n, C]."""
        L = len(self.connections)
        if len(sublayers) != L:
            raise ValueError(f"HyperConnectionStack: {len(sublayers)} sublayers given to a stack of {L}")
        if recompute not in RECOMPUTE:
            raise ValueError(f"recompute {recompute!r} is not a recomputation policy (accepted: {', '.join(RECOMPUTE)})")
        if recompute_every is not None and recompute_every < 1:
            raise ValueError(f"recompute_every must be None (auto) or at least 1, got {recompute_every}")
        every = _group_size(recompute, self.streams, L, recompute_every or 0)
        if recompute == "streams" and torch.compiler.is_compiling():
            raise ValueError("recompute='streams' releases and refills the stream states' storage in place, from "
                             "autograd hooks, which a compiled graph cannot express; under torch.compile use "
                             "recompute='none' or 'blocks'")
        if recompute == "blocks" and torch.is_grad_enabled():
            for start in range(0, L, every):
                stop = min(L, start + every)
                watched = [p for c in self.connections[start:stop] for p in c.parameters()]
                watched += [p for f in sublayers[start:stop] if isinstance(f, nn.Module) for p in f.parameters()]
                x = torch.utils.checkpoint.checkpoint(self._run, x, sublayers, start, stop, use_reentrant=False)
                x = _UnchangedSinceForward.apply(x, watched, [p._version for p in watched])
            return x
        if recompute == "none" or self.variant == "residual" or not torch.is_grad_enabled():
            return self._run(x, sublayers, 0, L)
        groups = [torch.classes.mhc._StreamGroup(x)]

        def after(l, mix, y, x_next):
            groups[-1].add(x_next, y, mix.H_post, mix.H_res)  # frees the previous state, unless it is the group's input
            if (l + 1) % every == 0 and l + 1 < L:
                groups.append(torch.classes.mhc._StreamGroup(x_next))

        return self._run(x, sublayers, 0, L, after)

    def _run(self, x: Tensor, sublayers, start: int, stop: int, after=None) -> Tensor:
        """Sublayers [start, stop): the first pre, then post of l and pre of l + 1 as one op at every
        inner boundary, then the last post; after(l, mix, y, x_next) follows each sublayer. The C++
        forward_stack's loop (run_sublayers, src/ops/module.cpp), which Python cannot call: its
        sublayers are Python callables, and neither an op nor a torch.classes method takes one."""
        h, mix = self.connections[start].pre(x)
        post_input = mix.x_post  # what sublayer l's post reads: pre's x_post, then each boundary's x_next
        for l in range(start, stop):
            y = sublayers[l](h)
            if l + 1 < stop:
                h, following = self.connections[l + 1].boundary(post_input, y, mix)
                x = following.x_next
            else:
                following, x = None, self.connections[l].post(post_input, y, mix)
            if after is not None:
                after(l, mix, y, x)
            mix, post_input = following, x
        return x


@torch.compiler.assume_constant_result
def _group_size(recompute: str, streams: int, sublayers: int, every: int) -> int:
    """L_r, from the library (torch.ops.mhc.recompute_group_size); a constant to torch.compile, which
    cannot trace an op that returns an int."""
    return torch.ops.mhc.recompute_group_size(recompute, streams, sublayers, every)


class _UnchangedSinceForward(torch.autograd.Function):
    """The identity on a recomputed segment's output, whose backward (which runs before the segment
    is recomputed) refuses parameters changed in place since the forward pass: the recomputation
    would use the new values and give wrong gradients silently, where autograd's own version check,
    without recomputation, refuses."""

    @staticmethod
    def forward(ctx, x, watched, versions):
        ctx.watched, ctx.versions = watched, versions
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        for p, version in zip(ctx.watched, ctx.versions):
            if p._version != version:
                raise RuntimeError(f"recompute='blocks': a parameter of shape {list(p.shape)} that the segment re-runs "
                                   f"with was modified in place after the forward pass (version {version}, now "
                                   f"{p._version}): the backward pass would re-run the segment with the new values and "
                                   "give wrong gradients; run the backward pass first")
        return grad, None, None


def expand_streams(e: Tensor, streams: int) -> Tensor:
    """[..., C] -> [..., n, C]: n copies (the model's x_0)."""
    return e.unsqueeze(-2).expand(*e.shape[:-1], streams, e.shape[-1]).contiguous()


def reduce_streams(x: Tensor) -> Tensor:
    """[..., n, C] -> [..., C]: the sum of the streams."""
    return x.sum(-2)


class HyperHead(nn.Module):
    """DeepSeek-V4's end of the stream stack, in place of reduce_streams before the final norm
    (DESIGN.md §9): out = Σ_j w_j·x_j with per-token weights w = σ(α·(v·φ)/r + b) + 1e-6, v the
    token's n×C state flattened, r = sqrt(mean(v²) + 1e-6). φ [n·C, n] is V4's hc_head_fn
    transposed, b [n] hc_head_base, α [1] hc_head_scale. It starts at φ = 0, b = 0, α = 0.01: every
    weight 1/2 + 1e-6, the plain sum scaled by a constant that the final RMSNorm removes. The C++
    mhc::HyperHead's initialisation and math, as ops (torch.ops.mhc.hyper_head_*: plain tensor ops,
    autograd gives the backward)."""

    def __init__(self, streams: int, dim: int):
        super().__init__()
        phi, bias, alpha = torch.ops.mhc.hyper_head_initial_parameters(streams, dim)  # checks n and C
        self.phi, self.bias, self.alpha = nn.Parameter(phi), nn.Parameter(bias), nn.Parameter(alpha)

    def weights(self, x: Tensor) -> Tensor:
        """x [..., n, C] -> w [..., n]."""
        return torch.ops.mhc.hyper_head_weights(_head_input(x), self.phi, self.bias, self.alpha)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., n, C] -> [..., C]."""
        return torch.ops.mhc.hyper_head(_head_input(x), self.phi, self.bias, self.alpha)


def _head_input(x: Tensor) -> Tensor:
    """x, refused (with Python's name for its dtype) unless its dtype is one the head computes in."""
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise ValueError(f"HyperHead: x must be float32, float64 or bfloat16, got {x.dtype}")
    return x
