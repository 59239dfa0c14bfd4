"""A public peer as an oracle: lucidrains' `hyper-connections` (PyPI, pinned in scripts/setup.sh).
Its HyperConnections is DESIGN.md §2's HC (Zhu et al.'s Algorithm 2, with an RMSNorm); ours must
give its values and gradients in fp64, with its parameters mapped onto our layout. Its mHC is
another formulation (per-stream norms and projections, not DeepSeek's flattened nC one): it is
timed beside ours in python/bench.py, not compared here.

How its HC differs from DESIGN.md's, and the configuration that makes them equal:
  - layout: it keeps the streams in the batch dimension, [(B n), T, C] with the stream index
    fastest; ours is [B, T, n, C]. Its `static_alpha` [n, 1 + n] is indexed [source stream,
    target], target 0 the branch input, so a_pre = static_alpha[:, 0] and A_res = static_alpha[:, 1:]ᵀ
    (our rows are destinations); `dynamic_alpha_fn` [C, 1 + n] is likewise w_pre | W_res, our
    phi = [w_pre | w_post | W_res] with w_post = `dynamic_beta_fn`; b_post = `static_beta`,
    s_α = `dynamic_alpha_scale`, s_β = `dynamic_beta_scale`.
  - its RMSNorm has a weight, x̄·(1 + γ) (γ initially 0), which DESIGN.md leaves out because it
    only rescales φ's rows: we fold it in, phi[c] = (1 + γ_c)·[w_pre | w_post | W_res][c].
  - its RMSNorm is F.normalize(x)·sqrt(C) = x / sqrt(mean(x²)), with no ε; ours is
    x / sqrt(mean(x²) + ε), ε = 1e-6. That changes x̄ by a relative ε / (2·mean(x²)), 5e-7 for
    unit activations: far above fp64 rounding. It vanishes as activations grow, so the comparison
    runs at activations of scale S = 1e4, where it is 5e-15, and equality to 1e-10 (relative to
    each tensor's largest entry) then leaves the fp64 rounding of these short sums (C = 16 terms:
    ~1e-15) and that bias both four orders of magnitude of room.
"""
import pytest
import torch

import mhc

hyper_connections = pytest.importorskip("hyper_connections")

S = 1e4  # the activations' scale: their RMSNorm and ours then differ by ε / (2·S²) relative (ε = 1e-6)
TOL = 1e-10


def our_parameters(peer):
    """The peer's HyperConnections parameters in our "hc" layout (python/mhc/modules.py), made
    from them by differentiable ops, so that gradients reach the peer's own parameters."""
    n = peer.num_residual_streams
    W = torch.cat([peer.dynamic_alpha_fn[:, :1], peer.dynamic_beta_fn[:, None], peer.dynamic_alpha_fn[:, 1:]], dim=1)
    phi = (1 + peer.norm.gamma)[:, None] * W
    a_pre, A_res = peer.static_alpha[:, 0], peer.static_alpha[:, 1:].T
    bias = torch.cat([a_pre, peer.static_beta, A_res.reshape(n * n)])
    alpha = torch.stack([peer.dynamic_alpha_scale, peer.dynamic_beta_scale])
    return {"phi": phi, "bias": bias, "alpha": alpha}


def to_peer_layout(x):
    """[B, T, n, C] -> the peer's [(B n), T, C]."""
    B, T, n, C = x.shape
    return x.transpose(1, 2).reshape(B * n, T, C)


@pytest.mark.parametrize("n,layer", [(1, 0), (2, 3), (4, 6)])
def test_initialisation_is_the_same(n, layer):
    C = 16
    peer = hyper_connections.HyperConnections(n, dim=C, layer_index=layer)
    ours = mhc.HyperConnection("hc", n, C, sublayer_index=layer)
    with torch.no_grad():
        for name, value in our_parameters(peer).items():
            assert torch.equal(value, getattr(ours, name)), name


@pytest.mark.parametrize("n,layer", [(1, 0), (2, 3), (4, 6)])
def test_values_and_gradients_equal_in_double(n, layer):
    B, T, C = 2, 5, 16
    torch.manual_seed(0)  # F's initialisation
    g = torch.Generator().manual_seed(n + layer)
    peer = hyper_connections.HyperConnections(n, dim=C, layer_index=layer).double()
    with torch.no_grad():  # away from the initialisation, where the dynamic terms are 0
        for p in peer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ours = mhc.HyperConnection("hc", n, C, sublayer_index=layer).double()
    f = torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.Tanh()).double()

    def branch(h):  # F, shared by both: scaled so that tanh works in its curved range at scale S
        return S * f(h / S)

    x = (S * torch.randn(B, T, n, C, generator=g, dtype=torch.float64)).requires_grad_()
    dout = torch.randn(B, T, n, C, generator=g, dtype=torch.float64)
    leaves = [x] + list(peer.parameters()) + list(f.parameters())

    def through(out):
        return [out.detach()] + list(torch.autograd.grad((out * dout).sum(), leaves))

    h, add_residual = peer(to_peer_layout(x))
    theirs = through(add_residual(branch(h)).view(B, n, T, C).transpose(1, 2))
    mine = through(torch.func.functional_call(ours, our_parameters(peer), (x, branch)))
    for name, a, b in zip(["x_next", "x"] + [k for k, _ in peer.named_parameters()] + ["F's weight", "F's bias"],
                          mine, theirs):
        error = (a - b).abs().max().item() / b.abs().max().item()
        assert error <= TOL, f"{name}: relative error {error:.1e}"
