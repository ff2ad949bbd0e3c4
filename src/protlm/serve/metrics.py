"""Prometheus text exposition (format 0.0.4) of the server's counters, written by hand.

Requests by endpoint and status, a latency histogram per endpoint, batch sizes (records and
tokens), residues and tokens computed, rejections by reason; queue depth and readiness are
gauges read when /metrics is scraped. Label values are bounded: endpoints are the server's own
routes (anything else is 'other'), reasons a fixed list.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RECORD_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
PREFIX = "protlm_"


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        i = next((k for k, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip((*self.bounds, "+Inf"), self.counts):
            running += n
            le = bound if bound == "+Inf" else _num(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {_num(self.sum)}", f"{name}_count{braces} {self.count}"]
        return out


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """Thread-safe counters (the model thread and the event loop both write)."""

    def __init__(self, endpoints: Iterable[str]):
        self.endpoints = frozenset(endpoints)
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.rejected: dict[str, int] = defaultdict(int)
        self.batch_records = Histogram(RECORD_BUCKETS)
        self.batch_tokens = Histogram(TOKEN_BUCKETS)
        self.batch_seconds = 0.0
        self.tokens = 0
        self.residues = 0
        self.residue_rate = 0.0  # residues per second of model time, recent batches (EWMA)

    def endpoint(self, path: str) -> str:
        return path if path in self.endpoints else "other"

    def request(self, path: str, status: int, seconds: float) -> None:
        ep = self.endpoint(path)
        with self._lock:
            self.requests[ep, status] += 1
            self.latency.setdefault(ep, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def batch(self, records: int, tokens: int, seconds: float) -> None:
        with self._lock:
            self.batch_records.observe(records)
            self.batch_tokens.observe(tokens)
            self.batch_seconds += seconds
            self.tokens += tokens

    def computed(self, residues: int, seconds: float) -> None:
        """Residues of finished records (embeddings, contacts, perplexity, variant windows)."""
        with self._lock:
            self.residues += residues
            if seconds > 0:
                rate = residues / seconds
                self.residue_rate = rate if self.residue_rate == 0 else 0.8 * self.residue_rate + 0.2 * rate

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; `gauges`: name -> (help, value) read at scrape time."""
        p = PREFIX
        with self._lock:
            out = [f"# HELP {p}requests_total Requests answered, by endpoint and HTTP status.",
                   f"# TYPE {p}requests_total counter"]
            out += [f'{p}requests_total{{endpoint="{ep}",status="{st}"}} {n}'
                    for (ep, st), n in sorted(self.requests.items())]
            out += [f"# HELP {p}request_duration_seconds Time from request to reply, by endpoint.",
                    f"# TYPE {p}request_duration_seconds histogram"]
            for ep, h in sorted(self.latency.items()):
                out += h.lines(f"{p}request_duration_seconds", f'endpoint="{ep}"')
            out += [f"# HELP {p}rejected_total Requests refused before compute, by reason.",
                    f"# TYPE {p}rejected_total counter"]
            out += [f'{p}rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())]
            out += [f"# HELP {p}batch_records Work items per model batch.", f"# TYPE {p}batch_records histogram",
                    *self.batch_records.lines(f"{p}batch_records"),
                    f"# HELP {p}batch_tokens Model tokens per batch.", f"# TYPE {p}batch_tokens histogram",
                    *self.batch_tokens.lines(f"{p}batch_tokens")]
            counters = {"tokens_total": ("Model tokens computed.", self.tokens),
                        "residues_total": ("Residues computed (rate() gives residues/s).", self.residues),
                        "model_seconds_total": ("Seconds the model thread was busy.", self.batch_seconds)}
            gauges = {"residues_per_second": ("Residues per second of model time, recent batches.",
                                              self.residue_rate), **gauges}
            for name, (help_, value) in counters.items():
                out += [f"# HELP {p}{name} {help_}", f"# TYPE {p}{name} counter", f"{p}{name} {_num(value)}"]
            for name, (help_, value) in gauges.items():
                out += [f"# HELP {p}{name} {help_}", f"# TYPE {p}{name} gauge", f"{p}{name} {_num(value)}"]
        return "\n".join(out) + "\n"
