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
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protlm.alphabet import Alphabet
from protlm.data.fasta import Record, is_gzip, read_fasta_spans
from protlm.io import atomic_path, atomic_write

COLUMNS = ("start", "end", "length", "id_hash")
_VERSION = 1


def id_hash(record_id: str) -> int:
    """A stable signed 64-bit hash of a record ID (blake2b; Python's hash() is salted per run)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little", signed=True)


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"version": _VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _scan(path: Path, rows_out, alphabet: Alphabet, name: str) -> int:
    """Validate the file (read_fasta's rules and messages) and write one int64 row per record."""
    n, rows = 0, array("q")
    for rec, start, end in read_fasta_spans(path, alphabet, name=name):
        rows.extend((start, end, len(rec.sequence), id_hash(rec.id)))
        n += 1
        if len(rows) >= 1 << 16:
            rows.tofile(rows_out)
            del rows[:]
    rows.tofile(rows_out)
    return n


@dataclass
class FastaIndex:
    """Random access to the records of a FASTA file through its memory-mapped index."""

    fasta: Path
    table: np.ndarray  # (N, 4) int64, memory-mapped: start, end, length, id_hash

    @classmethod
    def open(cls, path: str | Path, alphabet: Alphabet | None = None) -> "FastaIndex":
        """Open `path`, building (atomically) or rebuilding a stale index first."""
        path = name = Path(path)
        if is_gzip(path):
            path = _decompressed(path)
        idx, meta = Path(f"{path}.pidx"), Path(f"{path}.pidx.json")
        if not (meta.is_file() and idx.is_file() and json.loads(meta.read_text()).get("stamp") == _stamp(path)):
            build_index(path, alphabet or Alphabet(), str(name))
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


def build_index(path: Path, alphabet: Alphabet, name: str | None = None) -> None:
    """Write `<path>.pidx` and its metadata; errors call the file `name` (default: `path`)."""
    idx, meta = Path(f"{path}.pidx"), Path(f"{path}.pidx.json")
    with atomic_path(idx) as tmp, open(tmp, "wb") as out:
        n = _scan(path, out, alphabet, name or str(path))
    atomic_write(meta, json.dumps({"n": n, "columns": COLUMNS, "stamp": _stamp(path)}))


def _decompressed(path: Path) -> Path:
    plain = Path(f"{path}.protlm.fasta")
    if plain.is_file() and plain.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        return plain
    with atomic_path(plain) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return plain
