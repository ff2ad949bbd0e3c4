"""Atomic file writes: the one way protlm publishes a file.

A reader (or a resumed run) sees either the old file or the complete new one, never a torn one:
the data goes to a uniquely named temporary file in the same folder (same filesystem, so the
rename is atomic), is fsynced, then renamed over the target; the temporary file is removed if
anything fails on the way. Only a kill can leave a temporary file behind; `stale_temps` finds
those, for a job that holds the output's lock (protlm.lock) to remove.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
from pathlib import Path
from typing import Iterator


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(path: Path, suffix: str) -> Path:
    """Create an empty, unique `.<name>.<random>.tmp<suffix>` beside `path`.

    Not tempfile.mkstemp: its files are mode 0600, and the published file would keep that mode;
    os.open with 0o666 lets the umask decide, as for any other file the user creates.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed to `path`.

    The temporary name ends with `suffix`, for writers that add or insist on an extension
    (numpy's `.npy`/`.npz`, matplotlib's format detection).
    """
    path = Path(path)
    tmp = _new_temp(path, suffix)
    mode = os.stat(tmp).st_mode & 0o777  # what the umask allows
    try:
        yield tmp
        # a writer that replaces the file (safetensors' save_file does) leaves it 0600
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable too (not possible everywhere)
        fsync_path(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def stale_temps(path: str | Path) -> list[Path]:
    """Temporary files that atomic_path left beside `path` when its process was killed (only
    its own: the temps of `path.x` do not match)."""
    path = Path(path)
    own = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp")
    names = glob.glob(f".{glob.escape(path.name)}.*.tmp*", root_dir=path.parent)
    return [path.parent / n for n in names if own.match(n)]
