"""Fused ops (torch.ops.mhc) vs the independent pure-PyTorch implementation (tests/pure_torch.py):
forward + backward of one sublayer with F = identity, the shapes of `mhc bench layer`, both paths
alternating repetition by repetition, median after warm-up; on a GPU every timing ends with a
synchronisation. GB/s counts the bytes the fused path must move, (8n + 5)·C storage values per token
(see src/cli/bench_layer.cpp), against the device's copy bandwidth (one large copy, read + write).

--peer adds a public peer on the same shapes, interleaved with the other two: lucidrains'
`hyper-connections` (PyPI, pinned in scripts/setup.sh), plain PyTorch + einops. Its HyperConnections
is our "hc" (python/tests/test_peer_hyper_connections.py checks the values); its mHC (`hyper_connections.mHC`)
is another formulation of "mhc" (each stream normed and projected on its own, H_res from per-stream
logits), so that row compares the cost of a connection, not of the same arithmetic. Its layout
[(N n), C] is ours, [N, n, C], in the same memory, so it reads our x as it is.

    PYTHONPATH=python .venv/bin/python python/bench.py --variant residual,hc,mhc,mhc-lite --dim 512,1024 --markdown
    PYTHONPATH=python .venv/bin/python python/bench.py --variant hc,mhc --dim 512,1024 --peer --markdown
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


def make_peer(variant, n, C, t, device):
    """hyper-connections' module for `variant` (None where it has none), its dynamic weights moved
    off their initial zeros as ours are in run_case."""
    import hyper_connections  # noqa: PLC0415  (only with --peer)
    if variant == "hc":
        peer = hyper_connections.HyperConnections(n, dim=C, layer_index=0)
    elif variant == "mhc":
        peer = hyper_connections.mHC(n, dim=C, layer_index=0, sinkhorn_iters=t)
    else:
        return None
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if name.endswith("_fn"):
                p.add_(0.02 * torch.randn_like(p))
    return peer.to(device)


def peer_step_time(peer, x, dout):
    """One forward + backward of the peer with F = identity, as step_time times ours."""
    N, n, C = x.shape
    finish(x.device)
    start = time.perf_counter()
    h, add_residual = peer(x.view(N * n, C))
    out = add_residual(h)
    torch.autograd.grad(out, [x] + list(peer.parameters()), dout.view(N * n, C))
    finish(x.device)
    return time.perf_counter() - start


def run_case(variant, N, n, C, t, warmup, reps, device, dtype, peer=False):
    """-> (fused s, pure PyTorch s, (peer s, median of the repetitions' peer / fused) or None, bytes
    the fused path moves). The paired ratio moves far less than either time with a shared host's
    drifting load."""
    torch.manual_seed(0)
    phi, bias, alpha = (p.to(device) for p in torch.ops.mhc.initial_parameters(variant, n, C))
    phi = (phi + 0.02 * torch.randn_like(phi)).requires_grad_()
    bias.requires_grad_(), alpha.requires_grad_()
    x = torch.randn(N, n, C, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn(N, n, C, device=device, dtype=dtype)
    reference = pure_on_bf16 if dtype == torch.bfloat16 else pure_torch
    peer = make_peer(variant, n, C, t, device) if peer else None
    fused, pure, peers = [], [], []
    for rep in range(warmup + reps):
        f = step_time(torch.ops.mhc, variant, x, phi, bias, alpha, dout, t)
        p = step_time(reference, variant, x, phi, bias, alpha, dout, t)
        q = peer_step_time(peer, x, dout) if peer is not None else None
        if rep >= warmup:
            fused.append(f), pure.append(p), peers.append(q)
    peer_times = (statistics.median(peers), statistics.median(q / f for f, q in zip(fused, peers))) if peer else None
    return statistics.median(fused), statistics.median(pure), peer_times, N * (8 * n + 5) * C * x.element_size()


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
    ap.add_argument("--peer", action="store_true",
                    help="also time hyper-connections (PyPI) for hc and mhc, interleaved (float32 only)")
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
    if args.peer and dtype != torch.float32:
        # Its modules multiply the activations by their parameters as they are: bf16 storage would
        # need bf16 parameters, where ours keeps fp32 ones, so not the same job.
        ap.error("--peer times float32 storage only (hyper-connections keeps no fp32 master weights)")
    if args.peer:
        try:
            import hyper_connections  # noqa: F401, PLC0415
        except ImportError:
            ap.error("--peer needs the hyper-connections package (scripts/setup.sh installs it into .venv)")
    torch.set_num_threads(args.threads)
    mhc.keep_freed_memory()  # as the CLI does: fresh pages would be timed, not the ops
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    copy = copy_bandwidth_gbs(device)
    if args.markdown:
        print(f"Machine: {machine}, torch {torch.__version__}, copy bandwidth {copy:.0f} GB/s (read + write); "
              f"N = {args.tokens} tokens, {args.dtype} storage, fwd+bwd with F = identity, median of {args.reps}.\n")
        peer_columns = " hyper-connections ms | hyper-connections / fused |" if args.peer else ""
        print(f"| variant | n | C | fused ms | pure PyTorch ms | speedup | fused GB/s | % of copy |{peer_columns}\n"
              f"|---|---|---|---|---|---|---|---|{'---|---|' if args.peer else ''}")
    else:
        print(f"machine: {machine} | copy bandwidth {copy:.1f} GB/s")
        print("variant        n      C   fused ms   pure ms  speedup  fused GB/s  % of copy" +
              ("    peer ms  peer/fused" if args.peer else ""))
    for variant in variants:
        n = 1 if variant == "residual" else args.streams
        for C in args.dim:
            try:
                f, p, q, moved = run_case(variant, args.tokens, n, C, args.sinkhorn_iters, args.warmup, args.reps, device,
                                          dtype, args.peer)
            except (RuntimeError, ValueError) as e:  # the ops' own one-line errors (bad n, t, ...)
                sys.exit(f"error: {str(e).splitlines()[0]}")
            gbs = moved / f / 1e9
            if args.markdown:
                peer_cells = "" if not args.peer else (f" {q[0] * 1e3:.2f} | {q[1]:.1f}x |" if q is not None else " - | - |")
                print(f"| {variant} | {n} | {C} | {f * 1e3:.2f} | {p * 1e3:.2f} | {p / f:.1f}x | {gbs:.0f} | {100 * gbs / copy:.0f}% |"
                      + peer_cells)
            else:
                peer_cells = "" if not args.peer else (f"{q[0] * 1e3:11.2f}{q[1]:11.1f}x" if q is not None else f"{'-':>11}{'-':>12}")
                print(f"{variant:<9}{n:4d}{C:7d}{f * 1e3:11.2f}{p * 1e3:10.2f}{p / f:8.1f}x{gbs:12.1f}{100 * gbs / copy:10.0f}%"
                      + peer_cells)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
