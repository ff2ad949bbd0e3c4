"""benchmarks/bench_gpu.py --smoke runs end to end on CPU (tiny shapes) and prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_smoke():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    for family in ("esm2", "esm1b"):
        for part in ("mix", "uniform", "contacts"):
            assert f"{family} {part}:" in p.stdout
    for impl in ("protlm-padded", "protlm-packed", "protlm-compiled", "fair-esm", "transformers"):
        assert p.stdout.count(impl) >= 4, p.stdout
    assert "measured matmul peak" in p.stdout
