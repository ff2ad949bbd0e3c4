"""Shared fixtures: real data from ../shared/data and tiny debug models."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# torch.compile's on-disk kernel cache (/tmp/torchinductor_<user> by default) is not keyed by the
# vector ISA that ATEN_CPU_CAPABILITY selects: code cached by a run with one setting was reused by
# a run with another and gave wrong numbers (max diff 10 on a small LayerNorm-GELU-attention
# graph). Every test session, and every process it starts, compiles into a cache of its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="protlm-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def load_script():
    """A loader: load_script("bench_train") imports benchmarks/bench_train.py, load_script(
    "compare_contacts") scripts/compare_contacts.py (the folders hold scripts, not packages)."""

    def load(name: str):
        path = next(p for p in (REPO / "benchmarks" / f"{name}.py", REPO / "scripts" / f"{name}.py") if p.is_file())
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder missing: {SHARED_DATA} (see the README)")
    return SHARED_DATA


@pytest.fixture
def debug_model():
    """factory: debug_model('esm1b_debug' | 'esm2_debug' | 'prot_t5_debug', seed=0) -> eval-mode model."""
    from protlm.pretrained.registry import build_debug

    def make(name: str = "esm2_debug", seed: int = 0):
        torch.manual_seed(seed)
        return build_debug(name).eval()

    return make


_HOLD = """
import sys
from protlm.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def hold_in_subprocess():
    """factory: hold_in_subprocess(output) -> a process holding output's lock until its stdin
    closes or it is killed (cleaned up after the test)."""
    procs = []

    def start(output):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(output)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


@pytest.fixture
def perturbed_model():
    """factory: name, seed -> tests/_models.perturbed (weights that make 1e-5 mean something)."""
    from _models import perturbed

    return perturbed
