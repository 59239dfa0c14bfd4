"""torch.compile(fullgraph=True) over the Python modules: the fused ops trace whole (their fake
kernels, opcheck: test_opcheck.py) and give eager's values and gradients to fp32 rounding."""
import pytest
import torch

import mhc

# Compiled and eager runs differ only in the order of float32 sums inside the compiled graph's own
# ops (the MLP, the loss): a few units in the last place of each accumulated value.
EPS = torch.finfo(torch.float32).eps


def close(a, b, terms):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= terms * EPS * scale, (a - b).abs().max().item()


def mlp(C):
    return torch.nn.Sequential(torch.nn.Linear(C, 2 * C), torch.nn.GELU(), torch.nn.Linear(2 * C, C))


@pytest.mark.parametrize("variant,n", [("mhc", 4), ("hc", 2), ("mhc-lite", 3), ("kromhc", 4)])
def test_a_connection_around_an_mlp_compiles_whole(variant, n):
    torch.manual_seed(0)
    C = 16
    hc, f = mhc.HyperConnection(variant, n, C), mlp(C)
    params = list(hc.parameters()) + list(f.parameters())

    def run(fn):
        x = torch.randn(2, 8, n, C, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out = fn(x)
        grads = torch.autograd.grad(out.square().sum(), [x] + params)
        return [out.detach()] + list(grads)

    eager = run(lambda x: hc(x, f))
    compiled = run(torch.compile(lambda x: hc(x, f), fullgraph=True))
    for a, b in zip(compiled, eager):
        close(a, b, terms=4 * C)


def test_a_stack_compiles_whole_without_recomputation_and_refuses_streams():
    torch.manual_seed(0)
    n, C, L = 4, 16, 4
    stack, fs = mhc.HyperConnectionStack("mhc", n, C, L), [mlp(C) for _ in range(L)]
    params = list(stack.parameters()) + [p for f in fs for p in f.parameters()]
    x0 = torch.randn(2, 8, n, C)

    def run(fn):
        x = x0.clone().requires_grad_()
        out = fn(x)
        return [out.detach()] + list(torch.autograd.grad(out.square().sum(), [x] + params))

    eager = run(lambda x: stack(x, fs, "none"))
    compiled = run(torch.compile(lambda x: stack(x, fs, "none"), fullgraph=True))
    for a, b in zip(compiled, eager):
        close(a, b, terms=4 * C * L)
    # streams frees and refills storage from autograd hooks: refused under compile, saying why.
    with pytest.raises(Exception, match="recompute='streams' releases and refills the stream states' storage"):
        torch.compile(lambda x: stack(x, fs, "streams"), fullgraph=True)(x0.clone().requires_grad_())
