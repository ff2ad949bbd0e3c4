"""`protlm embed` on many ranks (torchrun): records split among ranks, one shard per rank,
merged by rank 0 into the file one process would have written (the same records and
numbers; rows may come in another order).

Every rank runs `embed_sharded`:
1. Rank 0 takes the output's lock, validates the FASTA (the one full scan), loads the model and
   reads what is already written: the output, a single-process run's `OUT.parts/`, and every
   rank shard in `OUT.shards/` whatever world size wrote it. The records none of them holds
   with the current sequence hash are split among the ranks by protlm.engine.shard. The plan
   (or rank 0's error) is broadcast; the other ranks then load the model.
2. Each rank embeds its records (read in file order, length-sorted per chunk as in one process)
   into its own shard `OUT.shards/rank-NNNNN.h5`, an embed_io.H5Output under its own lock: batch
   files renamed into place, so a killed rank loses only the batches in flight. A gloo thread
   all-reduces counts every few seconds: rank 0's bar shows the global rate, and the rounds end
   when every rank is done, so no rank waits at a barrier with a timeout shorter than the job.
3. Rank 0 takes each record from a file holding its current sequence hash, writes one
   consolidated `OUT` (renamed into place), then removes the parts and shards.

`--format pt` needs no merge: one file per record is already a shard, so ranks write into the
output folder directly. Embeddings need no collectives: NCCL (on CUDA) is only initialised;
the plan and the counts go over gloo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from protlm import embed as E
from protlm import embed_io
from protlm.engine.shard import split_by_cost
from protlm.errors import ProtlmError
from protlm.io import stale_temps
from protlm.lock import output_lock
from protlm.records import changed_records, check_changed

PLAN_TIMEOUT = timedelta(hours=2)  # the other ranks wait while rank 0 scans a UniRef-sized FASTA
ROUND_TIMEOUT = timedelta(minutes=30)  # one progress round; a rank may still be loading its model
ROUND_INTERVAL_S = 2.0


class RankStopped(ProtlmError):
    """Rank 0 stopped the run before any compute; it reports why."""


def shards_dir(output: str | Path) -> Path:
    """`OUT.shards/` beside OUT: the rank shards of a running (or killed) torchrun job."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve(distributed: bool | None) -> bool:
    """Run as a torchrun rank: when asked (torchrun's environment must then be set) or, for
    None, when that environment is set."""
    if distributed and not under_torchrun():
        raise E.EmbedError("--distributed runs under torchrun, which sets RANK and WORLD_SIZE "
                           "(torchrun --nproc_per_node G -m protlm.cli.main embed ...)")
    return under_torchrun() if distributed is None else distributed


def has_shards(output, fmt: str) -> bool:
    """Rank shards of an earlier torchrun job wait in OUT.shards/: any run on OUT takes the
    sharded path (alone, as a job of one rank) to use and merge them."""
    return fmt == "h5" and shards_dir(output).is_dir()


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: object = None  # gloo group of the progress rounds (None with one rank)
    owned: bool = False  # this call created the process group (and destroys it)


def join(device: str, distributed: bool) -> Ranks:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL + gloo on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    if world == 1:
        return Ranks()
    owned = not dist.is_initialized()
    if owned:
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=PLAN_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=ROUND_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group, owned)


def rank_device(device: str, r: Ranks) -> str:
    """One GPU per rank: cuda:LOCAL_RANK."""
    if not device.startswith("cuda") or r.world == 1:
        return device
    if r.local_rank >= torch.cuda.device_count():
        raise E.EmbedError(f"local rank {r.local_rank} has no GPU: this node has "
                           f"{torch.cuda.device_count()}; start one process per GPU")
    torch.cuda.set_device(r.local_rank)
    return f"cuda:{r.local_rank}"


def from_rank0(r: Ranks, fn):
    """fn() on rank 0, its result on every rank; rank 0's error stops every rank."""
    box = [None]
    if r.rank == 0:
        try:
            box = [("ok", fn())]
        except BaseException:
            box = [("error", None)]
            if r.world > 1:
                dist.broadcast_object_list(box, src=0)
            raise
    if r.world > 1:
        dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RankStopped(f"rank {r.rank}: stopped, rank 0 reports why")
    return value


def embed_sharded(fasta, model_name, output, cfg: E.EmbedConfig, fmt: str, device: str, dtype: str,
                  progress: bool, model_loader, overwrite_changed: bool, distributed: bool) -> dict | None:
    """One rank's part of a sharded `protlm embed` (see the module doc); rank 0 returns the
    counts, with per-rank figures under 'ranks', the other ranks None. Not `distributed`: a job
    of one rank, whatever the environment says."""
    r = join(device, distributed)
    try:
        return _run(r, fasta, model_name, Path(output), cfg, fmt, rank_device(device, r), dtype,
                    progress, model_loader, overwrite_changed)
    finally:
        if r.owned:
            dist.destroy_process_group()


def _run(r: Ranks, fasta, model_name, output: Path, cfg, fmt, device, dtype, progress, model_loader,
         overwrite_changed) -> dict | None:
    local: dict = {}  # rank 0's own: summary, model, engine, stats
    with contextlib.ExitStack() as stack:

        def plan():
            stack.enter_context(output_lock(output))  # held by rank 0 until the merge is done
            return _plan(r.world, fasta, model_name, output, cfg, fmt, device, dtype, model_loader,
                         overwrite_changed, local)

        plan = from_rank0(r, plan)
        if plan["todo"]:
            engine = local.get("engine")
            if engine is None:
                model, alphabet = (model_loader or _default_loader())(model_name)
                engine = E.make_engine(E.prepare_model(model, device, dtype, source=model_name), alphabet, cfg)
            per_rank = _embed_share(r, fasta, output, cfg, fmt, plan, engine, progress)
        if r.rank != 0:
            return None
        stats = local["stats"]
        if plan["todo"]:
            stats["written"] = sum(p["records"] for p in per_rank)
            stats["ranks"] = per_rank
        if plan["merge"]:
            t0 = time.perf_counter()
            merge(output, plan["meta"], local["summary"].ids, plan["owner"], local["found"])
            stats["merge_s"] = time.perf_counter() - t0
        return stats


def _default_loader():
    import protlm

    return protlm.load_model_and_alphabet


def _plan(world, fasta, model_name, output: Path, cfg, fmt, device, dtype, model_loader, overwrite,
          local: dict) -> dict:
    """Rank 0: validate, load, read what is written, split what is missing among `world` ranks."""
    summary, model, alphabet, meta = E.load_checked(fasta, model_name, cfg, fmt, dtype, model_loader)
    if fmt == "h5":
        local["found"] = locate(output, meta, dict(summary.hashed_ids()))
        stored = {rid: h for rid, (_, h) in local["found"].items()}
    else:
        stored = embed_io.PtOutput(output, meta).done_hashes(summary.ids)
    changed = changed_records(stored, summary.hashed_ids())
    check_changed(output, changed, overwrite)
    done = set(stored).difference(changed)
    engine = E.make_engine(E.prepare_model(model, device, dtype, source=model_name), alphabet, cfg)
    todo = [i for i, rid in enumerate(summary.ids) if rid not in done]
    owner = np.full(len(summary.ids), -1, dtype=np.int32)
    owner[todo] = split_by_cost([engine.cost(summary.lengths[i]) for i in todo], world)
    todo_lengths = [(summary.ids[i], summary.lengths[i]) for i in todo]
    local.update(summary=summary, engine=engine, stats={
        "records": len(summary.ids), "skipped": len(summary.ids) - len(todo), "written": 0,
        "recomputed": len(changed), "truncated": E.warn_truncated(todo_lengths, engine.model, cfg.long)})
    leftovers = fmt == "h5" and (shards_dir(output).is_dir() or output.with_name(output.name + ".parts").is_dir())
    if fmt == "pt" and todo:
        embed_io.PtOutput(output, meta).begin()  # settings file, stale temps: before any rank writes
    if fmt == "h5" and todo:
        for tmp in stale_temps(output):
            tmp.unlink()  # a final file cut off by a kill
        shards_dir(output).mkdir(parents=True, exist_ok=True)
    return {"meta": meta, "owner": owner, "todo": len(todo), "merge": leftovers or bool(todo) and fmt == "h5"}


def locate(output: Path, meta: dict, current: dict[str, str]) -> dict[str, tuple[Path, str | None]]:
    """{id: (file, sequence hash)} over the output, its parts and every rank shard (settings
    checked): a record's copy with its `current` hash when one exists, else its first."""
    found: dict[str, tuple[Path, str | None]] = {}
    for source in (output, *rank_shards(output)):
        out = embed_io.H5Output(source, meta)
        out.done_hashes()
        for rid, (file, h) in out.located.items():
            if rid not in found or (h == current.get(rid) and found[rid][1] != h):
                found[rid] = (file, h)
    return found


def shard_path(output: Path, rank: int) -> Path:
    return shards_dir(output) / f"rank-{rank:05d}.h5"


def rank_shards(output: Path) -> list[Path]:
    """Every rank shard left in OUT.shards/, from any world size: its index file, its parts
    folder, or both (a rank killed before its first index)."""
    d = shards_dir(output)
    names = {p.name.removesuffix(".parts") for p in d.glob("rank-*.h5*")} if d.is_dir() else set()
    return [d / n for n in sorted(names) if n.endswith(".h5")]


def _embed_share(r: Ranks, fasta, output: Path, cfg, fmt, plan, engine, progress) -> list[dict]:
    """Embed this rank's records into its shard; returns every rank's figures once all are done."""
    owner = plan["owner"]
    counter = RoundCounter(r, plan["todo"], progress and r.rank == 0)
    try:
        if (owner == r.rank).any():
            with _share_writer(fmt, output, r.rank, plan["meta"]) as out:
                E.write_records(engine, fasta, cfg, out, lambda i, _: owner[i] == r.rank,
                                lambda batch: counter.add(len(batch), sum(x.length for x in batch)))
    except BaseException:
        # Not counted as finished: with other ranks, rank 0 must not merge without this rank's
        # records; torchrun ends the job once this process exits. Alone, just stop the thread.
        if r.world == 1:
            counter.finish()
        raise
    counter.finish()
    return counter.wait()


@contextlib.contextmanager
def _share_writer(fmt: str, output: Path, rank: int, meta: dict):
    """This rank's writer: its own shard under its own lock (h5), or the output folder that
    rank 0 prepared (pt: a file per record, so ranks never write the same file)."""
    if fmt == "pt":
        yield embed_io.PtOutput(output, meta)
        return
    shard = shard_path(output, rank)
    with output_lock(shard):
        out = embed_io.H5Output(shard, meta)
        out.done_hashes()  # its records of earlier runs stay in its index
        out.begin()
        yield out


class RoundCounter:
    """This rank's written records and residues, all-reduced with every other rank's in a thread
    every ROUND_INTERVAL_S. Rank 0's bar shows the global counts; the rounds stop when every rank
    has called finish(), and wait() then returns each rank's figures."""

    def __init__(self, r: Ranks, total: int, show: bool):
        self.r, self.counts, self.t0 = r, [0, 0], time.perf_counter()
        self.elapsed: float | None = None
        self.bar = E.progress_bar(total, show)
        self._wake, self._error, self._figures = threading.Event(), None, []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="protlm-progress")
        self._thread.start()

    def add(self, records: int, residues: int) -> None:
        self.counts = [self.counts[0] + records, self.counts[1] + residues]

    def finish(self) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self._wake.set()

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.r.world > 1:
            dist.all_reduce(t, group=self.r.group)
        return t

    def _loop(self) -> None:
        try:
            while True:
                done = self.elapsed is not None  # read before the counts: once done, they are final
                t = self._reduce(torch.tensor([*self.counts, done], dtype=torch.int64))
                self.bar.update(int(t[0]) - self.bar.n)
                E.show_rate(self.bar, int(t[1]), self.t0, f", {self.r.world} rank{'s' * (self.r.world > 1)}")
                if int(t[2]) == self.r.world:
                    break
                self._wake.wait(ROUND_INTERVAL_S)
            mine = torch.tensor([*self.counts, round(1000 * self.elapsed)], dtype=torch.int64)
            every = [torch.zeros_like(mine) for _ in range(self.r.world)]
            if self.r.world > 1:
                dist.all_gather(every, mine, group=self.r.group)
            else:
                every = [mine]
            self._figures = [{"rank": i, "records": int(a), "residues": int(b), "seconds": int(ms) / 1000}
                             for i, (a, b, ms) in enumerate(x.tolist() for x in every)]
        except BaseException as exc:  # noqa: BLE001 - raised by wait() in the main thread
            self._error = exc
        finally:
            self.bar.close()

    def wait(self) -> list[dict]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._figures


def merge(output: Path, meta: dict, ids: list[str], owner: np.ndarray,
          found: dict[str, tuple[Path, str | None]]) -> None:
    """Rank 0, every rank done: one consolidated OUT, then the parts and shards removed.

    Records of this run (owner >= 0) come from their rank's shard, newest batch file; the others
    from where the plan found them (`locate`). A merge killed before its rename is redone;
    after it, OUT holds everything and the leftovers are only removed.
    """
    todo = owner >= 0
    files = {rid: file for rid, (file, _) in found.items()}
    for rank in np.unique(owner[todo]).tolist():
        mine = {ids[i] for i in np.flatnonzero(owner == rank).tolist()}
        written = embed_io.H5Output(shard_path(output, rank), meta).part_files(mine)
        if len(written) != len(mine):
            missing = sorted(mine.difference(written))
            raise RuntimeError(f"rank {rank} finished without {len(missing)} of its records, e.g. {missing[0]!r}")
        files.update(written)
    if any(file != output for file in files.values()):
        embed_io.merge_h5(output, meta, files)
    for leftover in (output.with_name(output.name + ".parts"), shards_dir(output)):
        if leftover.is_dir():
            shutil.rmtree(leftover)
