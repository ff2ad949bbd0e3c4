"""What an embedding run has to do: the FASTA validated, what the output already holds, what
changed, and which rank embeds which record.

`make_plan` runs once, on rank 0 of a torchrun job (or the one process), before any compute:
every input error is raised here. The plan is plain data (broadcast to the other ranks); a rank's
share is `plan.owner == rank`, so many ranks are a slice of one plan, not another code path.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from protlm.alphabet import Alphabet
from protlm.data.fasta import read_fasta
from protlm.embed import writers
from protlm.errors import InputError, ProtlmError
from protlm.io import changed_records, check_changed, sequence_hash

INCLUDES = ("mean", "per_tok", "bos", "contacts")


class EmbedError(ProtlmError, ValueError):
    """Invalid request or input for embedding; the message names the record when there is one."""


@dataclass
class FastaSummary:
    """What the validating pass keeps: IDs, lengths and sequence hashes, never sequences."""

    path: Path
    ids: list[str] = field(default_factory=list)
    lengths: array = field(default_factory=lambda: array("l"))
    digests: bytearray = field(default_factory=bytearray)  # 32 bytes (SHA-256) per record

    def hashed_ids(self) -> Iterator[tuple[str, str]]:
        """(id, sequence hash as protlm.io.sequence_hash gives it) per record."""
        for i, rid in enumerate(self.ids):
            yield rid, self.digests[32 * i : 32 * (i + 1)].hex()

    @property
    def total_residues(self) -> int:
        return sum(self.lengths)


def scan_fasta(path: str | Path, alphabet: Alphabet | None = None, unknown: str | None = None
               ) -> FastaSummary:
    """Validate every record (FastaError on the first problem) and collect IDs, lengths, hashes.

    Any ID works in both formats: HDF5 stores IDs as data, and .pt file names are encoded by
    protlm.io.record_stem.
    """
    summary = FastaSummary(Path(path))
    for rec in read_fasta(path, alphabet, unknown):
        summary.ids.append(rec.id)
        summary.lengths.append(len(rec.sequence))
        summary.digests += bytes.fromhex(sequence_hash(rec.sequence))
    return summary


def check_lengths(summary: FastaSummary, max_len: int, long: str) -> None:
    """With long='error', name the first record over the model's limit (before any compute)."""
    if long != "error":
        return
    for rid, n in zip(summary.ids, summary.lengths):
        if n > max_len:
            raise EmbedError(f"{summary.path}: record {rid!r} has {n} residues, over the model's "
                             f"limit of {max_len}; use --long truncate or --long window")


def check_request(model, model_name, include: Sequence[str]) -> None:
    """Outputs this model cannot give, refused before any compute."""
    bad = [i for i in include if i not in INCLUDES]
    if bad or not include:
        raise EmbedError(f"--include must be among {INCLUDES}, got {list(include)}")
    if "bos" in include and not model.alphabet.prepend_bos:
        raise EmbedError(f"{model_name}: this model's tokens have no BOS (ProtT5: residues then "
                         "</s>; CARP: residues only); --include mean or per_tok instead of bos")
    if "contacts" in include and getattr(model, "contact_head", None) is None:
        from protlm.models.carp import NO_ATTENTION  # the one model family without attention

        raise EmbedError(f"{model_name}: {NO_ATTENTION}")


def split_by_cost(costs: Sequence[int], world: int) -> np.ndarray:
    """The rank (0..world-1) of each item, so that every rank's summed cost is about equal.

    Pure and deterministic, a function of (costs, world) only: every rank agrees without
    talking, and a rerun with another number of ranks splits what is left the same way. Items are
    dealt longest first in a snake order (ranks 0..W-1, then W-1..0, ...), ties in input order.
    Each rank thus gets an equal share of every length band: its summed cost is within the
    largest item's cost of any other rank's, and so is its share of the quadratic attention work,
    which a plain greedy fill by residues would leave lopsided. Vectorised: 60M records in seconds.
    """
    if world < 1:
        raise InputError(f"world size must be >= 1, got {world}")
    costs_N = np.asarray(costs, dtype=np.int64)
    order_N = np.argsort(-costs_N, kind="stable")  # longest first, ties in input order
    pos_N = np.arange(len(costs_N))
    lap, seat = pos_N // world, pos_N % world
    owner_N = np.empty(len(costs_N), dtype=np.int32)
    owner_N[order_N] = np.where(lap % 2 == 0, seat, world - 1 - seat)
    return owner_N


def rank_loads(costs: Sequence[int], owner: np.ndarray, world: int) -> np.ndarray:
    """(world,) summed cost per rank for a split from `split_by_cost`."""
    return np.bincount(owner, weights=np.asarray(costs, dtype=np.float64), minlength=world).astype(np.int64)


@dataclass
class Plan:
    """The records of a run and who embeds them: owner[i] is the rank of record i, -1 if done.

    `found` (h5): {id: (file, sequence hash)} of what the output, its parts and any rank shards
    already hold. `stats`: the counts the command reports."""

    meta: dict
    ids: list[str]
    owner: np.ndarray
    found: dict[str, tuple[Path, str | None]]
    stats: dict
    sharded: bool  # rank shards (OUT.shards/) are written and merged, rather than OUT.parts/

    @property
    def todo(self) -> int:
        return int((self.owner >= 0).sum())

    def mine(self, rank: int):
        """keep(record index, id) -> whether `rank` embeds it."""
        return lambda i, _rid: self.owner[i] == rank


def make_plan(summary: FastaSummary, model, meta: dict, output: Path, fmt: str, world: int,
              cost, long: str, overwrite_changed: bool, sharded: bool) -> Plan:
    """Read what `output` holds, check for changed records, split the rest among `world` ranks.

    cost(length) -> tokens of a record (the engine's, windows included)."""
    if fmt == "h5":
        found = writers.locate(output, meta, dict(summary.hashed_ids()))
        stored = {rid: h for rid, (_, h) in found.items()}
    else:
        found, stored = {}, writers.PtOutput(output, meta).done_hashes(summary.ids)
    changed = changed_records(stored, summary.hashed_ids())
    check_changed(output, changed, overwrite_changed)
    done = set(stored).difference(changed)
    todo = [i for i, rid in enumerate(summary.ids) if rid not in done]
    owner = np.full(len(summary.ids), -1, dtype=np.int32)
    owner[todo] = split_by_cost([cost(summary.lengths[i]) for i in todo], world)
    truncated = warn_truncated([summary.lengths[i] for i in todo], model.config.max_sequence_length, long)
    stats = {"records": len(summary.ids), "skipped": len(summary.ids) - len(todo), "written": 0,
             "recomputed": len(changed), "truncated": truncated}
    return Plan(meta, summary.ids, owner, found, stats, sharded)


def warn_truncated(lengths: Sequence[int], max_len: int, long: str) -> int:
    """With long='truncate', say once (stderr) how many records lose residues; returns the count."""
    n = sum(length > max_len for length in lengths) if long == "truncate" else 0
    if n:
        print(f"warning: {n} of {len(lengths)} records are longer than the model's limit of {max_len} "
              f"residues and keep only their first {max_len} (--long truncate; each is marked "
              "truncated_from=<length> in the output); --long window embeds them whole",
              file=sys.stderr, flush=True)
    return n


__all__ = ["INCLUDES", "EmbedError", "FastaSummary", "scan_fasta", "check_lengths", "check_request",
           "split_by_cost", "rank_loads", "Plan", "make_plan", "warn_truncated"]
