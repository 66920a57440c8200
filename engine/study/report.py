"""The study's rows as records and text: ratios to the baseline, the paired comparison with
it, the best INT8 rows (:data:`BEST_RULE`), report.md and comparison.md."""
from __future__ import annotations

from dataclasses import asdict
from typing import Dict, List, Optional

import numpy as np

from ..intervals import METHOD_DELTA, METHOD_PROPORTION
from .row import Row


BEST_RULE = ("Best INT8: among the INT8 rows, the fastest at batch 1 whose top-1 is not "
             "distinguishable from the most accurate one's (their own paired exact McNemar "
             "test on the test images, 95%); a row is within noise of FP32 when its Δ "
             "interval contains 0.")


def result_rows(rows: List[Row], model: str, random_weights: bool,
                labels: Optional[np.ndarray] = None) -> List[dict]:
    """The rows as dicts, with the ratios to the baseline (the first row) and, where the
    test labels and the baseline's predictions are known, each row's paired comparison with
    it (:mod:`engine.intervals`: losses, gains, Δ top-1 and agreement with their 95%
    intervals, "within noise"), and the best INT8 rows flagged (:data:`BEST_RULE`). Each
    row's predictions stay out of the dict: :func:`write_outputs` puts them in
    ``predictions.npz`` (``predictions`` names the row's array there)."""
    from ..intervals import Paired
    base = rows[0]
    references = {}             # each CPU class's speed is against its own reference
    for row in rows:
        if row.engine == "torch":
            references.setdefault(row.cpu_class, row)
    result = []
    for i, row in enumerate(rows):
        speed_base = references.get(row.cpu_class, base)
        r = asdict(row)
        r.pop("pred")
        r["model"] = model
        r["random_weights"] = random_weights
        if speed_base.latency_ms and r["latency_ms"]:
            r["latency_vs_torch"] = r["latency_ms"] / speed_base.latency_ms
        if speed_base.latency_ms_299 and r["latency_ms_299"]:
            r["latency_299_vs_torch"] = r["latency_ms_299"] / speed_base.latency_ms_299
        if base.top1 is not None and r["top1"] is not None:
            r["top1_delta_vs_fp32"] = r["top1"] - base.top1
        if row.pred is not None:
            r["predictions"] = f"row_{i}"
            if all(row is not ref for ref in references.values()) and labels is not None \
                    and base.pred is not None:
                paired = Paired.from_predictions(base.pred, row.pred, labels).record()
                r.update({k: paired[k] for k in ("losses", "gains", "top1_delta_ci",
                                                 "agreement_ci", "p_value", "within_noise")})
        result.append(r)
    if labels is not None:
        predictions = {f"row_{i}": r.pred for i, r in enumerate(rows)}
        for cpu_class in cpu_classes(result):   # the best file on each class
            flag_best([r for r in result if r.get("cpu_class", "-") == cpu_class], predictions,
                      labels)
    return result


def cpu_classes(rows: List[dict]) -> List[str]:
    """The CPU classes of ``rows``, in order of first appearance."""
    return list(dict.fromkeys(r.get("cpu_class", "-") for r in rows))


def _indistinguishable(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> bool:
    from ..intervals import Paired
    return Paired.from_predictions(a, b, labels).within_noise()


def choose_best(rows: List[dict], predictions: Dict[str, np.ndarray], labels: np.ndarray):
    """The row :data:`BEST_RULE` picks among ``rows`` (INT8 rows with a top-1 and a latency),
    or None."""
    pool = [r for r in rows if r["precision"] == "int8" and r["top1"] is not None
            and r.get("latency_ms") and predictions.get(r.get("predictions")) is not None]
    if not pool:
        return None
    top = max(pool, key=lambda r: (r["top1"], -r["latency_ms"]))
    same = [r for r in pool if r is top or _indistinguishable(
        predictions[top["predictions"]], predictions[r["predictions"]], labels)]
    return min(same, key=lambda r: (r["latency_ms"], -r["top1"]))


def flag_best(rows: List[dict], predictions: Dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Mark ``best_int8`` (over every engine) and ``best_on_engine`` (per engine)."""
    for r in rows:
        r["best_int8"] = r["best_on_engine"] = False
    best = choose_best(rows, predictions, labels)
    if best is not None:
        best["best_int8"] = True
    for engine in dict.fromkeys(r["engine"] for r in rows):
        best = choose_best([r for r in rows if r["engine"] == engine], predictions, labels)
        if best is not None:
            best["best_on_engine"] = True


def best_line(rows: List[dict]) -> Optional[str]:
    """The report's "Best INT8" sentence, from the flags of :func:`flag_best`."""
    best = next((r for r in rows if r.get("best_int8")), None)
    if best is None:
        return None
    ci = best.get("top1_delta_ci")
    interval = f", 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    noise = "; within noise of FP32" if best.get("within_noise") else ""
    line = (f"Best INT8: {best['engine']} / {_int8_name(best)}: top-1 {best['top1']:.2f}% "
            f"({_fmt(best.get('top1_delta_vs_fp32'))} pt vs PyTorch FP32{interval}{noise}), "
            f"{_latency_cell(best)} ms at batch 1.")
    others = sorted((r for r in rows if r is not best and r["precision"] == "int8"
                     and r.get("latency_ms") and r.get("cpu_class") == best.get("cpu_class")),
                    key=lambda r: r["latency_ms"])
    if others:
        other = others[0]
        verdict = {True: "faster (their p10-p90 spreads separate)",
                   False: "slower (their p10-p90 spreads separate)",
                   None: "level with it within the spread (their p10-p90 spreads overlap)"}
        line += (f" Against the fastest other INT8 row, {other['engine']} / "
                 f"{_int8_name(other)} at {_latency_cell(other)} ms: "
                 f"{verdict[faster(best, other)]}.")
    return line


def faster(a: dict, b: dict) -> Optional[bool]:
    """Whether row ``a`` is faster than row ``b`` at batch 1: True or False only when their
    p10-p90 spreads of timed calls separate, None when they overlap (or one is missing)."""
    if None in (a.get("latency_p10"), a.get("latency_p90"), b.get("latency_p10"),
                b.get("latency_p90")):
        return None
    if a["latency_p90"] < b["latency_p10"]:
        return True
    if b["latency_p90"] < a["latency_p10"]:
        return False
    return None


def _int8_name(row) -> str:
    """``method@target`` for our rows, ``anchor method`` for a third-party quantizer's."""
    if row.get("quantizer", "ours") in ("ours", "-"):
        return f"{row['method']}@{row['target']}"
    return f"{row['quantizer']} ({row['method']})"


def _best_int8(rows, engine):
    """The best INT8 row of ``engine`` by :data:`BEST_RULE` (flagged by :func:`flag_best`),
    or None."""
    return next((r for r in rows if r["engine"] == engine and r.get("best_on_engine")), None)


def _delta_cell(r) -> str:
    """``-0.12 [-0.25, +0.01] within noise`` (points, 95% interval; "within noise" of FP32
    when the interval contains 0)."""
    text = _fmt(r.get("top1_delta_vs_fp32"))
    ci = r.get("top1_delta_ci")
    if ci is None:
        return text
    return f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]" + (" within noise" if r.get("within_noise")
                                                      else "")


def _agreement_cell(r) -> str:
    ci = r.get("agreement_ci")
    text = _fmt(r.get("agreement"))
    return text if ci is None else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"


def comparison_markdown(rows: List[dict]) -> str:
    """One line per network and engine: FP32 top-1, the best INT8 row, its speed ratios."""
    lines = ["# INT8 study: the three networks", "",
             "Each network's baseline is its own PyTorch eager FP32 row; full tables in "
             "`<model>/report.md`.", "",
             "| network | engine | FP32 top-1 % | best INT8 (method@target, or anchor) "
             "| INT8 top-1 % "
             "| Δ pt [95% CI] | latency × torch | @299 × torch | batch-8 img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for engine in dict.fromkeys(r["engine"] for r in mine if r["engine"] != "torch"):
            best = _best_int8(mine, engine)
            if best is None:
                continue
            lines.append("| " + " | ".join([
                model, engine, _fmt(mine[0]["top1"]), _int8_name(best),
                _fmt(best["top1"]), _delta_cell(best),
                _fmt(best.get("latency_vs_torch"), 3), _fmt(best.get("latency_299_vs_torch"), 3),
                _fmt(best.get("throughput_b8"), 1)]) + " |")
    lines += ["", f"Per engine: {BEST_RULE} Intervals: {METHOD_DELTA}."]
    return "\n".join(lines) + "\n"


def _fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


_TABLE_HEAD = ["| engine | precision | quantizer | method | target | top-1 % "
               "| Δ vs FP32 pt [95% CI] | agreement % [95% CI] | latency ms [p10, p90] "
               "| × torch "
               "| latency @299 ms | × torch @299 | batch-8 img/s | batch-8 img/s THROUGHPUT hint "
               "(streams) | file MB | calib s | note |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def _table(rows) -> List[str]:
    lines = list(_TABLE_HEAD)
    for r in rows:
        lines.append("| " + " | ".join([
            r["engine"], r["precision"], r.get("quantizer", "-"), r["method"],
            r.get("target", "-"), _fmt(r["top1"]),
            _delta_cell(r), _agreement_cell(r), _latency_cell(r),
            _ratio_cell(r), _fmt(r["latency_ms_299"], 1),
            _fmt(r.get("latency_299_vs_torch"), 3), _fmt(r.get("throughput_b8"), 1),
            _streams_cell(r), _fmt(r.get("file_mb"), 1), _fmt(r["calib_seconds"], 1),
            (r["note"] + (" excluded: " + ", ".join(r["excluded"]) if r["excluded"] else ""))
            .strip()]) + " |")
    return lines


def _streams_cell(r) -> str:
    """OpenVINO's batch-8 images/s under its THROUGHPUT hint, with the streams it chose."""
    if r.get("throughput_b8_streams") is None:
        return "—"
    return f"{r['throughput_b8_streams']:.1f} ({r['streams_b8']})"


def _ratio_cell(r) -> str:
    """× torch: the paired ratio of the interleaved rounds with its p10/p90 when measured,
    else the ratio of the two medians."""
    if r.get("paired_ratio") is None:
        return _fmt(r.get("latency_vs_torch"), 3)
    return (f"{r['paired_ratio']:.3f} [{r['paired_ratio_p10']:.3f}, "
            f"{r['paired_ratio_p90']:.3f}] paired")


def _latency_cell(r) -> str:
    """``12.30 [11.90, 13.05]``: the median and the p10/p90 of its timed calls."""
    text = _fmt(r["latency_ms"])
    if r.get("latency_p10") is None or r.get("latency_p90") is None:
        return text
    return f"{text} [{r['latency_p10']:.2f}, {r['latency_p90']:.2f}]"


def _class_heading(name: str, info: Optional[dict]) -> str:
    if not info:
        return f"## CPU class: {name}"
    return (f"## CPU class: {name} ({info.get('model')}, {info.get('isa')}, "
            f"{info.get('cores')} cores, OpenVINO {info.get('openvino')})")


def accuracy_scope_line(rows: List[dict]) -> str:
    """Which rows' accuracy is measured on each CPU class, and which is shared by every
    class's table (``BackendInfo.accuracy_per_cpu_class``)."""
    from ..backends import BACKENDS
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    own = [e for e in engines if e in BACKENDS and BACKENDS[e].accuracy_per_cpu_class]
    if not own:
        return "Accuracy: computed once and the same in every class's table."
    return (f"Accuracy per CPU class: the {', '.join(own)} rows' predictions depend on the "
            "CPU's instruction set, so they are computed on each class's own nodes and their "
            "accuracy columns can differ between the tables; every other row's accuracy is "
            "computed once and is the same in every class's table.")


def report_markdown(rows, meta) -> str:
    """report.md: one table (and its best INT8 line) per CPU class the study measured on;
    one class (the local executor) gives one table without a class heading."""
    m = meta["machine"]
    lines = [f"# INT8 study: {meta['model']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {meta['threads']} threads; torch "
             f"{m['torch']}. Test images: {meta['test_images']}; calibration images: "
             f"{meta['calibration_images']}. Latency: batch 1, median of {meta['iters']}.", ""]
    classes = cpu_classes(rows)
    info = {c["name"]: c for c in meta.get("cpu_classes") or []}
    for cpu_class in classes:
        mine = [r for r in rows if r.get("cpu_class", "-") == cpu_class]
        if len(classes) > 1:
            lines += [_class_heading(cpu_class, info.get(cpu_class)), ""]
        lines += _table(mine)
        line = best_line(mine)
        if line:
            lines += ["", line]
        lines += [""]
    if len(classes) > 1:
        lines += [accuracy_scope_line(rows), ""]
    lines += [f"Δ and agreement: paired, against the PyTorch FP32 row on the same "
              f"{meta['test_images']} test images; Δ: {METHOD_DELTA}; agreement: "
              f"{METHOD_PROPORTION}. 'within noise': of FP32 (the Δ interval contains 0). "
              "Per-image predictions: predictions.npz."]
    if best_line(rows):
        lines += ["", f"Rule: {BEST_RULE}"]
    if rows and rows[0].get("random_weights"):
        lines += ["", "**Weights are random: accuracy columns are meaningless.**"]
    return "\n".join(lines) + "\n"
