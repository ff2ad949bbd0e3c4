import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protlm.train.config import (
    ConfigError, TrainConfig, checkpointing_plan, compile_enabled, load_config, parse_override,
)
from protlm.train.schedule import lr_multiplier

REPO = Path(__file__).resolve().parents[3]


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[optim]\nlr = 1e-3\n[data]\ntrain_fasta = "x.fasta"\n')
    cfg = load_config(path, ["optim.lr=2e-4", "schedule.kind=inverse_sqrt", "output.tensorboard=true",
                             "optim.betas=[0.9, 0.95]", "data.toks_per_batch=1024"])
    assert cfg.optim.lr == 2e-4 and cfg.schedule.kind == "inverse_sqrt" and cfg.output.tensorboard
    assert cfg.optim.betas == (0.9, 0.95) and cfg.data.toks_per_batch == 1024
    assert cfg.data.train_fasta == "x.fasta"
    assert parse_override("output.dir=runs/x") == (["output", "dir"], "runs/x")


@pytest.mark.parametrize("override,needle", [
    ("optim.nope=1", "optim"), ("nope=1", "top level"), ("optim.lr=fast", "optim.lr"),
    ("parallel.mode=tpu", "parallel.mode"), ("schedule.kind=cosine", "schedule.kind"), ("x", "key=value"),
    ("parallel.compile=yes", "parallel.compile"), ("parallel.activation_checkpointing=some", "activation_checkpointing"),
    ("parallel.activation_checkpointing=-1", "activation_checkpointing"), ("data.packed=1", "data.packed"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(None, [override])


@pytest.mark.parametrize("override,message", [
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"), ("optim.lr=0", "optim.lr"), ("optim.lr=nan", "optim.lr"),
    ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.betas=[-0.1, 0.9]", "optim.betas"),
    ("optim.eps=0", "optim.eps must be > 0, got 0.0"), ("optim.weight_decay=-0.01", "optim.weight_decay"),
    ("optim.clip_norm=-1", "optim.clip_norm"), ("optim.accum_steps=0", "optim.accum_steps must be >= 1, got 0"),
    ("schedule.total_steps=0", "schedule.total_steps"), ("schedule.warmup_steps=-1", "schedule.warmup_steps"),
    ("schedule.warmup_steps=1001", "schedule.warmup_steps must be in [0, schedule.total_steps = 1000], got 1001"),
    ("data.mask_prob=0", "data.mask_prob must be in (0, 1), got 0.0"), ("data.mask_prob=1", "data.mask_prob"),
    ("data.toks_per_batch=0", "data.toks_per_batch"), ("data.valid_fraction=0", "data.valid_fraction"),
    ("data.min_seqs=0", "data.min_seqs"), ("model.attention_heads=0", "model.attention_heads"),
    ("model.dropout=1.5", "model.dropout"), ("output.log_every=0", "output.log_every"),
    ("output.eval_every=0", "output.eval_every"), ("output.checkpoint_every=0", "output.checkpoint_every"),
    ("output.keep_last=-1", "output.keep_last"), ("stop_at=-1", "stop_at"),
    ("output.log_every=true", "output.log_every must be a number"), ("output.dir=3", "output.dir must be a string"),
])
def test_values_training_cannot_use_are_config_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and info.value.exit_code == 2


def test_esm1b_positions_must_hold_the_longest_crop():
    with pytest.raises(ConfigError, match="model.max_positions"):
        load_config(None, ["model.family=esm1b", "model.max_positions=100", "data.max_length=1022"])
    assert load_config(None, ["model.family=esm1b", "model.max_positions=100", "data.max_length=98"])


def test_loads_without_tomllib_as_on_python_3_10(tmp_path):
    """requires-python says 3.10, which has no tomllib: the config must load through tomli."""
    path = tmp_path / "c.toml"
    path.write_text('[optim]\nlr = 1e-3\n')
    code = ("import sys; sys.modules['tomllib'] = None\n"  # `import tomllib` now fails, as on 3.10
            "from protlm.train import config\n"
            f"cfg = config.load_config({str(path)!r}, ['optim.betas=[0.8, 0.9]'])\n"
            "print(config.tomllib.__name__, cfg.optim.lr, cfg.optim.betas)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tomli", "0.001", "(0.8,", "0.9)"]


def test_speed_options():
    cfg = TrainConfig()
    assert cfg.data.packed and cfg.parallel.compile == "auto" and cfg.parallel.activation_checkpointing is False
    assert compile_enabled("auto", "cuda") and not compile_enabled("auto", "cpu")
    assert compile_enabled(True, "cpu") and not compile_enabled(False, "cuda")
    for value, plan in [(False, (0, False)), (True, (1, False)), (0, (0, False)), (1, (1, False)), (3, (3, False)),
                        ("none", (0, False)), ("full", (1, False)), ("selective", (1, True))]:
        assert checkpointing_plan(value) == plan, value
    cfg = load_config(None, ["parallel.activation_checkpointing=selective", "parallel.compile=true",
                             "data.packed=false"])
    assert (cfg.parallel.activation_checkpointing, cfg.parallel.compile, cfg.data.packed) == ("selective", True, False)
    assert load_config(None, ["parallel.activation_checkpointing=2"]).parallel.activation_checkpointing == 2


def test_defaults_are_the_published_optimiser():
    o = TrainConfig().optim
    assert (o.betas, o.eps, o.weight_decay) == ((0.9, 0.98), 1e-8, 0.01)


@pytest.mark.parametrize("preset", sorted((REPO / "src/protlm/train/presets").glob("*.toml")) +
                         sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_presets_load_and_build(preset):
    cfg = load_config(preset)
    cfg.model.build_config()


def test_esm_presets_match_published_shapes():
    presets = REPO / "src/protlm/train/presets"
    c = load_config(presets / "esm2_t33_650M.toml").model.build_config()
    assert (c.num_layers, c.embed_dim, c.attention_heads, c.position_embedding) == (33, 1280, 20, "rotary")
    c = load_config(presets / "esm1b_t33_650M.toml").model.build_config()
    assert (c.num_layers, c.embed_dim, c.position_embedding, c.emb_layer_norm_before) == (33, 1280, "learned", True)


def test_linear_schedule():
    f = [lr_multiplier(s, "linear", 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[9:], f[10:]))
    assert f[99] == pytest.approx(0.0, abs=1e-12) and f[54] == pytest.approx(0.5)


def test_inverse_sqrt_schedule():
    assert lr_multiplier(9, "inverse_sqrt", 10, 0) == pytest.approx(1.0)
    assert lr_multiplier(39, "inverse_sqrt", 10, 0) == pytest.approx(math.sqrt(10 / 40))
    with pytest.raises(ValueError):
        lr_multiplier(5, "cosine", 1, 1)
