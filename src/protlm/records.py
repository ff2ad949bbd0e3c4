"""How resumable outputs name records: IDs become file names through one injective encoding,
so two IDs never share a file (a rerun would skip the second as done).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

MAX_STEM = 128  # encoded IDs longer than this are shortened (file names stop at 255 bytes)
_KEEP_CHARS = 80  # of a shortened stem: the readable start kept before the hash


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
