"""One writer per output: every long job that writes an output holds its lock throughout.

Two jobs writing one output would interleave shards, indexes and temporary files (one removes
the other's work in progress) and HDF5 refuses a file another process has open. The lock is an
exclusive `fcntl.flock` on `OUTPUT.lock` beside the output, holding the writer's PID for the
message a second writer gets. The kernel drops a flock when its process ends however it ends,
so a killed job never leaves a stale lock; the file itself is removed on a normal exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from protlm.errors import ProtlmError


class OutputLockedError(ProtlmError):
    """Another process is writing the same output."""


def lock_path(output: str | Path) -> Path:
    """`OUTPUT.lock` beside OUTPUT (a file or a folder), never inside it."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold the lock of `output` (creating its parent folder) or raise OutputLockedError at once."""
    lock = lock_path(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, output)
    try:
        yield lock
    finally:
        # Unlinked while still locked: a process that opened this file meanwhile gets the lock
        # only after we close, then sees the file is gone (_acquire) and starts over.
        lock.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock: Path, output) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "(unknown)"
            os.close(fd)
            raise OutputLockedError(f"{output} is being written by process {holder}; wait for it "
                                    "to finish, or write to another output") from None
        if _same_file(fd, lock):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # locked a file its holder removed on release: try the current one


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)
