"""``engine.load``: open a model file on the best engine this machine has.

Choice when ``backend`` is None, by file type (see ``engine.backends.BACKENDS``):

- ``.plan``/``.engine`` -> ``tensorrt``;
- ``.onnx`` -> ``openvino``, then ``onnxruntime`` (the first one installed);
- ``.pt``/``.pth``/``.safetensors`` -> only with ``backend="torch", model=NAME``.

The precision defaults to the file's own (for ONNX, :func:`engine.onnxmeta.file_precision`:
int8 for a Q/DQ graph from calibration, else fp32 or fp16 as the metadata says). A foreign
ONNX file (not exported by this package) still runs; its runtime has ``config=None`` and a
:class:`ConfigUnknownWarning` says so. When no engine can run the file, the error names what
is missing and how to install it. A Q/DQ file written for another engine's layout
(``calibration.quantize(..., target=...)``, recorded in its metadata) runs, with one
:class:`TargetMismatchWarning` per file and engine naming the target to write instead.

Before an engine parses an ONNX file, :func:`engine.graphcheck.check_onnx` checks it against
what that engine reads (opsets, op types, attribute values, the full ONNX checker): a graph
that would crash or mislead an engine is an ``InvalidGraphError`` naming the node.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import List, Optional

from calibration.targets import file_target, mismatch

from . import backends as _b
from .errors import ArtifactError, BackendUnavailableError
from .graphcheck import check_onnx


class ConfigUnknownWarning(UserWarning):
    """The model file carries no Inception config (preprocessing and labels are unknown)."""


class TargetMismatchWarning(UserWarning):
    """A Q/DQ file written for one engine's layout runs on an engine that prefers another."""


_warned_targets = set()          # (file, backend) pairs already warned about, once each
_warned_lock = threading.Lock()


def available_backends(path=None) -> List[str]:
    """Backends usable on this machine (library installed and device present), in the order
    ``engine.load`` would try them; with ``path``, only those that run that file type."""
    suffix = Path(path).suffix.lower() if path is not None else None
    names = sorted(_b.BACKENDS, key=lambda n: (_b.BACKENDS[n].auto is None,
                                                _b.BACKENDS[n].auto or 0))
    out = []
    for n in names:
        if suffix is not None and suffix not in _b.BACKENDS[n].formats:
            continue
        if _b.check_available(n)[0]:
            out.append(n)
    return out


def _candidates(suffix: str) -> List[str]:
    c = [n for n, b in _b.BACKENDS.items() if suffix in b.formats and b.auto is not None]
    return sorted(c, key=lambda n: _b.BACKENDS[n].auto)


def load(path, backend: Optional[str] = None, precision: Optional[str] = None,
         threads: Optional[int] = None, **kw):
    """Open ``path`` on an engine and return its :class:`~engine.runtime.Runtime`.

    backend: ``None`` (pick from the file and the machine) or one of
    ``engine.backends.names()``. precision: ``None`` (the file's own), ``fp32``, ``bf16``,
    ``fp16`` or ``int8``, as far as the backend and the file allow. threads: CPU threads.
    Other keywords go to the backend's runtime (e.g. ``hint="throughput"``,
    ``static_batch=8`` for OpenVINO; ``providers=[...]`` for ONNX Runtime).
    """
    if backend is not None:
        _b.info(backend)  # an unknown name fails first, listing the valid ones
    path = _model_file(path)
    if backend is None:
        backend = _pick_backend(path)
    else:
        _check_backend(backend, path)
    support = _b.BACKENDS[backend].onnx
    if support is not None and path.suffix.lower() == ".onnx":
        check_onnx(path, support, backend)
    cls = _b.get_backend(backend)
    rt = cls(path, precision=precision, threads=threads, **kw)
    if path.suffix.lower() == ".onnx" and rt.precision == "int8":
        _warn_target_mismatch(path, backend)
    if rt.config is None:
        warnings.warn(f"{path.name} carries no Inception model config (not exported by this "
                      "package): it runs, but preprocessing, labels and the model name are "
                      "unknown (runtime.config is None)", ConfigUnknownWarning, stacklevel=2)
    return rt


def _warn_target_mismatch(path: Path, backend: str) -> None:
    """Warn, once per file and engine, when the file's Q/DQ layout was made for another one."""
    from .onnxmeta import calibration_info, load_onnx, metadata_props
    info = calibration_info(metadata_props(load_onnx(path)))
    message = mismatch(file_target(info["details"] if info else None), backend)
    if message is None:
        return
    key = (str(path.resolve()), backend)
    with _warned_lock:
        if key in _warned_targets:
            return
        _warned_targets.add(key)
    warnings.warn(f"{path.name}: {message}", TargetMismatchWarning, stacklevel=3)


def _model_file(path) -> Path:
    """``path`` as a Path to an existing file, or an error that says how to make one."""
    path = Path(path)
    if not path.exists():
        how = ("build one with `inception-engine build model.onnx --out model.plan`"
               if path.suffix.lower() in (".plan", ".engine") else
               "export one with `inception-engine export --model NAME --out model.onnx`")
        raise ArtifactError(f"{path}: no such file; {how}")
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory; pass the model file (.onnx or .plan)")
    return path


def _pick_backend(path: Path) -> str:
    """The first usable engine that runs ``path``'s file type, by ``auto`` rank."""
    suffix = path.suffix.lower()
    cands = _candidates(suffix)
    if not cands:
        runners = sorted({s for b in _b.BACKENDS.values() for s in b.formats})
        if suffix in runners:
            byname = [n for n, b in _b.BACKENDS.items() if suffix in b.formats]
            raise ArtifactError(f"{path}: {suffix} files are opened by naming the backend: "
                                f"{', '.join(byname)} (e.g. backend={byname[0]!r})")
        raise ArtifactError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
                            f"engines run {', '.join(runners)}")
    reasons = []
    for name in cands:
        ok, why = _b.check_available(name)
        if ok:
            return name
        reasons.append(f"  {name}: {why}")
    raise BackendUnavailableError(
        f"no engine on this machine can run {path.name}:\n" + "\n".join(reasons)
        + "\ninstall one of them (" + "; ".join(_b.BACKENDS[n].install for n in cands) + ")")


def _check_backend(backend: str, path: Path) -> None:
    """That the named ``backend`` reads ``path``'s file type and is usable here."""
    suffix = path.suffix.lower()
    b = _b.BACKENDS[backend]
    if suffix not in b.formats:
        others = [n for n, x in _b.BACKENDS.items() if suffix in x.formats]
        raise ArtifactError(
            f"the {backend} backend runs {', '.join(b.formats)} files, not {suffix or path.name}"
            + (f"; {path.name} runs on: {', '.join(others)}" if others else ""))
    ok, why = _b.check_available(backend)
    if not ok:
        alt = [n for n in available_backends(path) if n != backend]
        raise BackendUnavailableError(
            f"the {backend} backend is not usable here: {why}."
            + (f" {path.name} would run on: {', '.join(alt)} (backend={alt[0]!r})"
               if alt else f" No other installed engine runs {suffix} files."))
