"""Hugging Face's DeepSeek-V4, patched by mhc.hf.apply_to_deepseek_v4 vs unpatched: forward + backward
of a small random DeepseekV4ForCausalLM (one layer of each attention kind, both MoE routers; the
sizes are options) on the CPU in fp32, the two models alternating repetition by repetition; median
step times after warm-up, and the median of the repetitions' ratios. The patched model is a copy of
the other, so both compute the same function from the same weights.

    PYTHONPATH=python .venv/bin/python python/bench_hf.py --threads 2 --hidden 64,256 --markdown
    PYTHONPATH=python .venv/bin/python python/bench_hf.py --hidden 256 --tokens 2048 --json
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

import mhc

try:
    import transformers
except ImportError:
    sys.exit("error: python/bench_hf.py needs transformers (scripts/setup.sh installs the pinned version)")
import mhc.hf  # noqa: E402


def model_of(layers, hidden, streams, vocab, seed=0):
    """A random DeepSeek-V4 language model; the layers cycle through the three attention kinds, the
    first hash-routed, the rest top-k routed."""
    kinds = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    config = transformers.DeepseekV4Config(
        vocab_size=vocab, hidden_size=hidden, moe_intermediate_size=hidden // 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, q_lora_rank=32, num_experts_per_tok=2,
        n_routed_experts=4, n_shared_experts=1, hc_mult=streams, sliding_window=64, o_groups=2, o_lora_rank=16,
        index_n_heads=2, index_head_dim=16, index_topk=16,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
        layer_types=[kinds[l % 3] for l in range(layers)], mlp_layer_types=["hash_moe"] + ["moe"] * (layers - 1),
        max_position_embeddings=1 << 16, num_nextn_predict_layers=0, pad_token_id=0)
    torch.manual_seed(seed)
    return transformers.DeepseekV4ForCausalLM(config).float().train()


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_seconds(model, ids):
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    return time.perf_counter() - start


def run_case(args, hidden):
    """-> (unpatched ms, patched ms, speedup) at one hidden size."""
    unpatched = model_of(args.layers, hidden, args.streams, args.vocab)
    patched = copy.deepcopy(unpatched)
    mhc.hf.apply_to_deepseek_v4(patched)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    # Each repetition times both models back to back, in alternating order, and the speedup is the
    # median of these pairs' ratios: on a shared host the load drifts over seconds, and a pair sees
    # the same load where the two medians may not.
    times = {"unpatched": [], "patched": []}
    for rep in range(args.warmup + args.reps):
        pair = (("unpatched", unpatched), ("patched", patched))
        for name, model in pair if rep % 2 == 0 else pair[::-1]:
            seconds = step_seconds(model, ids)
            if rep >= args.warmup:
                times[name].append(seconds)
    return (1e3 * statistics.median(times["unpatched"]), 1e3 * statistics.median(times["patched"]),
            statistics.median(u / p for u, p in zip(times["unpatched"], times["patched"])))


def widths(text):
    try:
        sizes = [int(d) for d in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated positive sizes, got '{text}'")
    return sizes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=widths, default="64", help="comma-separated hidden sizes")
    ap.add_argument("--streams", type=int, default=4, help="hc_mult")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="sequence length")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    output = ap.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    output.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    for name in ("layers", "streams", "vocab", "batch", "tokens", "threads", "reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    mhc.keep_freed_memory()  # as the CLI does: fresh pages would be timed, not the models

    machine = f"{cpu_name()} ({os.cpu_count()} vCPUs), {args.threads} threads"
    shape = (f"DeepseekV4ForCausalLM, {args.layers} layers, hc_mult {args.streams}, batch {args.batch} x {args.tokens} "
             f"tokens, fp32, fwd+bwd, median of {args.reps}")
    if args.markdown:
        print(f"Machine: {machine}, torch {torch.__version__}, transformers {transformers.__version__}; {shape}.\n")
        print("| hidden | unpatched step ms | patched step ms | speedup |\n|---|---|---|---|")
    elif not args.json:
        print(f"machine: {machine} | torch {torch.__version__} | transformers {transformers.__version__}\n{shape}")
        print("hidden  unpatched ms  patched ms  speedup (median of the repetitions' ratios)")
    cases = []
    for hidden in args.hidden:
        try:
            unpatched_ms, patched_ms, speedup = run_case(args, hidden)
        except (RuntimeError, ValueError) as e:  # the config's and torch's own errors (a hidden size torch's
            # grouped GEMM cannot stride, …), first line
            sys.exit(f"error: {str(e).splitlines()[0]}")
        cases.append({"hidden": hidden, "unpatched_ms": unpatched_ms, "patched_ms": patched_ms, "speedup": speedup})
        if args.markdown:
            print(f"| {hidden} | {unpatched_ms:.1f} | {patched_ms:.1f} | {speedup:.2f}x |")
        elif not args.json:
            print(f"{hidden:6d}{unpatched_ms:14.2f}{patched_ms:12.2f}{speedup:8.2f}x")
        sys.stdout.flush()
    if args.json:
        print(json.dumps({"machine": machine, "torch": torch.__version__, "transformers": transformers.__version__,
                          "layers": args.layers, "streams": args.streams, "batch": args.batch, "tokens": args.tokens,
                          "reps": args.reps, "cases": cases}))


if __name__ == "__main__":
    main()
