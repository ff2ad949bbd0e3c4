"""`protlm embed` from top to bottom: plan -> batches -> engine -> writer.

1. Plan (protlm.embed.plan, on rank 0 or the one process, under the output's lock): validate the
   whole FASTA, load the model, check lengths and outputs, read what the output already holds,
   refuse (or recompute) changed records, split the rest among the ranks. Every input error is
   raised there, before any compute and before any output is created.
2. Batches: the records of this rank's share are read in file order, `chunk_residues` at a time,
   sorted into token-budget batches and tokenised by the engine, in a thread ahead of the device
   (`prefetch`).
3. Engine (protlm.embed.engine): one forward per batch; the host copies may still be in flight.
4. Writer (protlm.embed.writers), in a thread behind the device (`BackgroundWriter`): one process
   writes OUT's parts with a live index, readable at any moment; each rank of a torchrun job
   writes its own shard and rank 0 merges them into the same file one process would have written.
   Rerunning after a kill resumes, with any number of ranks.

`extract` / `extract_batches` are steps 2-3 for a model already in memory, yielding results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from protlm.alphabet import Alphabet
from protlm.data.batching import chunked_by_size
from protlm.data.fasta import Record, read_fasta
from protlm.embed import writers
from protlm.embed.engine import Engine, HostBatch, Job
from protlm.embed.plan import (INCLUDES, EmbedError, Plan, check_lengths, check_request, make_plan,
                               scan_fasta)
from protlm.embed.progress import RoundCounter
from protlm.io import output_lock, sequence_hash, stale_temps
from protlm.runtime.distributed import (Dist, from_rank0, init_distributed, leave_distributed, rank_device,
                                        under_torchrun)
from protlm.runtime.options import InferenceOptions
from protlm.version import __version__

PLAN_TIMEOUT = timedelta(hours=2)  # the other ranks wait while rank 0 scans a UniRef-sized FASTA
Keep = Callable[[int, str], bool]  # (record index in the file, ID) -> embed it in this run


@dataclass(frozen=True)
class EmbedConfig:
    """What to compute per record (the options shared with other commands: InferenceOptions)."""

    repr_layers: tuple[int, ...] = (-1,)  # negative counts from the end, as in fair-esm
    include: tuple[str, ...] = ("mean",)
    chunk_residues: int = 4_000_000  # residues read into memory (and sorted) at a time
    max_padding: float = 0.05  # close a padded batch before padding exceeds 5% of its tokens
    compile: bool | None = None  # torch.compile the layers; None: on for CUDA, off on CPU

    def __post_init__(self):
        bad = [i for i in self.include if i not in INCLUDES]
        if bad or not self.include:
            raise EmbedError(f"--include must be among {INCLUDES}, got {list(self.include)}")
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


# ------------------------------------------------------------------ whole runs into a file
def embed_to_file(fasta: str | Path, output: str | Path, opts: InferenceOptions,
                  cfg: EmbedConfig = EmbedConfig(), *, fmt: str = "h5", model_loader=None,
                  overwrite_changed: bool = False, distributed: bool | None = None) -> dict | None:
    """Embed every record of `fasta` not yet in `output` (see the module docstring); returns the
    counts (with per-rank figures under 'ranks' when rank shards were written), None on ranks
    other than 0. The output's lock (protlm.io) is held throughout: a second writer fails at once.

    overwrite_changed: recompute records already there whose sequence changed (default: refuse).
    distributed: run as one rank of a torchrun job (None: when torchrun's environment is set).
    """
    if fmt not in ("h5", "pt"):
        raise EmbedError(f"--format must be h5 or pt, got {fmt!r}")
    if distributed and not under_torchrun():
        raise EmbedError("--distributed runs under torchrun, which sets RANK and WORLD_SIZE "
                         "(torchrun --nproc_per_node G -m protlm.cli.main embed ...)")
    opts = opts.resolved()  # device checked, 'auto' chosen (and said) once: before the slow load
    use_ranks = under_torchrun() if distributed is None else distributed
    d = init_distributed(opts.device, PLAN_TIMEOUT) if use_ranks else Dist()
    try:
        opts = dataclasses.replace(opts, device=str(rank_device(opts.device, d)))
        return _run(d, use_ranks, Path(fasta), Path(output), opts, cfg, fmt, model_loader, overwrite_changed)
    finally:
        leave_distributed(d)


def _run(d: Dist, use_ranks: bool, fasta: Path, output: Path, opts: InferenceOptions, cfg: EmbedConfig,
         fmt: str, model_loader, overwrite_changed: bool) -> dict | None:
    local: dict = {}  # rank 0's own engine
    with contextlib.ExitStack() as stack:

        def plan() -> Plan:
            stack.enter_context(output_lock(output))  # held by rank 0 until the output is complete
            sharded = use_ranks or writers.has_shards(output, fmt)
            return _plan(d, sharded, fasta, output, opts, cfg, fmt, model_loader, overwrite_changed, local)

        plan = from_rank0(d, plan)
        per_rank = None
        if plan.todo or not plan.sharded and _unfinished(output, fmt):
            engine = local.get("engine") or make_engine(*opts.load(model_loader, verbose=False), cfg, opts)
            per_rank = _embed_share(d, fasta, output, cfg, opts, fmt, plan, engine)
        if d.rank != 0:
            return None
        stats = plan.stats
        if per_rank is not None:
            stats["written"] = sum(p["records"] for p in per_rank)
            if plan.sharded:
                stats["ranks"] = per_rank
        if plan.sharded and fmt == "h5" and (plan.todo or _leftovers(output)):
            t0 = time.perf_counter()
            writers.merge_ranks(output, plan.meta, plan.ids, plan.owner, plan.found)
            stats["merge_s"] = time.perf_counter() - t0
        return stats


def _plan(d: Dist, sharded: bool, fasta: Path, output: Path, opts: InferenceOptions, cfg: EmbedConfig,
          fmt: str, model_loader, overwrite_changed: bool, local: dict) -> Plan:
    """Rank 0: validate, load, plan; prepare the output for the ranks' writers."""
    summary = scan_fasta(fasta, unknown=opts.unknown)  # the one full scan
    model, alphabet = opts.load(model_loader)
    check_lengths(summary, model.config.max_sequence_length, opts.long)
    check_request(model, opts.model, cfg.include)
    local["engine"] = engine = make_engine(model, alphabet, cfg, opts)
    meta = output_meta(opts, engine.layers, cfg)
    plan = make_plan(summary, model, meta, output, fmt, d.world, engine.cost, opts.long, overwrite_changed,
                     sharded)
    if fmt == "pt" and plan.todo:
        writers.PtOutput(output, meta).begin()  # settings file, stale temps: before any rank writes
    if sharded and fmt == "h5" and plan.todo:
        for tmp in stale_temps(output):
            tmp.unlink()  # a final file cut off by a kill
        writers.shards_dir(output).mkdir(parents=True, exist_ok=True)
    return plan


def output_meta(opts: InferenceOptions, layers: list[int], cfg: EmbedConfig) -> dict:
    """The settings an output records (and a resumed run must match), layers resolved."""
    return {"model": str(opts.model), "layers": layers, "include": list(cfg.include), "long": opts.long,
            "dtype": opts.dtype, "protlm_version": __version__}


def _unfinished(output: Path, fmt: str) -> bool:
    return fmt == "h5" and output.with_name(output.name + ".parts").is_dir()


def _leftovers(output: Path) -> bool:
    return writers.shards_dir(output).is_dir() or output.with_name(output.name + ".parts").is_dir()


def _embed_share(d: Dist, fasta: Path, output: Path, cfg: EmbedConfig, opts: InferenceOptions, fmt: str,
                 plan: Plan, engine: Engine) -> list[dict]:
    """Embed this rank's records into its writer; every rank's figures once all are done."""
    extra = (lambda: f", compile {engine.compile_s:.1f}s") if engine.compile else (lambda: "")
    counter = RoundCounter(d, plan.todo, opts.progress and d.is_main, extra)
    try:
        if (plan.owner == d.rank).any() or not plan.sharded:
            with _writer(d, output, fmt, plan) as out:
                write_records(engine, fasta, cfg, opts, out, plan.mine(d.rank),
                              lambda batch: counter.add(len(batch), sum(r.length for r in batch)))
    except BaseException:
        # Not counted as finished: with other ranks, rank 0 must not merge without this rank's
        # records; torchrun ends the job once this process exits. Alone, just stop the thread.
        if d.world == 1:
            counter.finish()
        raise
    counter.finish()
    return counter.wait()


@contextlib.contextmanager
def _writer(d: Dist, output: Path, fmt: str, plan: Plan):
    """One process: OUT itself (parts + live index, consolidated at the end). Sharded: this
    rank's shard (writers.rank_writer)."""
    if plan.sharded:
        with writers.rank_writer(fmt, output, d.rank, plan.meta) as out:
            yield out
        return
    out = writers.H5Output(output, plan.meta) if fmt == "h5" else writers.PtOutput(output, plan.meta)
    out.done_hashes(plan.ids)
    out.begin()
    yield out
    out.finish()


def make_engine(model, alphabet: Alphabet, cfg: EmbedConfig, opts: InferenceOptions) -> Engine:
    """The engine `protlm embed` runs (packed batches unless contacts are asked for)."""
    compile = cfg.compile
    if compile is None:  # on for CUDA, off on CPU (measured slower there: docs/performance.md)
        compile = next(model.parameters()).device.type == "cuda"
    return Engine(model, alphabet, cfg.repr_layers, toks_per_batch=opts.toks_per_batch, long=opts.long,
                  max_padding=cfg.max_padding, compile=compile)


def write_records(engine: Engine, fasta, cfg: EmbedConfig, opts: InferenceOptions, out, keep: Keep,
                  on_batch: Callable[[list[EmbedResult]], None]) -> None:
    """Embed the records `keep` selects into `out` (H5Output or PtOutput, begun) batch by batch;
    `on_batch(results)` runs after each batch is written (in the writer thread)."""

    def write(items):  # in the writer thread: wait for the host copies, merge, write as one piece
        batch = [r for item in items for r in _results(*item, engine.layers, cfg.include)]
        out.write_batch(batch)
        on_batch(batch)

    with BackgroundWriter(write, depth=4, many=True) as writer:
        for item in _pending(engine, fasta, cfg, opts.unknown, keep):
            writer.put(item)
    out.write_index()


# ------------------------------------------------------------------ batches through the engine
def _jobs(engine: Engine, fasta, cfg: EmbedConfig, unknown, keep: Keep, want) -> Iterator[tuple[list[Record], Job]]:
    """Host work, run ahead of the device: read, sort into batches, tokenise."""
    records = (r for i, r in enumerate(read_fasta(fasta, engine.alphabet, unknown)) if keep(i, r.id))
    pairs = ((r, engine.cost(len(r.sequence))) for r in records)
    for chunk in chunked_by_size(pairs, lambda rc: rc[1], cfg.chunk_residues):
        recs = [r for r, _ in chunk]
        seqs = [r.sequence for r in recs]
        for batch in engine.batches([len(q) for q in seqs], want):
            yield [recs[i] for i in batch], engine.plan(seqs, batch, want)


def _pending(engine: Engine, fasta, cfg: EmbedConfig, unknown, keep: Keep) -> Iterator[tuple[list[Record], HostBatch]]:
    """Device work: one forward per planned batch; host copies may still be in flight."""
    want = frozenset(cfg.include)
    for recs, job in prefetch(_jobs(engine, fasta, cfg, unknown, keep, want), depth=2):
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
                    opts: InferenceOptions = InferenceOptions(),
                    skip: frozenset[str] | set[str] = frozenset()) -> Iterator[list[EmbedResult]]:
    """Yield one list of results per batch, shortest sequences first within each chunk.

    The model must be in eval mode on its device (`opts` gives the token budget, the long-sequence
    policy and unknown characters); records whose ID is in `skip` are not computed (resume).
    Only `cfg.chunk_residues` residues of sequence are held at a time.
    """
    engine = make_engine(model, alphabet, cfg, opts)
    for recs, pending in _pending(engine, fasta, cfg, opts.unknown, lambda _, rid: rid not in skip):
        yield _results(recs, pending, engine.layers, cfg.include)


def extract(model, alphabet: Alphabet, fasta: str | Path, cfg: EmbedConfig = EmbedConfig(),
            opts: InferenceOptions = InferenceOptions(),
            skip: frozenset[str] | set[str] = frozenset()) -> Iterator[EmbedResult]:
    """Yield one `EmbedResult` per record (in batch order, not file order)."""
    for batch in extract_batches(model, alphabet, fasta, cfg, opts, skip):
        yield from batch


# ------------------------------------------------------------------ threads around the device
# Keeping the device busy: a reader thread ahead of it and a writer thread behind it. Both
# queues are bounded, so memory stays flat whatever the speed difference; an error in either
# thread is raised in the caller's thread.
T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a daemon thread, holding at most `depth` produced items."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(_Failed(exc))

    t = threading.Thread(target=produce, daemon=True, name="protlm-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()


class BackgroundWriter:
    """Calls `write(item)` for each `put(item)` in one thread, in order; at most `depth` waiting.

    With `many=True`, `write` takes a list instead: every item waiting when the thread comes
    back for more (at least one), so a writer that falls behind writes fewer, larger pieces
    (each written piece costs a fixed amount on top of its rows: a file, its fsyncs).

    Use as a context manager: leaving it waits for every queued write (or, after an error in
    the caller, stops after the write in progress). A write error is raised by the next put()
    or by close(). Items are written in put order, so resume bookkeeping is that of a
    synchronous loop: whatever a kill interrupts was never recorded as written.
    """

    def __init__(self, write: Callable, depth: int = 4, many: bool = False):
        self._write = write
        self._many = many
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="protlm-writer")
        self._thread.start()

    def _take(self) -> tuple[list, bool]:
        """(items to write now, whether the end was reached)."""
        item = self._q.get()
        if item is _DONE:
            return [], True
        items = [item]
        while self._many:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                return items, True
            items.append(item)
        return items, False

    def _loop(self):
        while True:
            items, done = self._take()
            if items and self._error is None and not self._abort:
                try:
                    if self._many:
                        self._write(items)
                    else:
                        self._write(items[0])
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self._error = exc
            if done:
                return

    def _check(self):
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        self._check()
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_DONE)
        self._thread.join()
        self._check()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort = True
            self._q.put(_DONE)
            self._thread.join()
            return
        self.close()
