"""Embeddings from a FASTA file: the library behind `protlm embed`.

`scan_fasta` validates the whole file first (every input error is raised before any compute),
`extract_batches` streams length-sorted token-budget batches through the model and yields
per-record results, and `embed_to_file` adds resumable, kill-safe writing (see embed_io).
"""

from __future__ import annotations

from protlm.errors import ProtlmError
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from protlm.alphabet import Alphabet
from protlm.data.batching import chunked_by_size
from protlm.data.fasta import Record, read_fasta
from protlm.lock import output_lock
from protlm.records import changed_records, check_changed, sequence_hash
from protlm.engine.core import LONG_MODES as ENGINE_LONG_MODES
from protlm.engine import BackgroundWriter, Engine, HostBatch, Job, prefetch
from protlm.dtypes import canonical
from protlm.engine import precision

INCLUDES = ("mean", "per_tok", "bos", "contacts")
LONG_MODES = ENGINE_LONG_MODES
Keep = Callable[[int, str], bool]  # (record index in the file, ID) -> embed it in this run


class EmbedError(ProtlmError, ValueError):
    """Invalid request or input for embedding; the message names the record when there is one."""


@dataclass(frozen=True)
class EmbedConfig:
    repr_layers: tuple[int, ...] = (-1,)  # negative counts from the end, as in fair-esm
    include: tuple[str, ...] = ("mean",)
    toks_per_batch: int = 4096  # real tokens per packed forward (padded tokens with contacts)
    long: str = "truncate"  # sequences over the model limit: truncate | window | error
    chunk_residues: int = 4_000_000  # residues read into memory (and sorted) at a time
    max_padding: float = 0.05  # close a batch before padding exceeds 5% of its tokens
    unknown: str | None = None  # e.g. 'X': replaces characters outside the alphabet (else an error)
    compile: bool | None = None  # torch.compile the layers; None: on for CUDA, off on CPU

    def __post_init__(self):
        bad = [i for i in self.include if i not in INCLUDES]
        if bad or not self.include:
            raise EmbedError(f"--include must be among {INCLUDES}, got {list(self.include)}")
        if self.long not in LONG_MODES:
            raise EmbedError(f"--long must be one of {LONG_MODES}, got {self.long!r}")
        if self.toks_per_batch <= 0:
            raise EmbedError(f"--toks-per-batch must be positive, got {self.toks_per_batch}")
        if self.max_padding < 0:
            raise EmbedError(f"max_padding must be >= 0, got {self.max_padding}")


@dataclass
class EmbedResult:
    """One record's outputs, float32 on CPU. L = residues embedded (truncated or full)."""

    id: str
    description: str  # the whole FASTA header (fair-esm's `label`)
    length: int  # residues in the input sequence
    sequence_sha256: str | None = None  # recognises a changed sequence on resume
    truncated_from: int | None = None  # with long='truncate': the length before truncation
    mean: dict[int, torch.Tensor] | None = None  # {layer: (D,)}
    per_tok: dict[int, torch.Tensor] | None = None  # {layer: (L, D)}, BOS/EOS excluded
    bos: dict[int, torch.Tensor] | None = None  # {layer: (D,)}
    contacts: torch.Tensor | None = None  # (L, L)


@dataclass
class FastaSummary:
    """What the validating pass keeps: IDs, lengths and sequence hashes, never sequences."""

    path: Path
    ids: list[str] = field(default_factory=list)
    lengths: array = field(default_factory=lambda: array("l"))
    digests: bytearray = field(default_factory=bytearray)  # 32 bytes (SHA-256) per record

    def hashed_ids(self) -> Iterator[tuple[str, str]]:
        """(id, sequence hash as protlm.records.sequence_hash gives it) per record."""
        for i, rid in enumerate(self.ids):
            yield rid, self.digests[32 * i : 32 * (i + 1)].hex()

    @property
    def total_residues(self) -> int:
        return sum(self.lengths)


def scan_fasta(path: str | Path, alphabet: Alphabet | None = None, unknown: str | None = None
               ) -> FastaSummary:
    """Validate every record (FastaError on the first problem) and collect IDs, lengths, hashes.

    Any ID works in both formats: HDF5 stores IDs as data, and .pt file names are encoded by
    protlm.records.record_stem.
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


def make_engine(model, alphabet: Alphabet, cfg: EmbedConfig) -> Engine:
    """The engine `protlm embed` runs (packed batches unless contacts are asked for)."""
    compile = cfg.compile
    if compile is None:  # on for CUDA, off on CPU (measured slower there: docs/performance.md)
        compile = next(model.parameters()).device.type == "cuda"
    return Engine(model, alphabet, cfg.repr_layers, toks_per_batch=cfg.toks_per_batch, long=cfg.long,
                  max_padding=cfg.max_padding, compile=compile)


def _jobs(engine: Engine, fasta, cfg: EmbedConfig, keep: Keep, want) -> Iterator[tuple[list[Record], Job]]:
    """Host work, run ahead of the device: read, sort into batches, tokenise."""
    records = (r for i, r in enumerate(read_fasta(fasta, engine.alphabet, cfg.unknown)) if keep(i, r.id))
    pairs = ((r, engine.cost(len(r.sequence))) for r in records)
    for chunk in chunked_by_size(pairs, lambda rc: rc[1], cfg.chunk_residues):
        recs = [r for r, _ in chunk]
        seqs = [r.sequence for r in recs]
        for batch in engine.batches([len(q) for q in seqs], want):
            yield [recs[i] for i in batch], engine.plan(seqs, batch, want)


def _pending(engine: Engine, fasta, cfg: EmbedConfig, keep: Keep) -> Iterator[tuple[list[Record], HostBatch]]:
    """Device work: one forward per planned batch; host copies may still be in flight."""
    want = frozenset(cfg.include)
    for recs, job in prefetch(_jobs(engine, fasta, cfg, keep, want), depth=2):
        yield recs, engine.forward(job, want)


def _results(recs: list[Record], pending: HostBatch, layers: list[int], include) -> list[EmbedResult]:
    """Per-record results of a finished batch (waits for its host copy)."""
    out = []
    for rec, spans, r in zip(recs, pending.job.spans, pending.records()):
        res = EmbedResult(rec.id, rec.description, len(rec.sequence), sequence_hash(rec.sequence))
        if spans[-1][1] < len(rec.sequence):
            res.truncated_from = len(rec.sequence)
        for k in ("mean", "bos", "per_tok"):
            if k in include:
                setattr(res, k, {layer: r[k][j].clone() for j, layer in enumerate(layers)})
        if "contacts" in r:
            res.contacts = r["contacts"].clone()
        out.append(res)
    return out


def extract_batches(model, alphabet: Alphabet, fasta: str | Path, cfg: EmbedConfig = EmbedConfig(),
                    skip: frozenset[str] | set[str] = frozenset()) -> Iterator[list[EmbedResult]]:
    """Yield one list of results per batch, shortest sequences first within each chunk.

    The model must be in eval mode on its device; records whose ID is in `skip` are not
    computed (resume). Only `cfg.chunk_residues` residues of sequence are held at a time.
    """
    engine = make_engine(model, alphabet, cfg)
    for recs, pending in _pending(engine, fasta, cfg, lambda _, rid: rid not in skip):
        yield _results(recs, pending, engine.layers, cfg.include)


def extract(model, alphabet: Alphabet, fasta: str | Path, cfg: EmbedConfig = EmbedConfig(),
            skip: frozenset[str] | set[str] = frozenset()) -> Iterator[EmbedResult]:
    """Yield one `EmbedResult` per record (in batch order, not file order)."""
    for batch in extract_batches(model, alphabet, fasta, cfg, skip):
        yield from batch


def check_device(device: str | None = None, dtype: str = "fp32") -> str:
    """The device to use (`None` picks CUDA when present); clear errors for what cannot run."""
    canonical(dtype)  # raises on an unknown name
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EmbedError("--device cuda was asked for, but CUDA is not available here "
                         "(torch.cuda.is_available() is False); use --device cpu")
    return str(device)


def prepare_model(model, device: str | None = None, dtype: str = "fp32", source=None, verbose: bool = True):
    """Move and cast (or quantize: int8; pick: auto) for inference; outputs stay float32.

    `source`: the model's name or path, which keys the cache of int8 weights (protlm.engine.precision).
    """
    return precision.prepare_model(model, check_device(device, dtype), dtype, source, verbose)


def output_meta(model, model_name, cfg: EmbedConfig, dtype: str) -> dict:
    """The settings an output records (and a resumed run must match), layers resolved."""
    import protlm

    return {"model": str(model_name), "layers": model.resolve_layers(cfg.repr_layers),
            "include": list(cfg.include), "long": cfg.long, "dtype": dtype,
            "protlm_version": protlm.__version__}


def load_checked(fasta, model_name, cfg: EmbedConfig, fmt: str, dtype: str, model_loader=None):
    """Validate the FASTA (the one full scan), then load the model and check lengths and layers:
    (summary, model, alphabet, meta). Every input error is raised here, before any compute."""
    import protlm

    summary = scan_fasta(fasta, unknown=cfg.unknown)
    model, alphabet = (model_loader or protlm.load_model_and_alphabet)(model_name)
    check_lengths(summary, model.config.max_sequence_length, cfg.long)
    if "bos" in cfg.include and not alphabet.prepend_bos:
        raise EmbedError(f"{model_name}: this model's tokens have no BOS (ProtT5: residues then "
                         "</s>); --include mean or per_tok instead of bos")
    if "contacts" in cfg.include and getattr(model, "contact_head", None) is None:
        from protlm.models.carp import NO_ATTENTION  # the one model family without attention

        raise EmbedError(f"{model_name}: {NO_ATTENTION}")
    return summary, model, alphabet, output_meta(model, model_name, cfg, dtype)


def write_records(engine: Engine, fasta, cfg: EmbedConfig, out, keep: Keep,
                  on_batch: Callable[[list[EmbedResult]], None]) -> None:
    """Embed the records `keep` selects into `out` (H5Output or PtOutput, begun) batch by batch;
    `on_batch(results)` runs after each batch is written (in the writer thread)."""

    def write(items):  # in the writer thread: wait for the host copies, merge, write as one piece
        batch = [r for item in items for r in _results(*item, engine.layers, cfg.include)]
        out.write_batch(batch)
        on_batch(batch)

    with BackgroundWriter(write, depth=4, many=True) as writer:
        for item in _pending(engine, fasta, cfg, keep):
            writer.put(item)
    out.write_index()


def embed_to_file(fasta: str | Path, model_name: str | Path, output: str | Path,
                  cfg: EmbedConfig = EmbedConfig(), fmt: str = "h5", device: str | None = None,
                  dtype: str = "fp32", progress: bool = True, model_loader=None,
                  overwrite_changed: bool = False, distributed: bool | None = None) -> dict | None:
    """Validate, load, then embed every record not yet in `output`; resumable after a kill.

    Every input error (FASTA, lengths with long='error', layers, settings of an existing
    output, records already there whose sequence changed unless `overwrite_changed`, which
    recomputes them) is raised before any compute and before any output is created. The
    output's lock (protlm.lock) is held throughout: a second writer fails at once. Returns counts.

    distributed: run as one rank of a torchrun job (protlm.embed_dist; None: when torchrun's
    environment is set). A run that finds rank shards an earlier torchrun job left goes that
    way too, as a job of one rank, so any number of ranks resumes any other. Ranks other
    than 0 return None.
    """
    from protlm import embed_dist, embed_io

    if fmt not in ("h5", "pt"):
        raise EmbedError(f"--format must be h5 or pt, got {fmt!r}")
    device = check_device(device, dtype)  # fail before the (possibly slow) model load
    dtype = precision.resolve_dtype(dtype, device)  # 'auto' chosen (and said) once, int8 on CUDA refused
    distributed = embed_dist.resolve(distributed)
    if distributed or embed_dist.has_shards(output, fmt):
        return embed_dist.embed_sharded(fasta, model_name, output, cfg, fmt, device, dtype, progress,
                                        model_loader, overwrite_changed, distributed)
    with output_lock(output):  # before the FASTA scan and model load: a second writer fails fast
        summary, model, alphabet, meta = load_checked(fasta, model_name, cfg, fmt, dtype, model_loader)
        out = embed_io.H5Output(output, meta) if fmt == "h5" else embed_io.PtOutput(output, meta)
        stored = out.done_hashes(summary.ids)
        changed = changed_records(stored, summary.hashed_ids())
        check_changed(output, changed, overwrite_changed)
        done = set(stored).difference(changed)
        model = prepare_model(model, device, dtype, source=model_name)
        todo = [(rid, n) for rid, n in zip(summary.ids, summary.lengths) if rid not in done]
        stats = {"records": len(summary.ids), "skipped": len(summary.ids) - len(todo), "written": 0,
                 "recomputed": len(changed), "truncated": warn_truncated(todo, model, cfg.long)}
        if not todo and not out.unfinished():
            return stats
        out.begin()
        bar = progress_bar(len(todo), progress)
        engine = make_engine(model, alphabet, cfg)
        t0 = time.perf_counter()

        def on_batch(batch):
            stats["written"] += len(batch)
            bar.tokens += sum(r.length for r in batch)
            bar.update(len(batch))
            show_rate(bar, bar.tokens, t0, f", compile {engine.compile_s:.1f}s" if engine.compile else "")

        write_records(engine, fasta, cfg, out, lambda _, rid: rid not in done, on_batch)
        bar.close()
        out.finish()
        return stats


def warn_truncated(todo: list[tuple[str, int]], model, long: str) -> int:
    """With long='truncate', say once (stderr) how many records lose residues; returns the count."""
    max_len = model.config.max_sequence_length
    n = sum(length > max_len for _, length in todo) if long == "truncate" else 0
    if n:
        print(f"warning: {n} of {len(todo)} records are longer than the model's limit of {max_len} "
              f"residues and keep only their first {max_len} (--long truncate; each is marked "
              "truncated_from=<length> in the output); --long window embeds them whole",
              file=sys.stderr, flush=True)
    return n


def progress_bar(n_records: int, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=n_records, unit="seq", disable=not enabled, desc="embed", dynamic_ncols=True)
    bar.tokens = 0  # residues embedded so far, for tokens/s
    return bar


def show_rate(bar, tokens: int, t0: float, extra: str = "") -> None:
    """Residues per second since `t0` in the bar's postfix."""
    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f} tok/s{extra}")
