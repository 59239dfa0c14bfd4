"""The CUDA ops — torch.ops.mhc.* on CUDA tensors, as libmhc registers them when built against a
CUDA LibTorch — against the pure-PyTorch implementation in fp64 and against the CPU kernels, in
fp32 and in bf16 storage, with tolerances derived as in test_mhc.py; the doubly-stochastic
properties on the GPU; the boundary op against the pair it is made of; one training step of the
module in bf16. Skipped where no GPU is usable.

Runs under pytest, or alone (a GPU machine may have torch but not pytest; exit status 77 = skipped):
    MHC_LIBRARY=build/libmhc.so python python/tests/test_cuda.py
"""
import math
import pathlib
import sys

import torch

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1]), str(pathlib.Path(__file__).resolve().parent)]
import mhc  # noqa: E402
import pure_torch  # noqa: E402

NO_GPU = None if torch.cuda.is_available() else "no CUDA GPU usable here (a CPU-only torch, or no GPU visible)"
if NO_GPU and __name__ != "__main__":  # under pytest
    import pytest
    pytest.skip(NO_GPU, allow_module_level=True)

CASES = [("residual", 1, 64)] + [("hc", n, C) for n in (1, 4) for C in (13, 64)] + \
        [("mhc", n, C) for n in (1, 2, 4, 8) for C in (13, 64)] + [("mhc-lite", n, C) for n in (2, 4, 5) for C in (13, 64)] + \
        [("kromhc", n, C) for n in (2, 6, 8) for C in (13, 64)] + [("ihc", 4, 13)] + \
        [("mhc-v4", n, C) for n in (4, 8) for C in (13, 64)]
U32 = 2.0 ** -24        # fp32 unit roundoff
BF16_ULP = 2.0 ** -7    # one unit in the last place of bf16 (8 significant bits)


def make_inputs(variant, n, C, N=37, seed=0):
    """(x, phi, bias, alpha, w) in fp64 on the CPU; x, phi and w hold bf16-representable values, so
    that every storage starts from exactly the same numbers."""
    g = torch.Generator().manual_seed(seed)
    phi_shape, B, A = pure_torch.layout(variant, n, C)
    bf = lambda t: t.to(torch.bfloat16).double()  # noqa: E731
    x = bf(torch.randn(N, n, C, generator=g, dtype=torch.float64))
    phi = bf(torch.randn(*phi_shape, generator=g, dtype=torch.float64) / math.sqrt(max(phi_shape[0], 1)))
    bias = torch.randn(B, generator=g, dtype=torch.float64)
    alpha = torch.rand(A, generator=g, dtype=torch.float64) + 0.5
    w = bf(torch.randn(C, generator=g, dtype=torch.float64))
    return x, phi, bias, alpha, w


def values_and_grads(ops, variant, inputs, storage, device):
    """pre -> F(h) = tanh(h·w) -> post, forward values and the gradients of every input, as fp64 on
    the CPU. storage: the dtype of x, w and the upstream gradients; the parameters are float32 under
    bf16 storage (mhc/ops.h), the storage dtype otherwise."""
    coefficients = torch.float32 if storage == torch.bfloat16 else storage
    dtypes = (storage, coefficients, coefficients, coefficients, storage)
    x, phi, bias, alpha, w = (t.to(device, d).requires_grad_() for t, d in zip(inputs, dtypes))
    h, H_pre, H_post, H_res = ops.pre(x, phi, bias, alpha, variant, 20)
    out = ops.post(x, torch.tanh(h * w), H_post, H_res)
    outs = (h, H_pre, H_post, H_res, out)
    g = torch.Generator().manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(device)).sum() for o in outs)
    wanted = [t for t in (x, phi, bias, alpha, w) if t.numel()]
    grads = torch.autograd.grad(loss, wanted)
    return [t.detach().cpu().double() for t in list(outs) + list(grads)]


def expect_close(got, ref_low, exact, what, storage_ulp):
    """got vs exact within 8x ref_low's own error (the same computation in got's precision), plus
    fp32 rounding of the scale and, under bf16 storage, one bf16 ulp of it."""
    names = ["h", "H_pre", "H_post", "H_res", "x_next", "dx", "dphi", "dbias", "dalpha", "dw"]
    for name, g, r, e in zip(names, got, ref_low, exact):
        if e.numel() == 0:
            continue
        scale = e.abs().max().item()
        tol = 8 * (r - e).abs().max().item() + (64 * U32 + storage_ulp) * scale + 1.2e-38
        err = (g - e).abs().max().item()
        assert torch.isfinite(g).all() and err <= tol, f"{what}: {name} error {err:.3g} > tolerance {tol:.3g}"


def test_cuda_matches_pure_torch_and_the_cpu_kernels():
    for variant, n, C in CASES:
        inputs = make_inputs(variant, n, C)
        exact = values_and_grads(pure_torch, variant, inputs, torch.float64, "cpu")
        pure32 = values_and_grads(pure_torch, variant, inputs, torch.float32, "cpu")
        cuda32 = values_and_grads(torch.ops.mhc, variant, inputs, torch.float32, "cuda")
        cpu32 = values_and_grads(torch.ops.mhc, variant, inputs, torch.float32, "cpu")
        expect_close(cuda32, pure32, exact, f"{variant} n={n} C={C} fp32", 0)
        expect_close(cuda32, cpu32, exact, f"{variant} n={n} C={C} fp32 vs the CPU kernels", 0)
        # bf16 storage: the CPU's bf16 path is the fp32 kernels on the same bf16 numbers.
        cpu_bf16 = values_and_grads(torch.ops.mhc, variant, inputs, torch.bfloat16, "cpu")
        cuda_bf16 = values_and_grads(torch.ops.mhc, variant, inputs, torch.bfloat16, "cuda")
        expect_close(cuda_bf16, cpu_bf16, exact, f"{variant} n={n} C={C} bf16", BF16_ULP)


def test_doubly_stochastic_on_the_gpu():
    torch.manual_seed(0)
    for variant, n, t, scale in [("mhc-lite", 4, 0, 1.0), ("mhc-lite", 5, 0, 80.0), ("mhc", 4, 20, 1.0), ("mhc", 8, 20, 80.0),
                              ("kromhc", 8, 0, 80.0), ("kromhc", 6, 0, 80.0)]:
        phi, bias, alpha = torch.ops.mhc.initial_parameters(variant, n, 8)
        x = torch.randn(10000, n, 8, device="cuda")
        phi, bias = torch.randn_like(phi) * scale, torch.randn_like(bias) * scale
        _, _, _, H = torch.ops.mhc.pre(x, phi.cuda(), bias.cuda(), torch.ones_like(alpha).cuda(), variant, t)
        H = H.double()
        rows, cols = (H.sum(-1) - 1).abs().max().item(), (H.sum(-2) - 1).abs().max().item()
        assert rows <= 1e-6 and H.min().item() >= 0, f"{variant} n={n}: rows {rows:.2e}, min {H.min().item():.2e}"
        if variant != "mhc":
            assert cols <= 1e-6, f"{variant} n={n}: columns {cols:.2e}"


def test_boundary_on_the_gpu_is_the_pair():
    """torch.ops.mhc.boundary on CUDA (there the post kernel, then the pre kernels) against post + pre
    on CUDA, values and gradients, in fp32; and a stack through it against the CPU's fused boundary."""
    torch.manual_seed(0)
    for variant, n in [("hc", 4), ("mhc", 4), ("mhc-lite", 4), ("kromhc", 8)]:
        phi, bias, alpha = (t.cuda().requires_grad_() for t in torch.ops.mhc.initial_parameters(variant, n, 32))
        with torch.no_grad():
            phi.normal_(0, 0.05)
        x = torch.randn(300, n, 32, device="cuda", requires_grad=True)
        y = torch.randn(300, 32, device="cuda", requires_grad=True)
        H_post = torch.rand(300, n, device="cuda", requires_grad=True)
        H_res = torch.softmax(torch.randn(300, n, n, device="cuda"), -1).requires_grad_()
        inputs = [x, y, H_post, H_res, phi, bias, alpha]
        fused = torch.ops.mhc.boundary(x, y, H_post, H_res, phi, bias, alpha, variant, 20)
        x_next = torch.ops.mhc.post(x, y, H_post, H_res)
        pair = (x_next,) + tuple(torch.ops.mhc.pre(x_next, phi, bias, alpha, variant, 20))
        weights = [torch.randn_like(o) for o in pair]
        grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), inputs) for outs in (fused, pair)]
        # The same kernels either way; x_next's two gradients are summed in another order: a few
        # fp32 roundings of the result's scale.
        for a, b in zip(list(fused) + list(grads[0]), list(pair) + list(grads[1])):
            torch.testing.assert_close(a, b, rtol=0, atol=64 * U32 * max(b.abs().max().item(), 1.0))


def test_module_trains_in_bf16_on_the_gpu():
    torch.manual_seed(0)
    hc = mhc.HyperConnection("mhc", streams=4, dim=256, sublayer_index=1).cuda()
    x = mhc.expand_streams(torch.randn(8, 64, 256, device="cuda", dtype=torch.bfloat16), 4).requires_grad_()
    out = hc(x, torch.tanh)
    assert out.dtype == torch.bfloat16 and out.device.type == "cuda"
    out.float().square().mean().backward()
    for name, p in hc.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


if __name__ == "__main__":
    if NO_GPU:
        print(f"skipped: {NO_GPU}")
        sys.exit(77)
    tests = [f for name, f in sorted(globals().items()) if name.startswith("test_")]
    for test in tests:
        test()
        print(f"ok  {test.__name__}")
    print(f"{len(tests)} passed on {torch.cuda.get_device_name()}")
