"""torch.compile(fullgraph=True) over the Python modules: the fused ops trace whole (their fake
kernels, opcheck: test_opcheck.py) and give eager's values and gradients to fp32 rounding, on the CPU
and on CUDA (conftest's `device`; skipped without a GPU): a connection, a stack, and a whole
training step of a small GPT."""
import copy

import pytest
import torch

import mhc
from tiny_gpt import TinyGPT

# Compiled and eager runs differ only in the order of float32 sums inside the compiled graph's own
# ops (the MLP, the loss): a few units in the last place of each accumulated value.
EPS = torch.finfo(torch.float32).eps


def close(a, b, terms):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= terms * EPS * scale, (a - b).abs().max().item()


def mlp(C):
    return torch.nn.Sequential(torch.nn.Linear(C, 2 * C), torch.nn.GELU(), torch.nn.Linear(2 * C, C))


@pytest.mark.parametrize("variant,n", [("mhc", 4), ("hc", 2), ("mhc-lite", 3), ("kromhc", 4), ("jpmhc", 4), ("gomhc", 4)])
def test_a_connection_around_an_mlp_compiles_whole(variant, n, device):
    torch.manual_seed(0)
    C = 16
    hc, f = mhc.HyperConnection(variant, n, C).to(device), mlp(C).to(device)
    params = list(hc.parameters()) + list(f.parameters())

    def run(fn):
        x = torch.randn(2, 8, n, C, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
        out = fn(x)
        grads = torch.autograd.grad(out.square().sum(), [x] + params)
        return [out.detach()] + list(grads)

    eager = run(lambda x: hc(x, f))
    compiled = run(torch.compile(lambda x: hc(x, f), fullgraph=True))
    for a, b in zip(compiled, eager):
        close(a, b, terms=4 * C)


def test_a_stack_compiles_whole_without_recomputation_and_refuses_streams(device):
    torch.manual_seed(0)
    n, C, L = 4, 16, 4
    stack, fs = mhc.HyperConnectionStack("mhc", n, C, L).to(device), [mlp(C).to(device) for _ in range(L)]
    params = list(stack.parameters()) + [p for f in fs for p in f.parameters()]
    x0 = torch.randn(2, 8, n, C).to(device)

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


# A whole training step of a small GPT (tiny_gpt.py: 2 blocks of causal attention and an MLP, each
# sublayer wrapped by a connection), its forward pass and loss compiled as one graph (fullgraph=True
# raises at any graph break), the backward pass through the compiled graph's backward, then an eager
# SGD step: the loss, every gradient and every updated parameter as eager's.
#
# The tolerance. Compiled and eager evaluate the same fp32 function; the fused ops run the same
# kernels either way, and what differs is the order of the other sums (Inductor fuses and re-tiles
# reductions). Any order of a K-term fp32 sum is within (K-1)u·Σ|terms| of the exact one
# (u = 2^-24, Higham's γ), so two orders are within 2Ku = K·EPS of each other relative to the terms'
# magnitude; the model's norms (RMSNorm, the softmaxes, the connections' bounded mixing) keep every
# stage's magnitude at its output's, so along a chain of D reductions the deviations add up to
# D·K·EPS relative to a tensor's own scale (its largest entry). K is the longest reduction: the 4C MLP
# width, the vocabulary of the loss's softmax, or the B·T tokens a weight's gradient sums over. D
# counts the reductions on the longest forward-and-backward path: per sublayer 6 (its RMSNorm, two
# projections or attention's two contractions and output projection, the connection's pre and post),
# then 3 at the head (RMSNorm, projection, log-softmax), twice for the backward pass.
# Here that is 54·128·EPS = 8.2e-4 of the scale; measured on 2 CPU cores: 1.4e-6 at worst, while
# adding 0.2% of its scale to one entry of one connection's gradient fails it.
B, T, VOCAB, DIM, LAYERS = 2, 16, 64, 32, 2
K_LONGEST = max(4 * DIM, VOCAB, B * T)
D_CHAIN = 2 * (6 * 2 * LAYERS + 3)
LR = 0.1


def close_to_scale(a, b, what, relative=D_CHAIN * K_LONGEST * EPS, extra=0.0):
    """a within `relative` of b's largest entry (the derivation above), plus `extra`."""
    tol = relative * b.abs().max().item() + extra
    err = (a - b).abs().max().item()
    assert err <= tol, f"{what}: compiled differs from eager by {err:.3g} > {tol:.3g}"
    return tol


@pytest.mark.parametrize("variant,n", [("mhc", 4), ("mhc-lite", 3)])
def test_a_gpt_training_step_compiles_whole(variant, n, device):
    torch.manual_seed(0)
    eager = TinyGPT(variant, n, vocab=VOCAB, dim=DIM, layers=LAYERS, seq_len=T).to(device)
    compiled = copy.deepcopy(eager)
    tokens = torch.randint(VOCAB, (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step(model, loss_fn):
        loss = loss_fn(inputs, targets)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        torch.optim.SGD(model.parameters(), lr=LR).step()
        return loss.detach(), grads, {name: p.detach() for name, p in model.named_parameters()}

    loss_e, grads_e, params_e = step(eager, eager.loss)
    loss_c, grads_c, params_c = step(compiled, torch.compile(compiled.loss, fullgraph=True))
    close_to_scale(loss_c, loss_e, "loss")
    for name, g in grads_e.items():
        tol = close_to_scale(grads_c[name], g, f"gradient of {name}")
        # p - LR·g on both sides: LR times the gradients' deviation, plus one rounding of p.
        close_to_scale(params_c[name], params_e[name], f"{name} after the step", relative=EPS, extra=LR * tol)
