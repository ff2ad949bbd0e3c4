"""How resumable outputs name and recognise records: file names from IDs, sequence hashes.

A rerun skips the records an output already holds. The ID alone cannot tell whether the
sequence behind it changed, so each record is stored with the SHA-256 of its sequence and a
changed one is refused (or recomputed when asked); and IDs become file names through one
injective encoding, so two IDs never share a file.
"""

from __future__ import annotations

import hashlib
from typing import Iterable
from urllib.parse import quote

from protlm.errors import ProtlmError

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
