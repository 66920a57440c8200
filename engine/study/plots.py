"""The study's figures: accuracy against latency (pareto.png) and the three networks side by
side (comparison.png)."""
from __future__ import annotations

from .labels import label_panels
from .report import _best_int8, _int8_name


def comparison_plot(rows, path):
    """Accuracy drop vs latency ratio to each network's own eager FP32, one colour per
    network, one marker per engine; each network's best INT8 row per engine is labelled."""
    _save_figure(comparison_figure(rows), path)


def comparison_figure(rows):
    """The figure of :func:`comparison_plot` (labels placed, not saved)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..backends import BACKENDS
    markers = {n: b.marker for n, b in BACKENDS.items()}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = []
    for i, model in enumerate(models):
        pts = [r for r in rows if r["model"] == model and r["precision"] == "int8"
               and r.get("latency_vs_torch") and r.get("top1_delta_vs_fp32") is not None]
        for engine in dict.fromkeys(r["engine"] for r in pts):
            mine = [r for r in pts if r["engine"] == engine]
            ax.scatter([r["latency_vs_torch"] for r in mine],
                       [r["top1_delta_vs_fp32"] for r in mine], color=f"C{i}",
                       marker=markers.get(engine, "x"), s=40, label=f"{model} {engine}")
            best = _best_int8(mine, engine)
            if best is not None:
                labels.append((best["latency_vs_torch"], best["top1_delta_vs_fp32"],
                               f"{engine}: {_int8_name(best)}"))
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("batch-1 latency × the network's PyTorch eager FP32 (own input size)")
    ax.set_ylabel("top-1 change vs FP32 (pt)")
    ax.set_title("INT8 rows of the three networks")
    ax.grid(alpha=0.3)
    label_panels(fig, [(ax, labels)])
    return fig


def _save_figure(fig, path):
    import matplotlib.pyplot as plt
    from ..fileio import atomic_path
    with atomic_path(path, suffix=".png") as tmp:
        # "tight" crops to what was drawn (the legend outside the axes) without moving the
        # axes, so the label placement measured on the canvas still holds
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


def pareto_plot(rows, path):
    """Accuracy vs batch-1 latency (:func:`pareto_figure`), saved as a PNG at ``path``."""
    _save_figure(pareto_figure(rows), path)


_ANCHOR_MARKERS = ("v", "<", ">", "P", "X", "*", "h", "p")
_FLOAT_MARKERS = {"fp32": "o", "bf16": "s", "fp16": "D"}   # INT8 rows: the quantizer's


def _error_bar(r, base_top1):
    """(below, above) the row's top-1: its paired 95% interval on Δ, moved onto the top-1
    axis (the baseline's top-1 + the interval); None without an interval."""
    ci = r.get("top1_delta_ci")
    if ci is None or base_top1 is None or r["top1"] is None:
        return None
    delta = r["top1"] - base_top1
    return max(0.0, delta - ci[0]), max(0.0, ci[1] - delta)


def readable_log_ticks(ax, axis: str = "x") -> None:
    """Plain-number major ticks on a log axis (1, 2, 5 per decade, or a few evenly spaced
    values when the range is under a decade) and no minor labels, so labels never run
    together the way "3×10⁰4×10⁰" does."""
    from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator,
                                   NullFormatter)
    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = [t for t in LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
             if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo <= t <= hi and t > 0]
    which.set_major_locator(FixedLocator(ticks))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def _pareto_front(pts, key):
    """The points no other point beats: at least as fast and at least as accurate."""
    return sorted((p for p in pts if not any(
        q is not p and q[key] <= p[key] and q["top1"] >= p["top1"] and
        (q[key] < p[key] or q["top1"] > p["top1"]) for q in pts)), key=lambda p: p[key])


def _row_label(r) -> str:
    if r["method"] == "-":
        return f"{r['engine']}/{r['precision']}"
    return f"{r['engine']}/{_int8_name(r)}"


def pareto_figure(rows):
    """Accuracy vs batch-1 latency, at the model's own size and at 299 (a panel each, when
    measured). Colour: the engine; marker: the float precision (FP32 circle, BF16 square,
    FP16 diamond), and for INT8 the quantizer (hollow: OpenVINO's uint8 layout). Each row's
    paired 95% interval on Δ top-1 is its vertical error bar. The Pareto front is dashed; its
    points, the baseline and each quantizer's most accurate row are labelled where a label
    fits without overlap, the rest listed in the legend. One row of panels per CPU class
    (each against its own speed figures), when the rows come from more than one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..backends import BACKENDS
    colours = {n: b.colour for n, b in BACKENDS.items()}
    quantizers = [q for q in dict.fromkeys(r.get("quantizer", "-") for r in rows)
                  if q not in ("-", "ours")]
    markers = {"ours": "^", **dict(zip(quantizers, _ANCHOR_MARKERS))}
    views = [(key, title) for key, title in (("latency_ms", "own input size"),
                                             ("latency_ms_299", "full size at 299"))
             if any(r.get(key) is not None for r in rows)] or [("latency_ms", "own input size")]
    classes = list(dict.fromkeys(r.get("cpu_class", "-") for r in rows))
    fig, axes = plt.subplots(len(classes), len(views),
                             figsize=(7.5 * len(views) + 2, 6 * len(classes)), squeeze=False)
    panels = []
    cells = [(ax, key, title, cpu_class) for cpu_class, line in zip(classes, axes)
             for ax, (key, title) in zip(line, views)]
    for ax, key, title, cpu_class in cells:
        pts = [r for r in rows if r[key] is not None and r["top1"] is not None
               and r.get("cpu_class", "-") == cpu_class]
        seen = set()
        for r in pts:
            u8 = r.get("target") == "openvino"
            quantizer = r.get("quantizer", "-")
            label = f"{r['engine']} {r['precision']}" + (
                f" {quantizer}" if r["precision"] == "int8" else "") + (" u8" if u8 else "")
            bar = _error_bar(r, rows[0]["top1"] if rows else None)
            if bar is not None:
                ax.errorbar(r[key], r["top1"], yerr=[[bar[0]], [bar[1]]], fmt="none",
                            ecolor=colours.get(r["engine"], "k"), elinewidth=0.8, capsize=2,
                            alpha=0.7)
            marker = (markers.get(quantizer, "o") if r["precision"] == "int8"
                      else _FLOAT_MARKERS.get(r["precision"], "o"))
            ax.scatter(r[key], r["top1"], marker=marker,
                       facecolors="none" if u8 else colours.get(r["engine"], "k"),
                       edgecolors=colours.get(r["engine"], "k"), s=45,
                       label=None if label in seen else label)
            seen.add(label)
        front = _pareto_front(pts, key)
        if front:
            ax.plot([p[key] for p in front], [p["top1"] for p in front], "k--", lw=0.8)
        best = [max((r for r in pts if r.get("quantizer") == q), key=lambda r: r["top1"])
                for q in dict.fromkeys(r.get("quantizer") for r in pts)]
        chosen = list({id(r): r for r in front + pts[:1] + best}.values())
        panels.append((ax, [(r[key], r["top1"], _row_label(r)) for r in chosen]))
        ax.set_xscale("log")
        readable_log_ticks(ax)
        ax.set_xlabel(f"batch-1 latency (ms, {title}; log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"accuracy vs latency: {title}" + (
            f"\non {cpu_class}" if len(classes) > 1 else ""))
        ax.grid(alpha=0.3)
    label_panels(fig, panels)
    return fig
