#!/usr/bin/env python3
"""The plots of `mhc analyze` and `mhc compare`, drawn with matplotlib from the files they write.

    plots.py analyze ANALYSIS_JSON OUT_DIR       gain_vs_depth.png, h_res_mean.png, sinkhorn_error.png,
                                                 streams.png
    plots.py compare OUT_DIR NAME=RUN_DIR ...    val_loss.png, grad_norm.png, gain_vs_depth.png,
                                                 gain_over_steps.png, streams_vs_depth.png,
                                                 streams_over_steps.png (from each RUN_DIR/metrics.jsonl)
    plots.py depth OUT_PNG NAME=RUN_DIR ...      the final composite gain vs the number of blocks, per
                                                 variant (RUN_DIR/config.json gives both)

compare and depth read the runs' metrics.jsonl, whose keys the C++ run log defines alone
(src/train/run_log.cpp, log_keys()): `mhc` passes them as `--log-keys JSON` before the command, and
`mhc train --print-log-keys` prints them for a script that runs this one itself.

Runs named VARIANT-seedS are seeds of one variant: drawn as their mean with a band for the spread,
min–max below 3 seeds and mean ± the sample standard deviation from 3 (the rule of `mhc compare`).

Run by the `mhc` tool with the project environment's Python (.venv, matplotlib); never from inside training.
Each PNG is written to a temporary name and renamed, so a reader never sees half an image.
"""
import json
import math
import os
import sys

# Exit statuses `mhc` tells apart: matplotlib missing, or a plot that could not be drawn (the line
# on stderr says why).
MISSING_MATPLOTLIB, PLOT_FAILED = 4, 3

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (the backend must be chosen first)
    from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter
except ImportError as e:
    sys.stderr.write("plots.py: matplotlib cannot be imported in %s (%s)\n" % (sys.executable, e))
    sys.exit(MISSING_MATPLOTLIB)

# A stack of any depth gives plots of bounded size and time: at most this many heat maps of H_res
# and lines of the Sinkhorn–Knopp sweep, evenly spaced over depth (the first and the last included).
MAX_HEAT_MAPS, MAX_SWEEP_LINES = 32, 64


def evenly_spaced(count, at_most):
    """Indices 0 … count-1, or at_most of them evenly spaced, the first and the last included."""
    if count <= at_most:
        return list(range(count))
    return sorted({round(k * (count - 1) / (at_most - 1)) for k in range(at_most)})

# Per variant: colour, marker, line style (mHC and mHC-lite often coincide: the styles keep both visible).
STYLES = {"residual": ("tab:gray", "", "-"), "hc": ("tab:red", "o", "-"), "mhc": ("tab:blue", "s", "-"),
          "mhc-v4": ("tab:cyan", "P", "--"), "mhc-lite": ("tab:green", "^", "--"), "kromhc": ("tab:purple", "D", ":"),
          "ihc": ("tab:orange", "v", "-."), "jpmhc": ("tab:brown", "X", "-"), "gomhc": ("tab:olive", "*", "--")}
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


def variant_in(record):
    """The variant an analysis.json or config.json names (files written before the rename say "residual")."""
    return record["variant"] if "variant" in record else record["residual"]


def variant_of(name):
    """'mhc-lite-seed3' -> 'mhc-lite'."""
    return name.rsplit("-seed", 1)[0]


def style(name, markers=True):
    color, marker, line = STYLES.get(variant_of(name).split(" ")[0], (None, "", "-"))
    return {"color": color, "marker": marker if markers else "", "markersize": 3, "linestyle": line,
            "linewidth": 1.4}


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
    variant = variant_in(a)
    when = "step %d" % a["step"] if "step" in a else "DeepSeek-V4 weights"  # analyze --deepseek-v4 has no step
    what = "%s, n = %d, %s, %d probe tokens" % (variant, a["streams"], when, a["probe_tokens"])

    # Gains, and below them the spectrum where the analysis has one (written before it existed: none).
    spectral = "composite_sigma_min_min" in d
    fig, axes = plt.subplots(2 if spectral else 1, 2, figsize=(13, 9.6 if spectral else 4.8), constrained_layout=True,
                             squeeze=False)
    marker = 3 if L <= 200 else 0  # thousands of markers only hide the lines
    for ax, key, title in ((axes[0][0], "fwd", "forward gain (max |row sum|)"),
                           (axes[0][1], "bwd", "backward gain (max |column sum|)")):
        ax.plot(depth, d["composite_%s_max" % key], "o-", markersize=marker, label="composite P_l, max over tokens")
        ax.plot(depth, d["composite_%s_mean" % key], "s--", markersize=marker, label="composite P_l, mean over tokens")
        ax.plot(depth, d["%s_gain_max" % key], "^:", markersize=marker, label="single H_res^(l), max over tokens")
        gain_axes(ax, "%s\n%s" % (title, what))
    if spectral:
        for ax, key, worst, title in ((axes[1][0], "max", "max", "largest singular value"),
                                      (axes[1][1], "min", "min", "smallest singular value")):
            ax.plot(depth, d["composite_sigma_%s_%s" % (key, worst)], "o-", markersize=marker,
                    label="composite P_l, %s over tokens" % worst)
            ax.plot(depth, d["composite_sigma_%s_mean" % key], "s--", markersize=marker, label="composite P_l, mean over tokens")
            ax.plot(depth, d["sigma_%s_%s" % (key, worst)], "^:", markersize=marker,
                    label="single H_res^(l), %s over tokens" % worst)
            gain_axes(ax, "%s\n%s" % (title, what), ylabel="singular value (log scale)")
    save(fig, os.path.join(out, "gain_vs_depth.png"))

    mats = a["mean_h_res"]
    shown = evenly_spaced(L, MAX_HEAT_MAPS)
    cols = min(8, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1.2, 1.6 * rows + 0.8), squeeze=False)
    entries = [v for m in mats for r in m for v in r]
    lo = min(finite(entries), default=0.0)
    hi = max(finite(entries), default=1.0)
    image = None
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(shown):
            ax.axis("off")
            continue
        l = shown[k]
        image = ax.imshow(mats[l], vmin=min(lo, 0.0), vmax=max(hi, 1.0), cmap="viridis")
        ax.set_title(d["sublayer"][l], fontsize=8)
    which = "" if len(shown) == L else ", %d of %d sublayers evenly spaced" % (len(shown), L)
    fig.suptitle("mean H_res per sublayer over probe tokens (row = destination stream, column = source%s; %s)"
                 % (which, what), fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="H_res entry (mixing weight)")
    save(fig, os.path.join(out, "h_res_mean.png"))

    s = a["sinkhorn"]
    t = s["iterations"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if variant in ("mhc", "mhc-v4"):
        cmap = plt.get_cmap("viridis")
        for l in evenly_spaced(L, MAX_SWEEP_LINES):
            ax.plot(t, [max(e, 1e-12) for e in s["error"][l]], color=cmap(l / max(L - 1, 1)), linewidth=0.8, alpha=0.8)
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
                       label="%s: its own H_res, no iterations (worst sublayer %.1e)" % (variant, exact))
        ax.set_title("doubly-stochastic error of H_res (no Sinkhorn–Knopp in %s)\n%s" % (variant, what))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(t[0], t[-1])
    decorate(ax, ax.get_title(), "Sinkhorn–Knopp iterations t (log scale)",
             "max(|row sum − 1|, |column sum − 1|), worst token")
    save(fig, os.path.join(out, "sinkhorn_error.png"))

    if "effective_rank" in d:  # analysis.json written before the stream diagnostics has none
        streams_vs_depth([(variant, [d])], a["streams"], "stream use, means over probe tokens\n" + what,
                         os.path.join(out, "streams.png"))


# ---- stream diagnostics (analyze and compare) ------------------------------------------------------


def streams_vs_depth(groups, n, title, path):
    """Four panels against depth: effective rank, largest and smallest stream share, the distances of
    H_res from I and J/n, the entropies of H_pre and H_post. groups: [(name, [diag of each seed])]."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    panels = (
        (axes[0][0], (("effective_rank", ""),), "effective rank of the state entering the sublayer",
         "effective rank (1: one signal, n: orthogonal streams)", [(1.0, "1"), (float(n), "n = %d" % n)]),
        (axes[0][1], (("share_max", "largest"), ("share_min", "smallest")), "stream shares ||x_i||² / Σ ||x_j||²",
         "share of the state's energy", [(1.0 / n, "1/n")]),
        (axes[1][0], (("h_res_to_identity", "from I"), ("h_res_to_uniform", "from J/n")),
         "Frobenius distance of H_res", "||H_res − reference||_F", [(0.0, ""), (math.sqrt(n - 1), "√(n−1)")]),
        (axes[1][1], (("pre_entropy", "H_pre"), ("post_entropy", "H_post")), "entropy of |coefficients| normalised",
         "entropy (nats)", [(0.0, ""), (math.log(n), "ln n")]),
    )
    for ax, keys, panel_title, ylabel, references in panels:
        for name, diags in groups:
            for k, (key, label) in enumerate(keys):
                rows = [d[key] for d in diags if key in d]
                if rows:
                    band(ax, list(range(len(rows[0]))), rows, ("%s %s" % (name, label)).strip(),
                         linestyle=("-", "--")[k], markers=k == 0)
        for value, label in references:
            ax.axhline(value, color="black", linewidth=0.6, linestyle=":")
            if label:
                ax.annotate(label, (1.0, value), xycoords=("axes fraction", "data"), fontsize=7, ha="right",
                            va="bottom")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        decorate(ax, panel_title, SUBLAYER_AXIS, ylabel)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


# ---- compare ---------------------------------------------------------------------------------------

# The keys of a metrics.jsonl line by role ("step", "loss", "val_loss", "grad_norm", "diagnostics",
# "collapse"), from --log-keys.
LOG = {}


def read_metrics(run_dir):
    lines = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                pass
    return lines


def spread(rows):
    """Per position of equal-length rows (one per seed): mean, low, high — min to max for fewer than 3
    rows, mean ± the sample standard deviation for 3 or more. Non-finite values are left out."""
    mean, low, high = [], [], []
    for column in zip(*rows):
        values = finite(v for v in column if v is not None)
        if not values:
            mean.append(math.nan), low.append(math.nan), high.append(math.nan)
            continue
        m = math.fsum(values) / len(values)
        if len(values) < 3:
            lo, hi = min(values), max(values)
        else:
            std = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))
            lo, hi = m - std, m + std
        mean.append(m), low.append(lo), high.append(hi)
    return mean, low, high


def band(ax, x, rows, name, markers=True, linestyle=None):
    """One run as a line, several seeds as their mean and a band for the spread."""
    st = style(name, markers)
    if linestyle:
        st["linestyle"] = linestyle
    if len(rows) == 1:
        ax.plot(x, rows[0], label=name, **st)
        return
    mean, low, high = spread(rows)
    what = "min–max" if len(rows) < 3 else "± std"
    ax.plot(x, mean, label="%s (mean of %d seeds, band %s)" % (name, len(rows), what), **st)
    ax.fill_between(x, low, high, color=st["color"], alpha=0.2, linewidth=0)


def by_variant(metrics):
    """{name: metrics} -> [(variant, [metrics of each seed])], in the order the runs were given."""
    groups = {}
    for name, m in metrics.items():
        groups.setdefault(variant_of(name), []).append(m)
    return list(groups.items())


def over_steps(runs, value):
    """The steps every seed logged value(line) at (not None), and each seed's values there."""
    per_seed = [{j[LOG["step"]]: value(j) for j in m if value(j) is not None} for m in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    return steps, [[p[s] for s in steps] for p in per_seed]


def last_diags(runs):
    """Each seed's last diagnostics record, and the step of the first seed's; None without any."""
    lasts = [[j for j in m if LOG["diagnostics"] in j][-1:] for m in runs]
    if not all(lasts):
        return None, None
    return [l[0][LOG["diagnostics"]] for l in lasts], lasts[0][0][LOG["step"]]


def has_streams(seeds):
    diags, _ = last_diags(seeds)
    return bool(diags) and all("effective_rank" in d for d in diags)


def compare(out, runs):
    groups = by_variant({name: read_metrics(run_dir) for name, run_dir in runs})

    def over_training(path, value, title, ylabel, log=False, markers=True):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, seeds in groups:
            steps, rows = over_steps(seeds, value)
            if steps:
                band(ax, steps, rows, variant, markers=markers)
        if log:
            ax.set_yscale("log")
        decorate(ax, title, "step", ylabel)
        save(fig, os.path.join(out, path))

    over_training("val_loss.png", lambda j: j.get(LOG["val_loss"]), "validation loss", "validation loss (nats)")
    over_training("grad_norm.png", lambda j: j.get(LOG["grad_norm"]), "gradient norm",
                  "global L2 gradient norm before clipping (log scale)", log=True, markers=False)

    # The gains, and below them the extreme singular values of the same composite maps (runs logged
    # before the spectral diagnostics existed are left out of that row).
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.6), constrained_layout=True)
    rows_of = (("composite_fwd_max", "composite forward gain", "max over probe tokens", "gain (ratio, log scale)"),
               ("composite_bwd_max", "composite backward gain", "max over probe tokens", "gain (ratio, log scale)"),
               ("composite_sigma_max_max", "largest singular value", "max over probe tokens", "singular value (log scale)"),
               ("composite_sigma_min_min", "smallest singular value", "min over probe tokens", "singular value (log scale)"))
    for ax, (key, title, over, ylabel) in zip([a for row in axes for a in row], rows_of):
        for variant, seeds in groups:
            diags, step = last_diags(seeds)
            if diags and all(key in d for d in diags):
                rows = [d[key] for d in diags]
                band(ax, list(range(len(rows[0]))), rows, "%s (step %d)" % (variant, step))
            elif not diags:
                ax.axhline(1.0, label="%s (identity: no H_res)" % variant, **style(variant, markers=False))
        gain_axes(ax, "%s of P_l = H_res^(L-1)···H_res^(l)\nat the end of training, %s" % (title, over), ylabel=ylabel)
    save(fig, os.path.join(out, "gain_vs_depth.png"))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, key, title in ((axes[0], "fwd", "forward"), (axes[1], "bwd", "backward")):
        for variant, seeds in groups:
            diag = LOG["diagnostics"]
            steps, rows = over_steps(seeds, lambda j: max(j[diag]["composite_%s_max" % key]) if diag in j else None)
            if steps:
                band(ax, steps, rows, variant)
        gain_axes(ax, "largest composite %s gain over depth,\nduring training" % title, "step",
                  "gain (ratio, log scale; max over sublayers and probe tokens)")
    save(fig, os.path.join(out, "gain_over_steps.png"))

    # Stream use: the plain residual has one stream and no diagnostics; runs logged before the
    # stream diagnostics existed have none either.
    with_streams = [(v, seeds) for v, seeds in groups if has_streams(seeds)]
    hyper = [config_of(d) for name, d in runs if variant_of(name) != "residual"]  # one --streams for all
    n = hyper[0]["streams"] if hyper else 1
    streams_vs_depth([(v, last_diags(seeds)[0]) for v, seeds in with_streams], n,
                     "stream use at the end of training, means over probe tokens", os.path.join(out, "streams_vs_depth.png"))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, key, title, ylabel, setting in (
            (axes[0], "effective_rank", "effective rank", "effective rank (mean over sublayers 1…L−1)", "collapse-rank"),
            (axes[1], "largest_share", "largest stream share", "largest share (mean over sublayers 1…L−1)",
             "collapse-share")):
        for variant, seeds in with_streams:
            collapse = LOG["collapse"]
            steps, rows = over_steps(seeds, lambda j: j[collapse][key] if collapse in j else None)
            if steps:
                band(ax, steps, rows, variant)
        if hyper and setting in hyper[0]:  # run settings: the first run's stand for all
            ax.axhline(hyper[0][setting], color="tab:red", linewidth=1, linestyle="--",
                       label="collapse alarm threshold (--%s %g)" % (setting, hyper[0][setting]))
        decorate(ax, "%s of the streams during training" % title, "step", ylabel)
    save(fig, os.path.join(out, "streams_over_steps.png"))


def config_of(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)


# ---- depth ------------------------------------------------------------------------------------------


def depth(path, runs):
    """The largest composite gain over depth at the end of training, against the number of blocks."""
    points = {}  # variant -> {blocks: [gain of each seed]}
    for name, run_dir in runs:
        config = config_of(run_dir)
        diags = [j[LOG["diagnostics"]] for j in read_metrics(run_dir) if LOG["diagnostics"] in j]
        gain = max(max(diags[-1]["composite_fwd_max"]), max(diags[-1]["composite_bwd_max"])) \
            if diags else 1.0  # the plain residual: the identity
        points.setdefault(variant_in(config), {}).setdefault(config["layers"], []).append(gain)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for variant, by_blocks in points.items():
        blocks = sorted(by_blocks)
        mean, low, high = spread([[by_blocks[b][k] if k < len(by_blocks[b]) else None for b in blocks]
                                  for k in range(max(len(v) for v in by_blocks.values()))])
        seeds = "/".join(str(len(by_blocks[b])) for b in blocks)
        st = style(variant)
        ax.errorbar(blocks, mean, yerr=[[m - l for m, l in zip(mean, low)], [h - m for m, h in zip(mean, high)]],
                    label="%s (seeds per depth: %s)" % (variant, seeds), capsize=3, **st)
    gain_axes(ax, "largest composite gain at the end of training vs depth\n"
              "max over sublayers, probe tokens, forward and backward; bars: the spread over seeds",
              "transformer blocks (2 sublayers each; log scale)", "composite gain (ratio, log scale)")
    ax.set_xscale("log", base=2)  # the sweep doubles the depth: equal steps
    ax.set_xticks(sorted({b for v in points.values() for b in v}))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    save(fig, path)


def main(argv):
    if len(argv) >= 2 and argv[0] == "--log-keys":
        LOG.update(json.loads(argv[1]))
        argv = argv[2:]
    if argv[:1] in (["compare"], ["depth"]) and not LOG:
        sys.exit("plots.py %s: give --log-keys (`mhc train --print-log-keys` prints them)" % argv[0])
    if len(argv) == 3 and argv[0] == "analyze":
        analyze(argv[1], argv[2])
    elif len(argv) >= 3 and argv[0] == "compare":
        compare(argv[1], [tuple(a.split("=", 1)) for a in argv[2:]])
    elif len(argv) >= 3 and argv[0] == "depth":
        depth(argv[1], [tuple(a.split("=", 1)) for a in argv[2:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as e:  # one line that names the cause, for `mhc` to point at
        sys.stderr.write("plots.py: cannot draw the plots: %s: %s\n" % (type(e).__name__, e))
        sys.exit(PLOT_FAILED)
