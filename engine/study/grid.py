"""The study's grid: which (engine, precision) pairs are studied, the trials (one engine on
one file, or the PyTorch reference), and each trial's stable key."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .quantize import AnchorFile, Int8File
from .store import trial_key


def studied_engines() -> List[str]:
    """The engines the study runs files on (``BackendInfo.study``), CPU engines first, each
    group in ``engine.load``'s order of preference."""
    from ..backends import BACKENDS
    found = [b for b in BACKENDS.values() if b.study]
    return [b.name for b in sorted(found, key=lambda b: (b.device != "cpu", b.auto is None,
                                                          b.auto or 0))]


def cpu_engines() -> List[str]:
    """The studied engines that run on the CPU (every Q/DQ layout is measured on them)."""
    from ..backends import BACKENDS
    return [n for n in studied_engines() if BACKENDS[n].device == "cpu"]


def engines_available(requested: Optional[Sequence[str]] = None,
                      log: Callable[[str], None] = print) -> List[tuple]:
    """(backend, precision) pairs to study, from the engine table (``BackendInfo.study``):
    float precisions; INT8 is added per method. Default: every studied engine usable here
    (a GPU engine only where CUDA is; on CPU the Triton engine would run under the
    interpreter: for tests, not for a study). A requested engine that is not usable here is
    logged with the reason; one the study cannot run files on is an InputError."""
    import importlib
    from kernels.env import cuda_usable
    from .. import backends as B
    from ..errors import InputError
    studied = studied_engines()
    for name in requested or ():
        if name not in B.BACKENDS:
            raise InputError(f"--engines {name}: unknown engine; the study runs "
                             f"{', '.join(studied)}")
        if name not in studied:
            raise InputError(f"--engines {name}: the study does not run files on {name} "
                             "(the PyTorch eager FP32 reference is always its first row); "
                             f"choose from {', '.join(studied)}")
    gpu = cuda_usable()
    pairs = []
    for name in list(requested) if requested else studied:
        info = B.BACKENDS[name]
        ok, why = B.check_available(name)
        if not ok:
            if requested:
                log(f"  {name} is not usable here ({why}); no {name} rows")
            continue
        if info.device == "gpu" and not gpu and not requested:
            continue
        supports = getattr(importlib.import_module(info.module), "supports", None)
        pairs += [(name, p) for p in info.study
                  if p == "fp32" or supports is None or supports(p)]
    return pairs


@dataclass
class Trial:
    """One cell of the grid: ``backend`` at ``precision`` on the file ``path`` (and its 299
    twin ``big_path``), or the PyTorch eager FP32 reference (backend ``torch``; ``path``: the
    FP32 export, which stands for its weights). The fields after ``quantizer`` describe the
    file for the row; they are no part of the trial's identity."""

    backend: str
    precision: str
    method: str = "-"
    path: Optional[Path] = None
    big_path: Optional[Path] = None
    target: str = "-"
    quantizer: str = "-"
    as_file: bool = False
    excluded: Sequence[str] = ()
    calib_seconds: Optional[float] = None
    note: str = ""

    @property
    def is_reference(self) -> bool:
        return self.backend == "torch"

    @property
    def accuracy_per_class(self) -> bool:
        """Whether this trial's predictions depend on the CPU class they are computed on
        (``BackendInfo.accuracy_per_cpu_class``; the PyTorch reference's do not)."""
        from ..backends import BACKENDS
        info = BACKENDS.get(self.backend)
        return bool(info and info.accuracy_per_cpu_class) and not self.is_reference

    @property
    def name(self) -> str:
        if self.precision != "int8":
            return f"{self.backend} {self.precision}"
        file = (f"{self.method}@{self.target}" if self.quantizer == "ours"
                else f"{self.quantizer} ({self.method})")
        return f"{self.backend} int8 {file}"

    @property
    def opened_precision(self) -> Optional[str]:
        """The precision the file is opened at: an anchor's at its own (``as_file``: an
        OpenVINO IR carries no precision record, its FakeQuantize layers run in INT8)."""
        return None if self.as_file else self.precision

    def identity(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "method": self.method,
                "target": self.target, "quantizer": self.quantizer, "as_file": self.as_file,
                "excluded": list(self.excluded)}

    def key(self, data: str, options: dict, digest: Callable[[Path], str]) -> str:
        """:func:`engine.study.store.trial_key` of this trial: ``data`` the test set's hash,
        ``digest`` a file's content hash."""
        files = {"file": None if self.path is None else digest(self.path),
                 "file_299": None if self.big_path is None else digest(self.big_path)}
        return trial_key(self.identity(), files, data, options)


def study_trials(fp32_path, int8: Dict[str, Int8File], big_files,
                 engines: Optional[Sequence[str]] = None,
                 anchors: Optional[Dict[str, AnchorFile]] = None,
                 log: Callable[[str], None] = print) -> List[Trial]:
    """The reference, then every available engine on the FP32 file and on each INT8 file it
    can run: GPU engines on the signed files only; CPU engines on every layout, to show what
    the target costs; each anchor's file on the engines it names."""
    from calibration.targets import TARGETS
    trials = [Trial("torch", "fp32", path=fp32_path, big_path=big_files.get("fp32"))]
    cpu = cpu_engines()
    for backend, precision in engines_available(engines, log):
        trials.append(Trial(backend, precision, path=fp32_path, big_path=big_files.get("fp32")))
        if precision == "bf16":
            continue
        for key, f in int8.items():
            if TARGETS[f.target].unsigned_relu and backend not in cpu:
                continue
            trials.append(Trial(backend, "int8", key.split("@")[0], f.path, big_files.get(key),
                                f.target, "ours", excluded=tuple(f.excluded),
                                calib_seconds=f.calib_seconds, note=f.note))
        for key, a in (anchors or {}).items():
            if backend in a.engines:
                trials.append(Trial(backend, "int8", a.method, a.path, big_files.get(key),
                                    quantizer=a.anchor, as_file=True,
                                    calib_seconds=a.calib_seconds, note=a.note))
    return trials
