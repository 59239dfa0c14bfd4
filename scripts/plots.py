#!/usr/bin/python3
"""The plots of `mhc analyze` and `mhc compare`, drawn with matplotlib from the files they write.

    plots.py analyze ANALYSIS_JSON OUT_DIR       gain_vs_depth.png, h_res_mean.png, sinkhorn_error.png
    plots.py compare OUT_DIR NAME=RUN_DIR ...    val_loss.png, grad_norm.png, gain_vs_depth.png,
                                                 gain_over_steps.png (from each RUN_DIR/metrics.jsonl)

Run by the `mhc` tool with Debian's /usr/bin/python3 (python3-matplotlib); never from inside training.
Each PNG is written to a temporary name and renamed, so a reader never sees half an image.
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter  # noqa: E402

# Per variant: colour, marker, line style (mHC and mHC-lite often coincide: the styles keep both visible).
STYLES = {"residual": ("tab:gray", "", "-"), "hc": ("tab:red", "o", "-"), "mhc": ("tab:blue", "s", "-"),
          "mhc-lite": ("tab:green", "^", "--")}
SUBLAYER_AXIS = "sublayer l (attention and MLP counted separately)"


def save(fig, path):
    for ax in fig.axes:
        low, high = ax.get_ylim()
        if getattr(ax, "gain_axis", False) and high / low < 1.01:
            # Gains within 1% of each other (mHC's forward gain: 1 ± 1e-6) are unreadable on a log axis.
            ax.set_yscale("linear")
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=True))
            ax.set_ylabel(ax.get_ylabel().replace("log scale", "linear scale"))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def variant_of(name):
    """'mhc-lite-seed3' -> 'mhc-lite'."""
    return name.rsplit("-seed", 1)[0]


def style(name, seeds, markers=True):
    color, marker, line = STYLES.get(variant_of(name), (None, "", "-"))
    return {"color": color, "marker": marker if markers else "", "markersize": 3, "linestyle": line,
            "alpha": 1.0 if seeds == 1 else 0.7, "linewidth": 1.4}


def log_gain_axis(ax):
    """A log y axis whose ticks read as plain numbers (0.95, 1, 1.05 or 10, 100, 1000)."""
    ax.set_yscale("log")
    ax.gain_axis = True
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))

    def minor(v, _):  # labelled only on a short axis, where there would be no major tick to read
        low, high = ax.get_ylim()
        return "%g" % v if high / low < 20 else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def decorate(ax, title, xlabel, ylabel):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def gain_axes(ax, title, xlabel=SUBLAYER_AXIS, ylabel="gain (ratio, log scale)"):
    """Gains on a log axis with the line of norm preservation (gain 1) drawn in."""
    log_gain_axis(ax)
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    if xlabel == SUBLAYER_AXIS:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    decorate(ax, title, xlabel, ylabel)


# ---- analyze ---------------------------------------------------------------------------------------


def nan_for_null(value):
    """analysis.json holds a non-finite number as null (JSON has no NaN): NaN again, which matplotlib
    leaves out of a line or an image."""
    if isinstance(value, list):
        return [nan_for_null(v) for v in value]
    if isinstance(value, dict):
        return {k: nan_for_null(v) for k, v in value.items()}
    return math.nan if value is None else value


def finite(values):
    return [v for v in values if math.isfinite(v)]


def analyze(analysis_path, out):
    with open(analysis_path) as f:
        a = nan_for_null(json.load(f))
    d = a["diag"]
    L = len(d["sublayer"])
    depth = list(range(L))
    what = "%s, n = %d, step %d, %d probe tokens" % (a["residual"], a["streams"], a["step"], a["probe_tokens"])

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, key, title in ((axes[0], "fwd", "forward gain (max |row sum|)"), (axes[1], "bwd", "backward gain (max |column sum|)")):
        ax.plot(depth, d["composite_%s_max" % key], "o-", markersize=3, label="composite P_l, max over tokens")
        ax.plot(depth, d["composite_%s_mean" % key], "s--", markersize=3, label="composite P_l, mean over tokens")
        ax.plot(depth, d["%s_gain_max" % key], "^:", markersize=3, label="single H_res^(l), max over tokens")
        gain_axes(ax, "%s\n%s" % (title, what))
    save(fig, os.path.join(out, "gain_vs_depth.png"))

    mats = a["mean_h_res"]
    n = len(mats[0])
    cols = min(8, L)
    rows = math.ceil(L / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1.2, 1.6 * rows + 0.8), squeeze=False)
    entries = [v for m in mats for r in m for v in r]
    lo = min(finite(entries), default=0.0)
    hi = max(finite(entries), default=1.0)
    image = None
    for l in range(rows * cols):
        ax = axes[l // cols][l % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if l >= L:
            ax.axis("off")
            continue
        image = ax.imshow(mats[l], vmin=min(lo, 0.0), vmax=max(hi, 1.0), cmap="viridis")
        ax.set_title(d["sublayer"][l], fontsize=8)
    fig.suptitle("mean H_res per sublayer over probe tokens (row = destination stream, column = source; %s)" % what, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="H_res entry (mixing weight)")
    save(fig, os.path.join(out, "h_res_mean.png"))

    s = a["sinkhorn"]
    t = s["iterations"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if a["residual"] == "mhc":
        cmap = plt.get_cmap("viridis")
        for l, errors in enumerate(s["error"]):
            ax.plot(t, [max(e, 1e-12) for e in errors], color=cmap(l / max(L - 1, 1)), linewidth=0.8, alpha=0.8)
        worst = [max(finite(e[k] for e in s["error"]), default=math.nan) for k in range(len(t))]
        ax.plot(t, [max(w, 1e-12) for w in worst], "k-o", linewidth=2, label="worst sublayer")
        ax.axvline(a["sinkhorn_iters"], color="tab:red", linestyle="--", label="trained with t = %d" % a["sinkhorn_iters"])
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L - 1))
        fig.colorbar(sm, ax=ax, label="sublayer l")
        ax.set_title("Sinkhorn–Knopp error vs iterations, this checkpoint's logits\n" + what)
    else:
        exact = max(finite(e[0] for e in s["error"]), default=math.nan)
        if math.isfinite(exact):
            ax.axhline(max(exact, 1e-12), color="tab:green", linewidth=2,
                       label="%s: its own H_res, no iterations (worst sublayer %.1e)" % (a["residual"], exact))
        ax.set_title("doubly-stochastic error of H_res (no Sinkhorn–Knopp in %s)\n%s" % (a["residual"], what))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(t[0], t[-1])
    decorate(ax, ax.get_title(), "Sinkhorn–Knopp iterations t (log scale)",
             "max(|row sum − 1|, |column sum − 1|), worst token")
    save(fig, os.path.join(out, "sinkhorn_error.png"))


# ---- compare ---------------------------------------------------------------------------------------


def read_metrics(run_dir):
    lines = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                pass
    return lines


def compare(out, runs):
    metrics = {name: read_metrics(run_dir) for name, run_dir in runs}
    seeds = max(sum(1 for n in metrics if variant_of(n) == variant_of(name)) for name in metrics)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in metrics.items():
        points = [(j["step"], j["val_loss"]) for j in m if "val_loss" in j]
        if points:
            ax.plot(*zip(*points), label=name, **style(name, seeds))
    decorate(ax, "validation loss", "step", "validation loss (nats)")
    save(fig, os.path.join(out, "val_loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, m in metrics.items():
        points = [(j["step"], j["grad_norm"]) for j in m if j.get("grad_norm") is not None]
        if points:
            ax.plot(*zip(*points), label=name, **style(name, seeds, markers=False))
    ax.set_yscale("log")
    decorate(ax, "gradient norm", "step", "global L2 gradient norm before clipping (log scale)")
    save(fig, os.path.join(out, "grad_norm.png"))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, key, title in ((axes[0], "fwd", "composite forward gain"), (axes[1], "bwd", "composite backward gain")):
        for name, m in metrics.items():
            diags = [j for j in m if "diag" in j]
            if diags:
                last = diags[-1]
                ax.plot(last["diag"]["composite_%s_max" % key], label="%s (step %d)" % (name, last["step"]),
                        **style(name, seeds))
            else:
                ax.axhline(1.0, label="%s (identity: no H_res)" % name, **style(name, seeds, markers=False))
        gain_axes(ax, "%s of P_l = H_res^(L-1)···H_res^(l)\nat the end of training, max over probe tokens" % title)
    save(fig, os.path.join(out, "gain_vs_depth.png"))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, key, title in ((axes[0], "fwd", "forward"), (axes[1], "bwd", "backward")):
        for name, m in metrics.items():
            points = [(j["step"], max(j["diag"]["composite_%s_max" % key])) for j in m if "diag" in j]
            if points:
                ax.plot(*zip(*points), label=name, **style(name, seeds))
        gain_axes(ax, "largest composite %s gain over depth,\nduring training" % title, "step",
                  "gain (ratio, log scale; max over sublayers and probe tokens)")
    save(fig, os.path.join(out, "gain_over_steps.png"))


def main(argv):
    if len(argv) == 3 and argv[0] == "analyze":
        analyze(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "compare":
        compare(argv[1], [tuple(a.split("=", 1)) for a in argv[2:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
