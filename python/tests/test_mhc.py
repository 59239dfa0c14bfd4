"""The fused ops from Python: torch.ops.mhc.* and mhc.HyperConnection against an independent
pure-PyTorch implementation (pure_torch.py), gradcheck, a toy model, the README example, and the
loader's refusal of a library built for another torch."""
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

import mhc
import pure_torch

REPO = pathlib.Path(__file__).resolve().parents[2]
CASES = [("residual", 1)] + [("hc", n) for n in (1, 2, 4)] + [("mhc", n) for n in (1, 2, 4, 8)] + \
        [("mhc-lite", n) for n in (1, 2, 4, 5)] + [("mhc", 16)] + \
        [("kromhc", n) for n in (2, 3, 4, 6, 8, 12, 16)] + [("ihc", n) for n in (1, 4, 16)] + \
        [("jpmhc", n) for n in (1, 2, 4, 8, 16)] + [("jpmhc:cayley_iters=2", 4)] + \
        [("gomhc", n) for n in (1, 2, 4, 8)] + [("gomhc:block_size=1", n) for n in (3, 16)]


def make_inputs(variant, n, C=7, N=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi_shape, B, A = pure_torch.layout(variant, n, C)
    x = torch.randn(N, n, C, generator=g, dtype=dtype)
    phi = torch.randn(*phi_shape, generator=g, dtype=dtype) / math.sqrt(max(phi_shape[0], 1))
    bias = torch.randn(B, generator=g, dtype=dtype)
    alpha = torch.rand(A, generator=g, dtype=dtype) + 0.5
    w = torch.randn(C, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, phi, bias, alpha, w)]


def sublayer(ops, variant, x, phi, bias, alpha, w, t=20):
    """pre -> F(h) = tanh(h·w) -> post; every output folded into one scalar per piece."""
    h, H_pre, H_post, H_res = ops.pre(x, phi, bias, alpha, variant, t)
    y = torch.tanh(h * w)
    return h, H_pre, H_post, H_res, ops.post(x, y, H_post, H_res)


def values_and_grads(ops, variant, inputs, t=20):
    outs = sublayer(ops, variant, *inputs, t=t)
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    wanted = [t for t in inputs if t.numel()]
    grads = torch.autograd.grad(loss, wanted)
    return [o.detach() for o in outs] + list(grads)


@pytest.mark.parametrize("variant,n", CASES)
def test_fused_matches_pure_torch_in_double(variant, n):
    inputs = make_inputs(variant, n)
    fused = values_and_grads(torch.ops.mhc, variant, inputs)
    pure = values_and_grads(pure_torch, variant, inputs)
    for a, b in zip(fused, pure):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("variant,n", CASES)
def test_fused_fp32_within_fp32_rounding(variant, n):
    """fp32 fused vs fp64 pure, bounded by a multiple of fp32 pure's own error (derived tolerance)."""
    inputs64 = make_inputs(variant, n, seed=3)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    exact = values_and_grads(pure_torch, variant, inputs64)
    fused = values_and_grads(torch.ops.mhc, variant, inputs32)
    pure32 = values_and_grads(pure_torch, variant, inputs32)
    u = 2.0 ** -24
    for f, p, e in zip(fused, pure32, exact):
        if e.numel() == 0:
            continue
        tol = 8 * (p.double() - e).abs().max().item() + 64 * u * e.abs().max().item()
        assert (f.double() - e).abs().max().item() <= tol


@pytest.mark.parametrize("variant,n,t", [("residual", 1, 0), ("hc", 3, 0), ("mhc", 3, 20), ("mhc", 2, 0), ("mhc-lite", 3, 0),
                                     ("kromhc", 4, 0), ("kromhc", 6, 0), ("ihc", 3, 0), ("jpmhc", 3, 0),
                                     ("gomhc", 3, 0), ("gomhc:block_size=1", 4, 0)])
def test_gradcheck_double(variant, n, t):
    x, phi, bias, alpha, w = make_inputs(variant, n, C=4, N=3)
    params = [p for p in (x, phi, bias, alpha) if p.numel()]

    def f(*ps):
        it = iter(ps)
        args = [next(it) if p.numel() else p for p in (x, phi, bias, alpha)]
        return sublayer(torch.ops.mhc, variant, *args, w.detach(), t=t)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("variant,n,t", [("hc", 2, 0), ("mhc", 3, 20), ("mhc-lite", 3, 0), ("kromhc", 4, 0),
                                         ("jpmhc", 3, 0), ("gomhc", 2, 0)])
def test_gradgradcheck_double(variant, n, t):
    """create_graph=True gives differentiable gradients (second derivatives checked numerically)."""
    x, phi, bias, alpha, w = make_inputs(variant, n, C=3, N=2)

    def f(*ps):
        return sublayer(torch.ops.mhc, variant, *ps, w.detach(), t=t)

    assert torch.autograd.gradgradcheck(f, (x, phi, bias, alpha), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("variant,n", [("hc", 2), ("mhc", 4), ("mhc-lite", 3)])
def test_gradient_penalty_matches_pure_torch(variant, n):
    """A gradient penalty ||d loss / dx||² differentiated to the parameters: fused ops and pure
    PyTorch agree, and so do the create_graph gradients themselves (x reaches post both directly and
    through pre: neither path may be counted twice)."""
    inputs = make_inputs(variant, n, seed=5)

    def penalty_grads(ops):
        x, phi, bias, alpha, w = inputs
        out = sublayer(ops, variant, x, phi, bias, alpha, w)[-1]
        (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        return (dx,) + torch.autograd.grad(dx.square().sum(), (phi, bias, alpha))

    for a, b in zip(penalty_grads(torch.ops.mhc), penalty_grads(pure_torch)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_backward_ops_refuse_wrong_sizes():
    """The internal backward ops are reachable from Python: wrong sizes are errors, not crashes."""
    N, n, C = 200, 4, 64
    x = torch.randn(N, n, C)
    hc = mhc.HyperConnection("mhc", n, C)
    phi, bias, alpha = (p.detach() for p in (hc.phi, hc.bias, hc.alpha))
    h, H_pre, H_post, H_res, proj, rms = torch.ops.mhc.pre_fwd(x, phi, bias, alpha, "mhc", 20)
    with pytest.raises(ValueError, match=r"mhc.post_bwd: dout must be x's shape \[N, n, C\] = \[200, 4, 64\], got \[1\]"):
        torch.ops.mhc.post_bwd(torch.zeros(1), x, torch.zeros(N, C), H_post, H_res)
    with pytest.raises(ValueError, match=r"mhc.post: H_res must be \[N, n, n\]"):
        torch.ops.mhc.post_bwd(torch.zeros(N, n, C), x, torch.zeros(N, C), H_post, torch.zeros(1))
    good = dict(dh=torch.zeros(N, C), dH_pre=None, dH_post=None, dH_res=None, proj=proj, rms=rms, dx_add=None)
    for name, bad, message in [("dh", torch.zeros(3), r"dh must be \[N, C\]"),
                               ("proj", torch.zeros(N, 1, 2), r"proj must be pre_fwd's proj"),
                               ("rms", torch.zeros(5), r"rms must be pre_fwd's rms"),
                               ("dH_res", torch.zeros(N, n), r"dH_res must be \[N, n, n\]"),
                               ("dH_pre", torch.zeros(N, n, dtype=torch.float64), r"dH_pre must be Float"),
                               ("dx_add", torch.zeros(N, C), r"dx_add must be x's shape \[N, n, C\]")]:
        a = dict(good, **{name: bad})
        with pytest.raises((ValueError, TypeError), match="mhc.pre_bwd: " + message):
            torch.ops.mhc.pre_bwd(a["dh"], a["dH_pre"], a["dH_post"], a["dH_res"], x, phi, bias, alpha,
                                  a["proj"], a["rms"], "mhc", 20, a["dx_add"])


def test_module_initialisation_and_shapes():
    hc = mhc.HyperConnection("mhc-lite", streams=4, dim=16, sublayer_index=6)
    assert [name for name, _ in hc.named_parameters()] == ["phi", "bias", "alpha"]
    assert hc.phi.shape == (64, 8 + 24) and hc.bias.shape == (32,) and hc.alpha.shape == (3,)
    h, mix = hc.pre(torch.randn(2, 5, 4, 16))
    assert h.shape == (2, 5, 16) and mix.H_res.shape == (2, 5, 4, 4)
    s = torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(mix.H_pre[0, 0], torch.tensor([1 - s, 1 - s, s, 1 - s]))  # stream 6 mod 4
    assert list(mhc.HyperConnection("residual", 1, 8).parameters()) == []


@pytest.mark.parametrize("variant,n", [("hc", 4), ("mhc", 4), ("mhc-lite", 3), ("kromhc", 8), ("ihc", 4)])
def test_bfloat16_storage(variant, n):
    """bf16 x and y with the fp32 master parameters: h and x_next in bf16, the coefficients and the
    parameter gradients in fp32, and the values those of the fp32 ops on the same bf16 numbers
    (phi read as bf16), up to one rounding of each storage output to bf16 (2^-8 relative)."""
    torch.manual_seed(0)
    hc = mhc.HyperConnection(variant, streams=n, dim=32, sublayer_index=1)
    with torch.no_grad():
        hc.phi.normal_(0, 0.05)
    x = torch.randn(2, 9, n, 32).to(torch.bfloat16).requires_grad_()
    h, mix = hc.pre(x)
    out = hc.post(x, torch.tanh(h), mix)
    assert (h.dtype, mix.H_res.dtype, out.dtype) == (torch.bfloat16, torch.float32, torch.bfloat16)
    out.float().square().sum().backward()
    assert hc.phi.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    phi = hc.phi.detach().to(torch.bfloat16).float()
    x32 = x.detach().float()
    h32, H_pre, H_post, H_res = torch.ops.mhc.pre(x32.reshape(-1, n, 32), phi, hc.bias.detach(), hc.alpha.detach(),
                                                  variant, 20)
    torch.testing.assert_close(mix.H_res.reshape(-1, n, n), H_res, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.float().reshape(-1, 32), h32, rtol=2 ** -8, atol=1e-6)
    y = torch.tanh(h).float().reshape(-1, 32)  # the bf16 run's own sublayer output
    out32 = torch.ops.mhc.post(x32.reshape(-1, n, 32), y, H_post, H_res)
    torch.testing.assert_close(out.float().reshape(-1, n, 32), out32, rtol=2 ** -8, atol=1e-6)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(Exception, match=r"unknown variant 'sinkhorn' \(accepted: residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc\)"):
        mhc.HyperConnection("sinkhorn", 4, 8)
    with pytest.raises(Exception, match=r"mhc-lite takes 1 to 5 streams.*n = 6.*KromHC"):
        mhc.HyperConnection("mhc-lite", 6, 8)
    with pytest.raises(Exception, match=r"kromhc takes n = 2\^a·3\^b streams \(2, 3, 4, 6, 8, 9, 12 or 16\), got n = 10"):
        mhc.HyperConnection("kromhc", 10, 8)
    hc = mhc.HyperConnection("mhc", 4, 8)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 4, 8\], got \[2, 3, 8\]"):
        hc.pre(torch.randn(2, 3, 8))
    with pytest.raises(Exception, match=r"sinkhorn_iters must be in \[0, 100\], got -1"):
        torch.ops.mhc.pre(torch.randn(2, 4, 8), hc.phi, hc.bias, hc.alpha, "mhc", -1)


def test_toy_model_trains():
    torch.manual_seed(0)
    vocab, C, n, T = 16, 32, 4, 12

    class Block(torch.nn.Module):
        def __init__(self, l):
            super().__init__()
            self.hc = mhc.HyperConnection("mhc", n, C, sublayer_index=l)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(C, 4 * C), torch.nn.GELU(), torch.nn.Linear(4 * C, C))

        def forward(self, x):
            return self.hc(x, lambda h: self.mlp(h / pure_torch.rms(h)))

    emb, head = torch.nn.Embedding(vocab, C), torch.nn.Linear(C, vocab)
    blocks = torch.nn.ModuleList([Block(0), Block(1)])
    params = list(emb.parameters()) + list(head.parameters()) + list(blocks.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    tokens = torch.arange(T + 1) * 5 % vocab  # a fixed pattern: next token = previous + 5 (mod 16)
    losses = []
    for _ in range(20):
        x = mhc.expand_streams(emb(tokens[:-1]), n)
        for block in blocks:
            x = block(x)
        logits = head(mhc.reduce_streams(x))
        loss = torch.nn.functional.cross_entropy(logits, tokens[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def make_stack(variant, n, C=16, L=5):
    torch.manual_seed(0)
    stack = mhc.HyperConnectionStack(variant, n, C, L)
    with torch.no_grad():  # coefficients away from their initial values: every entry matters
        for p in stack.parameters():
            p.add_(0.3 * torch.randn_like(p))
    mlps = [torch.nn.Sequential(torch.nn.Linear(C, 2 * C), torch.nn.GELU(), torch.nn.Linear(2 * C, C)) for _ in range(L)]
    return stack, mlps, torch.randn(3, 7, n, C)


def storage_of(t):
    return t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()


@pytest.mark.parametrize("variant,n", [("residual", 1), ("hc", 4), ("mhc", 4), ("mhc-lite", 3), ("jpmhc", 4),
                                       ("gomhc:block_size=1", 3)])
def test_stack_recompute_is_bit_identical(variant, n):
    stack, mlps, x0 = make_stack(variant, n)
    params = list(stack.parameters()) + [p for m in mlps for p in m.parameters()]

    def run(recompute, every):
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_()
        out = stack(x, mlps, recompute, every)
        out.square().sum().backward()
        return [out.detach(), x.grad] + [p.grad for p in params]

    reference = run("none", None)
    for recompute in ("streams", "blocks"):
        for every in (None, 1, 2, 5):
            got = run(recompute, every)
            assert all(torch.equal(a, b) for a, b in zip(reference, got)), (recompute, every)


@pytest.mark.parametrize("recompute", ["none", "blocks"])
def test_stack_refuses_parameters_changed_before_backward(recompute):
    """An in-place change between forward and backward (an optimizer step) is refused with recompute
    as without it; `blocks` used to re-run the segment with the new values and give wrong gradients
    (issue 35, item 1: max error 154.7 against a largest true gradient of 13.6)."""
    stack, mlps, x0 = make_stack("mhc", 4, C=8, L=4)
    out = stack(x0.clone().requires_grad_(), mlps, recompute, 2)
    with torch.no_grad():
        stack.connections[1].phi.add_(0.5)
    match = "modified in place after the forward pass" if recompute == "blocks" else "modified by an inplace operation"
    with pytest.raises(RuntimeError, match=match):
        out.square().sum().backward()
    # The same for a sublayer's own weights (an nn.Module).
    out = stack(x0.clone().requires_grad_(), mlps, recompute, 2)
    with torch.no_grad():
        mlps[2][0].weight.add_(0.5)
    with pytest.raises(RuntimeError, match=match):
        out.square().sum().backward()


@pytest.mark.parametrize("program", ["aux_loss", "in_place_output"])
def test_streams_recompute_serves_any_backward_path(program):
    """A backward pass that reaches a released state without passing the next state's hook: a loss
    on a middle sublayer's output, or an in-place change of the stack's output. Both used to fail
    with "data is not allocated yet" (issue 35, item 6); they give `none`'s gradients."""
    stack, mlps, x0 = make_stack("mhc", 4, C=8, L=6)
    params = list(stack.parameters()) + [p for m in mlps for p in m.parameters()]

    def run(recompute):
        for p in params:
            p.grad = None
        outs = []
        sublayers = [(lambda m: lambda h: (outs.append(m(h)), outs[-1])[1])(m) for m in mlps]
        x = x0.clone().requires_grad_()
        out = stack(x, sublayers, recompute, 3)
        if program == "aux_loss":
            loss = outs[2].square().mean()
        else:
            out += 1
            loss = out.square().sum()
        loss.backward()
        return [x.grad] + [p.grad for p in params]

    reference = run("none")
    got = run("streams")
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(reference, got))


def test_stream_group_is_private_and_refuses_a_callers_tensor():
    """The group releases the data of the states it is given, so a public class would empty a
    caller's tensor under it (issue 35, item 9): it is the stack's own, and refuses leaves."""
    with pytest.raises(RuntimeError):
        torch.classes.mhc.StreamGroup
    x = torch.randn(2, 4, 8, requires_grad=True)
    group = torch.classes.mhc._StreamGroup(x * 1)
    mine = torch.randn(2, 4, 8, requires_grad=True)
    with pytest.raises(ValueError, match="x_next must be a state the stack's ops made"):
        group.add(mine, torch.randn(2, 8), torch.randn(2, 4), torch.randn(2, 4, 4))
    assert torch.isfinite(mine).all()  # still the caller's


def record_states(stack):
    """The states the connections read, in order (x_0, x_1, ...): the first one's pre reads x_0, and
    each later one's boundary makes the state it reads (its Mix's x_next)."""
    seen = []
    first = stack.connections[0]
    first.pre = (lambda pre: lambda x: (seen.append(x), pre(x))[1])(first.pre)

    def recording(boundary):
        def run(x, y, before):
            h, mix = boundary(x, y, before)
            seen.append(mix.x_next)
            return h, mix
        return run

    for connection in stack.connections[1:]:
        connection.boundary = recording(connection.boundary)
    return seen


@pytest.mark.parametrize("variant,n", [("residual", 1), ("hc", 2), ("mhc", 4), ("mhc-lite", 5),
                                       ("kromhc", 4), ("ihc", 3), ("jpmhc", 4), ("gomhc", 4)])
def test_boundary_is_post_then_pre(variant, n):
    """torch.ops.mhc.boundary against pre(post(...)) of the unfused ops, in double: values and every
    gradient; and a numerical gradient check of the fused op."""
    x, phi, bias, alpha, w = make_inputs(variant, n, seed=9)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(x.shape[0], x.shape[2], generator=g, dtype=torch.float64, requires_grad=True)
    H_post = (torch.rand(x.shape[0], n, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    H_res = torch.softmax(torch.randn(x.shape[0], n, n, generator=g, dtype=torch.float64), -1).requires_grad_()
    inputs = [t for t in (x, y, H_post, H_res, phi, bias, alpha) if t.numel()]
    weights = None

    def fold(outs):
        nonlocal weights
        weights = weights or [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
        return sum((o * w_).sum() for o, w_ in zip(outs, weights))

    def fused():
        return torch.ops.mhc.boundary(x, y, H_post, H_res, phi, bias, alpha, variant, 20)

    def pair():
        x_next = torch.ops.mhc.post(x, y, H_post, H_res)
        return (x_next,) + tuple(torch.ops.mhc.pre(x_next, phi, bias, alpha, variant, 20))

    a, b = fused(), pair()
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    for u, v in zip(torch.autograd.grad(fold(a), inputs), torch.autograd.grad(fold(b), inputs)):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    per_token = (x, y, H_post, H_res)  # three tokens of these; the parameters whole
    small = [t.detach()[:3].clone().requires_grad_() for t in per_token] + [phi, bias, alpha]

    def f(*ps):
        it = iter(ps)
        args = [next(it) if t.numel() and t.requires_grad else t for t in small]
        return torch.ops.mhc.boundary(*args, variant, 5)

    assert torch.autograd.gradcheck(f, [t for t in small if t.numel() and t.requires_grad], eps=1e-6, atol=1e-5,
                                    rtol=1e-3)


@pytest.mark.parametrize("variant,n", [("hc", 4), ("mhc", 4), ("mhc-lite", 3), ("jpmhc", 3), ("gomhc", 2)])
def test_stack_fuses_boundaries_to_the_same_result(variant, n):
    """The stack's fused boundaries give what one connection after another gives, bit for bit."""
    stack, mlps, x0 = make_stack(variant, n)
    params = list(stack.parameters()) + [p for m in mlps for p in m.parameters()]

    def run(step):
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_()
        out = step(x)
        out.square().sum().backward()
        return [out.detach(), x.grad] + [p.grad for p in params]

    def one_by_one(x):
        for connection, F in zip(stack.connections, mlps):
            x = connection(x, F)
        return x

    for a, b in zip(run(lambda x: stack(x, mlps)), run(one_by_one)):
        assert torch.equal(a, b)  # the same per-token arithmetic, x_next's gradients added in the kernel either way


def test_stack_streams_frees_the_inner_states_until_backward():
    stack, mlps, x0 = make_stack("mhc", 4)
    states = record_states(stack)
    out = stack(x0.clone().requires_grad_(), mlps, "streams", 5)
    assert [storage_of(t).nbytes() == 0 for t in states] == [False, True, True, True, True]  # x_0 is kept
    out.square().sum().backward()
    assert all(storage_of(t).nbytes() > 0 for t in states)  # rebuilt by the backward pass


def test_stack_streams_under_saved_tensor_hooks_frees_nothing():
    # The hooks may keep saved tensors elsewhere, or (non-reentrant checkpointing) re-run the forward
    # pass for a graph whose backward never runs: freeing there would break the backward pass.
    stack, mlps, x0 = make_stack("mhc", 4)
    params = list(stack.parameters()) + [p for m in mlps for p in m.parameters()]

    def grads(run):
        for p in params:
            p.grad = None
        x = x0.clone().requires_grad_()
        run(x).square().sum().backward()
        return [x.grad] + [p.grad for p in params]

    reference = grads(lambda x: stack(x, mlps))
    states = record_states(stack)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        got = grads(lambda x: stack(x, mlps, "streams", 5))
    assert all(storage_of(t).nbytes() > 0 for t in states[:5])
    assert all(torch.equal(a, b) for a, b in zip(reference, got))
    got = grads(lambda x: torch.utils.checkpoint.checkpoint(lambda x: stack(x, mlps, "streams", 5), x,
                                                            use_reentrant=False))
    assert all(torch.equal(a, b) for a, b in zip(reference, got))


def test_stack_bad_input_is_a_one_line_error():
    stack, mlps, x0 = make_stack("mhc", 4)
    with pytest.raises(ValueError, match=r"recompute 'fast' is not a recomputation policy \(accepted: none, streams, blocks\)"):
        stack(x0, mlps, "fast")
    with pytest.raises(ValueError, match=r"recompute_every must be None \(auto\) or at least 1, got 0"):
        stack(x0, mlps, "streams", 0)
    with pytest.raises(ValueError, match=r"4 sublayers given to a stack of 5"):
        stack(x0, mlps[:4])


@pytest.mark.parametrize("args, message", [
    (("mhc", 4, 8, -1), r"mhc.initial_parameters: sublayer_index \(the sublayer's place in the stack\) must be at "
                        r"least 0, got -1"),
    (("mhc", 4, 0), r"mhc.initial_parameters: dim \(the width C\) must be at least 1, got 0"),
    (("mhc", 4, -3), r"mhc.initial_parameters: dim \(the width C\) must be at least 1, got -3"),
    (("mhc", 4, 8, 0, 101), r"mhc.initial_parameters: sinkhorn_iters must be in \[0, 100\], got 101"),
    (("mhc", 4, 8, 0, -1), r"mhc.initial_parameters: sinkhorn_iters must be in \[0, 100\], got -1"),
    (("mhc-v4", 4, 8, 0, 0), r"mhc.initial_parameters: mhc-v4 needs sinkhorn_iters in \[1, 100\] \(its softmax is "
                             r"the first normalisation\), got 0"),
])
def test_connection_options_are_checked_at_construction(args, message):
    # Issue 35, items 3 and 17: refused when built, in one line, not later with a raw message
    # (a negative index used to leave no stream favoured: C++ % keeps the sign).
    with pytest.raises(ValueError, match="^" + message + "$"):
        mhc.HyperConnection(*args)


def test_modules_under_a_float64_default_dtype():
    # Issue 35, item 15: the parameters are fp32 masters whatever torch's default dtype is.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        phi, bias, alpha = torch.ops.mhc.initial_parameters("mhc", 4, 8)
        hc, head = mhc.HyperConnection("mhc", 4, 8), mhc.HyperHead(4, 8)
        stack, mlps, x0 = make_stack("mhc", 4)
        assert {t.dtype for t in (phi, bias, alpha, hc.phi, head.phi, stack.connections[0].phi)} == {torch.float32}
        x = torch.randn(2, 3, 4, 8)  # float64, the default now: the ops run in fp64
        assert hc(x, lambda h: h).dtype == torch.float64 and head(x).dtype == torch.float64
        assert stack(x0, mlps).dtype == x0.dtype
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_hyper_head_refuses_other_dtypes(dtype):
    # Issue 35, item 18.
    with pytest.raises(ValueError, match=rf"^HyperHead: x must be float32, float64 or bfloat16, got {dtype}$"):
        mhc.HyperHead(4, 8)(torch.ones(2, 4, 8, dtype=dtype))


def test_readme_examples_run():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 3 and all(len(b.strip().splitlines()) <= 10 for b in blocks)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_library_for_another_torch_is_refused(tmp_path):
    shutil.copy(mhc.library_path, tmp_path / "libmhc.so")
    (tmp_path / "libmhc.torch-version").write_text("9.9.0\n")
    env = dict(os.environ, MHC_LIBRARY=str(tmp_path / "libmhc.so"), PYTHONPATH=str(REPO / "python"))
    run = subprocess.run([sys.executable, "-c", "import mhc"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert f"built against torch 9.9.0 but this is torch {torch.__version__}" in last, run.stderr
    assert "undefined symbol" not in run.stderr


def test_bench_runs():
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    run = subprocess.run([sys.executable, str(REPO / "python" / "bench.py"), "--variant", "hc,mhc", "--tokens", "64",
                          "--dim", "16", "--reps", "3", "--warmup", "1", "--markdown"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\| mhc \| 4 \| 16 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \| [0-9]+ \| [0-9]+% \|$", run.stdout, re.M), run.stdout


@pytest.mark.parametrize("args,message", [
    (["--dim", "abc"], "--dim takes comma-separated positive widths, got 'abc'"),
    (["--kind", "mhc-lite", "--streams", "6"], "mhc-lite takes 1 to 5 streams"),
    (["--variant", "mhc", "--sinkhorn-iters", "-2"], "sinkhorn_iters must be in [0, 100], got -2"),
    (["--device", "gpu"], "--device 'gpu' is not a device (accepted: cpu, cuda, cuda:N)"),
    (["--dtype", "half"], "argument --dtype: invalid choice: 'half'"),
])
def test_bench_bad_flags_are_one_line_errors(args, message):
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    run = subprocess.run([sys.executable, str(REPO / "python" / "bench.py"), "--tokens", "8", "--dim", "8"] + args,
                         env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert message in run.stderr.strip().splitlines()[-1], run.stderr


KEEP_SCRIPT = """
import os, sys, torch, mhc
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
if sys.argv[1] == 'keep':
    assert mhc.keep_freed_memory()
t = torch.ones(64 << 18)  # 64 MiB: past glibc's largest mmap threshold
before = rss()
del t
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_keep_freed_memory_keeps_a_freed_tensor_in_the_process():
    # Run apart: the setting is process-wide. Without it the 64 MiB go back to the kernel at once
    # (the control: this test fails if keep_freed_memory does nothing); with it they stay.
    env = {k: v for k, v in os.environ.items()  # glibc's malloc as it comes, whatever this shell set
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}

    def released(mode):
        out = subprocess.run([sys.executable, "-c", KEEP_SCRIPT, mode], capture_output=True, text=True,
                             env=dict(env, PYTHONPATH=str(REPO / "python")), check=True)
        return int(out.stdout.strip())
    assert released("default") > 32 << 20
    assert released("keep") < 8 << 20
