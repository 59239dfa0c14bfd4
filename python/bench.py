"""Fused ops (torch.ops.mhc) vs the independent pure-PyTorch implementation (tests/pure_torch.py):
forward + backward of one sublayer with F = identity, the shapes of `mhc bench layer`, both paths
alternating repetition by repetition, median after warm-up; on a GPU every timing ends with a
synchronisation. GB/s counts the bytes the fused path must move, (8n + 5)·C storage values per token
(see src/cli/bench_layer.cpp), against the device's copy bandwidth (one large copy, read + write).

    PYTHONPATH=python .venv/bin/python python/bench.py --variant residual,hc,mhc,mhc-lite --dim 512,1024 --markdown
    PYTHONPATH=python python python/bench.py --device cuda --dtype bfloat16 --tokens 16384 --dim 1280,4096
"""
import argparse
import os
import platform
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
import mhc  # noqa: E402
import pure_torch  # noqa: E402


def finish(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth_gbs(device):
    src = torch.ones(256 << 20, dtype=torch.uint8, device=device)
    dst, best = torch.empty_like(src), 0.0
    for _ in range(5):
        finish(device)
        start = time.perf_counter()
        dst.copy_(src)
        finish(device)
        best = max(best, 2 * src.numel() / (time.perf_counter() - start) / 1e9)
    return best


# pure_torch on bf16 storage: fp32 math on the bf16 values, phi read as bf16 (python/mhc/modules.py).
pure_on_bf16 = types.SimpleNamespace(
    pre=lambda x, phi, bias, alpha, variant, t: (
        lambda h, *H: (h.to(x.dtype), *H))(*pure_torch.pre(x.float(), phi.bfloat16().float(), bias, alpha, variant, t)),
    post=lambda x, y, H_post, H_res: pure_torch.post(x.float(), y.float(), H_post, H_res).to(x.dtype))


def step_time(ops, variant, x, phi, bias, alpha, dout, t):
    finish(x.device)
    start = time.perf_counter()
    h, _, H_post, H_res = ops.pre(x, phi, bias, alpha, variant, t)
    out = ops.post(x, h, H_post, H_res)
    params = [p for p in (x, phi, bias, alpha) if p.numel()]
    torch.autograd.grad(out, params, dout)
    finish(x.device)
    return time.perf_counter() - start


def run_case(variant, N, n, C, t, warmup, reps, device, dtype):
    torch.manual_seed(0)
    phi, bias, alpha = (p.to(device) for p in torch.ops.mhc.initial_parameters(variant, n, C))
    phi = (phi + 0.02 * torch.randn_like(phi)).requires_grad_()
    bias.requires_grad_(), alpha.requires_grad_()
    x = torch.randn(N, n, C, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn(N, n, C, device=device, dtype=dtype)
    reference = pure_on_bf16 if dtype == torch.bfloat16 else pure_torch
    fused, pure = [], []
    for rep in range(warmup + reps):
        f = step_time(torch.ops.mhc, variant, x, phi, bias, alpha, dout, t)
        p = step_time(reference, variant, x, phi, bias, alpha, dout, t)
        if rep >= warmup:
            fused.append(f), pure.append(p)
    return statistics.median(fused), statistics.median(pure), N * (8 * n + 5) * C * x.element_size()


def widths(text):
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--dim takes comma-separated positive widths, got '{text}'")
    return dims


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", "--kind", default="mhc", help="comma-separated: " + ", ".join(mhc.VARIANTS))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--dim", type=widths, default="512", help="comma-separated widths")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="storage of x and y (parameters and coefficients stay float32)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sinkhorn-iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    variants = args.variant.split(",")
    for variant in variants:
        if variant not in mhc.VARIANTS:
            ap.error(f"unknown variant '{variant}' (accepted: {', '.join(mhc.VARIANTS)})")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device '{args.device}' is not a device (accepted: cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU is usable here (accepted here: cpu)")
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    mhc.keep_freed_memory()  # as the CLI does: fresh pages would be timed, not the ops
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    copy = copy_bandwidth_gbs(device)
    if args.markdown:
        print(f"Machine: {machine}, torch {torch.__version__}, copy bandwidth {copy:.0f} GB/s (read + write); "
              f"N = {args.tokens} tokens, {args.dtype} storage, fwd+bwd with F = identity, median of {args.reps}.\n")
        print("| variant | n | C | fused ms | pure PyTorch ms | speedup | fused GB/s | % of copy |\n|---|---|---|---|---|---|---|---|")
    else:
        print(f"machine: {machine} | copy bandwidth {copy:.1f} GB/s")
        print("variant        n      C   fused ms   pure ms  speedup  fused GB/s  % of copy")
    for variant in variants:
        n = 1 if variant == "residual" else args.streams
        for C in args.dim:
            try:
                f, p, moved = run_case(variant, args.tokens, n, C, args.sinkhorn_iters, args.warmup, args.reps, device, dtype)
            except (RuntimeError, ValueError) as e:  # the ops' own one-line errors (bad n, t, ...)
                sys.exit(f"error: {str(e).splitlines()[0]}")
            gbs = moved / f / 1e9
            if args.markdown:
                print(f"| {variant} | {n} | {C} | {f * 1e3:.2f} | {p * 1e3:.2f} | {p / f:.1f}x | {gbs:.0f} | {100 * gbs / copy:.0f}% |")
            else:
                print(f"{variant:<9}{n:4d}{C:7d}{f * 1e3:11.2f}{p * 1e3:10.2f}{p / f:8.1f}x{gbs:12.1f}{100 * gbs / copy:10.0f}%")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
