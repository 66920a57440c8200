"""The Triton Inference Server's processes: a guard that ends them when their parent dies, and
who holds a port.

The server runs in its own process group with its Python-backend stubs, and each stub shares
memory with the server through ``/dev/shm`` regions named with a prefix chosen by the parent.
If the parent is killed (SIGKILL included) nothing in the server notices: a parent-death
signal set on the server reaches the server only, not the stubs it starts, and nobody unlinks
the regions. So the parent starts this guard (``python -m engine.tritonguard``) with the read
end of a pipe as its stdin and keeps the write end:

- the parent writes the server's process group id, one line;
- the guard then blocks reading its stdin. End of file means the parent is gone (the kernel
  closes the write end whatever killed it): the guard ends the whole group (SIGTERM, then
  SIGKILL after a grace period) and unlinks ``/dev/shm/<prefix>*``;
- an orderly stop writes ``q`` first: the parent has already ended the group, so the guard
  only unlinks what is left in ``/dev/shm``.

The guard runs in a session of its own, so a Ctrl-C aimed at the parent's terminal does not
end it before the parent has stopped the server.

:func:`port_holder` names the process listening on a TCP port (from ``/proc/net/tcp`` and
``/proc/net/tcp6``, then the socket links under ``/proc/*/fd``), for a clear "port in use"
error.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

SHM_DIR = Path("/dev/shm")
GRACE_S = 5.0
_LISTEN = "0A"          # TCP state "listen" in /proc/net/tcp


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def end_group(pgid: int, grace: float = GRACE_S) -> None:
    """SIGTERM to group ``pgid``; SIGKILL what is left after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def remove_shm(prefix: str) -> None:
    """Unlink the shared-memory regions named ``<prefix>*``."""
    if not prefix:
        raise ValueError("an empty prefix would name every shared-memory region")
    for region in SHM_DIR.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            region.unlink()


class Guard:
    """The parent's side of the guard: :meth:`watch` after the server started, :meth:`stop`
    after it stopped."""

    def __init__(self, shm_prefix: str):
        self.shm_prefix = shm_prefix
        read_end, self._write_end = os.pipe()   # neither end is inherited by the server
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.tritonguard", shm_prefix], stdin=read_end,
                stdout=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                    [str(Path(__file__).resolve().parent.parent)]
                    + [p for p in [os.environ.get("PYTHONPATH")] if p])))
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def watch(self, pgid: int) -> None:
        os.write(self._write_end, f"{int(pgid)}\n".encode())

    def stop(self, timeout: float = 10.0) -> None:
        """Tell the guard the server is stopped; it unlinks what is left and exits."""
        if self._write_end is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_end, b"q")
        os.close(self._write_end)
        self._write_end = None
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serve_as_guard(shm_prefix: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    line = stdin.readline()
    pgid = int(line) if line.strip().isdigit() else None
    orderly = stdin.read(1) == b"q"        # b"" is end of file: the parent is gone
    if pgid is not None and not orderly:
        end_group(pgid)
    remove_shm(shm_prefix)
    return 0


# ---------------------------------------------------------------------------------------------
# who holds a port

def _listening_inodes(port: int):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if len(cols) > 9 and cols[3] == _LISTEN and \
                        int(cols[1].rsplit(":", 1)[1], 16) == port:
                    yield cols[9]


def port_holder(port: int) -> Optional[Tuple[int, str]]:
    """``(pid, command line)`` of a process listening on TCP ``port``, or None when none is
    found (none listens, or it belongs to another user whose ``/proc`` entries are closed)."""
    links = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not links:
        return None
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in links:
                        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                        return int(proc.name), cmd.decode(errors="replace").strip()
    return None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m engine.tritonguard SHM_PREFIX  (stdin: the parent's pipe)")
    sys.exit(_serve_as_guard(sys.argv[1]))
