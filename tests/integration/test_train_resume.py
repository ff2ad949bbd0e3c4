"""20 steps straight == 10 steps + SIGKILL + `protlm train --resume` (losses to 1e-6, CPU), with
packed and with padded batches."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.pretrained.load import load_model_and_alphabet
from protlm.train.schedule import lr_multiplier

# Runs the real training but SIGKILLs itself in the middle of step 14, after the step-10
# checkpoint and with steps 11-13 done (and lost): a crash at an arbitrary point.
_KILLER = """
import os, signal, sys
import protlm.train.loop as loop
from protlm.train.config import load_config
real = loop.train_step
count = {"n": 0}
def dying_step(*a, **k):
    count["n"] += 1
    if count["n"] == 14:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
loop.train_step = dying_step
loop.train(load_config(sys.argv[1]), resume=True)
"""


def write_fasta(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(f">seq{i}\n{''.join(rng.choice(aa, int(rng.integers(20, 90))))}\n")


def write_config(path, fasta, out, **sections):
    text = f"""
seed = 0
[model]
family = "esm2"
num_layers = 2
embed_dim = 32
attention_heads = 4
dropout = {sections.get('dropout', 0.1)}
[data]
train_fasta = "{fasta}"
valid_fraction = 0.2
toks_per_batch = 400
max_length = 60
min_seqs = 2
packed = {str(sections.get('packed', True)).lower()}
[optim]
lr = 3e-3
accum_steps = {sections.get('accum', 1)}
[schedule]
warmup_steps = 4
total_steps = 20
[output]
dir = "{out}"
checkpoint_every = 10
eval_every = 10
log_every = 1
progress = false
[parallel]
mode = "{sections.get('mode', 'auto')}"
compile = {str(sections.get('compile', False)).lower()}
activation_checkpointing = {sections.get('checkpointing', 'false')}
"""
    path.write_text(text)
    return path


def losses(out):
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows}, {r["step"]: r["valid_ppl"] for r in rows if "valid_ppl" in r}


@pytest.fixture
def setup(tmp_path):
    fasta = tmp_path / "train.fasta"
    write_fasta(fasta)
    return tmp_path, fasta


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_resume_after_kill_matches_straight_run(setup, packed):
    tmp, fasta = setup
    straight = write_config(tmp / "a.toml", fasta, tmp / "a", accum=2, packed=packed)
    result = CliRunner().invoke(cli, ["train", str(straight)])
    assert result.exit_code == 0, result.output

    cfg = write_config(tmp / "b.toml", fasta, tmp / "b", accum=2, packed=packed)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(cfg)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp / "b" / "checkpoints" / "latest").read_text().strip() == "step_0000010"
    result = CliRunner().invoke(cli, ["train", str(cfg), "--resume"])
    assert result.exit_code == 0, result.output

    (la, va), (lb, vb) = losses(tmp / "a"), losses(tmp / "b")
    assert sorted(la) == list(range(1, 21)) and set(range(11, 21)) <= set(lb)
    for step in range(1, 21):  # steps 11-13 of b were logged twice; the resumed ones are last
        assert abs(la[step] - lb[step]) <= 1e-6, (step, la[step], lb[step])
    assert abs(va[20] - vb[20]) <= 1e-6 * va[20]
    assert va[20] < va[10]  # it learns

    # the final checkpoint is a protlm folder that the public loader reads
    model, alphabet = load_model_and_alphabet(tmp / "b" / "checkpoints" / "step_0000020")
    assert model.config.num_layers == 2 and len(alphabet) == 33

    # the data position counts batches of one layout: resuming in the other is refused
    flip = f"data.packed={str(not packed).lower()}"
    result = CliRunner().invoke(cli, ["train", str(cfg), "--resume", "--set", flip])
    assert result.exit_code == 2 and "data.packed" in result.output, result.output


def test_bad_config_is_a_usage_error(setup):
    tmp, fasta = setup
    cfg = write_config(tmp / "a.toml", fasta, tmp / "a")
    result = CliRunner().invoke(cli, ["train", str(cfg), "--set", "optim.nope=1"])
    assert result.exit_code == 2, result.output
    assert "unknown config key(s) in [optim]: ['nope']" in result.output
    result = CliRunner().invoke(cli, ["train", str(cfg), "--set", "parallel.mode=tpu"])
    assert result.exit_code == 2 and "parallel.mode" in result.output
    result = CliRunner().invoke(cli, ["train", str(cfg), "--set", f"data.train_fasta={tmp / 'nosuch.fasta'}"])
    assert result.exit_code == 1 and "data.train_fasta = " in result.output and "no such file" in result.output


def test_resume_with_a_longer_schedule_continues_at_its_rate(setup):
    """A finished run resumed with a larger total_steps: its next step runs at the new schedule's
    rate (the saved optimiser holds the old schedule's last rate, 0)."""
    tmp, fasta = setup
    cfg = write_config(tmp / "a.toml", fasta, tmp / "a")
    assert CliRunner().invoke(cli, ["train", str(cfg), "--set", "schedule.total_steps=10"]).exit_code == 0
    result = CliRunner().invoke(cli, ["train", str(cfg), "--resume", "--set", "schedule.total_steps=12"])
    assert result.exit_code == 0, result.output
    rows = {r["step"]: r for r in map(json.loads, open(tmp / "a" / "metrics.jsonl"))}
    expected = 3e-3 * lr_multiplier(10, "linear", 4, 12)  # the rate of step 11 under the new schedule
    assert rows[10]["lr"] == 0  # the old schedule's last step
    assert rows[11]["lr"] == pytest.approx(expected) and expected > 0
    assert rows[12]["valid_ppl"] < rows[10]["valid_ppl"]  # it trained


def test_tensorboard_without_its_package_is_a_usage_error(setup, monkeypatch):
    import importlib.util

    tmp, fasta = setup
    cfg = write_config(tmp / "a.toml", fasta, tmp / "a")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else find_spec(n, *a))
    result = CliRunner().invoke(cli, ["train", str(cfg), "--set", "output.tensorboard=true"])
    assert result.exit_code == 2 and "needs the tensorboard package" in result.output, result.output
    assert not (tmp / "a").exists()  # refused before the run folder is made
