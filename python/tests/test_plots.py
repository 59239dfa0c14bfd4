"""scripts/plots.py at any depth, and its failures named (issue 35, item 13: 5,000 sublayers took
78 s and died with a traceback under a wrong "matplotlib missing?" hint)."""
import json
import os
import subprocess
import sys
import time

import pytest

PLOTS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "plots.py")
pytest.importorskip("matplotlib")


def analysis(L, n=4, iterations=(1, 2, 5, 10, 20, 50)):
    """A synthetic analysis.json of L sublayers, as `mhc analyze` writes it."""
    column = [1.0 + 0.001 * l for l in range(L)]
    keys = ["fwd_gain_max", "fwd_gain_mean", "bwd_gain_max", "bwd_gain_mean", "composite_fwd_max", "composite_fwd_mean",
            "composite_bwd_max", "composite_bwd_mean", "row_error", "col_error", "min_entry", "pre_min", "pre_max",
            "post_min", "post_max", "share_max", "share_min", "effective_rank", "h_res_to_identity",
            "h_res_to_uniform", "pre_entropy", "post_entropy"]
    diag = {"sublayer": ["%s %d" % ("attn" if l % 2 == 0 else "mlp", l // 2) for l in range(L)]}
    diag.update({k: column for k in keys})
    return {"checkpoint": "synthetic", "step": 1, "variant": "mhc", "streams": n, "sinkhorn_iters": 20,
            "probe_tokens": 64, "diag": diag, "mean_h_res": [[[1.0 / n] * n] * n] * L,
            "sinkhorn": {"iterations": list(iterations), "error": [[1e-3 / t for t in iterations]] * L}}


def run_plots(tmp_path, report):
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(report))
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, PLOTS, "analyze", str(path), str(tmp_path)], capture_output=True, text=True)
    return run, time.monotonic() - t0


def test_five_thousand_sublayers_plot_in_bounded_time_and_size(tmp_path):
    run, seconds = run_plots(tmp_path, analysis(5000))
    assert run.returncode == 0, run.stderr
    assert seconds < 30, f"{seconds:.1f} s"  # measured here: see the closing note
    for png in ("gain_vs_depth", "h_res_mean", "sinkhorn_error", "streams"):
        size = (tmp_path / f"{png}.png").stat().st_size
        assert 1000 < size < 2 << 20, (png, size)


def test_a_failing_plot_names_its_cause(tmp_path):
    report = analysis(4)
    del report["sinkhorn"]
    run, _ = run_plots(tmp_path, report)
    assert run.returncode == 3
    assert run.stderr.strip().splitlines() == ["plots.py: cannot draw the plots: KeyError: 'sinkhorn'"], run.stderr
