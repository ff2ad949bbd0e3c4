"""On-disk offset index of a FASTA file: built once, memory-mapped, random access.

The index is a flat int64 table (one row per record: byte start, byte end, residue count, ID
hash) next to the FASTA file, so opening a 50-GB UniRef50 costs a memory map, not a parse, and
resident memory does not grow with the file. A gzip file cannot be seeked cheaply, so it is
decompressed once (streaming) into `<file>.protlm.fasta` and that copy is indexed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protlm.alphabet import Alphabet, InvalidSequenceError
from protlm.data.fasta import FastaError, Record
from protlm.io import atomic_path, atomic_write

COLUMNS = ("start", "end", "length", "id_hash")
_VERSION = 1


def id_hash(record_id: str) -> int:
    """A stable signed 64-bit hash of a record ID (blake2b; Python's hash() is salted per run)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little", signed=True)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"version": _VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _scan(path: Path, rows_out, alphabet: Alphabet) -> int:
    """Stream the file once, writing one int64 row per record; validates as it goes."""
    n, start, header, header_line, length, ids = 0, None, None, 0, 0, set()

    def flush(end: int):
        nonlocal n
        if header is None:
            return
        rid = header.split()[0] if header.split() else ""
        if not rid:
            raise FastaError(f"{path}: line {header_line}: empty header")
        if rid in ids:  # a set of IDs is the one structure that grows; UniRef IDs are short
            raise FastaError(f"{path}: line {header_line}: duplicate record ID {rid!r}")
        if length == 0:
            raise FastaError(f"{path}: line {header_line}: record {rid!r} has no sequence")
        ids.add(rid)
        rows_out.write(np.array([start, end, length, id_hash(rid)], dtype=np.int64).tobytes())
        n += 1

    with open(path, "rb") as fh:
        offset, lineno = 0, 0
        for raw in fh:
            lineno += 1
            if raw.startswith(b">"):
                flush(offset)
                start, header, header_line, length = offset, raw[1:].decode().strip(), lineno, 0
            elif header is None:
                if raw.strip():
                    raise FastaError(f"{path}: line {lineno}: sequence data before the first '>' header")
            else:
                rid = header.split()[0] if header.split() else "?"
                try:
                    length += len(alphabet.clean(raw.decode(), record=rid))
                except InvalidSequenceError as e:
                    raise FastaError(f"{path}: line {lineno}: {e}") from None
            offset += len(raw)
        flush(offset)
    if n == 0:
        raise FastaError(f"{path}: no FASTA records found")
    return n


@dataclass
class FastaIndex:
    """Random access to the records of a FASTA file through its memory-mapped index."""

    fasta: Path
    table: np.ndarray  # (N, 4) int64, memory-mapped: start, end, length, id_hash

    @classmethod
    def open(cls, path: str | Path, alphabet: Alphabet | None = None) -> "FastaIndex":
        """Open `path`, building (atomically) or rebuilding a stale index first."""
        path = Path(path)
        if _is_gzip(path):
            path = _decompressed(path)
        idx, meta = Path(f"{path}.pidx"), Path(f"{path}.pidx.json")
        if not (meta.is_file() and idx.is_file() and json.loads(meta.read_text()).get("stamp") == _stamp(path)):
            build_index(path, alphabet or Alphabet())
        n = json.loads(meta.read_text())["n"]
        table = np.memmap(idx, dtype=np.int64, mode="r", shape=(n, len(COLUMNS)))
        return cls(path, table)

    def __len__(self) -> int:
        return self.table.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        return self.table[:, 2]

    @property
    def id_hashes(self) -> np.ndarray:
        return self.table[:, 3]

    def __getitem__(self, i: int) -> Record:
        start, end = int(self.table[i, 0]), int(self.table[i, 1])
        with open(self.fasta, "rb") as fh:
            fh.seek(start)
            text = fh.read(end - start).decode()
        header, _, body = text.partition("\n")
        header = header[1:].strip()
        seq = "".join(body.split()).upper()
        return Record(header.split()[0], header, seq[:-1] if seq.endswith("*") else seq)


def build_index(path: Path, alphabet: Alphabet) -> None:
    idx, meta = Path(f"{path}.pidx"), Path(f"{path}.pidx.json")
    with atomic_path(idx) as tmp, open(tmp, "wb") as out:
        n = _scan(path, out, alphabet)
    atomic_write(meta, json.dumps({"n": n, "columns": COLUMNS, "stamp": _stamp(path)}))


def _decompressed(path: Path) -> Path:
    plain = Path(f"{path}.protlm.fasta")
    if plain.is_file() and plain.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        return plain
    with atomic_path(plain) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return plain
