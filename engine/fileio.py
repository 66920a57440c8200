"""Atomic artifact writes: write to a temporary name beside the target, then rename.

A crash or an exception never leaves a half-written file under the final name, and an
existing file is only replaced once the new one is complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ArtifactError


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path in the target's directory; rename it to ``path`` on success.

    On an exception the temporary file is removed and the target is left untouched. A target
    that is a directory, or one under an existing file, is an :class:`ArtifactError` naming
    the target before anything is written.
    """
    path = Path(path)
    check_writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
