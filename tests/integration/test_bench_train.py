"""benchmarks/bench_train.py runs on CPU (tiny shape) with its three variants computing the same
step, and its GPU preset asks for what the issue names (650M and 150M, packed + compiled against
fair-esm, MFU against 989 TFLOP/s and the measured matmul peak)."""

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_train")


def test_gpu_preset(bench):
    a = bench.parse_args(["--preset", "gpu"])
    assert (a.device, a.bf16, a.compile, a.peak_tflops) == ("cuda", True, "auto", 989.0)
    assert a.shapes == ["650M", "150M"] and a.variants == ["packed", "fair-esm"]
    assert bench.SHAPES["650M"] == (33, 1280, 20) and bench.SHAPES["150M"] == (30, 640, 20)


def test_cpu_run_tiny(bench, shared_data, tmp_path, capsys):
    fasta = tmp_path / "s.fasta"
    fasta.write_bytes((shared_data / "sequences" / "some_proteins.fasta").read_bytes())
    out = tmp_path / "r.json"
    bench.main(["--fasta", str(fasta), "--layers", "2", "--dim", "32", "--heads", "4", "--toks", "1500",
                "--max-length", "300", "--steps", "2", "--warmup", "1", "--batches", "2", "--rounds", "1",
                "--threads", "1", "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    for v in ("packed", "padded", "fair-esm"):
        assert r[v]["tokens_per_s"] > 0 and 0 < r[v]["mfu_vs_measured_matmul"] < 1.5
    assert r["first_loss_spread"] < 1e-5  # the same step, three ways
    assert all(s["padded_tokens"] >= s["tokens"] > 0 for s in r["steps"])
