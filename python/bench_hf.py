"""Hugging Face's DeepSeek-V4, patched by mhc.hf.apply_to_deepseek_v4 vs unpatched: forward + backward
of a small random DeepseekV4ForCausalLM (one layer of each attention kind, both MoE routers; the
sizes are options) on the CPU in fp32, the two models alternating repetition by repetition; median
step times after warm-up, and the median of the repetitions' ratios. The patched model is a copy of
the other, so both compute the same function from the same weights.

--compile adds both models under torch.compile(fullgraph=True) to the alternation: compiled pure
PyTorch (the unpatched model) is the baseline every torch 2.x user has for free. The first warm-up
step compiles (forward and backward, with a cold compile cache); its excess over the median step is
reported as the compile seconds, and its loss must match the eager patched model's.

    PYTHONPATH=python .venv/bin/python python/bench_hf.py --threads 2 --hidden 64,256 --markdown
    PYTHONPATH=python .venv/bin/python python/bench_hf.py --threads 2 --hidden 64,256 --compile --markdown
    PYTHONPATH=python .venv/bin/python python/bench_hf.py --hidden 256 --tokens 2048 --json
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
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
    """-> (seconds, loss) of one training step, model eager or compiled."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return time.perf_counter() - start, loss.detach()


def loss_tolerance(layers, hidden, streams, sinkhorn_iters, tokens):
    """python/tests/test_hf_deepseek_v4.py's model_rounding() at these sizes: first-order rounding
    bounds (u = 2^-24 per operation of a chain) of 2L + 1 connections in sequence, each with chains
    of 2nC (RMS, projection), 2·iters·(n + 1) (softmax, Sinkhorn-Knopp) and n + 1 (collapse, mix),
    then the final norm and LM head (C each) and a sum over the tokens; doubled, two implementations
    each within the bound. Relative to the loss."""
    u = torch.finfo(torch.float32).eps / 2
    connection = 2 * u * (2 * streams * hidden + 2 * sinkhorn_iters * (streams + 1) + streams + 1)
    return (2 * layers + 1) * connection + 2 * u * (2 * hidden + tokens)


def run_case(args, hidden):
    """-> a dict of the case's results: unpatched and patched ms and their speedup; with --compile
    also both models compiled, their ratios and compile seconds."""
    unpatched = model_of(args.layers, hidden, args.streams, args.vocab)
    patched = copy.deepcopy(unpatched)
    mhc.hf.apply_to_deepseek_v4(patched)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    models = [("unpatched", unpatched), ("patched", patched)]
    if args.compile:
        # A fresh compile cache for each case: the compile seconds are a first compile's, and
        # dynamo's code cache, shared by models of one class, holds only this case's entries.
        torch._dynamo.reset()
        cache = tempfile.TemporaryDirectory(prefix="bench_hf_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
        models += [("compiled unpatched", torch.compile(unpatched, fullgraph=True, dynamic=False)),
                   ("compiled patched", torch.compile(patched, fullgraph=True, dynamic=False))]
    # Each repetition times the models back to back, in alternating order, and a speedup is the
    # median of these pairs' ratios: on a shared host the load drifts over seconds, and a pair sees
    # the same load where the two medians may not.
    times = {name: [] for name, _ in models}
    first = {}
    for rep in range(args.warmup + args.reps):
        for name, model in models if rep % 2 == 0 else models[::-1]:
            seconds, loss = step_seconds(model, ids)
            if rep == 0:
                first[name] = (seconds, loss.item())
            if rep >= args.warmup:
                times[name].append(seconds)

    def ms(name):
        return 1e3 * statistics.median(times[name])

    def ratio(slow, fast):
        return statistics.median(s / f for s, f in zip(times[slow], times[fast]))

    case = {"hidden": hidden, "unpatched_ms": ms("unpatched"), "patched_ms": ms("patched"),
            "speedup": ratio("unpatched", "patched")}
    if args.compile:
        cache.cleanup()
        # The compiled patched model must compute what the eager one does (the first step's loss,
        # the same weights and tokens).
        eager, compiled = first["patched"][1], first["compiled patched"][1]
        tol = loss_tolerance(args.layers, hidden, args.streams, patched.config.hc_sinkhorn_iters,
                             args.batch * args.tokens)
        if not abs(compiled - eager) <= tol * abs(eager):
            raise ValueError(f"hidden {hidden}: the compiled patched model's loss {compiled!r} differs from the eager "
                             f"one's {eager!r} by more than {tol:.3g} x |loss|")
        case.update({
            "compiled_unpatched_ms": ms("compiled unpatched"), "compiled_patched_ms": ms("compiled patched"),
            "compiled_unpatched_over_patched": ratio("compiled unpatched", "patched"),
            "compiled_unpatched_over_compiled_patched": ratio("compiled unpatched", "compiled patched"),
            "compile_s_unpatched": first["compiled unpatched"][0] - ms("compiled unpatched") / 1e3,
            "compile_s_patched": first["compiled patched"][0] - ms("compiled patched") / 1e3,
            "loss_eager_patched": eager, "loss_compiled_patched": compiled})
    return case


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
    ap.add_argument("--compile", action="store_true",
                    help="also both models under torch.compile(fullgraph=True), compiled in the first warm-up step")
    output = ap.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    output.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    for name in ("layers", "streams", "vocab", "batch", "tokens", "threads", "reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.compile and args.warmup < 1:
        ap.error(f"--compile needs --warmup of at least 1 (the first step compiles), got {args.warmup}")
    torch.set_num_threads(args.threads)
    mhc.keep_freed_memory()  # as the CLI does: fresh pages would be timed, not the models

    machine = f"{cpu_name()} ({os.cpu_count()} vCPUs), {args.threads} threads"
    shape = (f"DeepseekV4ForCausalLM, {args.layers} layers, hc_mult {args.streams}, batch {args.batch} x {args.tokens} "
             f"tokens, fp32, fwd+bwd, median of {args.reps}")
    if args.compile:
        shape += ", torch.compile(fullgraph=True)"
    if args.markdown:
        print(f"Machine: {machine}, torch {torch.__version__}, transformers {transformers.__version__}; {shape}.\n")
        if args.compile:
            print("| hidden | unpatched step ms | patched step ms | speedup | compiled unpatched ms "
                  "| compiled patched ms | compiled unpatched / patched | compiled unpatched / compiled patched "
                  "| compile s (unpatched, patched) |\n|---|---|---|---|---|---|---|---|---|")
        else:
            print("| hidden | unpatched step ms | patched step ms | speedup |\n|---|---|---|---|")
    elif not args.json:
        print(f"machine: {machine} | torch {torch.__version__} | transformers {transformers.__version__}\n{shape}")
        print("hidden  unpatched ms  patched ms  speedup" +
              ("  compiled unpatched ms  compiled patched ms  c.unpatched/patched  c.unpatched/c.patched  compile s"
               if args.compile else "") + "  (ratios: medians of the repetitions' ratios)")
    cases = []
    for hidden in args.hidden:
        try:
            case = run_case(args, hidden)
        except (RuntimeError, ValueError) as e:  # the config's and torch's own errors (a hidden size torch's
            # grouped GEMM cannot stride, a failed compilation, …), first line
            sys.exit(f"error: {str(e).strip().splitlines()[0]}")
        cases.append(case)
        if args.markdown:
            row = f"| {hidden} | {case['unpatched_ms']:.1f} | {case['patched_ms']:.1f} | {case['speedup']:.2f}x |"
            if args.compile:
                row += (f" {case['compiled_unpatched_ms']:.1f} | {case['compiled_patched_ms']:.1f}"
                        f" | {case['compiled_unpatched_over_patched']:.2f}x"
                        f" | {case['compiled_unpatched_over_compiled_patched']:.2f}x"
                        f" | {case['compile_s_unpatched']:.0f}, {case['compile_s_patched']:.0f} |")
            print(row)
        elif not args.json:
            row = f"{hidden:6d}{case['unpatched_ms']:14.2f}{case['patched_ms']:12.2f}{case['speedup']:8.2f}x"
            if args.compile:
                row += (f"{case['compiled_unpatched_ms']:23.2f}{case['compiled_patched_ms']:21.2f}"
                        f"{case['compiled_unpatched_over_patched']:20.2f}x"
                        f"{case['compiled_unpatched_over_compiled_patched']:22.2f}x"
                        f"{case['compile_s_unpatched']:7.0f}, {case['compile_s_patched']:.0f}")
            print(row)
        sys.stdout.flush()
    if args.json:
        print(json.dumps({"machine": machine, "torch": torch.__version__, "transformers": transformers.__version__,
                          "layers": args.layers, "streams": args.streams, "batch": args.batch, "tokens": args.tokens,
                          "reps": args.reps, "compile": args.compile, "cases": cases}))


if __name__ == "__main__":
    main()
