"""Training logs: JSONL metrics (append, one line per logged step), progress bar, TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    """Rank 0 writes `<out>/metrics.jsonl`; other ranks log nothing."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool = False, progress: bool = True,
                 start: int = 0, total: int = 0):
        self.enabled = enabled
        self.fh = self.tb = self.bar = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.fh = open(out / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(text)

    def log(self, metrics: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if not force:
            return
        self.fh.write(json.dumps({**metrics, "time": time.time()}) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, metrics["step"])
        if "valid_ppl" in metrics:
            self.note(f"step {metrics['step']}: loss {metrics['loss']:.4f} valid ppl {metrics['valid_ppl']:.3f}")

    def close(self) -> None:
        for h in (self.fh, self.tb, self.bar):
            if h is not None:
                h.close()
