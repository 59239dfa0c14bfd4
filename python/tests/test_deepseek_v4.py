"""DeepSeek-V4's convention (variant "mhc-v4", the conversions, HyperHead) against V4's math written
in V4's own orientation and names (pure_torch.deepseek_v4_*), in float64."""
import json
import math
import os
import re
import struct
import subprocess
import sys

import pytest
import torch

import mhc
import pure_torch

SPREADS = (0.0, 1.0, 20.0, 80.0, 200.0)


def v4_inputs(n, C, spread, N=9, seed=0):
    """x, y and V4 parameters whose comb logits spread over `spread` in every row (base uniform in
    ±spread/2; the dynamic part is O(1))."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(N, n, C, generator=g, **f64)
    y = torch.randn(N, C, generator=g, **f64)
    fn = torch.randn((2 + n) * n, n * C, generator=g, **f64) / math.sqrt(n * C)
    base = torch.randn((2 + n) * n, generator=g, **f64)
    base[2 * n:] = spread * (torch.rand(n * n, generator=g, **f64) - 0.5)
    scale = torch.rand(3, generator=g, **f64) + 0.5
    return [t.requires_grad_() for t in (x, y, fn, base, scale)]


def ours(x, y, fn, base, scale, iters=20, variant="mhc-v4"):
    phi, bias, alpha = mhc.from_deepseek_v4(fn, base, scale)
    h, H_pre, H_post, H_res = torch.ops.mhc.pre(x, phi, bias, alpha, variant, iters)
    return h, H_pre, H_post, H_res, torch.ops.mhc.post(x, y, H_post, H_res)


def theirs(x, y, fn, base, scale, iters=20, eps=1e-6):
    pre, post, comb = pure_torch.deepseek_v4_mix(x, fn, base, scale, iters, eps)
    h, x_next = pure_torch.deepseek_v4_sublayer(x, y, pre, post, comb)
    return h, pre, post, comb.transpose(1, 2), x_next


def values_and_gradients(run, inputs, seed=1):
    outputs = run(*inputs)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, inputs))


NAMES = ["h", "H_pre", "H_post", "H_res", "x_next", "dx", "dy", "dfn", "dbase", "dscale"]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("spread", SPREADS)
def test_fp64_matches_v4_within_1e_12(n, spread):
    inputs = v4_inputs(n, 5, spread, seed=n)
    for name, a, b in zip(NAMES, values_and_gradients(ours, inputs), values_and_gradients(theirs, inputs)):
        scale = max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= 1e-12 * scale, f"{name} n={n} spread={spread}"


def test_every_eps_zero_is_mhc():
    """V4's math with eps = 0 is plain Sinkhorn–Knopp in this library's orientation: `mhc` itself."""
    for spread in (0.0, 20.0):  # moderate: V4's linear iteration underflows without its floor beyond ~700
        x, y, fn, base, scale = v4_inputs(4, 5, spread, seed=3)
        got = ours(x, y, fn, base, scale, variant="mhc")
        want = theirs(x, y, fn, base, scale, eps=0.0)
        for name, a, b in zip(NAMES, got, want):
            assert (a - b).abs().max().item() <= 1e-12, f"{name} spread={spread}"
    # …and with V4's eps, mhc-v4 is not mhc: the eps terms are there.
    got = ours(x, y, fn, base, scale)[1]
    assert (got - ours(x, y, fn, base, scale, variant="mhc")[1]).abs().max().item() == pytest.approx(1e-6, rel=1e-9)


def test_naive_transpose_gives_another_h_res():
    """φ = fnᵀ without swapping the comb block applies comb untransposed: the shipped bug."""
    x, y, fn, base, scale = v4_inputs(4, 5, 20.0, seed=5)
    right = ours(x, y, fn, base, scale)[3]
    naive = torch.ops.mhc.pre(x, fn.t().contiguous(), base, scale, "mhc-v4", 20)[3]
    assert (right - naive).abs().max().item() > 0.1


@pytest.mark.parametrize("n,C", [(1, 3), (4, 7), (16, 2)])
def test_round_trip_is_exact(n, C):
    _, _, fn, base, scale = v4_inputs(n, C, 20.0)
    back = mhc.to_deepseek_v4(*mhc.from_deepseek_v4(fn, base, scale))
    for a, b in zip(back, (fn, base, scale)):
        assert torch.equal(a, b)
    phi, bias, alpha = (t.float() for t in mhc.from_deepseek_v4(fn, base, scale))
    for a, b in zip(mhc.from_deepseek_v4(*mhc.to_deepseek_v4(phi, bias, alpha)), (phi, bias, alpha)):
        assert torch.equal(a, b)


def test_head_matches_v4():
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    fn, base, scale = torch.randn(4, 20, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.rand(1, dtype=torch.float64)
    head = mhc.HyperHead(4, 5).double()
    with torch.no_grad():
        head.phi.copy_(fn.t()), head.bias.copy_(base), head.alpha.copy_(scale)
    assert (head(x) - pure_torch.deepseek_v4_head(x, fn, base, scale)).abs().max().item() <= 1e-14
    with pytest.raises(ValueError, match=r"HyperHead: x must be \[\.\.\., 4, 5\], got \[6, 3, 5\]"):
        head(x[:, :3])


@pytest.mark.parametrize("args,message", [
    (lambda: (torch.zeros(24, 41), torch.zeros(24), torch.zeros(3)),
     r"mhc.from_deepseek_v4: fn must be \[24, n·C\] for n = 4 \(from base \[24\]\) and a width C ≥ 1, got \[24, 41\]"),
    (lambda: (torch.zeros(24, 40), torch.zeros(23), torch.zeros(3)),
     r"mhc.from_deepseek_v4: base must be \[\(2\+n\)·n\] for n in \[1, 16\] \(24 at n = 4\), got \[23\]"),
    (lambda: (torch.zeros(24, 40), torch.zeros(24), torch.zeros(2)),
     r"mhc.from_deepseek_v4: scale must be \[3\] \(pre, post, comb\), got \[2\]"),
    (lambda: (torch.zeros(24, 40, dtype=torch.bfloat16), torch.zeros(24), torch.zeros(3)),
     r"mhc.from_deepseek_v4: fn must be float32 \(DeepSeek-V4 keeps its hyper-connection tensors in float32\) or "
     r"float64, got BFloat16"),
])
def test_bad_v4_tensors_are_one_line_errors(args, message):
    with pytest.raises(Exception, match=message):
        mhc.from_deepseek_v4(*args())


def test_mhc_v4_needs_an_iteration():
    x, y, fn, base, scale = v4_inputs(2, 3, 1.0)
    with pytest.raises(Exception, match=r"mhc.pre: mhc-v4 needs sinkhorn_iters in \[1, 100\] \(its softmax is the first "
                                        r"normalisation\), got 0"):
        ours(x, y, fn, base, scale, iters=0)


# ---- mhc analyze --deepseek-v4 on files written here --------------------------------------------

CLI = os.environ.get("MHC_CLI")
needs_cli = pytest.mark.skipif(not CLI, reason="MHC_CLI (the mhc command) is not set; ctest sets it")
HF_NAMES = [(r"^layers\.(\d+)\.hc_(attn|ffn)_(fn|base|scale)$", r"model.layers.\1.\2_hc.\3"),
            (r"^hc_head_(fn|base|scale)$", r"model.hc_head.hc_\1")]
BIG_TENSOR_BYTES = 2 << 30  # an unrelated 2 GiB tensor, written as a hole: the analysis must never read it


def v4_checkpoint(n=4, C=8, layers=2, seed=0):
    """A V4-format state dict: `layers` layers' attention and FFN connections and the head, fp32."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for l in range(layers):
        for kind in ("attn", "ffn"):
            state[f"layers.{l}.hc_{kind}_fn"] = torch.randn((2 + n) * n, n * C, generator=g) / math.sqrt(n * C)
            state[f"layers.{l}.hc_{kind}_base"] = 8 * torch.randn((2 + n) * n, generator=g)
            state[f"layers.{l}.hc_{kind}_scale"] = torch.rand(3, generator=g) + 0.5
    state["hc_head_fn"] = torch.randn(n, n * C, generator=g) / math.sqrt(n * C)
    state["hc_head_base"] = torch.randn(n, generator=g)
    state["hc_head_scale"] = torch.rand(1, generator=g)
    return state


def write_safetensors(path, tensors, big_bytes=0):
    """Writes `tensors` (a hole of big_bytes first, as an unrelated U8 tensor, when asked)."""
    header, offset = {}, 0
    if big_bytes:
        header["layers.0.ffn.experts.0.w1.weight"] = {"dtype": "U8", "shape": [big_bytes], "data_offsets": [0, big_bytes]}
        offset = big_bytes
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3",
             torch.bool: "BOOL", torch.int8: "I8", torch.uint16: "U16"}
    # A tensor, or (dtype name, shape, bytes) for a dtype torch lacks (the packed F4).
    raw = {name: t if isinstance(t, tuple) else (names[t.dtype], list(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
           for name, t in tensors.items()}
    for name, (dtype, shape, data) in raw.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.seek(big_bytes, os.SEEK_CUR)
        for _, _, data in raw.values():
            f.write(data)


def analyze(tmp_path, *paths, extra=()):
    """Runs `mhc analyze --deepseek-v4` in a Python of its own, which reports its children's peak RSS."""
    out = tmp_path / "analysis"
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.stderr.write(r.stdout + r.stderr)")
    run = subprocess.run([sys.executable, "-c", measure, CLI, "analyze", "--deepseek-v4", ",".join(map(str, paths)),
                          "--out", str(out), "--probe-tokens", "64", "--threads", "1", *extra],
                         capture_output=True, text=True)
    code, peak_kib = map(int, run.stdout.split())
    return code, peak_kib, run.stderr, out


@needs_cli
@pytest.mark.parametrize("naming", ["native", "Hugging Face"])
def test_analyze_reads_only_the_connections(tmp_path, naming):
    state = v4_checkpoint()
    if naming == "Hugging Face":
        renamed = {}
        for name, t in state.items():
            for pattern, replacement in HF_NAMES:
                name = re.sub(pattern, replacement, name)
            renamed[name] = t
        state = renamed
    write_safetensors(tmp_path / "model-00001.safetensors", state, big_bytes=BIG_TENSOR_BYTES)
    code, peak_kib, log, out = analyze(tmp_path, tmp_path)  # the folder
    assert code == 0, log
    report = json.loads((out / "analysis.json").read_text())
    assert report["naming"] == naming and report["streams"] == 4 and report["width"] == 8
    assert report["diag"]["sublayer"] == ["attn 0", "ffn 0", "attn 1", "ffn 1"]
    connection_bytes = sum(t.numel() * 4 for t in state.values())
    assert report["tensor_bytes_read"] == connection_bytes
    # Memory: the process (LibTorch, the probe, and the plots' Python) stays far below the file.
    assert peak_kib * 1024 < 400 << 20, f"peak RSS {peak_kib} KiB"  # measured: 176 MiB
    for png in ("gain_vs_depth", "h_res_mean", "sinkhorn_error", "streams"):
        assert (out / f"{png}.png").stat().st_size > 1000
    # V4's comb against plain Sinkhorn–Knopp on the same logits: rows end at s/(s + eps), not 1 (the
    # eps), while plain SK's rows are exact; and the sharp logits (base ~ ±8·N(0, 1)) set them apart.
    assert all(1e-8 < e < 1e-5 for e in report["diag"]["row_error"]), report["diag"]["row_error"]
    assert all(e < 1e-6 for e in report["plain_sinkhorn"]["row_error"])
    assert max(report["plain_sinkhorn"]["max_h_res_difference"]) > 1e-3
    assert "i.i.d. standard normal" in report["probe"]


@needs_cli
def test_analyze_bad_files_are_one_line_errors(tmp_path):
    state = v4_checkpoint()
    path = tmp_path / "v4.safetensors"

    last_peak_kib = [0]

    def error_of(tensors, truncate=0):
        write_safetensors(path, tensors)
        if truncate:
            os.truncate(path, path.stat().st_size - truncate)
        code, last_peak_kib[0], log, _ = analyze(tmp_path, path)
        assert code != 0, log
        lines = log.strip().splitlines()
        return lines[-1]

    assert error_of(state, truncate=3) == (f"error: safetensors file {path} is unreadable: tensor 'hc_head_scale' lies "
                                           "outside the file (truncated?)")
    missing = {k: v for k, v in state.items() if k != "layers.1.hc_ffn_base"}
    assert error_of(missing) == "error: --deepseek-v4: tensor layers.1.hc_ffn_base is missing"
    wrong = dict(state, **{"layers.1.hc_attn_fn": torch.zeros(24, 36)})
    assert error_of(wrong) == ("error: --deepseek-v4: layers.1.hc_attn_fn has shape [24, 36], expected [24, 32] (n = 4 "
                               "streams of width C = 8, from layers.0.hc_attn_*)")
    bf16 = dict(state, **{"layers.0.hc_ffn_scale": state["layers.0.hc_ffn_scale"].bfloat16()})
    assert error_of(bf16) == ("error: --deepseek-v4: layers.0.hc_ffn_scale has dtype BF16, expected F32 (DeepSeek-V4 "
                              "keeps its hyper-connection tensors in float32)")
    assert error_of({"unrelated": torch.zeros(3)}).startswith("error: --deepseek-v4: no DeepSeek-V4 hyper-connection tensors")
    # Weights that are not finite: the tensor is named (issue 35, item 20), not "the probe overflows".
    nan = dict(state, **{"layers.1.hc_ffn_base": torch.full_like(state["layers.1.hc_ffn_base"], float("nan"))})
    assert error_of(nan) == (f"error: --deepseek-v4: tensor layers.1.hc_ffn_base in {path} holds values that are not "
                             "finite (NaN or inf): a damaged checkpoint")
    # Two names for one sublayer's part: refused, not one of them read silently (issue 35, item 2).
    twice = error_of(dict(state, **{"layers.01.hc_attn_fn": state["layers.1.hc_attn_fn"]}))
    assert twice.startswith("error: --deepseek-v4: tensors layers.") and "layers.01.hc_attn_fn" in twice and \
        "layers.1.hc_attn_fn" in twice and twice.endswith(" name the same sublayer's fn (one name each, please)"), twice
    # A layer index of 200,000 digits: one line, not a crash in a recursive regex (issue 35, item 8).
    long_name = error_of(dict(state, **{"layers." + "1" * 200_000 + ".hc_attn_fn": torch.zeros(1)}))
    assert last_peak_kib[0] * 1024 < 400 << 20, f"peak RSS {last_peak_kib[0]} KiB"
    assert long_name == "error: --deepseek-v4: tensor layers." + "1" * 33 + "…: layer index out of range", \
        long_name[:200]
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # a damaged header length: refused, nothing allocated
    code, _, log, _ = analyze(tmp_path, path)
    assert code != 0 and log.strip().splitlines()[-1] == (
        f"error: safetensors file {path} is unreadable: header length 1099511627776 bytes, over the format's limit of "
        "100000000 (not safetensors, or damaged)"), log


@needs_cli
def test_analyze_skips_tensors_of_any_dtype(tmp_path):
    """V4 ships FP8 weights: a shard holding tensors of every safetensors dtype that the analysis
    never reads (FP8, BOOL, I8, U16, the packed 4-bit F4) is read, only its connections (issue 35,
    item 7)."""
    state = v4_checkpoint()
    others = {"layers.0.ffn.experts.0.w1.weight": torch.ones(4, 8).to(torch.float8_e4m3fn),
              "layers.0.ffn.gate.mask": torch.zeros(3, dtype=torch.bool),
              "layers.0.attn.scale_q": torch.ones(5, dtype=torch.int8),
              "layers.0.attn.index": torch.arange(6, dtype=torch.int32).to(torch.uint16),
              "layers.0.ffn.experts.0.w2.weight": ("F4", [2, 4], bytes(4))}
    write_safetensors(tmp_path / "v4.safetensors", dict(others, **state))
    code, _, log, out = analyze(tmp_path, tmp_path / "v4.safetensors")
    assert code == 0, log
    report = json.loads((out / "analysis.json").read_text())
    assert report["tensor_bytes_read"] == sum(t.numel() * 4 for t in state.values())


@needs_cli
def test_analyze_memory_is_bounded_by_what_it_reads(tmp_path):
    """What the headers claim does not decide the memory (issue 35, item 12): a sparse file whose
    connection tensor claims 2.3 GB is refused before a byte of it is read, and twenty links to one
    file are read once."""
    C = 6_000_000  # fn [24, 4·C] float32: 2.3e9 bytes, a hole on disk
    header = {"layers.0.hc_attn_fn": {"dtype": "F32", "shape": [24, 4 * C], "data_offsets": [0, 24 * 4 * C * 4]}}
    blob = json.dumps(header).encode()
    sparse = tmp_path / "sparse.safetensors"
    with open(sparse, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + 24 * 4 * C * 4)
    code, peak_kib, log, _ = analyze(tmp_path, sparse)
    assert code != 0 and log.strip().splitlines()[-1] == (
        f"error: --deepseek-v4: the headers claim {24 * 4 * C * 4} bytes of hyper-connection tensors, above the limit "
        f"of {2 << 30} (DeepSeek-V4's take about 0.34 GB)"), log
    assert peak_kib * 1024 < 400 << 20, f"peak RSS {peak_kib} KiB"

    state = v4_checkpoint()
    links = tmp_path / "links"
    links.mkdir()
    write_safetensors(tmp_path / "v4.safetensors", state)
    for k in range(20):
        (links / f"shard-{k:02d}.safetensors").symlink_to(tmp_path / "v4.safetensors")
    code, _, log, out = analyze(tmp_path, links)
    assert code == 0, log
    report = json.loads((out / "analysis.json").read_text())
    assert len(report["files"]) == 1 and report["tensor_bytes_read"] == sum(t.numel() * 4 for t in state.values())


@needs_cli
def test_analyze_reads_model_parallel_shards(tmp_path):
    """Shards that split the checkpoint, one tensor copied into both (as model-parallel files hold
    unsplit tensors): every sublayer is reported once."""
    state = v4_checkpoint()
    names = sorted(state)
    write_safetensors(tmp_path / "a.safetensors", {k: state[k] for k in names[: len(names) // 2] + names[-1:]})
    write_safetensors(tmp_path / "b.safetensors", {k: state[k] for k in names[len(names) // 2:]})
    code, _, log, out = analyze(tmp_path, tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert code == 0, log
    report = json.loads((out / "analysis.json").read_text())
    assert report["diag"]["sublayer"] == ["attn 0", "ffn 0", "attn 1", "ffn 1"] and len(report["files"]) == 2
