"""Streaming FASTA reading with the input rules enforced record by record.

Errors name the file, the record and the line, so a user can find the offending entry.
"""

from __future__ import annotations

from protlm.errors import ProtlmError
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from protlm.alphabet import Alphabet, InvalidSequenceError


class FastaError(ProtlmError, ValueError):
    """Malformed FASTA: the message names the file, the record and the line."""


@dataclass(frozen=True)
class Record:
    id: str  # first word of the header
    description: str  # whole header without '>'
    sequence: str


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a plain or gzip-compressed text file (detected by magic bytes, not the suffix)."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_raw_records(path: str | Path) -> Iterator[tuple[str, str, int]]:
    """(header, raw sequence, header line number) for each record, streaming, no validation."""
    header, chunks, header_line = None, [], 0
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if header is not None:
                    yield header, "".join(chunks), header_line
                header, chunks, header_line = line[1:].strip(), [], lineno
            elif header is None:
                if line.strip() and not line.startswith(";"):
                    raise FastaError(f"{path}: line {lineno}: sequence data before the first '>' header "
                                     "(is this a FASTA file?)")
            else:
                chunks.append(line)
    if header is not None:
        yield header, "".join(chunks), header_line


def read_fasta(
    path: str | Path,
    alphabet: Alphabet | None = None,
    unknown: str | None = None,
    allow_empty_file: bool = False,
) -> Iterator[Record]:
    """Stream validated records: cleaned sequences, unique non-empty IDs, non-empty sequences.

    `unknown='X'` maps characters outside the alphabet to X instead of raising.
    """
    alphabet = alphabet or Alphabet()
    seen: set[str] = set()
    n = 0
    for header, raw, lineno in iter_raw_records(path):
        if not header:
            raise FastaError(f"{path}: line {lineno}: empty header")
        rid = header.split()[0]
        if rid in seen:
            raise FastaError(f"{path}: line {lineno}: duplicate record ID {rid!r}")
        seen.add(rid)
        try:
            seq = alphabet.clean(raw, record=rid, unknown=unknown)
        except InvalidSequenceError as e:
            raise FastaError(f"{path}: {e}") from e
        if not seq:
            raise FastaError(f"{path}: line {lineno}: record {rid!r} has an empty sequence")
        n += 1
        yield Record(rid, header, seq)
    if n == 0 and not allow_empty_file:
        raise FastaError(f"{path}: no FASTA records found (empty file or not FASTA)")


def load_fasta(path: str | Path, **kwargs) -> list[Record]:
    """Read and validate a whole file up front (every error is raised before any compute)."""
    return list(read_fasta(path, **kwargs))


def validate_fasta(path: str | Path, **kwargs) -> int:
    """Validate a file in one streaming pass (memory flat in the number of records but the
    set of IDs); returns the record count."""
    return sum(1 for _ in read_fasta(path, **kwargs))


def write_fasta(records: Iterable[tuple[str, str]], path: str | Path, width: int = 80) -> None:
    with open(path, "w") as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
