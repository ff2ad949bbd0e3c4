"""`protlm train` on what a new user gets wrong: a rerun into a finished run's folder, --resume
with another architecture, an output.dir that is a file, a FASTA with an invalid residue; each
is one `Error:` line, no traceback. And metrics.jsonl logs the rate each step used."""

import json

import pytest
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.train.schedule import lr_multiplier
from test_train_resume import write_config, write_fasta

SHORT = ["--set", "schedule.total_steps=4", "--set", "output.checkpoint_every=2", "--set", "output.eval_every=4"]


def _train(cfg, *args):
    return CliRunner().invoke(cli, ["train", str(cfg), *SHORT, *args])


def _refused(result, exit_code=2):
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output, result.output
    return result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run: (config, output folder)."""
    tmp = tmp_path_factory.mktemp("finished")
    write_fasta(tmp / "train.fasta")
    cfg = write_config(tmp / "a.toml", tmp / "train.fasta", tmp / "out")
    result = _train(cfg)
    assert result.exit_code == 0, result.output
    return cfg, tmp / "out"


def test_metrics_log_the_rate_each_step_used(finished):
    cfg, out = finished
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # step n (1-based) ran at the multiplier of 0-based step n - 1; peak 3e-3, 4 warm-up steps
        assert r["lr"] == pytest.approx(3e-3 * lr_multiplier(r["step"] - 1, "linear", 4, 4)), r
    assert rows[0]["lr"] == pytest.approx(3e-3 / 4) and rows[-1]["lr"] == pytest.approx(3e-3)


def test_rerun_without_resume_is_refused_and_changes_nothing(finished):
    cfg, out = finished
    before = (out / "metrics.jsonl").read_text(), (out / "checkpoints" / "latest").read_text()
    message = _refused(_train(cfg))
    assert "already holds checkpoints" in message and "--resume" in message and "output.dir" in message
    assert ((out / "metrics.jsonl").read_text(), (out / "checkpoints" / "latest").read_text()) == before


def test_resume_with_another_architecture_names_the_fields(finished):
    cfg, out = finished
    message = _refused(_train(cfg, "--resume", "--set", "model.num_layers=3", "--set", "model.embed_dim=64"))
    assert "model.num_layers = 2 there, 3 in this config" in message, message
    assert "model.embed_dim = 32 there, 64 in this config" in message, message
    # dropout shapes no weight: a resume may change it (nothing left to train at step 4)
    result = _train(cfg, "--resume", "--set", "model.dropout=0.0")
    assert result.exit_code == 0, result.output


def test_empty_or_missing_output_dir_starts_a_run(tmp_path):
    write_fasta(tmp_path / "train.fasta")
    (tmp_path / "empty").mkdir()
    for name in ("empty", "missing"):
        cfg = write_config(tmp_path / f"{name}.toml", tmp_path / "train.fasta", tmp_path / name)
        result = _train(cfg, "--set", "stop_at=1")
        assert result.exit_code == 0, result.output
        assert (tmp_path / name / "checkpoints" / "latest").read_text().strip() == "step_0000001"


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    write_fasta(tmp_path / "train.fasta")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        cfg = write_config(tmp_path / "a.toml", tmp_path / "train.fasta", out)
        message = _refused(_train(cfg))
        assert "output.dir" in message and f"{tmp_path / 'file'} is a file" in message, message


@pytest.mark.parametrize("override,needle", [
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"), ("optim.accum_steps=0", "optim.accum_steps"),
    ("schedule.warmup_steps=5", "schedule.warmup_steps"), ("data.mask_prob=0", "data.mask_prob"),
])
def test_invalid_values_fail_before_training(tmp_path, override, needle):
    write_fasta(tmp_path / "train.fasta")
    cfg = write_config(tmp_path / "a.toml", tmp_path / "train.fasta", tmp_path / "out")
    assert needle in _refused(_train(cfg, "--set", override))
    assert not (tmp_path / "out").exists()


def test_invalid_residue_gives_advice_train_can_follow(tmp_path):
    fasta = tmp_path / "train.fasta"
    write_fasta(fasta)
    fasta.write_text(fasta.read_text() + ">bad\nMKTAYIAK1QRQ\n")
    cfg = write_config(tmp_path / "a.toml", fasta, tmp_path / "out")
    message = _refused(_train(cfg), exit_code=1)
    assert "record 'bad': invalid residue '1' at position 9" in message, message
    assert "--unknown-to-x" not in message and "fix or remove that record" in message, message
