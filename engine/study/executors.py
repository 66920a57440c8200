"""Where the study's trials run: :class:`LocalExecutor` (in this process, the default) or
:class:`engine.study.ray_executor.RayExecutor` (``--ray``), behind one interface.

A cell of the study is one trial of the grid on one CPU class (the local executor has one
class: this machine's). Both executors skip the cells the store holds (unless ``force``),
save each cell's row the moment it is finished, and return the rows class by class, each
class's rows in the grid's order (its reference first: the other rows' agreement is counted
against the reference's predictions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .evaluation import FAILED, Bench
from .grid import Trial
from .row import Row
from .store import TrialStore, data_digest, file_digest

Cell = Tuple[int, str]          # (trial index, CPU class name)


@dataclass
class Plan:
    """The trials of one study and what measuring them needs: the bench (test set and
    options), the PyTorch reference (and its 299 twin), and the store."""

    trials: Sequence[Trial]
    bench: Bench
    store: TrialStore
    reference: object = None            # the PyTorch model of the reference trial
    big_reference: object = None        # the architecture at 299, for the reference's latency
    _digests: Dict[Path, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._data = data_digest(self.bench.x_test, self.bench.y_test)
        self._options = self.bench.options()

    def digest(self, path) -> str:
        path = Path(path)
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

    def key(self, cell: Cell) -> str:
        i, cpu_class = cell
        return self.trials[i].key(self._data, {**self._options, "cpu_class": cpu_class},
                                  self.digest)

    def save(self, cell: Cell, row: Row) -> None:
        """Store a finished trial; a failed one is not stored, so the next run tries it
        again (its row still reports the error in this run)."""
        row.cpu_class = cell[1]
        if (row.note or "").startswith(FAILED):
            return
        self.store.save(self.key(cell), {**self.trials[cell[0]].identity(),
                                         "cpu_class": cell[1]}, row)


class Executor:
    """The interface: :meth:`run` a plan, get its rows; :meth:`classes` the CPU classes it
    measures on."""

    name = "?"

    def classes(self) -> List[dict]:
        raise NotImplementedError

    def run(self, plan: Plan, force: bool = False,
            log: Callable[[str], None] = print) -> List[Row]:
        classes = [c["name"] for c in self.classes()]
        reference = next(i for i, t in enumerate(plan.trials) if t.is_reference)
        order = [reference] + [i for i in range(len(plan.trials)) if i != reference]
        cells = [(i, c) for c in classes for i in order]
        rows: Dict[Cell, Row] = {}
        if not force:
            for cell in cells:
                row = plan.store.load(plan.key(cell))
                if row is not None:
                    rows[cell] = row
        if rows:
            log(f"  skipped {len(rows)} of {len(cells)} trials finished before in "
                f"{plan.store.folder} (--force measures them again)")
        stored_reference = next((rows[c] for c in cells if c[0] == reference and c in rows),
                                None)
        if stored_reference is not None:
            plan.bench.ref_pred = stored_reference.pred
        pending = [c for c in cells if c not in rows]
        for cell, row in self.measure(plan, pending, rows, log):
            rows[cell] = row
        return [rows[c] for c in cells]

    def measure(self, plan: Plan, pending: Sequence[Cell], done: Dict[Cell, Row],
                log: Callable[[str], None]):
        """Yield ``(cell, row)`` for each pending cell (the reference's first), each saved
        (:meth:`Plan.save`) once it is finished; ``done``: the rows already stored."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every trial in this process, one after another, with the study's threads, on this
    machine's CPU class."""

    name = "local"

    def __init__(self):
        self._classes: Optional[List[dict]] = None

    def classes(self) -> List[dict]:
        from .timing import cpu_class
        if self._classes is None:
            self._classes = [cpu_class()]
        return self._classes

    def measure(self, plan: Plan, pending: Sequence[Cell], done: Dict[Cell, Row],
                log: Callable[[str], None]):
        for cell in pending:
            trial = plan.trials[cell[0]]
            row = plan.bench.measure(trial, plan.reference, plan.big_reference)
            if row.pred is not None:
                row.accuracy_classes = [cell[1]]
            plan.save(cell, row)
            yield cell, row
