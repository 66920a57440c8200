"""The study's trials across a Ray cluster (``inception-engine study --ray auto|ADDRESS``;
``pip install -e ".[cluster]"``).

What runs where:

- the driver (where the command runs) exports the model, computes the calibration statistics
  once per network and calibration set, writes every INT8 file, and puts each file, the test
  set and the PyTorch reference in Ray's object store, so a worker node needs no shared disk
  (each node writes the files it is sent under its temporary folder, once per file hash);
- accuracy: each trial's test images are split into shards (whole evaluation batches, so
  the shards put together are the local result image by image), one task per shard with the
  study's threads. An engine whose predictions depend on the CPU
  (``BackendInfo.accuracy_per_cpu_class``: OpenVINO, at every precision, since its CPU
  plugin picks its kernels by ISA and AVX2 saturates INT8 at int16) has its shards run on
  each CPU class measured, round-robin over that class's nodes, and each class's row carries
  its own predictions. The others' (ONNX Runtime, the PyTorch reference) are computed once,
  on any node, and shared by every class's row. Each row records the classes of the nodes
  that computed its predictions (``Row.accuracy_classes``);
- speed: each trial is timed once on each CPU class of the cluster, by one task that holds a
  whole node of that class (it asks for all the node's CPUs), with the study's threads.

A node's CPU class is what it reports (:func:`engine.study.timing.cpu_class`: ISA level and
model name), or the label it was started with as a custom resource ``cpu_class:NAME``
(``ray start --resources '{"cpu_class:avx2-fleet": 1}'``). A task whose worker or node dies
is retried by Ray (``max_retries``); a task held to a node (a timed one, a shard of a
per-class trial) whose node is gone moves to another node of its class. A trial that keeps
failing becomes a row carrying the error, and the study goes on (it is not stored, so a
rerun tries it again).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .evaluation import failure_note
from .executors import Cell, Executor, Plan
from .grid import Trial
from .row import Row

LABEL_PREFIX = "cpu_class:"     # a node's custom resource naming its CPU class
RETRIES = 3                     # Ray's retries of a task whose worker or node died
FILES_DIR = "inception-study-files"


def _ray():
    try:
        import ray
    except ImportError as e:
        from ..errors import InputError
        raise InputError('--ray needs Ray: pip install -e ".[cluster]"') from e
    return ray


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------- on a worker
def _local_copy(path: str, blob_ref, digest: str) -> Path:
    """The file ``path`` as this node has it: written once per content hash under the
    node's temporary folder from the object store."""
    from ..fileio import atomic_write_bytes
    ray = _ray()
    folder = Path(tempfile.gettempdir()) / FILES_DIR / digest
    target = folder / Path(path).name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        blobs = ray.get(blob_ref)
        # an IR's .xml and .bin side by side; the file opened is written last, so a task
        # that finds it finds its weights too
        for name, data in sorted(blobs.items(), key=lambda item: item[0] == target.name):
            if not (folder / name).is_file():
                atomic_write_bytes(folder / name, data)
    return target


def _on_node(trial: Trial, files: Dict[str, tuple]) -> Trial:
    """``trial`` with its paths on this node."""
    def local(path):
        if path is None:
            return None
        ref, digest = files[str(path)]
        return _local_copy(str(path), ref, digest)
    return dataclasses.replace(trial, path=local(trial.path), big_path=local(trial.big_path))


def _shard(bench, trial: Trial, files, lo: int, hi: int, reference=None) -> tuple:
    """(the id of the node it ran on, top-1 of test images ``lo:hi``)."""
    import torch
    torch.set_num_threads(bench.threads)
    return (_ray().get_runtime_context().get_node_id(),
            bench.predictions(_on_node(trial, files), lo, hi, reference))


def _timed(bench, trial: Trial, files, reference=None, big_reference=None) -> Row:
    import torch
    torch.set_num_threads(bench.threads)
    return bench.timing(_on_node(trial, files), reference, big_reference)


def _probe(label: str) -> dict:
    from .timing import cpu_class
    return {**cpu_class(label), "node": _ray().get_runtime_context().get_node_id()}


# --------------------------------------------------------------------------- on the driver
def shard_ranges(n: int, batch: int, shards: int) -> List[tuple]:
    """``shards`` (or fewer) ranges over ``n`` images, each a whole number of ``batch``-image
    evaluation batches but the last."""
    batches = -(-n // batch)
    per = max(1, -(-batches // max(1, shards)))
    return [(lo, min(n, lo + per * batch)) for lo in range(0, n, per * batch)]


class RayExecutor(Executor):
    """Trials as Ray tasks: accuracy in image shards, speed on a whole node of each CPU
    class. address: ``"auto"`` (the cluster this machine belongs to) or ``HOST:PORT``.
    cpu_classes: measure speed only on these classes (default: every class present)."""

    name = "ray"

    def __init__(self, address: str = "auto", shards: Optional[int] = None,
                 cpu_classes: Optional[Sequence[str]] = None,
                 log: Callable[[str], None] = print):
        self.address = address
        self.shards = shards
        self.wanted = list(cpu_classes) if cpu_classes else None
        self.log = log
        self._nodes: Optional[List[dict]] = None

    # the cluster ----------------------------------------------------------------------
    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # a study reports nothing
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level="warning")
            except ConnectionError as e:
                from ..errors import InputError
                raise InputError(f"--ray {self.address}: no Ray cluster there ({e}); start "
                                 "one with `ray start --head` and pass the address it "
                                 "prints") from e
        return ray

    def _alive(self) -> List[dict]:
        ray = self._connect()
        return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]

    def nodes(self) -> List[dict]:
        """Each live node: its id, CPUs and CPU class (:func:`_probe` run on it)."""
        if self._nodes is None:
            ray = self._connect()
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            probes = []
            for n in self._alive():
                label = next((k[len(LABEL_PREFIX):] for k in n["Resources"]
                              if k.startswith(LABEL_PREFIX)), "")
                probes.append((n, ray.remote(_probe).options(
                    num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                        n["NodeID"], soft=False)).remote(label)))
            self._nodes = [{**ray.get(ref), "cpus": int(n["Resources"]["CPU"])}
                           for n, ref in probes]
            if self.wanted:
                missing = set(self.wanted) - {n["name"] for n in self._nodes}
                if missing:
                    from ..errors import InputError
                    raise InputError(f"--cpu-classes {', '.join(sorted(missing))}: no such "
                                     "class in the cluster; present: " + ", ".join(
                                         sorted({n["name"] for n in self._nodes})))
        return self._nodes

    def classes(self) -> List[dict]:
        seen: Dict[str, dict] = {}
        for n in self.nodes():
            if self.wanted is None or n["name"] in self.wanted:
                info = {k: n[k] for k in ("name", "model", "isa", "cores", "openvino")}
                seen.setdefault(n["name"], {**info, "nodes": 0})["nodes"] += 1
        return list(seen.values())

    def shutdown(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()
        self._nodes = None

    # the trials -----------------------------------------------------------------------
    def _files(self, ray, plan: Plan, trials: Sequence[Trial]) -> Dict[str, tuple]:
        """``{path: (object ref of {name: bytes}, content hash)}`` of every file measured."""
        files = {}
        for t in trials:
            for path in (t.path, t.big_path):
                if path is None or str(path) in files:
                    continue
                path = Path(path)
                blobs = {path.name: path.read_bytes()}
                weights = path.with_suffix(".bin")
                if path.suffix == ".xml" and weights.is_file():
                    blobs[weights.name] = weights.read_bytes()
                files[str(path)] = (ray.put(blobs), plan.digest(path))
        return files

    def _class_nodes(self, cpu_class: str, exclude=()) -> List[dict]:
        """The live nodes of ``cpu_class`` not in ``exclude``."""
        alive = {n["NodeID"] for n in self._alive()}
        return [n for n in self.nodes() if n["name"] == cpu_class
                and n["node"] in alive and n["node"] not in exclude]

    def _node_of(self, cpu_class: str, exclude=()) -> Optional[dict]:
        """A live node of ``cpu_class`` not in ``exclude``, or None."""
        return next(iter(self._class_nodes(cpu_class, exclude)), None)

    @staticmethod
    def _pinned(ray, fn, node: dict, num_cpus: int, *args):
        """``fn(*args)`` as a task held to ``node``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        return ray.remote(fn).options(
            num_cpus=num_cpus, max_retries=RETRIES,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["node"], soft=False)
        ).remote(*args)

    def _on_class(self, ray, cpu_class: str, first, submit):
        """The result of a task held to a node of ``cpu_class`` (``first``: (node, ref)),
        submitted again (``submit(node)``) to another node of the class while the one it ran
        on is gone; a failure of the task itself is raised."""
        tried = set()
        node, ref = first
        while True:
            try:
                return ray.get(ref)
            except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.TaskUnschedulableError, ray.exceptions.ObjectLostError):
                tried.add(node["node"])
                node = self._node_of(cpu_class, tried)
                if node is None:
                    raise RuntimeError(f"no live node of CPU class {cpu_class} left")
                ref = submit(node)

    def _accuracy_shards(self, ray, trial: Trial, cpu_class: Optional[str], ranges,
                         bench_ref, files, ref_model, threads: int):
        """The shard tasks of one trial's predictions: on any node (``cpu_class`` None), or
        round-robin over the live nodes of ``cpu_class``, each as ``(class, first,
        submit)`` for :meth:`_gather`."""
        if cpu_class is None:
            shard = ray.remote(_shard).options(num_cpus=threads, max_retries=RETRIES)
            return [(None, (None, shard.remote(bench_ref, trial, files, lo, hi, ref_model)),
                     None) for lo, hi in ranges]
        nodes = self._class_nodes(cpu_class)
        if not nodes:
            raise RuntimeError(f"no live node of CPU class {cpu_class}")
        parts = []
        for k, (lo, hi) in enumerate(ranges):
            def submit(node, lo=lo, hi=hi):
                return self._pinned(ray, _shard, node, min(threads, node["cpus"]), bench_ref,
                                    trial, files, lo, hi, ref_model)
            node = nodes[k % len(nodes)]
            parts.append((cpu_class, (node, submit(node)), submit))
        return parts

    def _gather(self, ray, parts) -> tuple:
        """(a trial's predictions, the sorted CPU classes of the nodes that computed them)
        from its shard tasks (:meth:`_accuracy_shards`)."""
        got = [ray.get(first[1]) if cpu_class is None
               else self._on_class(ray, cpu_class, first, submit)
               for cpu_class, first, submit in parts]
        where = {n["node"]: n["name"] for n in self.nodes()}
        return (np.concatenate([pred for _, pred in got]),
                sorted({where.get(node, "?") for node, _ in got}))

    def measure(self, plan: Plan, pending: Sequence[Cell], done: Dict[Cell, Row],
                log: Callable[[str], None]):
        if not pending:
            return
        ray = self._connect()
        bench = dataclasses.replace(plan.bench, log=_quiet)
        trials = sorted({i for i, _ in pending})
        files = self._files(ray, plan, [plan.trials[i] for i in trials])
        ref_model = ray.put(plan.reference)
        big_model = ray.put(plan.big_reference)
        n = len(bench.x_test)
        cpus = sum(node["cpus"] for node in self.nodes())
        ranges = shard_ranges(n, bench.eval_batch, self.shards or cpus)
        bench_ref = ray.put(bench)
        # a shard runs with the study's threads (the numbers then match the local run's), so
        # it asks for as many CPUs, as far as the largest node has them
        threads = min(bench.threads, max(node["cpus"] for node in self.nodes()))

        def accuracy_key(cell: Cell) -> tuple:
            """A trial's predictions are one per class where they depend on the class,
            else one for every class."""
            return (cell[0], cell[1] if plan.trials[cell[0]].accuracy_per_class else None)

        # accuracy: the shards of each prediction set, or a stored row of another class of
        # a trial whose predictions are shared by every class
        shards: Dict[tuple, object] = {}
        for cell in pending:
            key = accuracy_key(cell)
            if key in shards:
                continue
            stored = None if key[1] is not None else next(
                (r for (j, _), r in done.items() if j == key[0] and r.pred is not None), None)
            try:
                shards[key] = ((stored.pred, list(stored.accuracy_classes))
                               if stored is not None else self._accuracy_shards(
                                   ray, plan.trials[key[0]], key[1], ranges, bench_ref, files,
                                   ref_model, threads))
            except RuntimeError as e:           # no node of the class to run it on
                shards[key] = e
        timed = {}
        for cell in pending:
            node = self._node_of(cell[1])
            trial = plan.trials[cell[0]]

            def submit(node, trial=trial):
                return self._pinned(ray, _timed, node, node["cpus"], bench_ref, trial, files,
                                    ref_model, big_model)
            timed[cell] = (submit, None if node is None else (node, submit(node)))
        sets = sum(isinstance(v, list) for v in shards.values())
        per_class = sum(isinstance(v, list) and k[1] is not None for k, v in shards.items())
        log(f"  ray: {len(pending)} trials, {sets} prediction sets of {len(ranges)} shards "
            f"({per_class} of them per CPU class), on {len(self.nodes())} nodes "
            f"({', '.join(c['name'] for c in self.classes())})")
        for cell in pending:                    # the reference's cells come first
            trial = plan.trials[cell[0]]
            key = accuracy_key(cell)
            note, pred, where, timing = "", None, [], None
            try:
                if isinstance(shards[key], list):
                    try:
                        shards[key] = self._gather(ray, shards[key])
                    except Exception as e:  # noqa: BLE001 - every cell sharing it fails
                        shards[key] = e
                if isinstance(shards[key], Exception):
                    raise shards[key]
                pred, where = shards[key]
                if trial.is_reference and bench.ref_pred is None:
                    bench.ref_pred = plan.bench.ref_pred = pred
                submit, first = timed[cell]
                if first is None:
                    raise RuntimeError(f"no live node of CPU class {cell[1]}")
                timing = self._on_class(ray, cell[1], first, submit)
            except Exception as e:  # noqa: BLE001 - a trial that keeps failing is a row
                err = getattr(e, "cause", None) or e
                note = failure_note(err)
            row = bench.row_of(trial, pred, timing, plan.reference, note)
            row.accuracy_classes = list(where) if pred is not None else []
            self.log(f"  {trial.name} on {cell[1]}: top1 "
                     f"{'-' if row.top1 is None else round(row.top1, 2)}"
                     f"  {'-' if row.latency_ms is None else round(row.latency_ms, 2)} ms"
                     f" {row.note}".rstrip())
            plan.save(cell, row)
            yield cell, row


def ray_address(value: str) -> str:
    """``--ray``'s value: ``auto`` or ``HOST:PORT`` (a ``ray://`` client address too)."""
    if value == "auto" or value.startswith("ray://") or (
            ":" in value and value.rsplit(":", 1)[1].isdigit()):
        return value
    from ..errors import InputError
    raise InputError(f"--ray {value!r}: expected 'auto' or the head's HOST:PORT (what "
                     "`ray start --head` prints), e.g. 127.0.0.1:6379")

