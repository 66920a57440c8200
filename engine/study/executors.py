"""Where the study's trials run: :class:`LocalExecutor` (in this process, the default) or
the Ray executor (:mod:`engine.study.ray_executor`, ``--ray``), behind one interface.

Both take the trials of the grid in order, skip those the store holds (unless ``force``),
measure the reference first (its predictions are what every other row's agreement is
counted against), save each trial's row the moment it is finished, and return the rows in
the grid's order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .evaluation import Bench
from .grid import Trial
from .row import Row
from .store import TrialStore, data_digest, file_digest


@dataclass
class Plan:
    """The trials of one study and what measuring them needs: the bench (test set and
    options), the PyTorch reference (and its 299 twin), the store, and each trial's key."""

    trials: Sequence[Trial]
    bench: Bench
    store: TrialStore
    reference: object = None            # the PyTorch model of the reference trial
    big_reference: object = None        # the architecture at 299, for the reference's latency
    keys: List[str] = field(default_factory=list)

    def __post_init__(self):
        digests: Dict[Path, str] = {}

        def digest(path) -> str:
            path = Path(path)
            if path not in digests:
                digests[path] = file_digest(path)
            return digests[path]
        data = data_digest(self.bench.x_test, self.bench.y_test)
        options = self.bench.options()
        self.keys = [t.key(data, options, digest) for t in self.trials]

    def measure(self, i: int) -> Row:
        return self.bench.measure(self.trials[i], self.reference, self.big_reference)

    def save(self, i: int, row: Row) -> None:
        self.store.save(self.keys[i], self.trials[i].identity(), row)


class Executor:
    """The interface: :meth:`run` a plan, get its rows in order."""

    name = "?"

    def run(self, plan: Plan, force: bool = False,
            log: Callable[[str], None] = print) -> List[Row]:
        rows: List[Optional[Row]] = [None] * len(plan.trials)
        if not force:
            for i, key in enumerate(plan.keys):
                rows[i] = plan.store.load(key)
        skipped = sum(r is not None for r in rows)
        if skipped:
            log(f"  skipped {skipped} of {len(rows)} trials finished before in "
                f"{plan.store.folder} (--force measures them again)")
        order = sorted(range(len(rows)), key=lambda i: not plan.trials[i].is_reference)
        reference = order[0]
        if rows[reference] is None:
            rows[reference] = plan.measure(reference)
            plan.save(reference, rows[reference])
        plan.bench.ref_pred = rows[reference].pred
        pending = [i for i in order[1:] if rows[i] is None]
        for i, row in self.measure(plan, pending, log):
            rows[i] = row
        return rows

    def measure(self, plan: Plan, pending: Sequence[int], log: Callable[[str], None]):
        """Yield ``(index, row)`` for each pending trial, each saved once it is finished."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every trial in this process, one after another, with the study's threads."""

    name = "local"

    def measure(self, plan: Plan, pending: Sequence[int], log: Callable[[str], None]):
        for i in pending:
            row = plan.measure(i)
            plan.save(i, row)
            yield i, row
