"""Fused ops (torch.ops.mhc) from Python against pure PyTorch, eager and compiled: forward + backward
of one sublayer with F = identity, the shapes of `mhc bench layer`, against the independent pure-PyTorch
implementation (tests/pure_torch.py); every path alternating repetition by repetition, median after
warm-up; on a GPU every timing ends with a synchronisation. GB/s counts the bytes the fused path must
move, (8n + 5)·C storage values per token (see src/cli/bench_layer.cpp), against the device's copy
bandwidth (one large copy, read + write).

--compile adds torch.compile(fullgraph=True) of the same sublayer in pure PyTorch (what any torch 2.x
user gets for free: the baseline that matters) and of the op-based one, on the same x, parameters
and output gradient; the first (warm-up) call compiles and is reported apart ("compile s"); the
ratios are medians of the repetitions' paired ratios. --model times (c) instead, one training step
(forward, loss, backward; no optimizer) of tests/tiny_gpt.py's GPT three ways: eager with our ops,
compiled with our ops, compiled with the connections in pure_torch's math (connection="pure").

--peer adds a public peer on the same shapes, interleaved with the other two: lucidrains'
`hyper-connections` (PyPI, pinned in scripts/setup.sh), plain PyTorch + einops. Its HyperConnections
is our "hc" (python/tests/test_peer_hyper_connections.py checks the values); its mHC (`hyper_connections.mHC`)
is another formulation of "mhc" (each stream normed and projected on its own, H_res from per-stream
logits), so that row compares the cost of a connection, not of the same arithmetic. Its layout
[(N n), C] is ours, [N, n, C], in the same memory, so it reads our x as it is.

    PYTHONPATH=python .venv/bin/python python/bench.py --variant residual,hc,mhc,mhc-lite --dim 512,1024 --markdown
    PYTHONPATH=python .venv/bin/python python/bench.py --variant hc,mhc --dim 512,1024 --peer --markdown
    PYTHONPATH=python .venv/bin/python python/bench.py --variant hc,mhc,mhc-lite --dim 512,1024 --compile --json
    PYTHONPATH=python .venv/bin/python python/bench.py --variant mhc --dim 512 --model --layers 4 --seq-len 256
    PYTHONPATH=python python python/bench.py --device cuda --dtype bfloat16 --tokens 16384 --dim 1280,4096
"""
import argparse
import json
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
from tiny_gpt import TinyGPT  # noqa: E402


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


def sublayer(ops, variant, t):
    """One sublayer with F = identity through `ops` (torch.ops.mhc, pure_torch or pure_on_bf16):
    (x, phi, bias, alpha) -> x_next."""
    def run(x, phi, bias, alpha):
        h, _, H_post, H_res = ops.pre(x, phi, bias, alpha, variant, t)
        return ops.post(x, h, H_post, H_res)
    return run


def compiled(fn):
    # fullgraph: a graph break raises; dynamic=False: one static graph per case (torch._dynamo.reset()
    # in run_case starts each case afresh, so no case recompiles another's graph).
    return torch.compile(fn, fullgraph=True, dynamic=False)


def step_time(run, x, params, dout):
    """Seconds of one forward + backward of run(x, *params), gradients to x and the parameters."""
    finish(x.device)
    start = time.perf_counter()
    out = run(x, *params)
    torch.autograd.grad(out, [p for p in (x, *params) if p.numel()], dout)
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


def interleave(steps, warmup, reps):
    """steps: name -> () -> seconds, each run once per repetition in turn -> name -> (the first
    call's seconds, the `reps` timed ones after `warmup`)."""
    times = {name: [] for name in steps}
    for _ in range(warmup + reps):
        for name, step in steps.items():
            times[name].append(step())
    return {name: (t[0], t[warmup:]) for name, t in times.items()}


def paired(times, num, den):
    """Median over the repetitions of num's time / den's: a shared host's drifting load moves it
    far less than either time."""
    return statistics.median(a / b for a, b in zip(times[num][1], times[den][1]))


def median_ms(times, name):
    return statistics.median(times[name][1]) * 1e3


def compile_s(times, name):
    """The first call's seconds less a timed step's: tracing and compiling forward and backward."""
    return times[name][0] - statistics.median(times[name][1])


def run_case(variant, N, n, C, t, warmup, reps, device, dtype, peer=False, compile_=False):
    """One sublayer's row (a dict, --json's keys): fused and pure PyTorch, with --peer the peer,
    with --compile both compiled, all interleaved repetition by repetition."""
    torch.manual_seed(0)
    phi, bias, alpha = (p.to(device) for p in torch.ops.mhc.initial_parameters(variant, n, C))
    phi = (phi + 0.02 * torch.randn_like(phi)).requires_grad_()
    bias.requires_grad_(), alpha.requires_grad_()
    x = torch.randn(N, n, C, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn(N, n, C, device=device, dtype=dtype)
    params = (phi, bias, alpha)
    reference = pure_on_bf16 if dtype == torch.bfloat16 else pure_torch
    runs = {"fused": sublayer(torch.ops.mhc, variant, t), "pure": sublayer(reference, variant, t)}
    if compile_:
        torch._dynamo.reset()
        runs.update(compiled_pure=compiled(sublayer(reference, variant, t)),
                    compiled_ours=compiled(sublayer(torch.ops.mhc, variant, t)))
    steps = {name: (lambda run=run: step_time(run, x, params, dout)) for name, run in runs.items()}
    peer = make_peer(variant, n, C, t, device) if peer else None
    if peer is not None:
        steps["peer"] = lambda: peer_step_time(peer, x, dout)
    times = interleave(steps, warmup, reps)
    f, p = median_ms(times, "fused"), median_ms(times, "pure")
    gbs = N * (8 * n + 5) * C * x.element_size() / f / 1e6
    row = dict(variant=variant, streams=n, dim=C, tokens=N, dtype=str(dtype).replace("torch.", ""), fused_ms=f,
               pure_ms=p, speedup=p / f, fused_gb_per_s=gbs)
    if compile_:
        row.update(compiled_pure_ms=median_ms(times, "compiled_pure"), compiled_ours_ms=median_ms(times, "compiled_ours"),
                   compiled_pure_over_fused=paired(times, "compiled_pure", "fused"),
                   compiled_pure_over_compiled_ours=paired(times, "compiled_pure", "compiled_ours"),
                   compile_s_pure=compile_s(times, "compiled_pure"), compile_s_ours=compile_s(times, "compiled_ours"))
    if peer is not None:
        row.update(peer_ms=median_ms(times, "peer"), peer_over_fused=paired(times, "peer", "fused"))
    return row


MODEL_VOCAB, MODEL_HEAD_DIM = 256, 64


def model_step_time(loss, params, tokens):
    """Seconds of one training step without the optimizer: forward, loss, backward (autograd.grad,
    so nothing accumulates into .grad)."""
    finish(tokens.device)
    start = time.perf_counter()
    torch.autograd.grad(loss(tokens[:, :-1], tokens[:, 1:]), params)
    finish(tokens.device)
    return time.perf_counter() - start


def run_model(variant, n, C, args, device):
    """(c), one row: tiny_gpt.TinyGPT eager with our ops, compiled with our ops, and compiled with
    the connections in pure_torch's math (the same weights), interleaved step by step."""
    torch.manual_seed(0)
    seq = args.seq_len
    shape = dict(vocab=MODEL_VOCAB, dim=C, heads=max(1, C // MODEL_HEAD_DIM), layers=args.layers, seq_len=seq)
    ours = TinyGPT(variant, n, **shape).to(device)
    pure = TinyGPT(variant, n, connection="pure", **shape).to(device)
    pure.load_state_dict(ours.state_dict())
    tokens = torch.randint(MODEL_VOCAB, (max(1, args.tokens // seq), seq + 1), device=device)
    torch._dynamo.reset()
    losses = {"eager_ours": (ours.loss, ours), "compiled_ours": (compiled(ours.loss), ours),
              "compiled_pure": (compiled(pure.loss), pure)}
    steps = {name: (lambda loss=loss, model=model: model_step_time(loss, list(model.parameters()), tokens))
             for name, (loss, model) in losses.items()}
    times = interleave(steps, args.warmup, args.reps)
    return dict(variant=variant, streams=n, dim=C, layers=args.layers, heads=shape["heads"], batch=tokens.shape[0],
                seq_len=seq, eager_ours_ms=median_ms(times, "eager_ours"),
                compiled_ours_ms=median_ms(times, "compiled_ours"), compiled_pure_ms=median_ms(times, "compiled_pure"),
                compiled_pure_over_eager_ours=paired(times, "compiled_pure", "eager_ours"),
                compiled_pure_over_compiled_ours=paired(times, "compiled_pure", "compiled_ours"),
                compile_s_ours=compile_s(times, "compiled_ours"), compile_s_pure=compile_s(times, "compiled_pure"))


def widths(text):
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--dim takes comma-separated positive widths, got '{text}'")
    return dims


CASE_COLUMNS = [  # (markdown heading, text heading, text width, cell)
    ("variant", "variant", -9, lambda r: r["variant"]),
    ("n", "n", 4, lambda r: r["streams"]),
    ("C", "C", 7, lambda r: r["dim"]),
]
SUBLAYER_COLUMNS = CASE_COLUMNS + [
    ("fused ms", "fused ms", 11, lambda r: f"{r['fused_ms']:.2f}"),
    ("pure PyTorch ms", "pure ms", 10, lambda r: f"{r['pure_ms']:.2f}"),
    ("speedup", "speedup", 9, lambda r: f"{r['speedup']:.1f}x"),
    ("fused GB/s", "fused GB/s", 12, lambda r: f"{r['fused_gb_per_s']:.0f}"),
    ("% of copy", "% of copy", 11, lambda r: f"{r['copy_pct']:.0f}%"),
]
COMPILE_COLUMNS = [
    ("compiled pure ms", "c-pure ms", 11, lambda r: f"{r['compiled_pure_ms']:.2f}"),
    ("compiled ours ms", "c-ours ms", 11, lambda r: f"{r['compiled_ours_ms']:.2f}"),
    ("compiled pure / fused", "c-pure/fused", 14, lambda r: f"{r['compiled_pure_over_fused']:.2f}x"),
    ("compiled pure / compiled ours", "c-pure/c-ours", 15, lambda r: f"{r['compiled_pure_over_compiled_ours']:.2f}x"),
    ("compile s (pure, ours)", "compile s", 13, lambda r: f"{r['compile_s_pure']:.0f}, {r['compile_s_ours']:.0f}"),
]
PEER_COLUMNS = [
    ("hyper-connections ms", "peer ms", 11, lambda r: f"{r['peer_ms']:.2f}" if "peer_ms" in r else "-"),
    ("hyper-connections / fused", "peer/fused", 12, lambda r: f"{r['peer_over_fused']:.1f}x" if "peer_ms" in r else "-"),
]
MODEL_COLUMNS = CASE_COLUMNS + [
    ("eager ours ms", "eager ms", 11, lambda r: f"{r['eager_ours_ms']:.1f}"),
    ("compiled ours ms", "c-ours ms", 11, lambda r: f"{r['compiled_ours_ms']:.1f}"),
    ("compiled pure ms", "c-pure ms", 11, lambda r: f"{r['compiled_pure_ms']:.1f}"),
    ("compiled pure / eager ours", "c-pure/eager", 14, lambda r: f"{r['compiled_pure_over_eager_ours']:.2f}x"),
    ("compiled pure / compiled ours", "c-pure/c-ours", 15, lambda r: f"{r['compiled_pure_over_compiled_ours']:.2f}x"),
    ("compile s (ours, pure)", "compile s", 13, lambda r: f"{r['compile_s_ours']:.0f}, {r['compile_s_pure']:.0f}"),
]


def table_line(columns, row, style):
    """One row (row None: the heading, and in markdown its rule) as --markdown or the plain table prints it."""
    if style == "markdown":
        if row is None:
            return "| " + " | ".join(c[0] for c in columns) + " |\n|" + "---|" * len(columns)
        return "| " + " | ".join(str(c[3](row)) for c in columns) + " |"
    cells = [(c[1] if row is None else str(c[3](row)), c[2]) for c in columns]
    return "".join(f"{text:<{-w}}" if w < 0 else f"{text:>{w}}" for text, w in cells)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", "--kind", default="mhc", help="comma-separated: " + ", ".join(mhc.VARIANTS))
    ap.add_argument("--tokens", type=int, default=4096, help="N; with --model, batch x seq-len")
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
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    ap.add_argument("--peer", action="store_true",
                    help="also time hyper-connections (PyPI) for hc and mhc, interleaved (float32 only)")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(fullgraph=True) of the pure-PyTorch and of the op-based sublayer")
    ap.add_argument("--model", action="store_true",
                    help="time a training step of tests/tiny_gpt.py instead: eager ours, compiled ours, compiled pure")
    ap.add_argument("--layers", type=int, default=4, help="--model: blocks (attention + MLP)")
    ap.add_argument("--seq-len", type=int, default=256, help="--model: sequence length")
    args = ap.parse_args()
    if args.json and args.markdown:
        sys.exit("error: python/bench.py: choose one of --json, --markdown")
    for variant in args.variant.split(","):
        if variant not in mhc.VARIANTS:
            ap.error(f"unknown variant '{variant}' (accepted: {', '.join(mhc.VARIANTS)})")
    for name in ("tokens", "streams", "threads", "reps", "layers", "seq_len"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 1 and (args.compile or args.model):
        ap.error("--compile and --model need --warmup ≥ 1 (the first call compiles)")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device '{args.device}' is not a device (accepted: cpu, cuda, cuda:N)")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA GPU is usable here (accepted here: cpu)")
    args.dtype = getattr(torch, args.dtype)
    if args.peer and args.dtype != torch.float32:
        # Its modules multiply the activations by their parameters as they are: bf16 storage would
        # need bf16 parameters, where ours keeps fp32 ones, so not the same job.
        ap.error("--peer times float32 storage only (hyper-connections keeps no fp32 master weights)")
    if args.model and (args.peer or args.dtype != torch.float32):
        ap.error("--model times float32 storage, without --peer")
    if args.peer:
        try:
            import hyper_connections  # noqa: F401, PLC0415
        except ImportError:
            ap.error("--peer needs the hyper-connections package (scripts/setup.sh installs it into .venv)")
    return args


def print_heading(args, machine, copy, columns):
    if args.json:
        return
    if not args.markdown:
        print(f"machine: {machine} | torch {torch.__version__}" + ("" if args.model else f" | copy bandwidth {copy:.1f} GB/s"))
    elif args.model:
        print(f"Machine: {machine}, torch {torch.__version__}; tests/tiny_gpt.py with {args.layers} blocks, "
              f"{MODEL_HEAD_DIM}-wide heads, vocabulary {MODEL_VOCAB}, {max(1, args.tokens // args.seq_len)} x "
              f"{args.seq_len} tokens, float32; one training step without the optimizer (forward, loss, backward), "
              f"median of {args.reps}.\n")
    else:
        print(f"Machine: {machine}, torch {torch.__version__}, copy bandwidth {copy:.0f} GB/s (read + write); "
              f"N = {args.tokens} tokens, {str(args.dtype).replace('torch.', '')} storage, fwd+bwd with F = identity, "
              f"median of {args.reps}.\n")
    print(table_line(columns, None, "markdown" if args.markdown else "text"))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    mhc.keep_freed_memory()  # as the CLI does: fresh pages would be timed, not the ops
    device = args.device
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    copy = 0.0 if args.model else copy_bandwidth_gbs(device)
    columns = MODEL_COLUMNS if args.model else (
        SUBLAYER_COLUMNS + (COMPILE_COLUMNS if args.compile else []) + (PEER_COLUMNS if args.peer else []))
    print_heading(args, machine, copy, columns)
    for variant in args.variant.split(","):
        n = 1 if variant == "residual" else args.streams
        for C in args.dim:
            try:
                if args.model:
                    row = run_model(variant, n, C, args, device)
                else:
                    row = run_case(variant, args.tokens, n, C, args.sinkhorn_iters, args.warmup, args.reps, device,
                                   args.dtype, args.peer, args.compile)
                    row.update(copy_gb_per_s=copy, copy_pct=100 * row["fused_gb_per_s"] / copy)
            except (RuntimeError, ValueError) as e:  # the ops' own one-line errors (bad n, t, ...)
                sys.exit(f"error: {str(e).splitlines()[0]}")
            if args.json:
                print(json.dumps(dict(row, device=str(device), threads=args.threads, torch=torch.__version__)))
            else:
                print(table_line(columns, row, "markdown" if args.markdown else "text"))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
