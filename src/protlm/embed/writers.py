"""Writers of `protlm embed` outputs, with resume bookkeeping (reading: protlm.embed.h5).

HDF5 (`H5Output`, the columnar format of protlm.embed.h5): while a run is going, each batch
becomes a shard file in `<OUT>.parts/`, written under a temporary name and renamed into place,
so a shard either exists complete or not at all. `<OUT>` itself is an index of h5py
ExternalLinks (`/shards/<name>` -> shard), also rewritten under a temporary name and renamed,
so it opens at any moment, even after SIGKILL, and holds complete records. At the end the
shards' rows are copied into one self-contained file that replaces the index, and the parts
folder is removed. A rerun treats the records in the
shards (and in a finished `<OUT>`) as done; each record carries the hash of its sequence, so a
rerun can tell a changed one, and where a record was rewritten the newest shard wins.

.pt (`PtOutput`): a folder of `<stem>.pt`, one per record, each renamed into place, with the
dictionary layout of fair-esm's scripts/extract.py; the stem is the ID made a safe, distinct
file name by protlm.io.record_stem.

A torchrun job (protlm.embed.pipeline) gives each rank its own `H5Output`, a rank shard
`OUT.shards/rank-NNNNN.h5` under its own lock; rank 0 then merges every record's newest copy into
one `OUT` (`merge_ranks`). `locate` finds what any earlier run left: OUT, its parts and every
rank shard, from any number of ranks, so any number of ranks resumes any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np
import torch

from protlm.embed import h5 as H5
from protlm.errors import ProtlmError
from protlm.io import atomic_path, atomic_write, output_lock, record_stem, stale_temps

META_KEYS = ("model", "layers", "include", "long", "dtype")  # must match to resume
SETTINGS_FILE = "protlm_embed.json"


class OutputMismatchError(ProtlmError, ValueError):
    """An existing output was made with other settings, so resuming into it would mix them."""


def _check_meta(path: Path, found: dict, meta: dict) -> None:
    diff = {k: (found.get(k), meta[k]) for k in META_KEYS if found.get(k) != meta[k]}
    if diff:
        detail = "; ".join(f"{k}: existing {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise OutputMismatchError(f"{path}: exists with other settings ({detail}); "
                                  "choose another output path or delete it")


class H5Output:
    """Resumable HDF5 writer: `done_ids()`, then `write_batch` per batch, then `finish()`."""

    def __init__(self, path: str | Path, meta: dict, index_interval_s: float = 1.0):
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.meta = meta
        self.layers = list(meta["layers"])
        self.index_interval_s = index_interval_s
        self._where: dict[str, str] = {}  # record id -> shard file name (the newest, if rewritten)
        self._names: list[str] = []  # shard files, oldest first
        # after done_hashes(): record id -> (the file holding it, its sequence hash)
        self.located: dict[str, tuple[Path, str | None]] = {}
        self._last_index = 0.0
        self._index_cost_s = 0.0
        self._next_shard = 1

    def done_ids(self, ids: Iterable[str] | None = None) -> set[str]:
        return set(self.done_hashes(ids))

    def done_hashes(self, ids: Iterable[str] | None = None) -> dict[str, str | None]:
        """Check settings of what exists; {id: sequence hash (None if not stored)} of every
        record already written (all of them: `ids` is for PtOutput's sake)."""
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    found, layout, columnar = H5.read_meta(f), f.attrs.get("layout"), H5.is_columnar(f)
            except OSError:
                raise OutputMismatchError(f"{self.path}: exists and is not an HDF5 file; "
                                          "choose another output path") from None
            _check_meta(self.path, found, self.meta)
            if not columnar:
                raise OutputMismatchError(f"{self.path}: written by an older protlm (one HDF5 group per "
                                          "record), which this version reads but does not add to; "
                                          "choose another output path")
            if layout == "consolidated" and self.parts.exists():
                shutil.rmtree(self.parts)  # killed after the final rename: its shards are all in OUT
        self.located = {}
        if self.path.exists() and not self.parts.exists():
            with H5.EmbeddingsFile(self.path) as f:
                self.located = {rid: (self.path, h) for rid, h in f.hashes().items()}
        for shard in self._shards():  # in order: a rewritten record's newest shard wins
            with h5py.File(shard, "r") as f:
                _check_meta(shard, H5.read_meta(f), self.meta)
                rows = H5.Rows(f)
                self.located.update((rid, (shard, h)) for rid, h in rows.hashes().items())
                self._where.update((rid, shard.name) for rid in rows.ids)
            if shard.name not in self._names:
                self._names.append(shard.name)
        return {rid: h for rid, (_, h) in self.located.items()}

    def _shards(self) -> list[Path]:
        return sorted(self.parts.glob("shard-*.h5")) if self.parts.is_dir() else []

    def part_files(self, ids: set[str]) -> dict[str, Path]:
        """{id: the newest batch file holding it} for those of `ids` in the parts: the ID
        columns only, so cheap for millions of records."""
        files = {}
        for shard in self._shards():
            with h5py.File(shard, "r") as f:
                files.update((rid, shard) for rid in H5.g_str(f["id"]) if rid in ids)
        return files

    def unfinished(self) -> bool:
        """True when shards from an earlier run still wait to be consolidated."""
        return self.parts.is_dir()

    def begin(self) -> None:
        """Before the first new shard: a finished OUT becomes shard 0 so the index can link to it."""
        for tmp in stale_temps(self.path):
            tmp.unlink()  # an index or final file cut off by a kill
        if self.parts.is_dir():
            for tmp in self.parts.glob("*.tmp"):
                tmp.unlink()  # a shard cut off mid-write
            self._next_shard = 1 + max((int(p.stem.split("-")[1]) for p in self._shards()), default=0)
            self._names = [p.name for p in self._shards()]
            return
        self.parts.mkdir(parents=True)
        if self.path.exists():
            base = self.parts / "shard-000000.h5"
            try:
                os.link(self.path, base)  # same inode: OUT stays readable while it is re-indexed
            except OSError:
                shutil.copyfile(self.path, base)
            with h5py.File(base, "r") as f:
                self._where.update((rid, base.name) for rid in H5.g_str(f["id"]))
            self._names = [base.name]

    def write_batch(self, results: list) -> None:
        if not results:
            return
        name = f"shard-{self._next_shard:06d}.h5"
        self._next_shard += 1
        cols = H5.columns(results, self.layers)  # before the file: a bad batch leaves nothing
        with atomic_path(self.parts / name) as tmp, h5py.File(tmp, "w") as f:
            H5.write_meta(f, self.meta, "shard")
            H5.write_columns(f, cols)
        self._names.append(name)
        for r in results:
            self._where[r.id] = name
        # The index is one link per shard, rewritten whole: refreshed at most every
        # index_interval_s and never more than ~10% of the time; shards are the truth for resume.
        wait = max(self.index_interval_s, 10 * self._index_cost_s)
        if time.monotonic() - self._last_index >= wait:
            self.write_index()

    def write_index(self) -> None:
        """Rewrite OUT as ExternalLinks to the shards (relative paths, so the pair can move)."""
        t0 = time.monotonic()
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            H5.write_meta(f, self.meta, "links")
            g = f.create_group("shards")
            for name in self._names:
                g[name] = h5py.ExternalLink(f"{self.parts.name}/{name}", "/")
        self._last_index = time.monotonic()
        self._index_cost_s = self._last_index - t0

    def finish(self) -> None:
        """Copy every record's newest row into one self-contained file, rename it over OUT,
        drop the parts."""
        if not self.parts.is_dir():
            return  # nothing new was written: OUT is already consolidated
        order = {name: i for i, name in enumerate(p.name for p in self._shards())}
        files = {rid: self.parts / name for rid, name in sorted(self._where.items(), key=lambda x: order[x[1]])}
        merge_h5(self.path, self.meta, files)
        shutil.rmtree(self.parts)


def merge_h5(path: str | Path, meta: dict, files: dict[str, Path]) -> None:
    """Write one consolidated HDF5 output at `path` from {record id: the file holding it}
    (each file opened once), under a temporary name renamed into place."""
    path = Path(path)
    with atomic_path(path) as tmp:
        H5.merge(path, meta, files, tmp=tmp)


class PtOutput:
    """A folder of fair-esm-layout `<stem>.pt` files; each appears complete or not at all."""

    def __init__(self, path: str | Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.layers = list(meta["layers"])

    def file(self, rid: str) -> Path:
        return self.path / f"{record_stem(rid)}.pt"

    def done_ids(self, ids: Iterable[str]) -> set[str]:
        return set(self.done_hashes(ids))

    def done_hashes(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Check the folder's settings; {id: sequence hash (None if not stored)} of those of
        `ids` that have a file."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputMismatchError(f"{self.path}: exists and is not a folder (--format pt writes a "
                                      "folder of .pt files); choose another output path")
        settings = self.path / SETTINGS_FILE
        if settings.exists():
            _check_meta(self.path, json.loads(settings.read_text()), self.meta)
        elif self.path.exists() and any(self.path.iterdir()):
            raise OutputMismatchError(f"{self.path}: exists and is not a protlm embed folder; "
                                      "choose another output path")
        # mmap: only the small fields are read, not the tensors
        return {rid: torch.load(self.file(rid), map_location="cpu", weights_only=True, mmap=True)
                .get("sequence_sha256") for rid in ids if self.file(rid).exists()}

    def begin(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink()
        settings = self.path / SETTINGS_FILE
        if not settings.exists():
            atomic_write(settings, json.dumps(self.meta, indent=1))

    def write_batch(self, results: list) -> None:
        for r in results:
            with atomic_path(self.file(r.id)) as tmp:
                torch.save(to_fair_esm_dict(r), tmp)

    def unfinished(self) -> bool:
        return False

    def write_index(self) -> None:
        pass

    def finish(self) -> None:
        pass


def to_fair_esm_dict(r) -> dict:
    """fair-esm scripts/extract.py layout: only the keys for what was asked for."""
    out: dict = {"label": r.description}
    if r.per_tok is not None:
        out["representations"] = dict(r.per_tok)
    if r.mean is not None:
        out["mean_representations"] = dict(r.mean)
    if r.bos is not None:
        out["bos_representations"] = dict(r.bos)
    if r.contacts is not None:
        out["contacts"] = r.contacts
    if r.sequence_sha256 is not None:  # protlm's addition: recognises a changed sequence on resume
        out["sequence_sha256"] = r.sequence_sha256
    if r.truncated_from is not None:  # protlm's addition: the length before --long truncate
        out["truncated_from"] = r.truncated_from
    return out


# ------------------------------------------------------------------ rank shards of a torchrun job
def shards_dir(output: str | Path) -> Path:
    """`OUT.shards/` beside OUT: the rank shards of a running (or killed) torchrun job."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def shard_path(output: Path, rank: int) -> Path:
    return shards_dir(output) / f"rank-{rank:05d}.h5"


def has_shards(output, fmt: str) -> bool:
    """Rank shards of an earlier torchrun job wait in OUT.shards/: a run on OUT writes and merges
    rank shards too (alone, as a job of one rank) to use them."""
    return fmt == "h5" and shards_dir(output).is_dir()


def rank_shards(output: Path) -> list[Path]:
    """Every rank shard left in OUT.shards/, from any world size: its index file, its parts
    folder, or both (a rank killed before its first index)."""
    d = shards_dir(output)
    names = {p.name.removesuffix(".parts") for p in d.glob("rank-*.h5*")} if d.is_dir() else set()
    return [d / n for n in sorted(names) if n.endswith(".h5")]


def locate(output: Path, meta: dict, current: dict[str, str]) -> dict[str, tuple[Path, str | None]]:
    """{id: (file, sequence hash)} over the output, its parts and every rank shard (settings
    checked): a record's copy with its `current` hash when one exists, else its first."""
    found: dict[str, tuple[Path, str | None]] = {}
    for source in (Path(output), *rank_shards(Path(output))):
        out = H5Output(source, meta)
        out.done_hashes()
        for rid, (file, h) in out.located.items():
            if rid not in found or (h == current.get(rid) and found[rid][1] != h):
                found[rid] = (file, h)
    return found


@contextlib.contextmanager
def rank_writer(fmt: str, output: Path, rank: int, meta: dict):
    """A rank's writer in a sharded job: its own shard under its own lock (h5), or the output
    folder prepared by rank 0 (pt: a file per record, so ranks never write the same file)."""
    if fmt == "pt":
        yield PtOutput(output, meta)
        return
    shard = shard_path(output, rank)
    with output_lock(shard):
        out = H5Output(shard, meta)
        out.done_hashes()  # its records of earlier runs stay in its index
        out.begin()
        yield out


def merge_ranks(output: Path, meta: dict, ids: list[str], owner: np.ndarray,
                found: dict[str, tuple[Path, str | None]]) -> None:
    """Every rank done: one consolidated OUT, then the parts and shards removed.

    Records of this run (owner >= 0) come from their rank's shard, newest batch file; the others
    from where the plan found them (`locate`). A merge killed before its rename is redone;
    after it, OUT holds everything and the leftovers are only removed.
    """
    todo = owner >= 0
    files = {rid: file for rid, (file, _) in found.items()}
    for rank in np.unique(owner[todo]).tolist():
        mine = {ids[i] for i in np.flatnonzero(owner == rank).tolist()}
        written = H5Output(shard_path(output, rank), meta).part_files(mine)
        if len(written) != len(mine):
            missing = sorted(mine.difference(written))
            raise RuntimeError(f"rank {rank} finished without {len(missing)} of its records, e.g. {missing[0]!r}")
        files.update(written)
    if any(file != output for file in files.values()):
        merge_h5(output, meta, files)
    for leftover in (output.with_name(output.name + ".parts"), shards_dir(output)):
        if leftover.is_dir():
            shutil.rmtree(leftover)
