"""Pseudo-log-likelihoods kept beside a long `pseudo-ll` run, so a killed run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path


class PLLStore:
    """Append-only JSONL of {sequence: PLL} for one model, beside a long run's output.

    The first line names the model; a store written for another model is started afresh. Each
    line is flushed and fsynced, and a torn last line (a kill mid-write) is ignored on reading.
    Keyed by the scored sequence itself, so a changed wild type is never served an old PLL.
    """

    def __init__(self, path, model: str):
        self.path, self.values = Path(path), {}
        header = {"model": model}
        text = self.path.read_text() if self.path.exists() else ""
        lines = text.splitlines()
        if lines and _json_or_none(lines[0]) == header:
            for line in lines[1:]:
                rec = _json_or_none(line)
                if isinstance(rec, dict) and "seq" in rec and "pll" in rec:
                    self.values[rec["seq"]] = float(rec["pll"])
            self._fh = open(self.path, "a")
            if not text.endswith("\n"):
                self._fh.write("\n")  # end a torn line so the next record starts clean
        else:
            self._fh = open(self.path, "w")
            self._fh.write(json.dumps(header) + "\n")

    def add(self, seq: str, value: float) -> None:
        self._fh.write(json.dumps({"seq": seq, "pll": value}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None
