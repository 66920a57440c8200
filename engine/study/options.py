"""What one study is run with (:class:`StudyOptions`): every option of
:func:`engine.study.run_study` and its default, in one place. The CLI
(``inception-engine study``) takes its defaults from here."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple

from calibration.methods import METHODS

from ..errors import InputError
from ..intervals import CONFIDENCE
from ..runtime import count_option


@dataclass(frozen=True)
class StudyOptions:
    """The options of one study.

    methods: calibration methods of our files. engines: the engines to study (None: every
    one usable here, from the engine table). num_test / num_calib / num_val: the first N
    test, calibration and validation images (num_test and num_val None: all). threads,
    iters (timed calls per latency figure), eval_batch: how rows are measured. big: also the
    latency at 299. auto_exclude: add ``+autoK`` files keeping the K most sensitive layers float.
    cpu_uint8: also OpenVINO's uint8-after-ReLU files. anchors: the third-party quantizers
    (None: every installed one; ``()``: none). max_drop, confidence, val: the accuracy-budget
    rows (points lost at that confidence, chosen on the validation split ``val``).
    force: measure the trials stored in ``OUT/trials/`` again. paired_rounds: time each
    engine's batch-1 latency in that many rounds interleaved with the PyTorch reference's,
    and give the ratio with the p10/p90 of the rounds (0: not paired).
    """

    methods: Tuple[str, ...] = tuple(METHODS)
    engines: Optional[Tuple[str, ...]] = None
    num_test: Optional[int] = None
    num_calib: int = 1000
    threads: int = 2
    iters: int = 20
    big: bool = True
    auto_exclude: int = 0
    cpu_uint8: bool = True
    eval_batch: int = 64
    anchors: Optional[Tuple[str, ...]] = None
    max_drop: Optional[float] = None
    val: object = None
    num_val: Optional[int] = None
    confidence: float = CONFIDENCE
    force: bool = False
    paired_rounds: int = 0

    @classmethod
    def of(cls, options: Optional["StudyOptions"] = None, **changes) -> "StudyOptions":
        """``options`` (default: the defaults) with ``changes``; an unknown name is an
        InputError listing the options."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown study option(s) {', '.join(unknown)}; the options "
                             f"are: {', '.join(sorted(names))}")
        if options is not None and not isinstance(options, cls):
            raise InputError(f"options must be a {cls.__name__} (StudyOptions.of(...)), got "
                             f"{type(options).__name__}; pass single options by name instead")
        base = {f.name: getattr(options, f.name) if options else f.default
                for f in fields(cls)}
        base.update(changes)
        for name in ("methods", "engines", "anchors"):          # lists from callers
            value = base[name]
            if isinstance(value, str):                          # one name, not its letters
                base[name] = (value,)
            elif value is not None and not isinstance(value, tuple):
                base[name] = tuple(value)
        made = cls(**base)
        made.check()
        return made

    def check(self) -> None:
        """Each number in its range, or an InputError naming it."""
        count_option("num_test", self.num_test)
        count_option("num_val", self.num_val)
        for name in ("num_calib", "threads", "iters", "eval_batch"):
            count_option(name, getattr(self, name), allow_none=False)
        count_option("auto_exclude", self.auto_exclude, minimum=0, allow_none=False)
        count_option("paired_rounds", self.paired_rounds, minimum=0, allow_none=False)
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
            raise InputError(f"methods: {what}; choose one or more of {', '.join(METHODS)}")
