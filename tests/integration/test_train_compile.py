"""`protlm train` with parallel.compile = true (inductor on CPU) gives the eager losses.

Slow: compiling a layer's forward and backward takes about half a minute on two CPU cores.
tests/unit/train/test_parallelize.py checks the same composition (with each checkpointing
option) through aot_eager, which traces but generates no code, in the default run.
"""

import pytest
import torch
from click.testing import CliRunner
from torch._dynamo.utils import counters

from protlm.cli.main import cli
from test_train_resume import losses, write_config, write_fasta

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("checkpointing", ["false", "2"], ids=["plain", "every2"])
def test_compiled_training_matches_eager(tmp_path, checkpointing):
    fasta = tmp_path / "train.fasta"
    write_fasta(fasta)
    curves = []
    for name, compiled in (("eager", False), ("compiled", True)):
        torch._dynamo.reset()
        counters.clear()
        cfg = write_config(tmp_path / f"{name}.toml", fasta, tmp_path / name, dropout=0.0, compile=compiled,
                           checkpointing=checkpointing)
        result = CliRunner().invoke(cli, ["train", str(cfg), "--set", "stop_at=4"])
        assert result.exit_code == 0, result.output
        curves.append(losses(tmp_path / name)[0])
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # it did compile, or did not
    eager, compiled = curves
    assert sorted(eager) == sorted(compiled) == [1, 2, 3, 4]
    assert max(abs(eager[s] - compiled[s]) for s in eager) <= 1e-5, (eager, compiled)
