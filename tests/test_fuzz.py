"""Structural fuzz: mutated graphs of a small export, loaded and run on every CPU engine.

Each mutant changes one thing of the exported graph: an op type, an attribute, a dimension,
the wiring, a data type or the opset. A worker subprocess (this file run as a script) loads
it with ``engine.load(path, backend=b)`` and runs one inference, for each CPU backend. The
test asserts that no worker is killed by a signal, none hangs (30 s per mutant), and every
failure is a clean :class:`~engine.errors.EngineError`, never a raw third-party exception.

Several mutants share one worker to keep the run short; when a worker dies or hangs, the
mutants it had not finished are run again one per worker, to name the one at fault (a
crash that needs earlier loads in the same process is reported as such).
"""
from __future__ import annotations

import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

CPU_BACKENDS = ("openvino", "onnxruntime")
CASE_LIMIT_S = 30          # one mutant on every CPU backend
MUTANTS_PER_WORKER = 25
SEED = 1789
MARK = "FUZZ "             # prefix of the worker's report lines (engines print too)
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(width=0.125, input_size=(3, 75, 75))

INTS = [-(2 ** 31), -7, -2, -1, 0, 1, 2, 3, 5, 64, 2 ** 31 - 1]
FLOATS = [0.0, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan]
STRINGS = [b"NOTSET", b"SAME_UPPER", b"VALID", b"bogus", b""]
OP_TYPES = ["Conv", "Relu", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
            "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Reshape", "Transpose",
            "Sigmoid", "Softmax", "Identity", "BatchNormalization", "QuantizeLinear",
            "DequantizeLinear", "Split", "Pad", "Resize", "Shape", "Gather", "NoSuchOp"]
DOMAINS = ["com.microsoft", "example.custom"]
ELEM_TYPES = [0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 16, 999]     # undefined, ints, str, bool, ...
OPSETS = [1, 6, 7, 9, 11, 12, 13, 14, 16, 17, 18, 21, 23, 28, 29, 50, 10 ** 6]
IR_VERSIONS = [0, 1, 3, 6, 7, 9, 10, 11, 12, 99]


# --------------------------------------------------------------------------- mutations
def _node_with_attributes(proto, rng):
    return rng.choice([n for n in proto.graph.node if n.attribute])


def mutate_op_type(proto, rng) -> str:
    node = rng.choice(proto.graph.node)
    old = node.op_type
    node.op_type = rng.choice(OP_TYPES)
    if rng.random() < 0.15:
        node.domain = rng.choice(DOMAINS)
    return f"op type of {node.name}: {old} -> {node.domain + '.' if node.domain else ''}" \
           f"{node.op_type}"


def mutate_attribute(proto, rng) -> str:
    from onnx import AttributeProto, helper
    node = _node_with_attributes(proto, rng)
    attr = rng.choice(node.attribute)
    how = rng.random()
    if how < 0.15:
        node.attribute.remove(attr)
        return f"{node.name}: attribute {attr.name} removed"
    if how < 0.3:
        name = rng.choice(["group", "axis", "strides", "dilations", "pads", "transB", "alpha"])
        value = rng.choice(INTS) if name in ("group", "axis", "transB") else \
            rng.choice(FLOATS) if name == "alpha" else [rng.choice(INTS) for _ in range(4)]
        for a in [a for a in node.attribute if a.name == name]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))
        return f"{node.name}: attribute {name}={value} set"
    if attr.type == AttributeProto.INTS and attr.ints:
        if rng.random() < 0.2:
            attr.ints.append(rng.choice(INTS))
        else:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice(INTS)
        return f"{node.name}: {attr.name}={list(attr.ints)}"
    if attr.type == AttributeProto.INT:
        attr.i = rng.choice(INTS)
        return f"{node.name}: {attr.name}={attr.i}"
    if attr.type == AttributeProto.FLOAT:
        attr.f = rng.choice(FLOATS)
        return f"{node.name}: {attr.name}={attr.f}"
    if attr.type == AttributeProto.STRING:
        attr.s = rng.choice(STRINGS)
        return f"{node.name}: {attr.name}={attr.s!r}"
    attr.type = rng.choice([AttributeProto.INT, AttributeProto.FLOATS, AttributeProto.GRAPH])
    return f"{node.name}: attribute {attr.name} retyped to {attr.type}"


def mutate_dims(proto, rng) -> str:
    g = proto.graph
    where = rng.random()
    if where < 0.4:
        value = rng.choice(g.input[:1] + g.output[:1])
        dims = value.type.tensor_type.shape.dim
        dim = dims[rng.randrange(len(dims))]
        if rng.random() < 0.2:
            dim.dim_param = "free"
            return f"{value.name}: a dim made symbolic"
        dim.dim_value = rng.choice([-1, 0, 1, 2, 7, 74, 76, 1000])
        return f"{value.name}: dims -> {[d.dim_value or d.dim_param for d in dims]}"
    init = rng.choice([i for i in g.initializer if len(i.dims) > 1])
    before = list(init.dims)
    if rng.random() < 0.5:              # same element count, another shape
        rng.shuffle(init.dims)
    else:
        k = rng.randrange(len(init.dims))
        init.dims[k] = rng.choice([0, init.dims[k] - 1, init.dims[k] + 1, -init.dims[k]])
    return f"initializer {init.name}: dims {before} -> {list(init.dims)}"


def mutate_wiring(proto, rng) -> str:
    g = proto.graph
    nodes = list(g.node)
    produced = [o for n in nodes for o in n.output] + [i.name for i in g.initializer[:50]]
    node = rng.choice([n for n in nodes if n.input])
    how = rng.randrange(6)
    if how == 0:
        k = rng.randrange(len(node.input))
        node.input[k] = rng.choice(produced)
        return f"{node.name}: input {k} -> {node.input[k]}"
    if how == 1:
        node.input[rng.randrange(len(node.input))] = "dangling"
        return f"{node.name}: an input -> a tensor nobody produces"
    if how == 2:
        del node.input[rng.randrange(len(node.input))]
        return f"{node.name}: an input removed"
    if how == 3:
        node.input.append(rng.choice(produced))
        return f"{node.name}: an extra input"
    if how == 4:
        node.input[0] = node.output[0]
        return f"{node.name}: reads its own output"
    i, j = sorted(rng.sample(range(len(nodes)), 2))
    first, second = type(nodes[i])(), type(nodes[j])()
    first.CopyFrom(nodes[i])            # copies: g.node[i] and nodes[i] are one object
    second.CopyFrom(nodes[j])
    g.node[i].CopyFrom(second)
    g.node[j].CopyFrom(first)
    return f"nodes {first.name} and {second.name} swapped"


def mutate_dtype(proto, rng) -> str:
    g = proto.graph
    how = rng.random()
    if how < 0.4:
        value = rng.choice(g.input[:1] + g.output[:1])
        value.type.tensor_type.elem_type = rng.choice(ELEM_TYPES)
        return f"{value.name}: elem_type -> {value.type.tensor_type.elem_type}"
    if how < 0.5:
        from onnx import helper
        node = rng.choice(g.node)
        cast = helper.make_node("Cast", [node.output[0]], [node.output[0] + "_cast"],
                                name=node.name + "/cast", to=rng.choice(ELEM_TYPES[1:]))
        for other in g.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = cast.output[0]
        g.node.insert(list(g.node).index(node) + 1, cast)
        return f"{node.name}: output cast to {cast.attribute[0].i}"
    init = rng.choice(g.initializer)
    init.data_type = rng.choice(ELEM_TYPES)
    return f"initializer {init.name}: data_type -> {init.data_type}"


def mutate_opset(proto, rng) -> str:
    how = rng.random()
    if how < 0.6:
        proto.opset_import[0].version = rng.choice(OPSETS)
        return f"opset -> {proto.opset_import[0].version}"
    if how < 0.7:
        del proto.opset_import[:]
        return "no opset import"
    if how < 0.8:
        proto.opset_import.add(domain=rng.choice(DOMAINS), version=rng.choice(OPSETS))
        return "an extra custom-domain opset"
    proto.ir_version = rng.choice(IR_VERSIONS)
    return f"ir_version -> {proto.ir_version}"


MUTATIONS: List[Callable] = [mutate_op_type, mutate_attribute, mutate_dims, mutate_wiring,
                             mutate_dtype, mutate_opset]


def mutants(base_proto, count: int, seed: int, out_dir: Path):
    """Yield ``(path, description)`` for ``count`` mutants, the kinds in turn, each saved
    under ``out_dir`` (the same seed gives the same mutants)."""
    import onnx
    rng = random.Random(seed)
    for i in range(count):
        proto = onnx.ModelProto()
        proto.CopyFrom(base_proto)
        kind = MUTATIONS[i % len(MUTATIONS)]
        description = f"{kind.__name__}: {kind(proto, rng)}"
        path = out_dir / f"mutant-{i:03d}.onnx"
        onnx.save(proto, str(path))
        yield path, description


# --------------------------------------------------------------------------- the worker
def worker(paths: List[str]) -> None:
    """Load and run each file on each CPU backend; one report line per (file, backend)."""
    import warnings
    import numpy as np
    import engine
    from engine.errors import EngineError
    warnings.simplefilter("ignore")
    x = np.random.default_rng(0).standard_normal((1, 3, 75, 75)).astype(np.float32)
    for path in paths:
        _report({"start": path})
        _self_test_fault(path)
        for backend in CPU_BACKENDS:
            outcome = {"case": path, "backend": backend}
            try:
                with engine.load(path, backend=backend, threads=1) as rt:
                    rt(_input_for(rt, x))
                outcome["result"] = "ran"
            except EngineError as e:
                outcome.update(result="refused", error=f"{type(e).__name__}: {e}"[:300])
            except Exception as e:  # what the fuzz looks for: a raw third-party exception
                outcome.update(result="raw", error=f"{type(e).__name__}: {e}"[:300])
            _report(outcome)
        _report({"done": path})


def _input_for(rt, default):
    """The default image batch, reshaped and cast to what the runtime declares when it
    declares something else (so mutants with other input specs still run)."""
    import numpy as np
    spec = rt.inputs[0] if rt.inputs else None
    if spec is None or len(spec.shape) != default.ndim:
        return default
    shape = tuple(d if d is not None else default.shape[k] for k, d in enumerate(spec.shape))
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = default.dtype
    if shape == default.shape and dtype == default.dtype:
        return default
    if any(d < 0 for d in shape):
        return default
    return np.resize(default, shape).astype(dtype)


def _report(record: dict) -> None:
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the parent
@dataclass
class WorkerRun:
    outcomes: List[dict] = field(default_factory=list)
    finished: List[str] = field(default_factory=list)
    stopped: Optional[str] = None        # "signal N" or "hang" when the worker did not finish
    running: Optional[str] = None        # the file it was on then
    stderr: str = ""


def run_worker(paths: List[str]) -> WorkerRun:
    """Run one worker on ``paths``; a mutant that takes longer than CASE_LIMIT_S is a hang."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    errfile = open(Path(paths[0]).parent / f"{Path(paths[0]).stem}.stderr", "w+")
    proc = subprocess.Popen([sys.executable, __file__, *paths], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=errfile, text=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    run = WorkerRun()
    deadline = time.monotonic() + CASE_LIMIT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            run.stopped = "hang"
            break
        if line is None:
            break
        record = json.loads(line)
        if "start" in record:
            run.running, deadline = record["start"], time.monotonic() + CASE_LIMIT_S
        elif "done" in record:
            run.finished.append(record["done"])
            run.running = None
        else:
            run.outcomes.append(record)
    code = proc.wait()
    if code < 0 and run.stopped is None:
        run.stopped = f"signal {-code}"
    elif code > 0 and run.stopped is None:
        run.stopped = f"exit status {code}"
    errfile.seek(0)
    run.stderr = errfile.read()[-2000:]
    errfile.close()
    return run


def _pump(stream, lines: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        if line.startswith(MARK):
            lines.put(line[len(MARK):])
    lines.put(None)


@dataclass
class FuzzReport:
    outcomes: List[dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    descriptions: Dict[str, str] = field(default_factory=dict)   # file -> its mutation

    def misbehaviour(self) -> List[str]:
        """Stopped workers, then every raw (unwrapped) exception with its mutation."""
        return self.problems + [
            f"{self.descriptions[o['case']]} on {o['backend']}: {o['error']}"
            for o in self.outcomes if o["result"] == "raw"]


def fuzz(base_proto, count: int, seed: int, work_dir: Path) -> FuzzReport:
    """Run ``count`` mutants, MUTANTS_PER_WORKER per worker; mutants a dead or hung worker
    left unfinished run again one per worker. Each batch's files are removed after it."""
    report = FuzzReport()
    produced = mutants(base_proto, count, seed, work_dir)
    while True:
        batch = dict(item for _, item in zip(range(MUTANTS_PER_WORKER), produced))
        if not batch:
            return report
        report.descriptions.update({str(p): d for p, d in batch.items()})
        run = run_worker([str(p) for p in batch])
        report.outcomes += run.outcomes
        if run.stopped is not None:
            _isolate(run, batch, report)
        for p in batch:
            p.unlink()


def _isolate(run: WorkerRun, batch: Dict[Path, str], report: FuzzReport) -> None:
    """Run each mutant the stopped worker left unfinished on its own, naming the culprit."""
    report.problems.append(f"a worker on {len(batch)} mutants stopped ({run.stopped}) while on "
                           f"{batch.get(Path(run.running)) if run.running else 'no mutant'}; "
                           f"stderr: {run.stderr[-500:]}")
    finished = set(run.finished)
    for path, description in batch.items():
        if str(path) in finished:
            continue
        alone = run_worker([str(path)])
        report.outcomes = [o for o in report.outcomes if o["case"] != str(path)] + alone.outcomes
        if alone.stopped is not None:
            report.problems.append(f"{description}: the worker stopped ({alone.stopped}) "
                                   f"when run alone; stderr: {alone.stderr[-500:]}")


# --------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def tiny_proto(exported_onnx):
    onnx = pytest.importorskip("onnx")
    from engine import backends
    for name in CPU_BACKENDS:
        if not backends.is_installed(name):
            pytest.skip(f"{name} not installed")
    return onnx.load(str(exported_onnx("inception_resnet_v2", **TINY)[0]))


def _check(tiny_proto, count, seed, tmp_path):
    report = fuzz(tiny_proto, count, seed, tmp_path)
    problems = report.misbehaviour()
    assert not problems, f"{len(problems)} of {count} mutants misbehaved:\n" + \
        "\n".join(problems[:40])
    assert len(report.outcomes) == count * len(CPU_BACKENDS), "every mutant ran everywhere"
    results = {o["result"] for o in report.outcomes}
    assert {"ran", "refused"} <= results, f"a fuzz that only {results} proves little"
    refused = [o["error"] for o in report.outcomes if o["result"] == "refused"]
    assert any(e.startswith("InvalidGraphError") for e in refused)
    return report


def test_fuzz_default(tiny_proto, tmp_path):
    """About 50 mutants: every kind of mutation, fixed seed."""
    _check(tiny_proto, 48, SEED, tmp_path)


@pytest.mark.slow
def test_fuzz_slow(tiny_proto, tmp_path):
    """500 mutants with another fixed seed."""
    _check(tiny_proto, 500, SEED + 1, tmp_path)


def test_worker_reports_a_crash_and_a_hang(tmp_path, monkeypatch):
    """The harness itself: a worker killed by a signal, and one that stops answering, are
    both reported with the mutant they were on."""
    crash = tmp_path / "crash.onnx"
    crash.write_bytes(b"")
    monkeypatch.setattr(sys.modules[__name__], "CASE_LIMIT_S", 5)
    monkeypatch.setenv("FUZZ_SELF_TEST", json.dumps({str(crash): "signal",
                                                     str(tmp_path / "hang.onnx"): "hang"}))
    (tmp_path / "hang.onnx").write_bytes(b"")
    run = run_worker([str(crash)])
    assert run.stopped == "signal 11" and run.running == str(crash)
    run = run_worker([str(tmp_path / "hang.onnx")])
    assert run.stopped == "hang" and run.running == str(tmp_path / "hang.onnx")


def _self_test_fault(path: str) -> None:
    """For the harness test only: crash or hang on the files FUZZ_SELF_TEST names."""
    faults = json.loads(os.environ.get("FUZZ_SELF_TEST", "{}"))
    if faults.get(path) == "signal":
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    if faults.get(path) == "hang":
        time.sleep(3600)


if __name__ == "__main__":
    worker(sys.argv[1:])
