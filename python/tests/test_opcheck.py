"""torch.library.opcheck on every mhc op: the schema, the autograd registration, the fake kernel
against the real one, and tracing with dynamic shapes (AOT dispatch), in fp32 and fp64, at ordinary
and edge inputs (n = 1, odd C, logits of ±80), and bf16 storage with fp32 parameters where its
contract differs most. A failure here is what torch.compile would meet.
On CUDA (conftest's `device`; skipped without a GPU): fp32 and bf16 storage, which the CUDA kernels
take (they refuse fp64)."""
import pytest
import torch
from torch.library import opcheck

import mhc  # noqa: F401  (loads the ops and their fake kernels)
from test_mhc import make_inputs

CASES = [("mhc", 4), ("mhc", 1), ("hc", 2), ("mhc-lite", 3), ("kromhc", 4), ("ihc", 4), ("mhc-v4", 4), ("jpmhc", 4),
         ("gomhc", 4), ("gomhc:block_size=1", 3)]
ops = torch.ops.mhc


def inputs(variant, n, dtype, scale, device):
    """x in `dtype` (the storage), the parameters in the dtype that goes with it: float32 under
    bfloat16 storage (mhc/ops.h), the storage dtype otherwise."""
    storage = dtype
    dtype = torch.float32 if storage == torch.bfloat16 else storage
    # mhc-v4 has mhc's parameter layout
    x, phi, bias, alpha, _ = make_inputs("mhc" if variant == "mhc-v4" else variant, n, C=5, N=3, dtype=dtype)
    with torch.no_grad():
        bias.mul_(scale)  # ±80 logits: the saturated softmax and Sinkhorn paths
    x = x.detach().to(device, storage).requires_grad_()
    return (x,) + tuple(t.detach().to(device).requires_grad_() for t in (phi, bias, alpha))


# bf16 storage (the CPU ops take it too, include/mhc/ops.h) where its contract differs most: σ with
# Sinkhorn–Knopp, the permutation mixture, V4's softmax.
BF16 = [(v, n, torch.bfloat16, 1.0) for v, n in [("mhc", 4), ("mhc-lite", 3), ("mhc-v4", 4)]]
# Every case in both dtypes; the ±80 logits where they saturate a normalisation (σ and Sinkhorn–Knopp,
# V4's softmax first); bf16 storage. Each call traces the op (about 2 s here), so the grid is kept to
# what differs.
GRID = [(v, n, dtype, 1.0) for v, n in CASES for dtype in (torch.float32, torch.float64)] + \
       [("mhc", 4, torch.float32, 80.0), ("mhc-v4", 4, torch.float64, 80.0)] + BF16
# CUDA: every case in fp32, the saturated logits, and bf16 storage where its contract differs most
# (σ with Sinkhorn–Knopp, the permutation mixture, V4's softmax).
GRID_CUDA = [(v, n, torch.float32, 1.0) for v, n in CASES] + [("mhc", 4, torch.float32, 80.0)] + BF16


@pytest.mark.per_device("variant,n,dtype,scale", cpu=GRID, cuda=GRID_CUDA)
def test_every_op_passes_opcheck(device, variant, n, dtype, scale):
    x, phi, bias, alpha = inputs(variant, n, dtype, scale, device)
    t = 5
    C = x.shape[-1]
    y = torch.randn(x.shape[0], C, dtype=x.dtype, device=device, requires_grad=True)
    h, H_pre, H_post, H_res = ops.pre(x, phi, bias, alpha, variant, t)
    H_post, H_res = H_post.detach().requires_grad_(), H_res.detach().requires_grad_()
    opcheck(ops.pre.default, (x, phi, bias, alpha, variant, t))
    opcheck(ops.pre_joint.default, (x, phi, bias, alpha, variant, t))
    opcheck(ops.post.default, (x, y, H_post, H_res))
    opcheck(ops.boundary.default, (x, y, H_post, H_res, phi, bias, alpha, variant, t))
    # The backward ops, at the saved tensors their forward ops return.
    with torch.no_grad():
        _, _, _, _, proj, rms = ops.pre_fwd(x, phi, bias, alpha, variant, t)
        x_next, _, _, _, _, proj_b, rms_b = ops.boundary_fwd(x, y, H_post, H_res, phi, bias, alpha, variant, t)
    d = [torch.randn_like(v) for v in (h, H_pre, H_post, H_res, x)]
    plain = [v.detach() for v in (x, phi, bias, alpha, y, H_post, H_res)]
    xd, phid, biasd, alphad, yd, hpd, hrd = plain
    opcheck(ops.pre_fwd.default, (xd, phid, biasd, alphad, variant, t))
    opcheck(ops.pre_bwd.default, (d[0], d[1], d[2], d[3], xd, phid, biasd, alphad, proj, rms, variant, t, None))
    opcheck(ops.post_bwd.default, (d[4], xd, yd, hpd, hrd))
    opcheck(ops.boundary_fwd.default, (xd, yd, hpd, hrd, phid, biasd, alphad, variant, t))
    opcheck(ops.boundary_bwd.default, (d[0], d[1], d[2], d[3], d[4], xd, yd, hpd, hrd, x_next, phid, biasd, alphad,
                                       proj_b, rms_b, variant, t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deepseek_v4_conversions_pass_opcheck(dtype):
    n, C = 4, 6
    fn = torch.randn((2 + n) * n, n * C, dtype=dtype)
    base = torch.randn((2 + n) * n, dtype=dtype)
    scale = torch.rand(3, dtype=dtype) + 0.5
    opcheck(ops.from_deepseek_v4.default, (fn, base, scale))
    phi, bias, alpha = ops.from_deepseek_v4(fn, base, scale)
    opcheck(ops.to_deepseek_v4.default, (phi, bias, alpha))
