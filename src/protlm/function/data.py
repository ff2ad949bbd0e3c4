"""Labelled protein data for function prediction, and the embedding cache.

Inputs: a CSV/TSV with ID, sequence and label columns, or a FASTA whose '|'-separated header
fields carry the label (`label_field`, 0-based: `0|beta-lactamase_P20P|1.58` -> field 2 = 1.58).
"""

from __future__ import annotations

from protlm.errors import ProtlmError
import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from protlm.alphabet import Alphabet, InvalidSequenceError
from protlm.data.fasta import not_a_table, open_text, read_fasta
from protlm.io import atomic_path
from protlm.io import sequence_hash

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fna")


class LabelError(ProtlmError, ValueError):
    """Bad labelled input; the message names the file and the record."""


@dataclass
class LabelledData:
    ids: list[str]
    sequences: list[str]
    labels: list[str]  # raw text; `as_targets` turns them into floats or class names
    groups: list[str] | None = None
    lines: list[int] | None = None  # each record's line in a table (for messages)

    def where(self, i: int) -> str:
        """'line N: record ID' (tables) or 'record ID' (FASTA), for error messages."""
        line = f"line {self.lines[i]}: " if self.lines else ""
        return f"{line}record {self.ids[i]!r}"


def is_fasta(path: str | Path) -> bool:
    name = str(path).lower().removesuffix(".gz")
    if name.endswith(FASTA_SUFFIXES):
        return True
    if name.endswith((".csv", ".tsv", ".tab", ".txt")):
        return False
    with open_text(path) as f:
        try:
            return f.read(1) == ">"
        except UnicodeDecodeError:
            return False  # load_table says what is wrong with it


def header_field(description: str, index: int, path, rid: str) -> str:
    """The `index`-th (0-based) '|'-separated field of a FASTA header."""
    fields = description.split("|")
    if not -len(fields) <= index < len(fields):
        raise LabelError(f"{path}: record {rid!r}: header {description!r} has {len(fields)} "
                         f"'|'-separated fields, no field {index} (0-based)")
    return fields[index].strip()


def load_fasta_labels(path, label_field: int | None, group_field: int | None = None,
                      unknown: str | None = None) -> LabelledData:
    """Records of a FASTA; labels (and groups) from header fields. No label field -> labels ''.

    `unknown` (e.g. 'X') replaces characters outside the alphabet, as in read_fasta."""
    data = LabelledData([], [], [], [] if group_field is not None else None)
    for rec in read_fasta(path, unknown=unknown):
        data.ids.append(rec.id)
        data.sequences.append(rec.sequence)
        data.labels.append("" if label_field is None else header_field(rec.description, label_field, path, rec.id))
        if group_field is not None:
            data.groups.append(header_field(rec.description, group_field, path, rec.id))
    return data


def load_table(path, target: str | None, id_col: str = "id", seq_col: str = "sequence",
               group_col: str | None = None, unknown: str | None = None) -> LabelledData:
    """Rows of a CSV (or TSV, by suffix) with an ID, a sequence and (optionally) a label column."""
    try:
        return _read_table(path, target, id_col, seq_col, group_col, unknown)
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabelError(not_a_table(path, e)) from None


def _read_table(path, target, id_col, seq_col, group_col, unknown) -> LabelledData:
    alphabet = Alphabet()
    delim = "\t" if str(path).lower().removesuffix(".gz").endswith((".tsv", ".tab")) else ","
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delim)
        cols = [c for c in (id_col, seq_col, target, group_col) if c is not None]
        if not reader.fieldnames:
            raise LabelError(f"{path}: empty file (expected a header line with the columns {cols})")
        missing = [c for c in cols if c not in reader.fieldnames]
        if missing:
            raise LabelError(f"{path}: missing column(s) {missing}; columns are {reader.fieldnames}")
        data = LabelledData([], [], [], [] if group_col else None, lines=[])
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            rid = (row[id_col] or "").strip()
            if not rid or rid in seen:
                raise LabelError(f"{path}: line {line}: {'empty' if not rid else 'duplicate'} ID {rid!r}")
            seen.add(rid)
            try:
                seq = alphabet.clean(row[seq_col] or "", rid, unknown)
            except InvalidSequenceError as e:
                raise e.within(LabelError, f"{path}: line {line}") from None
            if not seq:
                raise LabelError(f"{path}: line {line}: record {rid!r} has an empty sequence")
            data.ids.append(rid)
            data.lines.append(line)
            data.sequences.append(seq)
            data.labels.append((row[target] or "").strip() if target else "")
            if group_col:
                data.groups.append((row[group_col] or "").strip())
    if not data.ids:
        raise LabelError(f"{path}: no rows")
    return data


def load_labelled(path, target: str | None = None, label_field: int | None = None,
                  id_col: str = "id", seq_col: str = "sequence", group_col: str | None = None,
                  group_field: int | None = None, unknown: str | None = None) -> LabelledData:
    """CSV/TSV (by `target` column) or FASTA (by `label_field` header field)."""
    fasta = is_fasta(path)
    # an option of the other input kind would otherwise surface as "record has no label"
    if fasta and target is not None and label_field is None:
        raise LabelError(f"{path}: a FASTA file has no columns: give --label-from-header FIELD, not --target")
    if not fasta and (label_field is not None or group_field is not None):
        flag = "--label-from-header" if label_field is not None else "--group-from-header"
        raise LabelError(f"{path}: {flag} reads FASTA headers; for a CSV/TSV name columns "
                         "(--target, --group)")
    if fasta:
        return load_fasta_labels(path, label_field, group_field, unknown)
    return load_table(path, target, id_col, seq_col, group_col, unknown)


def as_targets(data: LabelledData, task: str, path="input") -> np.ndarray:
    """Regression -> float64 array; classification -> array of class names (str)."""
    for i, lab in enumerate(data.labels):
        if lab == "":
            raise LabelError(f"{path}: {data.where(i)} has no label")
    if task == "classification":
        return np.array(data.labels, dtype=object)
    out = np.empty(len(data.labels))
    for i, lab in enumerate(data.labels):
        try:
            out[i] = float(lab)
        except ValueError:
            raise LabelError(f"{path}: {data.where(i)}: label {lab!r} is not a number "
                             "(regression needs numeric labels)") from None
        if not np.isfinite(out[i]):
            raise LabelError(f"{path}: {data.where(i)}: label {lab!r} is not finite")
    return out


class EmbeddingCache:
    """Pooled vectors keyed by sequence hash, one .npz per (model, layer, pooling).

    Keyed by content, not record ID, so a record whose sequence changed is never served an old
    vector (what embed and contacts check with stored hashes holds here by construction).

    Saved with protlm.io.atomic_path, so a kill never leaves a broken cache.
    """

    def __init__(self, cache_dir: str | Path, model_id: str, layer: int, pooling: str):
        self.dir = Path(cache_dir)
        ident = json.dumps({"model": model_id, "layer": layer, "pooling": pooling}, sort_keys=True)
        self.path = self.dir / f"emb_{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"
        self.ident = ident
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as z:
                if str(z["ident"]) == ident:
                    self.vectors = dict(zip(z["keys"].tolist(), z["x"]))

    def missing(self, seqs: Sequence[str]) -> list[str]:
        """Distinct sequences not yet cached, in first-seen order."""
        return list(dict.fromkeys(s for s in seqs if sequence_hash(s) not in self.vectors))

    def add(self, seqs: Sequence[str], x_ND: np.ndarray) -> None:
        for s, v in zip(seqs, x_ND):
            self.vectors[sequence_hash(s)] = v
        self.save()

    def get(self, seqs: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[sequence_hash(s)] for s in seqs])

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        with atomic_path(self.path, suffix=".npz") as tmp:
            np.savez(tmp, ident=np.array(self.ident), keys=np.array(keys),
                     x=np.stack([self.vectors[k] for k in keys]))
