"""Write-then-rename, the one way the project writes a file: the data goes to a temporary
name beside the target (unique per process and thread, from ``tempfile.mkstemp``), then
``os.replace`` puts it under the final name.

A crash or an exception never leaves a half-written file under the final name, a reader
never sees one, and two writers of one target (threads of the autotune cache, parallel
runs of the AOT report) never share a temporary file. Standard library only: the engine's
``engine.fileio`` adds its target checks on top of this, and the kernels' own writers (the
tuning cache, the AOT report and dumps) use it directly.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path in the target's directory (created if missing); rename
    it to ``path`` when the block succeeds, remove it when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; written files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
