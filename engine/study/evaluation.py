"""Measuring one row: accuracy on the test set, agreement with the reference, latency,
throughput and file size of one engine on one file, or of the PyTorch reference
(:class:`Bench`; :meth:`Bench.measure` measures one trial of the grid)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..evaluation import predict
from .grid import Trial
from .row import Row
from .timing import latency_ms, latency_spread, paired_latency


def _torch_fn(model):
    import torch

    def fn(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return fn


@dataclass
class Bench:
    """What every row is measured on: the labelled test set, the FP32 reference's top-1, and
    the batch-1 inputs at the model's own size (``x1``) and at 299 (``x299``)."""

    x_test: np.ndarray
    y_test: np.ndarray
    threads: int = 2
    iters: int = 20
    eval_batch: int = 64
    ref_pred: Optional[np.ndarray] = None
    x299: Optional[np.ndarray] = None
    log: Callable[[str], None] = print
    paired_rounds: int = 0          # > 0: time each engine in rounds interleaved with the
                                    # reference (StudyOptions.paired_rounds)
    baseline: Optional[Callable] = None   # the reference's call, for the paired rounds

    @property
    def x1(self) -> np.ndarray:
        return self.x_test[:1]

    @property
    def iters_299(self) -> int:
        return max(5, self.iters // 2)

    def batch8_throughput(self, fn) -> float:
        """img/s of ``fn`` on batches of 8 (median call time)."""
        x8 = self.x_test[:8]
        return len(x8) / latency_ms(fn, x8, max(3, self.iters // 4), warmup=1) * 1000.0

    def batch8_streams(self, rt) -> tuple:
        """(img/s, streams) of the file ``rt`` runs under OpenVINO's THROUGHPUT hint at
        batch 8, as a server with one caller per stream sees it
        (:func:`engine.backends.openvino.hint_throughput`), beside :meth:`batch8_throughput`
        (one caller, the LATENCY hint the study opens files with)."""
        from ..backends.openvino import hint_throughput
        got = hint_throughput(rt.path, batch=8, hints=("throughput",), threads=self.threads,
                              precision=rt.precision)["throughput"]
        return got["images_per_s"], got["streams"]

    def score(self, logits):
        """(top-1 %, agreement % with the reference's top-1, the top-1 per image)."""
        pred = logits.argmax(1)
        return (100.0 * float((pred == self.y_test).mean()),
                100.0 * float((pred == self.ref_pred).mean()), pred)

    def torch_row(self, model) -> Row:
        """The PyTorch eager FP32 baseline; its predictions become the reference."""
        fn = _torch_fn(model)
        logits = predict(fn, self.x_test, self.eval_batch)
        self.ref_pred = logits.argmax(1)
        top1, agreement, pred = self.score(logits)
        row = Row("torch", "fp32", "-", top1, agreement, note="PyTorch eager: the baseline",
                  pred=pred, file_mb=_state_mb(model))
        self.time_torch(fn, row)
        self.log(f"  torch fp32: top1 {row.top1:.2f}%  {row.latency_ms:.2f} ms")
        return row

    def time_torch(self, fn, row: Row) -> None:
        """The reference's speed figures into ``row``."""
        row.latency_ms, row.latency_p10, row.latency_p90 = latency_spread(fn, self.x1,
                                                                          self.iters)
        row.throughput_b8 = self.batch8_throughput(fn)
        t = time.perf_counter()
        predict(fn, self.x_test[:self.eval_batch * 2], self.eval_batch)
        row.throughput = min(len(self.x_test), self.eval_batch * 2) / (time.perf_counter() - t)

    def time_runtime(self, rt, row: Row) -> None:
        """An opened engine's speed figures at the model's own size into ``row``; with
        ``paired_rounds``, its batch-1 latency in rounds interleaved with the reference's,
        and the ratio of each round's medians (:func:`paired_latency`)."""
        if self.paired_rounds and self.baseline is not None:
            (row.latency_ms, row.latency_p10, row.latency_p90), ratios = paired_latency(
                rt, self.baseline, self.x1, self.iters, self.paired_rounds)
            row.paired_ratio = float(np.median(ratios))
            row.paired_ratio_p10 = float(np.percentile(ratios, 10))
            row.paired_ratio_p90 = float(np.percentile(ratios, 90))
        else:
            row.latency_ms, row.latency_p10, row.latency_p90 = latency_spread(rt, self.x1,
                                                                              self.iters)
        row.throughput_b8 = self.batch8_throughput(rt)
        if rt.backend == "openvino":
            row.throughput_b8_streams, row.streams_b8 = self.batch8_streams(rt)
        x = self.x_test[:self.eval_batch]       # fewer than eval_batch on a small test set
        t0 = time.perf_counter()
        rt(x)
        row.throughput = len(x) / (time.perf_counter() - t0)

    def time_big(self, trial: Trial, row: Row) -> None:
        """The trial's latency at 299 into ``row`` (its 299 file, when it has one)."""
        if trial.big_path is not None and self.x299 is not None:
            with self.open(trial.big_path, trial.backend, trial.opened_precision) as rt:
                row.latency_ms_299 = latency_ms(rt, self.x299, self.iters_299)

    def delta_text(self, pred) -> str:
        """`` (Δ -0.12 pt, 95% CI [-0.25, 0.01])`` against the reference, for the log."""
        if pred is None or self.ref_pred is None:
            return ""
        from ..intervals import Paired
        paired = Paired.from_predictions(self.ref_pred, pred, self.y_test)
        lo, hi = paired.delta_interval()
        return f" (Δ {paired.delta_pt:+.2f} pt, 95% CI [{lo:+.2f}, {hi:+.2f}])"

    def open(self, path, backend, precision):
        """``engine.load`` without its target-mismatch advice (the study runs every target's
        file on every engine on purpose, and each row's ``target`` says which layout it is),
        nor its unknown-config notice (an anchor's file carries no config of ours; the study
        knows its model)."""
        from ..loader import ConfigUnknownWarning, TargetMismatchWarning, load
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TargetMismatchWarning)
            warnings.simplefilter("ignore", ConfigUnknownWarning)
            return load(path, backend=backend, precision=precision, threads=self.threads)

    def engine_row(self, backend, precision, method, path, big_path=None, calib_s=None,
                   excluded=(), as_file: bool = False, target: str = "-",
                   quantizer: str = "-") -> Row:
        """One engine on one file: accuracy, latency, throughput (and latency at 299).

        as_file: open the file at its own precision (an anchor's OpenVINO IR carries no
        precision record: OpenVINO runs its FakeQuantize layers in INT8 by itself)."""
        row = Row(backend, precision, method, calib_seconds=calib_s, excluded=list(excluded),
                  file_mb=_file_mb(path), target=target, quantizer=quantizer)
        opened = None if as_file else precision
        try:
            with self.open(path, backend, opened) as rt:
                row.top1, row.agreement, row.pred = self.score(
                    predict(rt, self.x_test, self.eval_batch))
                self.time_runtime(rt, row)
            if big_path is not None:
                with self.open(big_path, backend, opened) as rt:
                    row.latency_ms_299 = latency_ms(rt, self.x299, self.iters_299)
        except Exception as e:  # one engine failing must not sink the study: record why
            row.note = failure_note(e)
        name = method if precision != "int8" else (
            f"{method}@{target}" if quantizer == "ours" else f"{quantizer} ({method})")
        big = "" if row.latency_ms_299 is None else f"  @299 {row.latency_ms_299:.1f} ms"
        self.log(f"  {backend} {precision} {name}: top1 {_rounded(row.top1, 2)}"
                 f"{self.delta_text(row.pred)}  {_rounded(row.latency_ms, 2)} ms{big} "
                 f"{row.note}".rstrip())
        return row


    def measure(self, trial: Trial, reference=None, big_reference=None) -> Row:
        """The row of one trial: the reference (``reference``, the PyTorch model; at 299,
        ``big_reference``) or one engine on one file."""
        self._pair_with(reference)
        if trial.is_reference:
            row = self.torch_row(reference)
            if big_reference is not None and self.x299 is not None:
                row.latency_ms_299 = latency_ms(_torch_fn(big_reference), self.x299,
                                                self.iters_299)
                self.log(f"  torch fp32 @299: {row.latency_ms_299:.1f} ms")
            return row
        row = self.engine_row(trial.backend, trial.precision, trial.method, trial.path,
                              trial.big_path, trial.calib_seconds, trial.excluded,
                              as_file=trial.as_file, target=trial.target,
                              quantizer=trial.quantizer)
        row.note = row.note or trial.note
        return row

    # the parts of a trial an executor may run apart (engine.study.ray_executor)
    def predictions(self, trial: Trial, lo: int, hi: int, reference=None) -> np.ndarray:
        """Top-1 of test images ``lo:hi``, in the same batches :meth:`measure` runs, so the
        shards of a trial put together are its predictions image by image."""
        x = self.x_test[lo:hi]
        if trial.is_reference:
            return predict(_torch_fn(reference), x, self.eval_batch).argmax(1)
        with self.open(trial.path, trial.backend, trial.opened_precision) as rt:
            return predict(rt, x, self.eval_batch).argmax(1)

    def timing(self, trial: Trial, reference=None, big_reference=None) -> Row:
        """A row with only the trial's speed figures (the accuracy comes from its shards)."""
        row = Row(trial.backend, trial.precision, trial.method)
        self._pair_with(reference)
        if trial.is_reference:
            self.time_torch(_torch_fn(reference), row)
            if big_reference is not None and self.x299 is not None:
                row.latency_ms_299 = latency_ms(_torch_fn(big_reference), self.x299,
                                                self.iters_299)
            return row
        with self.open(trial.path, trial.backend, trial.opened_precision) as rt:
            self.time_runtime(rt, row)
        self.time_big(trial, row)
        return row

    def row_of(self, trial: Trial, pred: Optional[np.ndarray], timed: Optional[Row],
               reference=None, note: str = "") -> Row:
        """The row of ``trial`` put together from its predictions and its timing."""
        file_mb = _state_mb(reference) if trial.is_reference else _file_mb(trial.path)
        row = Row(trial.backend, trial.precision, trial.method,
                  calib_seconds=trial.calib_seconds, excluded=list(trial.excluded),
                  file_mb=file_mb, target=trial.target, quantizer=trial.quantizer,
                  note=note or trial.note or ("PyTorch eager: the baseline"
                                              if trial.is_reference else ""))
        if pred is not None:
            row.pred = np.asarray(pred)
            row.top1 = 100.0 * float((row.pred == self.y_test).mean())
            if self.ref_pred is not None:
                row.agreement = 100.0 * float((row.pred == self.ref_pred).mean())
        if timed is not None:
            for name in ("latency_ms", "latency_p10", "latency_p90", "latency_ms_299",
                         "throughput", "throughput_b8", "throughput_b8_streams",
                         "streams_b8", "paired_ratio", "paired_ratio_p10",
                         "paired_ratio_p90"):
                setattr(row, name, getattr(timed, name))
        return row

    def _pair_with(self, reference) -> None:
        if self.paired_rounds and reference is not None and self.baseline is None:
            self.baseline = _torch_fn(reference)

    def options(self) -> dict:
        """What a trial's measurement depends on besides its files and the test set (part
        of its key)."""
        return {"threads": self.threads, "iters": self.iters, "eval_batch": self.eval_batch,
                "x299": None if self.x299 is None else list(self.x299.shape),
                **({"paired_rounds": self.paired_rounds} if self.paired_rounds else {})}


def _file_mb(path) -> float:
    """Size of a model file in MB, with an OpenVINO IR's weights (.bin) counted."""
    path = Path(path)
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path.stat().st_size + (weights.stat().st_size if weights and weights.is_file()
                                   else 0)) / 1e6


def _state_mb(model) -> float:
    """Size of a PyTorch model's weights and buffers in MB."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


FAILED = "failed: "          # how the note of a row that failed begins


def failure_note(e: BaseException) -> str:
    """What a row that failed says: the exception's type and first line."""
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{FAILED}{type(e).__name__}: {text}"


def _rounded(value, digits):
    return value if value is None else round(value, digits)
