"""Fused ops (torch.ops.mhc) vs the independent pure-PyTorch implementation (tests/pure_torch.py):
forward + backward of one sublayer with F = identity, the shapes of `mhc bench layer`, both paths
alternating repetition by repetition, median after warm-up.

    PYTHONPATH=python /usr/bin/python3 python/bench.py --kind residual,hc,mhc,mhc-lite --dim 512,1024 --markdown
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
import mhc  # noqa: E402
import pure_torch  # noqa: E402


def step_time(ops, kind, x, phi, bias, alpha, dout, t):
    start = time.perf_counter()
    h, _, H_post, H_res = ops.pre(x, phi, bias, alpha, kind, t)
    out = ops.post(x, h, H_post, H_res)
    params = [p for p in (x, phi, bias, alpha) if p.numel()]
    torch.autograd.grad(out, params, dout)
    return time.perf_counter() - start


def run_case(kind, N, n, C, t, warmup, reps):
    torch.manual_seed(0)
    phi, bias, alpha = torch.ops.mhc.initial_parameters(kind, n, C)
    phi = (phi + 0.02 * torch.randn_like(phi)).requires_grad_()
    bias.requires_grad_(), alpha.requires_grad_()
    x, dout = torch.randn(N, n, C, requires_grad=True), torch.randn(N, n, C)
    fused, pure = [], []
    for rep in range(warmup + reps):
        f = step_time(torch.ops.mhc, kind, x, phi, bias, alpha, dout, t)
        p = step_time(pure_torch, kind, x, phi, bias, alpha, dout, t)
        if rep >= warmup:
            fused.append(f), pure.append(p)
    return statistics.median(fused), statistics.median(pure)


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
    ap.add_argument("--kind", default="mhc", help="comma-separated: " + ", ".join(mhc.KINDS))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--dim", type=widths, default="512", help="comma-separated widths")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sinkhorn-iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    kinds = args.kind.split(",")
    for kind in kinds:
        if kind not in mhc.KINDS:
            ap.error(f"unknown kind '{kind}' (accepted: {', '.join(mhc.KINDS)})")
    torch.set_num_threads(args.threads)
    if args.markdown:
        print(f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
              f"N = {args.tokens} tokens, fp32, fwd+bwd with F = identity, median of {args.reps}.\n")
        print("| kind | n | C | fused ms | pure PyTorch ms | speedup |\n|---|---|---|---|---|---|")
    else:
        print("kind        n      C   fused ms   pure ms  speedup")
    for kind in kinds:
        n = 1 if kind == "residual" else args.streams
        for C in args.dim:
            try:
                f, p = run_case(kind, args.tokens, n, C, args.sinkhorn_iters, args.warmup, args.reps)
            except (RuntimeError, ValueError) as e:  # the ops' own one-line errors (bad n, t, ...)
                sys.exit(f"error: {str(e).splitlines()[0]}")
            if args.markdown:
                print(f"| {kind} | {n} | {C} | {f * 1e3:.2f} | {p * 1e3:.2f} | {p / f:.1f}x |")
            else:
                print(f"{kind:<9}{n:4d}{C:7d}{f * 1e3:11.2f}{p * 1e3:10.2f}{p / f:8.1f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
