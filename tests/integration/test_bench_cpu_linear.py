"""benchmarks/bench_cpu_linear.py: both fp32 Linear paths timed on every ESM-2 shape, and equal to fp32 rounding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cpu_linear_runs_and_agrees(tmp_path):
    out = tmp_path / "linear.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cpu_linear.py"), "--tokens", "32",
                        "--threads", "1", "--repeats", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["shape"] for r in rows} == {"35M", "150M", "650M"} and len(rows) == 9
    for r in rows:
        assert r["mkl_gflops"] > 0 and r["onednn_gflops"] > 0
        assert r["onednn_err"] < 1e-4 and r["mkl_err"] < 1e-4  # fp32 rounding of sums over <= 5120 terms
