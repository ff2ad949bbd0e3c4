"""One process of a torchrun job: its rank, its device, the process group; the same for
`protlm train` and `protlm embed`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. With WORLD_SIZE 1 (or
outside torchrun) nothing is initialised and every collective here is a no-op, so callers run
the same code on one process and on many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from protlm.errors import InputError, ProtlmError


class RankStopped(ProtlmError):
    """Rank 0 stopped the job before any compute; it reports why."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process created the process group, so it also destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_kind: str, timeout: timedelta | None = None) -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1: gloo on CPU; on CUDA, NCCL for CUDA
    tensors and gloo for host ones (plans, counters)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    owned = not dist.is_initialized()
    if owned:
        backend = "cpu:gloo,cuda:nccl" if device_kind.startswith("cuda") else "gloo"
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def leave_distributed(d: Dist) -> None:
    """Destroy the process group this process created, on a clean finish. Left to interpreter
    exit, gloo's worker threads can outlive the interpreter and abort the process (SIGABRT,
    "terminate called without an active exception") after the run has already succeeded.
    Not called after an error: destroying while another rank is still in a collective can hang."""
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(kind: str, d: Dist) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> this rank's device: one GPU per rank, cuda:LOCAL_RANK."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if not str(kind).startswith("cuda"):
        return torch.device(kind)
    if d.world == 1 and ":" in str(kind):
        return torch.device(kind)
    if d.local_rank >= torch.cuda.device_count():
        raise InputError(f"local rank {d.local_rank} has no GPU: this node has "
                         f"{torch.cuda.device_count()}; start one process per GPU")
    torch.cuda.set_device(d.local_rank)
    return torch.device("cuda", d.local_rank)


def all_reduce_sum(x: torch.Tensor, d: Dist, group=None) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def from_rank0(d: Dist, fn):
    """fn() on rank 0, its result on every rank; rank 0's error stops every rank (RankStopped
    on the others, the error itself on rank 0)."""
    box = [None]
    if d.rank == 0:
        try:
            box = [("ok", fn())]
        except BaseException:
            box = [("error", None)]
            if d.world > 1:
                dist.broadcast_object_list(box, src=0)
            raise
    if d.world > 1:
        dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise RankStopped(f"rank {d.rank}: stopped, rank 0 reports why")
    return value


__all__ = ["Dist", "RankStopped", "under_torchrun", "init_distributed", "leave_distributed", "rank_device",
           "all_reduce_sum", "from_rank0"]
