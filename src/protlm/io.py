"""How protlm writes outputs: atomically, one writer at a time, records named and recognised.

- Atomic writes (`atomic_path`, `atomic_write`): a reader (or a resumed run) sees either the old
  file or the complete new one, never a torn one. The data goes to a uniquely named temporary
  file in the same folder (same filesystem, so the rename is atomic), is fsynced, then renamed
  over the target; the temporary file is removed if anything fails on the way. Only a kill can
  leave a temporary file behind; `stale_temps` finds those, for the job holding the lock.
- One writer per output (`output_lock`): every long job that writes an output holds its lock
  throughout. Two jobs writing one output would interleave shards, indexes and temporary files
  (one removes the other's work in progress) and HDF5 refuses a file another process has open.
  The lock is an exclusive `fcntl.flock` on `OUTPUT.lock` beside the output, holding the
  writer's PID for the message a second writer gets. The kernel drops a flock when its process
  ends however it ends, so a killed job never leaves a stale lock; the file itself is removed on
  a normal exit.
- Records of resumable outputs: a rerun skips the records an output already holds. The ID alone
  cannot tell whether the sequence behind it changed, so each record is stored with the SHA-256
  of its sequence and a changed one is refused (or recomputed when asked); and IDs become file
  names through one injective encoding (`record_stem`), so two IDs never share a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

from protlm.errors import ProtlmError


# ------------------------------------------------------------------ atomic writes
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


# ------------------------------------------------------------------ one writer per output
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


# ------------------------------------------------------------------ records of resumable outputs
MAX_STEM = 128  # encoded IDs longer than this are shortened (file names stop at 255 bytes)
_KEEP_CHARS = 80  # of a shortened stem: the readable start kept before the hash


class ChangedRecordsError(ProtlmError, ValueError):
    """Records already in an output have another sequence now; the message names them."""


def sequence_hash(sequence: str) -> str:
    """SHA-256 (hex) of a cleaned sequence: what an output stores to recognise it on resume."""
    return hashlib.sha256(sequence.encode()).hexdigest()


def record_stem(rid: str) -> str:
    """File name stem for record `rid`; distinct IDs always give distinct stems.

    Every character but ASCII letters, digits, '_', '-' and '.' is percent-encoded (UTF-8), and
    so is a leading '.' or '-', so stems hold no '/', are never '.', '..', hidden or option-like,
    and `urllib.parse.unquote(stem)` gives the ID back. An encoded ID over MAX_STEM characters
    keeps its first 80 and ends in '%-' + 32 hex digits of the ID's SHA-256: not reversible, and
    never equal to a plain encoding, where '%' is always followed by two hex digits.
    """
    stem = quote(rid, safe="").replace("~", "%7E")  # quote keeps '~'; shells expand a leading one
    if stem[0] in ".-":
        stem = f"%{ord(stem[0]):02X}{stem[1:]}"
    if len(stem) > MAX_STEM:
        stem = f"{stem[:_KEEP_CHARS]}%-{hashlib.sha256(rid.encode()).hexdigest()[:32]}"
    return stem


def changed_records(stored: dict[str, str | None], current: Iterable[tuple[str, str]]) -> list[str]:
    """IDs of `current` (id, sequence hash) pairs stored under another (or no) hash."""
    return [rid for rid, h in current if rid in stored and stored[rid] != h]


def check_changed(output, changed: list[str], overwrite: bool) -> None:
    """Refuse to resume over changed records unless `overwrite` (then they are recomputed)."""
    if not changed or overwrite:
        return
    names = ", ".join(repr(r) for r in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise ChangedRecordsError(
        f"{output}: {len(changed)} record(s) already there have another sequence now (or were "
        f"written without a sequence hash): {names}; rerun with --overwrite-changed to recompute "
        "them, or write to another output")
