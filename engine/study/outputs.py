"""The files a study writes: results.json/.csv, meta.json, report.md, pareto.png,
predictions.npz, and comparison.* for ``--model all``."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from .row import Row
from .plots import comparison_plot, pareto_plot
from .report import comparison_markdown, report_markdown


def write_outputs(out: Path, result: List[dict], meta: dict,
                  log: Callable[[str], None] = print, predictions=None) -> None:
    """results.json, meta.json, results.csv, report.md, pareto.png and (with
    ``predictions``, a ``{name: array}`` dict) predictions.npz in ``out``."""
    from ..fileio import atomic_path, atomic_write_text
    if predictions:
        with atomic_path(out / "predictions.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, **predictions)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    write_csv(out / "results.csv", result)
    atomic_write_text(out / "report.md", report_markdown(result, meta))
    try:
        pareto_plot(result, out / "pareto.png")
    except ImportError:
        log("  (matplotlib not installed: no pareto.png; pip install matplotlib)")
    log(f"wrote {out}/results.json, results.csv, report.md, pareto.png"
        + (", predictions.npz" if predictions else ""))


def prediction_arrays(rows: List[Row], labels: np.ndarray) -> Dict[str, np.ndarray]:
    """What predictions.npz holds: ``labels`` and each row's top-1 per test image as
    ``row_<i>`` (i: the row's index in results.json), int16."""
    arrays = {"labels": np.asarray(labels, np.int16)}
    arrays.update({f"row_{i}": np.asarray(r.pred, np.int16) for i, r in enumerate(rows)
                   if r.pred is not None})
    return arrays


def write_comparison(out: Path, rows: List[dict], log: Callable[[str], None] = print) -> None:
    """``comparison.md``, ``comparison.json`` and ``comparison.png`` for ``--model all``."""
    from ..fileio import atomic_write_text
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", comparison_markdown(rows))
    try:
        comparison_plot(rows, out / "comparison.png")
    except ImportError:
        log("  (matplotlib not installed: no comparison.png; pip install matplotlib)")
    log(f"wrote {out}/comparison.md, comparison.json, comparison.png")


COLUMNS = ["cpu_class", "engine", "precision", "quantizer", "method", "target", "top1",
           "top1_delta_vs_fp32",
           "agreement",
           "latency_ms", "latency_vs_torch", "latency_ms_299", "latency_299_vs_torch",
           "throughput", "throughput_b8", "throughput_b8_streams", "streams_b8", "file_mb", "calib_seconds", "excluded", "note"]


def write_csv(path, rows):
    import io
    from ..fileio import atomic_write_text
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["model", "random_weights"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "excluded": " ".join(r.get("excluded") or [])})
    atomic_write_text(path, buf.getvalue())
