"""File I/O: atomic artifact writes, and numpy array files read without unpickling.

Writes go to a temporary name beside the target, then a rename: a crash or an exception
never leaves a half-written file under the final name, and an existing file is only replaced
once the new one is complete. The write-then-rename itself is :mod:`kernels.atomic` (the
lowest layer, so the kernels' own writers share it); this module adds the engine's check of
the target and its :class:`ArtifactError`.

``.npy``/``.npz`` files are read with :func:`load_npy` / :func:`load_npz`: an array of Python
objects (which numpy loads only with ``allow_pickle=True``, that is by unpickling, which can
run arbitrary code) is refused before loading, with a message that says how to save it as a
numeric array.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from kernels.atomic import atomic_path as _atomic_path
from kernels.atomic import atomic_write_bytes as _atomic_write_bytes

from .errors import ArtifactError, InputError


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path in the target's directory; rename it to ``path`` on success
    (:func:`kernels.atomic.atomic_path`, the project's one write-then-rename).

    On an exception the temporary file is removed and the target is left untouched. A target
    that is a directory, or one under an existing file, is an :class:`ArtifactError` naming
    the target before anything is written.
    """
    path = Path(path)
    check_writable_target(path)
    with _atomic_path(path, suffix) as tmp:
        yield tmp


def check_writable_target(path: Path) -> None:
    """Refuse a target that is a directory, or whose nearest existing parent is a file."""
    if path.is_dir():
        raise ArtifactError(f"cannot write {path}: it is a directory; pass a file path "
                            "for the output (a file name inside that directory, or elsewhere)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ArtifactError(f"cannot write {path}: {parent} is a file, not a directory; choose "
                            "an output path in a directory")


def atomic_write_bytes(path, data: bytes):
    check_writable_target(Path(path))
    _atomic_write_bytes(path, data)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- numpy files
def _header_dtype(f) -> Optional[tuple]:
    """``(shape, dtype)`` from the header of an ``.npy`` stream, or None when it is not one
    (``np.load`` then says what is wrong with it)."""
    fmt = np.lib.format
    try:
        major, _ = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, SyntaxError, OSError, EOFError):   # left to np.load's own error
        return None
    return shape, dtype


def _refuse_objects(path: Path, header: Optional[tuple], key: Optional[str] = None) -> None:
    if header is None or not header[1].hasobject:
        return
    shape, _ = header
    where = f"{path} (array {key!r})" if key is not None else str(path)
    save = (f"np.savez(path, {key}=x, ...)" if key is not None else "np.save(path, x)")
    raise InputError(
        f"{where} holds Python objects (dtype object, shape {tuple(shape)}), not numbers: numpy "
        "loads those only by unpickling (allow_pickle=True), which can run arbitrary code, so "
        "they are not read. Save a numeric array instead (float32 NCHW model input, or uint8 "
        "images): where the file was made, convert it with x = np.stack(list(arr))"
        f".astype(np.float32) (or .astype(np.uint8) for images) and {save}")


def load_npy(path, mmap_mode: Optional[str] = None) -> np.ndarray:
    """The array of an ``.npy`` file (memory-mapped with ``mmap_mode``), never unpickled: an
    array of Python objects is an :class:`InputError` saying how to save a numeric one."""
    path = Path(path)
    with open(path, "rb") as f:
        _refuse_objects(path, _header_dtype(f))
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def load_npz(path) -> Dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file as ``{name: array}``, never unpickled: an array of
    Python objects is an :class:`InputError` naming it and saying how to save a numeric one."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        for member in z.zip.namelist():
            key = member[:-4] if member.endswith(".npy") else member
            with z.zip.open(member) as f:
                _refuse_objects(path, _header_dtype(f), key)
        return {k: z[k] for k in z.files}
