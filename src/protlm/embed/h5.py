"""The HDF5 file format of `protlm embed`: one row per record, in columns.

One group per record cost about 1-2 ms to write (HDF5 creates each group, attribute and dataset
one by one), which capped the writer at ~500 records/s: slower than a GPU embeds short proteins.
A file (a batch shard, or the finished output) therefore holds its records as rows:

    attrs: model, layers, include, long, dtype, protlm_version, layout
    id               (N,)                  str     the record ID (first word of the header)
    description      (N,)                  str     the whole header
    length           (N,)                  int64   input residues
    sequence_sha256  (N,)                  str     SHA-256 of the sequence ("" if unknown)
    truncated_from   (N,)                  int64   length before --long truncate, -1 if not cut
    mean, bos        (N, n_layers, d)              if included
    per_tok          (sum of L, n_layers, d)       if included; rows of record i are
    per_tok_offset   (N + 1,)              int64   per_tok[per_tok_offset[i]:per_tok_offset[i+1]]
    contacts         (sum of L*L,)                 if included; record i's (L, L) map, flattened,
    contacts_offset  (N + 1,)              int64   between contacts_offset[i] and [i + 1]

`EmbeddingsFile` reads records by ID from any such file, from the link index of a running
output (layout "links": `/shards/<name>` links to each batch file, a later one overriding an
earlier one's record), and from files of protlm before this format (one group per record).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
import torch

from protlm.errors import InputError, NotFoundError

FIELDS = ("description", "length", "sequence_sha256", "truncated_from")  # per-record scalars
FIXED = ("mean", "bos")  # (N, n_layers, d)
RAGGED = ("per_tok", "contacts")  # concatenated rows + an offset column
STR = h5py.string_dtype()
BLOCK_ROWS = 4096  # rows copied at a time when merging
BLOCK_ELEMENTS = 1 << 26  # at most this many ragged values read at once (unless one record has more)


def read_meta(f: h5py.File | h5py.Group) -> dict:
    a = f.attrs
    meta = {k: a[k] for k in ("model", "long", "dtype") if k in a}
    if "layers" in a:
        meta["layers"] = [int(i) for i in a["layers"]]
    if "include" in a:
        meta["include"] = str(a["include"]).split(",")
    return meta


def write_meta(f: h5py.File, meta: dict, layout: str) -> None:
    for k, v in meta.items():
        if k == "include":
            v = ",".join(v)
        f.attrs[k] = np.asarray(v, dtype=np.int64) if k == "layers" else v
    f.attrs["layout"] = layout  # 'shard', 'links' while running, 'consolidated' when finished


def columns(results: list, layers: list[int]) -> dict[str, np.ndarray]:
    """The rows of `results` (EmbedResults) as the file's columns."""
    cols: dict[str, np.ndarray] = {
        "id": np.array([r.id for r in results], dtype=object),
        "description": np.array([r.description for r in results], dtype=object),
        "length": np.array([r.length for r in results], dtype=np.int64),
        "sequence_sha256": np.array([r.sequence_sha256 or "" for r in results], dtype=object),
        "truncated_from": np.array([-1 if r.truncated_from is None else r.truncated_from
                                    for r in results], dtype=np.int64)}
    for name in FIXED + RAGGED:
        have = [getattr(r, name) is not None for r in results]
        if not any(have):
            continue
        if not all(have):
            raise ValueError(f"'{name}' is missing from some records of the batch")
        if name == "contacts":
            parts = [r.contacts.reshape(-1) for r in results]
            sizes = [p.numel() for p in parts]
        else:  # {layer: (D,)} or {layer: (L, D)} -> (n_layers, D) or (L, n_layers, D)
            dim = 0 if name in FIXED else 1
            parts = [torch.stack([getattr(r, name)[k] for k in layers], dim) for r in results]
            sizes = [p.shape[0] for p in parts]
        if name in FIXED:
            cols[name] = torch.stack(parts).numpy()
        else:
            cols[name] = torch.cat(parts).numpy()
            cols[f"{name}_offset"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return cols


def write_columns(f: h5py.File, cols: dict[str, np.ndarray]) -> None:
    for name, data in cols.items():
        f.create_dataset(name, data=data, dtype=STR if data.dtype == object else data.dtype)


class Rows:
    """The records of one columnar file (or linked shard group): id -> row, and row readers."""

    def __init__(self, g: h5py.Group):
        self.g = g
        self.ids = [str(x) for x in g["id"].asstr()[()]]
        self.row = {rid: i for i, rid in enumerate(self.ids)}  # a repeated ID: its last row
        self._offsets: dict[str, np.ndarray] = {}

    def hashes(self) -> dict[str, str | None]:
        sha = g_str(self.g["sequence_sha256"])
        return {rid: (sha[i] or None) for rid, i in self.row.items()}

    def offsets(self, name: str) -> np.ndarray:
        if name not in self._offsets:
            self._offsets[name] = self.g[f"{name}_offset"][()]
        return self._offsets[name]

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for name in FIXED:
            if name in self.g:
                out[name] = self.g[name][i]
        for name in RAGGED:
            if name in self.g:
                lo, hi = self.offsets(name)[i:i + 2]
                data = self.g[name][lo:hi]
                if name == "contacts":
                    L = math.isqrt(int(hi - lo))
                    out[name] = data.reshape(L, L)
                else:  # stored (L, n_layers, d); read as (n_layers, L, d) like fair-esm's stack
                    out[name] = np.ascontiguousarray(data.transpose(1, 0, 2))
        return out

    def info(self, i: int) -> dict:
        g = self.g
        sha = g["sequence_sha256"].asstr()[i]
        trunc = int(g["truncated_from"][i])
        return {"description": g["description"].asstr()[i], "length": int(g["length"][i]),
                "sequence_sha256": sha or None, "truncated_from": None if trunc < 0 else trunc}


def g_str(ds: h5py.Dataset) -> list[str]:
    return [str(x) for x in ds.asstr()[()]]


class _LegacyRows:
    """A file of protlm before the columnar format: one group per record, attributes on it."""

    def __init__(self, f: h5py.Group):
        self.g = f
        self.ids = [k for k in f.keys()]
        self.row = {rid: rid for rid in self.ids}

    def hashes(self) -> dict[str, str | None]:
        return {rid: self.g[rid].attrs.get("sequence_sha256") for rid in self.ids}

    def arrays(self, rid: str) -> dict[str, np.ndarray]:
        return {k: self.g[rid][k][()] for k in self.g[rid].keys()}

    def info(self, rid: str) -> dict:
        a = self.g[rid].attrs
        t = a.get("truncated_from")
        return {"description": str(a.get("description", "")), "length": int(a.get("length", -1)),
                "sequence_sha256": a.get("sequence_sha256"), "truncated_from": None if t is None else int(t)}


def is_columnar(f: h5py.File) -> bool:
    """True for a columnar file or a running output's link index; False for the old layout."""
    return "id" in f or f.attrs.get("layout") == "links" and ("shards" in f or len(f) == 0)


class EmbeddingsFile:
    """Read a `protlm embed` HDF5 output by record ID, finished or still running.

        with EmbeddingsFile("emb.h5") as f:
            f.ids                      # record IDs, in file order
            f["P12345"]["mean"]        # (n_layers, d); also "per_tok" (n_layers, L, d), "bos", "contacts"
            f.info("P12345")           # description, length, sequence_sha256, truncated_from
            f.meta                     # model, layers, include, long, dtype, layout
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"{path}: no such file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:  # h5py's error for a file that is not HDF5 (or is truncated)
            raise InputError(f"{path}: not an embeddings file (HDF5 could not open it: {e})") from None
        self.meta = read_meta(self.f)
        self.meta["layout"] = self.f.attrs.get("layout")
        self.meta["protlm_version"] = self.f.attrs.get("protlm_version")
        self.sources: list[Rows | _LegacyRows] = []
        if "id" in self.f:
            self.sources.append(Rows(self.f))
        elif self.meta["layout"] == "links" and "shards" in self.f:
            for name in sorted(self.f["shards"].keys()):  # batch order: a later one overrides
                self.sources.append(Rows(self.f["shards"][name]))
        elif not is_columnar(self.f):
            self.sources.append(_LegacyRows(self.f))
        self._where: dict[str, tuple[Rows | _LegacyRows, int | str]] = {}
        for src in self.sources:
            self._where.update((rid, (src, i)) for rid, i in src.row.items())

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, rid: str) -> bool:
        return rid in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __getitem__(self, rid: str) -> dict[str, np.ndarray]:
        src, i = self._locate(rid)
        return src.arrays(i)

    def info(self, rid: str) -> dict:
        src, i = self._locate(rid)
        return src.info(i)

    def hashes(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for src in self.sources:
            out.update(src.hashes())
        return out

    def _locate(self, rid: str):
        if rid not in self._where:
            raise KeyError(f"{self.path}: no record {rid!r}")
        return self._where[rid]

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "EmbeddingsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge(path: Path, meta: dict, files: dict[str, Path], layout: str = "consolidated",
          tmp: Path | None = None) -> None:
    """Write `tmp` (or `path`) as one columnar file holding, for each ID of `files`, its row in
    that file: files in order of first appearance, rows in file order. Streams in blocks, so
    memory stays bounded whatever the output's size. (Atomic publishing is the caller's.)"""
    by_file: dict[Path, set[str]] = {}
    for rid, file in files.items():
        by_file.setdefault(Path(file), set()).add(rid)
    plan = []  # (file, sorted rows kept)
    totals: dict[str, int] = {}
    for file, rids in by_file.items():
        with h5py.File(file, "r") as f:
            rows = Rows(f)
            keep = np.array(sorted(rows.row[rid] for rid in rids), dtype=np.int64)
            for name in RAGGED:
                if name in f:
                    off = rows.offsets(name)
                    totals[name] = totals.get(name, 0) + int((off[keep + 1] - off[keep]).sum())
            plan.append((file, keep))
    n = sum(len(k) for _, k in plan)
    with h5py.File(tmp or path, "w") as dst:
        write_meta(dst, meta, layout)
        sink = _Sink(dst)
        for file, keep in plan:
            with h5py.File(file, "r") as src:
                if "id" not in dst:
                    _create_like(dst, src, n, totals)
                for piece in _pieces(src, keep):
                    sink.add(piece)
        sink.flush()
        if "id" not in dst:
            _create_empty(dst)


def _create_like(dst: h5py.File, src: h5py.File, n: int, totals: dict[str, int]) -> None:
    for name, ds in src.items():
        if name.endswith("_offset"):
            dst.create_dataset(name, shape=(n + 1,), dtype=np.int64)
        elif name in RAGGED:
            dst.create_dataset(name, shape=(totals[name], *ds.shape[1:]), dtype=ds.dtype)
        else:
            dst.create_dataset(name, shape=(n, *ds.shape[1:]), dtype=ds.dtype)
    for name in RAGGED:
        if f"{name}_offset" in dst:
            dst[f"{name}_offset"][0] = 0


def _create_empty(dst: h5py.File) -> None:
    for name in ("id", "description", "sequence_sha256"):
        dst.create_dataset(name, shape=(0,), dtype=STR)
    for name in ("length", "truncated_from"):
        dst.create_dataset(name, shape=(0,), dtype=np.int64)


def _blocks(keep: np.ndarray, spans: list[tuple[np.ndarray, int]]) -> Iterator[np.ndarray]:
    """Consecutive pieces of `keep` (sorted rows) spanning <= BLOCK_ROWS rows of the source and
    <= BLOCK_ELEMENTS ragged values, for each (offsets, values per offset unit) of `spans`
    (a single larger record is a block of its own)."""
    start = 0
    while start < len(keep):
        stop = start + 1
        while (stop < len(keep) and keep[stop] - keep[start] < BLOCK_ROWS
               and all((off[keep[stop] + 1] - off[keep[start]]) * unit <= BLOCK_ELEMENTS for off, unit in spans)):
            stop += 1
        yield keep[start:stop]
        start = stop


def _pieces(src: h5py.File, keep: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """Rows `keep` of `src`, a bounded block at a time: {column: kept rows}; a ragged column
    comes with '<name>_size' (values per kept row) instead of its offsets."""
    offsets = {name: src[f"{name}_offset"][()] for name in RAGGED if name in src}
    spans = [(off, math.prod(src[name].shape[1:])) for name, off in offsets.items()]
    for block in _blocks(keep, spans):
        lo, hi = int(block[0]), int(block[-1]) + 1
        piece = {}
        for name, ds in src.items():
            if name.endswith("_offset"):
                continue
            if name in RAGGED:
                off = offsets[name]
                data = ds[off[lo]:off[hi]]
                if len(block) < hi - lo:  # rows left out inside the span: keep the others' values
                    data = np.concatenate([data[off[i] - off[lo]:off[i + 1] - off[lo]] for i in block])
                piece[name], piece[f"{name}_size"] = data, off[block + 1] - off[block]
            else:
                piece[name] = ds[lo:hi][block - lo]
        yield piece


class _Sink:
    """Appends pieces to the output's datasets, gathering small ones (a shard of a few records
    each) so that each column is written in few, large writes."""

    def __init__(self, dst: h5py.File):
        self.dst, self.pending, self.rows, self.values = dst, [], 0, 0
        self.pos = {"rows": 0, **{name: 0 for name in RAGGED}}

    def add(self, piece: dict[str, np.ndarray]) -> None:
        self.pending.append(piece)
        self.rows += len(piece["id"])
        self.values += sum(piece[name].size for name in RAGGED if name in piece)
        if self.rows >= BLOCK_ROWS or self.values >= BLOCK_ELEMENTS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        r0 = self.pos["rows"]
        r1 = r0 + self.rows
        for name in self.pending[0]:
            if name.endswith("_size"):
                continue
            data = np.concatenate([p[name] for p in self.pending])
            if name in RAGGED:
                a = self.pos[name]
                self.dst[name][a:a + len(data)] = data
                sizes = np.concatenate([p[f"{name}_size"] for p in self.pending])
                self.dst[f"{name}_offset"][r0 + 1:r1 + 1] = a + np.cumsum(sizes)
                self.pos[name] = a + len(data)
            else:
                self.dst[name][r0:r1] = data
        self.pos["rows"] = r1
        self.pending, self.rows, self.values = [], 0, 0


def read(path: str | Path, ids: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{id: {'mean' | 'per_tok' | 'bos' | 'contacts': array}} from a finished or running output
    (all in memory: for large files use EmbeddingsFile, which reads by ID)."""
    with EmbeddingsFile(path) as f:
        return {rid: f[rid] for rid in (f.ids if ids is None else ids)}


def read_info(path: str | Path) -> dict[str, dict]:
    """{id: {'description', 'length', 'sequence_sha256', 'truncated_from'}} of an output."""
    with EmbeddingsFile(path) as f:
        return {rid: f.info(rid) for rid in f.ids}


def read_file_meta(path: str | Path) -> dict:
    """An output's settings (model, layers, include, long, dtype), layout and protlm version."""
    with EmbeddingsFile(path) as f:
        return dict(f.meta)
