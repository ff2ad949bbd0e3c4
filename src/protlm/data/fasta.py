"""Streaming FASTA reading with the input rules enforced record by record.

`scan_records` is the one parser: `read_fasta` and the offset index (data/index.py) both read
through it, so they accept the same files and report the same errors.

Errors name the file, the record and the line, so a user can find the offending entry.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from protlm.alphabet import Alphabet, InvalidSequenceError
from protlm.errors import NotFoundError, ProtlmError


class FastaError(ProtlmError, ValueError):
    """Malformed FASTA: the message names the file, the record and the line."""


@dataclass(frozen=True)
class Record:
    id: str  # first word of the header
    description: str  # whole header without '>'
    sequence: str


def is_gzip(path: str | Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None


def open_binary(path: str | Path) -> BinaryIO:
    """Open a plain or gzip-compressed file for reading bytes (gzip told by magic bytes, not suffix)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a plain or gzip-compressed UTF-8 text file (a byte-order mark is skipped)."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig")


def not_a_table(path: str | Path, e: Exception) -> str:
    """The message for a CSV/TSV that failed to read with a UnicodeDecodeError or csv.Error."""
    why = f"byte {e.start} is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
    return f"{path}: not a CSV/TSV text file ({why})"


@dataclass(frozen=True)
class RawRecord:
    """A record as the scanner finds it: only the framing is checked, nothing in it cleaned."""

    header: str  # the header line without '>', stripped
    body: str  # the sequence lines joined by newlines (Alphabet.clean drops the whitespace)
    line: int  # 1-based line number of the header
    start: int  # byte offset of the '>' in the (decompressed) file
    end: int  # byte offset just past the record's last line


def _decode(raw: bytes, name: str, lineno: int) -> str:
    # Text never holds NUL bytes, but binary data often decodes as (control-character) text.
    if b"\0" not in raw:
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            pass
    raise FastaError(f"{name}: line {lineno}: binary data, not FASTA text (is this the right file?)")


def scan_records(path: str | Path, name: str | None = None) -> Iterator[RawRecord]:
    """Every record of a FASTA file with its byte span, streaming; the one FASTA parser.

    Raises FastaError for binary data and for sequence data before the first header (lines
    starting with ';' there are comments). A UTF-8 byte-order mark at the start is skipped.
    `name` is the file as messages call it (default: `path`).
    """
    name = str(path) if name is None else name
    header, body, header_line, start, offset = None, [], 0, 0, 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # as Windows editors write
                    offset, raw = len(codecs.BOM_UTF8), raw[len(codecs.BOM_UTF8):]
                line = _decode(raw, name, lineno)
                if line.startswith(">"):
                    if header is not None:
                        yield RawRecord(header, "\n".join(body), header_line, start, offset)
                    header, body, header_line, start = line[1:].strip(), [], lineno, offset
                elif header is not None:
                    body.append(line)
                elif line.strip() and not line.startswith(";"):
                    raise FastaError(f"{name}: line {lineno}: sequence data before the first '>' "
                                     "header (is this a FASTA file?)")
                offset += len(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise FastaError(f"{name}: corrupt gzip file ({e})") from None
    if header is not None:
        yield RawRecord(header, "\n".join(body), header_line, start, offset)


def iter_raw_records(path: str | Path) -> Iterator[tuple[str, str, int]]:
    """(header, raw sequence, header line number) for each record, streaming, no validation."""
    for r in scan_records(path):
        yield r.header, r.body.replace("\n", ""), r.line


def _residue_line(raw: RawRecord, position: int) -> int:
    """The line holding the `position`-th (1-based) residue of a record."""
    seen = 0
    for i, line in enumerate(raw.body.split("\n")):
        seen += len("".join(line.split()))
        if seen >= position:
            return raw.line + 1 + i
    return raw.line


def read_fasta_spans(
    path: str | Path,
    alphabet: Alphabet | None = None,
    unknown: str | None = None,
    allow_empty_file: bool = False,
    name: str | None = None,
) -> Iterator[tuple[Record, int, int]]:
    """Validated records, each with its byte span [start, end) in the (decompressed) file.

    The rules: a non-empty header, unique IDs, residues in the alphabet (`unknown='X'` maps
    others to X instead of raising), a non-empty sequence, at least one record. Each broken rule
    raises FastaError naming the file (`name`, default `path`), the line and the record.
    """
    alphabet = alphabet or Alphabet()
    name = str(path) if name is None else name
    seen: set[str] = set()  # the one structure that grows with the file; IDs are short
    for raw in scan_records(path, name):
        if not raw.header:
            raise FastaError(f"{name}: line {raw.line}: empty header")
        rid = raw.header.split()[0]
        if rid in seen:
            raise FastaError(f"{name}: line {raw.line}: duplicate record ID {rid!r}")
        seen.add(rid)
        try:
            seq = alphabet.clean(raw.body, record=rid, unknown=unknown)
        except InvalidSequenceError as e:
            raise e.within(FastaError, f"{name}: line {_residue_line(raw, e.position)}") from e
        if not seq:
            raise FastaError(f"{name}: line {raw.line}: record {rid!r} has an empty sequence")
        yield Record(rid, raw.header, seq), raw.start, raw.end
    if not seen and not allow_empty_file:
        raise FastaError(f"{name}: no FASTA records found (empty file or not FASTA)")


def read_fasta(
    path: str | Path,
    alphabet: Alphabet | None = None,
    unknown: str | None = None,
    allow_empty_file: bool = False,
) -> Iterator[Record]:
    """Stream validated records: cleaned sequences, unique non-empty IDs, non-empty sequences.

    `unknown='X'` maps characters outside the alphabet to X instead of raising.
    """
    for rec, _, _ in read_fasta_spans(path, alphabet, unknown, allow_empty_file):
        yield rec


def load_fasta(path: str | Path, **kwargs) -> list[Record]:
    """Read and validate a whole file up front (every error is raised before any compute)."""
    return list(read_fasta(path, **kwargs))


def write_fasta(records: Iterable[tuple[str, str]], path: str | Path, width: int = 80) -> None:
    with open(path, "w") as fh:
        for rid, seq in records:
            fh.write(f">{rid}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
