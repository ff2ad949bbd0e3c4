"""Progress of an embedding run, one rank or many: records and residues written, a rate.

Each rank counts what it wrote; a thread all-reduces the counts over a gloo group every
ROUND_INTERVAL_S, so rank 0's bar shows the global rate, and the rounds end when every rank is
done: no rank waits at a barrier with a timeout shorter than the job. With one process the
rounds are local (no collective).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from protlm.runtime.distributed import Dist

ROUND_TIMEOUT = timedelta(minutes=30)  # one progress round; a rank may still be loading its model
ROUND_INTERVAL_S = 2.0


def progress_bar(n_records: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=n_records, unit="seq", disable=not enabled, desc="embed", dynamic_ncols=True)


def show_rate(bar, residues: int, t0: float, extra: str = "") -> None:
    """Residues per second since `t0` in the bar's postfix."""
    bar.set_postfix_str(f"{residues / max(time.perf_counter() - t0, 1e-9):.0f} tok/s{extra}")


class RoundCounter:
    """This rank's written records and residues, summed with every other rank's in a thread.
    Rank 0's bar (`show`) has the global counts; wait() returns each rank's figures once every
    rank has called finish(). `extra()` adds text to the rate (e.g. compile time)."""

    def __init__(self, d: Dist, total: int, show: bool, extra=lambda: ""):
        self.d, self.counts, self.t0, self.extra = d, [0, 0], time.perf_counter(), extra
        # host counts on a gloo group of their own: the job's group may be NCCL-only for tensors
        self.group = dist.new_group(backend="gloo", timeout=ROUND_TIMEOUT) if d.world > 1 else None
        self.elapsed: float | None = None
        self.bar = progress_bar(total, show)
        self._wake, self._error, self._figures = threading.Event(), None, []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="protlm-progress")
        self._thread.start()

    def add(self, records: int, residues: int) -> None:
        self.counts = [self.counts[0] + records, self.counts[1] + residues]
        if self.d.world == 1:
            self._wake.set()  # one process: the bar follows every batch

    def finish(self) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self._wake.set()

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.d.world > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def _loop(self) -> None:
        try:
            ranks = f", {self.d.world} ranks" if self.d.world > 1 else ""
            while True:
                done = self.elapsed is not None  # read before the counts: once done, they are final
                t = self._reduce(torch.tensor([*self.counts, done], dtype=torch.int64))
                self.bar.update(int(t[0]) - self.bar.n)
                show_rate(self.bar, int(t[1]), self.t0, ranks + self.extra())
                if int(t[2]) == self.d.world:
                    break
                self._wake.wait(ROUND_INTERVAL_S)
                self._wake.clear()
            mine = torch.tensor([*self.counts, round(1000 * self.elapsed)], dtype=torch.int64)
            every = [torch.zeros_like(mine) for _ in range(self.d.world)]
            if self.d.world > 1:
                dist.all_gather(every, mine, group=self.group)
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
