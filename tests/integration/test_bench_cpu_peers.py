"""benchmarks/bench_cpu_peers.py --smoke: every peer gets the same weights and agrees with fair-esm.

esm.cpp (the bench extra) is optional: without it its rows are left out, with a note, and the
rest is still checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cpu_peers_smoke(tmp_path):
    out = tmp_path / "peers.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cpu_peers.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("CPU: ") and "AVX2" in p.stdout and "AMX_INT8" in p.stdout  # had or lacked
    (run,) = json.loads(out.read_text())["runs"]
    rows = run["rows"]
    expected = {"fair-esm fp32", "protlm fp32", "protlm bf16", "protlm int8", "transformers fp32", "transformers bf16"}
    has_esm_cpp = importlib.util.find_spec("esm_cpp") is not None
    if has_esm_cpp:
        expected |= {"esm.cpp fp32", "esm.cpp int8", "esm.cpp fp32 packed", "esm.cpp int8 packed"}
    else:
        assert any("esm.cpp: not installed" in n for n in run["notes"])
    assert set(rows) == expected
    for name, row in rows.items():
        assert row["model_res_per_s"] > 0 and row["min_cosine"] <= 1 + 1e-6, name
        if name.endswith(" packed"):
            assert row["e2e_res_per_s"] is None  # esm.cpp's packed API gives logits, no embeddings
        else:
            assert row["e2e_res_per_s"] > 0
            assert row["model_res_per_s"] >= row["e2e_res_per_s"] * 0.999, name  # model calls sit inside e2e
        fp32 = "fp32" in name
        # fp32: the same weights give the same embeddings; bf16/int8: close (random weights)
        assert row["min_cosine"] >= (0.999 if fp32 else 0.99), (name, row)
        if fp32:
            assert row["max_abs_diff"] <= 1e-4, (name, row)
        print(f"{name}: cos {row['min_cosine']:.6f}, max |diff| {row['max_abs_diff']:.2e}")
    for name in expected:
        assert name in p.stdout
    assert "target int8 >= 3x fair-esm fp32" in p.stdout
