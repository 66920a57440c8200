"""One GPU run that collects every figure: correctness, end to end, kernels, the static
kernel report, each section under its own time budget, at most 8 files under ``--out``.

    python -m benchmarks.gpu_run --out DIR              # on the GPU machine (benchmarks/gpu_check.sh)
    python -m benchmarks.gpu_run --out DIR --dry-run    # on a CPU: tiny shapes, the interpreter

Run it as a module from the repository root (as ``gpu_check.sh`` does), so that the
``benchmarks`` folder and the project's packages import by their own names.

Sections, in order of value (``SECTIONS``: name, GPU budget, dry-run budget, in seconds):

1. ``correctness``: the kernels against their PyTorch references at FP16 and INT8 on the
   IR-v2 conv shapes with the largest FLOP share, and the engine against the PyTorch model at
   FP16 and INT8 on the trained subject (bundled weights, Fashion-MNIST images) and on IR-v2.
2. ``e2e``: IR-v2 at 299, batch 1, 32 and 256. Baselines: PyTorch eager FP16 channels_last
   with ``cudnn.benchmark``, and torch.compile (max-autotune under a compile-time cap, else
   the default mode; each compile in its own process so a cap can cut it). Ours: the triton
   engine FP16 and INT8. img/s, p50/p99, ratios, the fraction of the compute roofline
   (:data:`benchmarks.kernel_bench.PEAKS`, by GPU name).
3. ``kernels``: every distinct IR-v2 conv shape in order of FLOP share, batch 128 then 1,
   against cuDNN conv+bias+ReLU and the unfused sequence (:mod:`benchmarks.kernel_bench`).
4. ``aot``: ``python -m kernels.aot --arch <cc> --report`` for the GPU present.

How the budget works: each section runs in a child process with a deadline. The child
writes every result the moment it has it (CSV rows, flushed, and its section JSON) and
stops starting new work after the deadline, but always does the first item of each loop, so
every code path runs (it then records ``cut``); at the deadline plus a grace the parent kills
it and records ``killed``. After every section the parent rewrites the three outputs:
``summary.json``, ``summary.md`` and ``gpu-run.tar.gz`` (every CSV, section JSON and log).

The dry run exercises the same code on a CPU: kernels under the Triton interpreter on tiny
shapes, the engine on a reduced IR-v2 at 75x75 with the kernels' PyTorch references,
torch.compile with the ``eager`` backend (and a zero cap, so the fallback runs), and the
kernels section with no budget, so it is cut after the first shape of each batch.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from engine.fileio import atomic_path, atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SUBJECT = "inception_resnet_v2_fmnist"
IRV2 = "inception_resnet_v2"
# name, GPU budget (s), dry-run budget (s); the GPU budgets sum to 8.5 minutes
SECTIONS = (("correctness", 110, 60), ("e2e", 240, 60), ("kernels", 120, 0), ("aot", 40, 5))
GRACE_S = {"gpu": 20, "dry": 60}     # past the deadline before the parent kills a child
MAX_FILES = 8
OUTPUTS = ("summary.json", "summary.md", "gpu-run.tar.gz")


# ---------------------------------------------------------------------------- child side
class Recorder:
    """What a section writes, as it goes: rows into CSV tables and facts into its JSON."""

    def __init__(self, work: Path, section: str, deadline: float, dry: bool):
        self.work, self.section, self.deadline, self.dry = work, section, deadline, dry
        self.facts: Dict = {"section": section, "status": "running", "rows": {}}
        self._save()

    def over(self) -> bool:
        return time.time() > self.deadline

    def cut(self, what: str):
        """Stop starting work: the budget is spent (``what`` says where it stopped)."""
        self.facts["status"] = "cut"
        self.facts["cut"] = what
        self._save()
        print(f"[{self.section}] budget spent: {what}", flush=True)

    def row(self, table: str, row: dict):
        path = self.work / f"{table}.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
        self.facts["rows"][table] = self.facts["rows"].get(table, 0) + 1
        self._save()

    def note(self, key: str, value):
        self.facts[key] = value
        self._save()

    def done(self):
        if self.facts["status"] == "running":
            self.facts["status"] = "ok"
        self._save()

    def _save(self):
        atomic_write_text(self.work / f"{self.section}.json", json.dumps(self.facts, indent=1,
                                                                         default=str))


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"


def _lively(model, size: int):
    """BN statistics from one random batch, so random-weight activations stay finite in FP16."""
    import torch
    from engine.weights import set_bn_statistics
    g = torch.Generator().manual_seed(0)
    return set_bn_statistics(model, torch.randn(4, 3, size, size, generator=g))


def models_for(dry: bool) -> Dict[str, dict]:
    """The networks of the run: the trained subject and IR-v2 (reduced on a CPU)."""
    if dry:   # the subject's architecture with random weights: the bundled ones are full width
        return {SUBJECT: dict(name=SUBJECT, width=0.125, size=75, weights=None),
                IRV2: dict(name=IRV2, width=0.125, size=75, weights=None)}
    return {SUBJECT: dict(name=SUBJECT, width=1.0, size=75, weights="bundled"),
            IRV2: dict(name=IRV2, width=1.0, size=299, weights=None)}


def model_files(spec: dict, work: Path, dry: bool = False):
    """``(model, fp32 ONNX, int8 ONNX)``, made once per run and shared by the sections."""
    import torch
    import engine
    torch.manual_seed(0)
    model = engine.create_model(spec["name"], width=spec["width"], weights=spec["weights"])
    if spec["weights"] is None:
        model = _lively(model, spec["size"])
    stem = work / "models" / f"{spec['name']}-w{spec['width']:g}-{spec['size']}"
    stem.parent.mkdir(exist_ok=True)
    fp32, int8 = stem.with_suffix(".onnx"), stem.with_suffix(".int8.onnx")
    if not fp32.exists():
        engine.export_onnx(model, fp32, input_size=(3, spec["size"], spec["size"]))
    if not int8.exists():
        import calibration
        calibration.quantize(fp32, int8, data=calibration_images(spec, 4 if dry else 16),
                             method="minmax", batch_size=4 if dry else 8)
    return model, fp32, int8


def calibration_images(spec: dict, n: int, split: str = "calib"):
    """Fashion-MNIST for the trained subject, seeded normal images for random weights."""
    import numpy as np
    import engine
    if spec["weights"] == "bundled":
        from engine.datasets import fashion_mnist, to_model_input
        imgs, _ = fashion_mnist(split, limit=n)
        return to_model_input(imgs, engine.get_config(spec["name"])).numpy()
    size = spec["size"]
    return np.random.default_rng(1).standard_normal((n, 3, size, size)).astype(np.float32)


def triton_runtime(path, precision: str, dry: bool):
    """The triton engine; on a CPU with the kernels' PyTorch references (the interpreter
    would take minutes per network), so the dry run checks the code, not the kernels."""
    import warnings
    from engine.backends.triton.runtime import TritonRuntime
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TritonRuntime(path, precision=precision, impl="torch" if dry else "triton")


# ---------------------------------------------------------------------------- sections
def section_correctness(rec: Recorder):
    from benchmarks import kernel_bench as kb
    dev = _device()
    cases = kb.cases_by_flop_share(IRV2)[:2 if rec.dry else 6]
    for k, (s, count, share) in enumerate(cases):
        if k and rec.over():
            rec.cut(f"kernel checks after {k} of {len(cases)} shapes")
            break
        shape = kb.tiny_shape(s) if rec.dry else s
        for row in kb.check_case(shape, 2, dev):
            rec.row("correctness_kernels", {"layer": s.label, "flop_share": round(share, 4), **row})
    for key, spec in models_for(rec.dry).items():
        if rec.over() and key != SUBJECT:
            rec.cut(f"engine checks: {key} not started")
            break
        engine_parity(rec, spec)


def engine_parity(rec: Recorder, spec: dict):
    """The engine at FP16 and INT8 against the PyTorch model (FP32 eager)."""
    import engine
    model, fp32, int8 = model_files(spec, rec.work, rec.dry)
    x = calibration_images(spec, 2 if rec.dry else 32, "test" if spec["weights"] else "calib")
    trained = spec["weights"] == "bundled"
    for precision, path in (("fp16", fp32), ("int8", int8)):
        t0 = time.time()
        rt = triton_runtime(path, precision, rec.dry)
        tol = None if trained else {"top1": None, "top5": None}
        rep = engine.verify(rt, model, x, tolerance=tol, localize=False)
        rec.row("correctness_engine", {
            "model": spec["name"], "size": spec["size"], "precision": precision,
            "impl": rt.impl, "passed": rep.passed, "cosine_min": rep.cosine_min,
            "range_rel_err": rep.range_rel_err, "top1_agreement": rep.top1_agreement,
            "seconds": round(time.time() - t0, 1)})
        rt.close()


def section_e2e(rec: Recorder):
    import torch
    from engine.models.shapes import network_shapes
    from engine.timing import summarize, time_calls
    spec = models_for(rec.dry)[IRV2]
    batches = (1, 2) if rec.dry else (1, 256, 32)          # the two targets' batches first
    model, fp32, int8 = model_files(spec, rec.work, rec.dry)
    # before this process touches the GPU (the children fork); the large batch first
    compiled = compile_baselines(rec, spec, sorted(batches, reverse=True))
    torch.backends.cudnn.benchmark = True
    dev = _device()
    shapes = network_shapes(spec["name"], spec["size"], spec["width"])
    flops = sum(s.flops(1) * len(names) for s, names in shapes.convs.items())
    rec.note("gflop_per_image", round(flops / 1e9, 3))
    peaks = peak_tflops(_gpu_name())
    rec.note("peak_tflops", peaks)
    runners = e2e_runners(rec, model, fp32, int8, spec, dev, compiled)
    iters, warmup = (1, 0) if rec.dry else (20, 3)
    for k, b in enumerate(batches):
        if k and rec.over():
            rec.cut(f"batches {batches[k:]} not timed")
            break
        x = torch.randn(b, 3, spec["size"], spec["size"], device=dev)
        rows = []
        for label, (precision, make) in runners.items():
            fn = make(b, x)
            if isinstance(fn, dict):          # measured in its own process
                s = fn
            else:
                samples = time_calls(fn, iters=iters, warmup=warmup,
                                     duration=0 if rec.dry else 1.0)
                s = summarize(samples, b)
                s = {"p50_ms": round(s["p50_ms"], 3), "p99_ms": round(s["p99_ms"], 3),
                     "img_s": round(s["throughput_ips"], 1), "mode": ""}
            if s.get("img_s") is None:
                rec.row("e2e_errors", {"batch": b, "runner": label, **s})
                continue
            rows.append({"batch": b, "runner": label, "precision": precision,
                         "mode": s.get("mode", ""), "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                         "img_s": s["img_s"],
                         "roofline": round(s["img_s"] * flops / 1e12 / peaks[precision], 4)
                         if peaks else None})
        for r in with_ratios(rows):
            rec.row("e2e", r)
    rec.note("targets", e2e_targets(rec.work / "e2e.csv"))


def peak_tflops(gpu: str) -> Optional[dict]:
    """Dense FP16 and INT8 peak (TFLOP/s, TOP/s) of the GPU, from the data-sheet table."""
    from benchmarks.kernel_bench import PEAKS
    for frag, (fp16, int8) in PEAKS.items():
        if frag in gpu:
            return {"fp16": fp16, "int8": int8, "fp32": fp16 / 2}
    return None


def e2e_runners(rec: Recorder, model, fp32: Path, int8: Path, spec: dict, dev,
                compiled: Dict[int, dict]) -> Dict:
    """label -> (precision, make(batch, x) -> a zero-argument call, or the row measured in
    another process)."""
    import torch
    eager_dtype = torch.float16 if dev.type == "cuda" else torch.float32
    eager = model.to(dev, eager_dtype).to(memory_format=torch.channels_last).eval()

    def make_eager(b, x):
        xh = x.to(eager_dtype).contiguous(memory_format=torch.channels_last)

        def call():
            with torch.no_grad():
                return eager(xh)
        return call

    def make_compile(b, x):
        return compiled[b]

    engines = {}

    def make_ours(precision, path):
        def make(b, x):
            if precision not in engines:
                engines[precision] = triton_runtime(path, precision, rec.dry)
            rt = engines[precision]
            return lambda: rt(x)
        return make
    baseline = "fp16" if dev.type == "cuda" else "fp32"
    return {"eager": (baseline, make_eager), "compile": (baseline, make_compile),
            "ours_fp16": ("fp16", make_ours("fp16", fp32)),
            "ours_int8": ("int8", make_ours("int8", int8))}


def compile_baselines(rec: Recorder, spec: dict, batches) -> Dict[int, dict]:
    """torch.compile of the eager baseline, per batch: max-autotune in a child process under
    a compile-time cap, then the default mode (its own child and cap) for the batches the
    first did not reach. Runs before this process touches the GPU (the children fork)."""
    cap = 0.0 if rec.dry else max(10.0, min(200.0, rec.deadline - time.time() - 90))
    done: Dict[int, dict] = {}
    notes = []
    for mode, limit in (("max-autotune", cap), ("default", 60.0 if rec.dry else 90.0)):
        todo = [b for b in batches if b not in done]
        if not todo:
            break
        lines = rec.work / f"compile-{mode}.jsonl"
        rc = in_child(compile_child, (mode, todo, rec.work, rec.dry, lines),
                      rec.work / f"compile-{mode}.log", limit)
        got = [json.loads(l) for l in lines.read_text().splitlines()] if lines.exists() else []
        for r in got:
            done[r["batch"]] = {**r, "mode": mode + (f" (after: {'; '.join(notes)})" if notes else "")
                                + (", stem only" if rec.dry else "")}
        if len(got) < len(todo):
            notes.append(f"{mode} over its {limit:.0f} s compile cap" if rc is None
                         else f"{mode} failed (exit {rc}, see compile-{mode}.log)")
    for b in batches:
        done.setdefault(b, {"batch": b, "mode": "none", "error": "; ".join(notes)})
    return done


def compile_child(mode: str, batches, work: Path, dry: bool, lines: Path):
    """In its own process: compile the eager FP16 model per batch, time it, append a JSON line."""
    import torch
    from engine.timing import summarize, time_calls
    spec = models_for(dry)[IRV2]
    torch.backends.cudnn.benchmark = True
    model = model_files(spec, work, dry)[0]
    dev = _device()
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    model = model.to(dev, dt).to(memory_format=torch.channels_last).eval()
    kw = {"backend": "eager"} if dry else ({"mode": mode} if mode != "default" else {})
    # the dry run compiles the stem only: dynamo takes minutes to trace the network on a CPU
    compiled = torch.compile(model.conv2d_1a if dry else model, **kw)
    for batch in batches:
        x = torch.randn(batch, 3, spec["size"], spec["size"], device=dev, dtype=dt)
        x = x.contiguous(memory_format=torch.channels_last)
        t0 = time.time()
        with torch.no_grad():
            compiled(x)
            compile_s = time.time() - t0
            s = summarize(time_calls(lambda: compiled(x), iters=1 if dry else 20, warmup=0), batch)
        with open(lines, "a") as f:
            f.write(json.dumps({"batch": batch, "compile_s": round(compile_s, 1),
                                "p50_ms": round(s["p50_ms"], 3), "p99_ms": round(s["p99_ms"], 3),
                                "img_s": round(s["throughput_ips"], 1)}) + "\n")


def with_ratios(rows: List[dict]) -> List[dict]:
    """Each row of one batch with its throughput beside the eager baseline's, as ratios."""
    base = next((r for r in rows if r["runner"] == "eager"), None)
    fp16 = next((r for r in rows if r["runner"] == "ours_fp16"), None)
    for r in rows:
        r["x_eager"] = round(r["img_s"] / base["img_s"], 3) if base else None
        r["latency_vs_eager"] = round(r["p50_ms"] / base["p50_ms"], 3) if base else None
        r["x_ours_fp16"] = round(r["img_s"] / fp16["img_s"], 3) if fp16 else None
    return rows


def e2e_targets(csv_path: Path) -> dict:
    """The engine's targets from the measured rows (each beside its baseline of this run)."""
    from benchmarks.triton_engine import TARGETS
    rows = _read_csv(csv_path)

    def get(runner, batch, key):
        return next((float(r[key]) for r in rows if r["runner"] == runner
                     and int(r["batch"]) == batch and r.get(key) not in (None, "")), None)
    batches = sorted({int(r["batch"]) for r in rows})
    if not batches:
        return {}
    small, large = batches[0], batches[-1]
    out = {"targets": TARGETS, "batch_small": small, "batch_large": large}
    b1, e1 = get("ours_fp16", small, "p50_ms"), get("eager", small, "p50_ms")
    if b1 and e1:
        out["latency_vs_eager"] = round(b1 / e1, 3)
    ours, compiled = get("ours_fp16", large, "img_s"), get("compile", large, "img_s")
    if ours and compiled:
        out["throughput_vs_compile"] = round(ours / compiled, 3)
    q = get("ours_int8", large, "img_s")
    if q and ours:
        out["int8_vs_fp16"] = round(q / ours, 3)
    out["passed"] = {k: (out[k] <= v if k == "latency_vs_eager" else out[k] >= v)
                     for k, v in TARGETS.items() if k in out}
    return out


def _read_csv(path: Path) -> List[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def section_kernels(rec: Recorder):
    import torch
    from benchmarks import kernel_bench as kb
    torch.backends.cudnn.benchmark = True
    dev = _device()
    cases = kb.cases_by_flop_share(IRV2)
    rec.note("shapes", len(cases))
    for batch in ((2, 1) if rec.dry else (128, 1)):
        for k, (s, count, share) in enumerate(cases):
            if k and rec.over():
                rec.cut(f"batch {batch}: {k} of {len(cases)} shapes "
                        f"({sum(c[2] for c in cases[:k]):.0%} of the FLOPs)")
                break
            shape = kb.tiny_shape(s) if rec.dry else s
            for row in kb.bench_case(shape, batch, dev, rep_ms=5 if rec.dry else 25, quick=rec.dry):
                rec.row("kernels", {"layer": s.label, "count": count,
                                    "flop_share": round(share, 4), **row})
    rec.note("summary", kb.summary(_read_csv(rec.work / "kernels.csv"),
                                   batch=2 if rec.dry else 128))


def section_aot(rec: Recorder):
    """The static kernel report for this GPU (sm_90 on a CPU); a failure is recorded."""
    report = rec.work / "aot_report.json"
    argv = ["--report", str(report)] + (["--dtypes", "fp16", "--batches", "1"] if rec.dry else [])
    rec.note("command", "-m kernels.aot --arch <this GPU's, 90 on a CPU> " + " ".join(argv))
    limit = max(1.0, rec.deadline - time.time())
    rc = in_child(_aot_main, (argv,), rec.work / "aot.log", limit)
    rec.note("returncode", rc)
    if rc is None:
        rec.cut(f"kernels.aot still compiling after {limit:.0f} s")
    elif rc != 0:
        log = (rec.work / "aot.log").read_text().strip().splitlines()
        rec.note("error", log[-1] if log else f"exit {rc}")
        rec.facts["status"] = "failed"
    rec.note("report_written", report.exists())


def _aot_main(argv):
    """``python -m kernels.aot --arch <cc> ...`` in this (forked) process."""
    import torch
    arch = 90
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = major * 10 + minor
    print("kernels.aot --arch", arch, *argv, flush=True)
    from kernels import aot
    code = aot.main(["--arch", str(arch)] + argv)
    if code:
        raise SystemExit(code)


SECTION_FUNCS: Dict[str, Callable[[Recorder], None]] = {
    "correctness": section_correctness, "e2e": section_e2e, "kernels": section_kernels,
    "aot": section_aot}


def child(section: str, work: Path, deadline: float, dry: bool) -> int:
    if dry:   # on a shared CPU one thread per process is faster than torch's spinning pool
        import torch
        torch.set_num_threads(1)
    rec = Recorder(work, section, deadline, dry)
    try:
        SECTION_FUNCS[section](rec)
    except Exception as e:   # recorded, so the summary says what broke; the parent carries on
        import traceback
        traceback.print_exc()
        rec.note("error", f"{type(e).__name__}: {e}")
        rec.facts["status"] = "failed"
    rec.note("gpu", _gpu_name())      # last: CUDA must not start before a section forks
    rec.done()
    if rec.facts["status"] == "failed":
        raise SystemExit(1)


def in_child(target: Callable, args: tuple, log: Path, timeout: float,
             group: bool = False) -> Optional[int]:
    """Run ``target(*args)`` in a forked process with its output in ``log``: the exit code,
    or ``None`` when it ran past ``timeout`` seconds and was killed (with ``group``, with
    every process it started). Forking keeps what this process imported (torch takes
    seconds to import); this process must not have started CUDA."""
    import multiprocessing
    import signal
    proc = multiprocessing.get_context("fork").Process(target=_logged, args=(target, args, log, group))
    proc.start()
    proc.join(max(timeout, 0.0))
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        except ProcessLookupError:
            pass
        proc.join()
        return None
    return proc.exitcode


def _logged(target: Callable, args: tuple, log: Path, group: bool):
    if group:
        os.setpgrp()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    target(*args)
    sys.stdout.flush()
    sys.stderr.flush()


# ---------------------------------------------------------------------------- parent side
def run_sections(out: Path, work: Path, budgets: Dict[str, float], dry: bool,
                 only: Optional[List[str]] = None) -> dict:
    env_facts = environment(dry)
    summary = {"dry_run": dry, "environment": env_facts, "sections": {}, "started": _now()}
    t_start = time.time()
    for name, _, _ in SECTIONS:
        if only and name not in only:
            continue
        budget = budgets[name]
        t0 = time.time()
        grace = GRACE_S["dry" if dry else "gpu"]
        print(f"== {name}: budget {budget:.0f} s", flush=True)
        rc = in_child(child, (name, work, t0 + budget, dry), work / f"{name}.log", budget + grace,
                      group=True)
        killed = rc is None
        facts = _read_json(work / f"{name}.json") or {"section": name, "status": "not started"}
        if killed:
            facts["status"] = "killed"
            facts["cut"] = f"killed {grace} s past its {budget:.0f} s budget"
        facts.update(budget_s=budget, seconds=round(time.time() - t0, 1), returncode=rc)
        summary["sections"][name] = facts
        env_facts.setdefault("gpu", facts.get("gpu"))
        summary["seconds"] = round(time.time() - t_start, 1)
        print(f"   {facts['status']} in {facts['seconds']} s" +
              (f" ({facts['cut']})" if facts.get("cut") else "") +
              (f": {facts['error']}" if facts.get("error") else ""), flush=True)
        write_outputs(out, work, summary)
    return summary


def _preload():
    """Import what the sections use once, here: every forked child then starts warm."""
    import importlib
    for name in ("calibration", "engine.export", "engine.models.registry", "kernels.conv",
                 "kernels.pool", "onnxruntime", "benchmarks.kernel_bench"):
        importlib.import_module(name)


def environment(dry: bool) -> dict:
    import platform
    import torch
    import triton
    from engine.timing import cpu_model
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "commit": commit,
            "cuda": torch.version.cuda, "interpreter": dry}


def write_outputs(out: Path, work: Path, summary: dict):
    """The three files of the run, each written whole (temporary name, then renamed)."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "summary.md", markdown(summary, work))
    with atomic_path(out / "gpu-run.tar.gz", suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(work.iterdir()):
                if f.is_file() and f.suffix in (".csv", ".json", ".log"):
                    tar.add(f, arcname=f"gpu-run/{f.name}")


def markdown(summary: dict, work: Path) -> str:
    env = summary["environment"]
    lines = [f"# GPU run{' (dry run on a CPU: no figure here is a GPU measurement)' if summary['dry_run'] else ''}",
             "", f"{env['gpu']}, torch {env['torch']}, Triton {env['triton']}, commit "
             f"{env['commit'][:12]}, started {summary['started']}, {summary.get('seconds', 0)} s", "",
             "| section | status | seconds | budget | rows | note |", "|---|---|---|---|---|---|"]
    for name, f in summary["sections"].items():
        rows = ", ".join(f"{k} {v}" for k, v in f.get("rows", {}).items())
        note = f.get("cut") or f.get("error") or ""
        lines.append(f"| {name} | {f['status']} | {f['seconds']} | {f['budget_s']:.0f} | {rows} | {note} |")
    for table in ("correctness_engine", "e2e", "e2e_errors"):
        rows = _read_csv(work / f"{table}.csv")
        if rows:
            lines += ["", f"## {table}", "", "| " + " | ".join(rows[0]) + " |",
                      "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    targets = summary["sections"].get("e2e", {}).get("targets")
    if targets:
        lines += ["", "## targets", "", "```", json.dumps(targets, indent=1), "```"]
    ksum = summary["sections"].get("kernels", {}).get("summary")
    if ksum:
        lines += ["", "## kernels (geometric means over the shapes measured)", "", "```",
                  json.dumps(ksum, indent=1), "```"]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def parse_budgets(items: List[str], dry: bool) -> Dict[str, float]:
    budgets = {name: float(dry_s if dry else gpu_s) for name, gpu_s, dry_s in SECTIONS}
    for item in items:
        name, _, value = item.partition("=")
        if name not in budgets:
            raise SystemExit(f"--budget {item!r}: the sections are {', '.join(budgets)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise SystemExit(f"--budget {item!r}: give seconds, e.g. {name}=60") from None
    return budgets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="folder for the 3 output files")
    ap.add_argument("--dry-run", action="store_true", help="CPU: interpreter, tiny shapes")
    ap.add_argument("--budget", nargs="*", default=[], metavar="SECTION=S",
                    help="override a section's budget in seconds")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("--out DIR is required")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("GPU_RUN_WORK") or (args.out.resolve().parent /
                                                   f".{args.out.name}-work"))
    work.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():                # the last run's results (its models are kept)
        if f.is_file() and (f.suffix in (".csv", ".jsonl") or f.stem.split("-")[0] in
                            [n for n, _, _ in SECTIONS] + ["compile", "aot_report"]):
            f.unlink()
    _preload()
    summary = run_sections(args.out, work, parse_budgets(args.budget, args.dry_run),
                           args.dry_run, args.only)
    failed = [n for n, f in summary["sections"].items() if f["status"] == "failed"]
    return 1 if failed and args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
