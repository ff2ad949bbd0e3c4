import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protlm import Alphabet
from protlm.models import ESM1b, ESM2, build_model
from protlm.train.config import (
    ConfigError, TrainConfig, checkpointing_plan, compile_enabled, load_config, parse_override,
)
from protlm.train.schedule import lr_multiplier

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

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


PRESETS = sorted((REPO / "src/protlm/train/presets").glob("*.toml")) + sorted((REPO / "configs").glob("*.toml"))


def esm_parameter_count(family: str, layers: int, d: int, heads: int, max_positions: int = 1024,
                        vocab: int = 33) -> int:
    """Parameters of an ESM model counted by hand from its shape (Rives et al. 2021, Lin et al. 2023).

    Token embedding (tied with the LM head's output projection); per layer the q, k, v and output
    projections with biases, two LayerNorms and a 4d-wide FFN; the LayerNorm after the stack; the
    LM head's dense layer, LayerNorm and output bias; the contact regression over every layer's
    heads (+ bias). ESM-1b adds learned positions (max_positions + 2 rows: fairseq reserves the rows
    up to the padding index) and a LayerNorm before the stack.
    """
    attention = 4 * (d * d + d)
    ffn = (d * 4 * d + 4 * d) + (4 * d * d + d)
    layer = attention + ffn + 2 * (2 * d)
    lm_head = (d * d + d) + 2 * d + vocab
    n = vocab * d + layers * layer + 2 * d + lm_head + (layers * heads + 1)
    if family == "esm1b":
        n += (max_positions + 2) * d + 2 * d
    return n


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_build_the_model_their_model_section_describes(preset):
    """Every shipped preset loads (validated) and builds the architecture its [model] table
    names: the family's class, the layer count and widths, and the parameter count of that shape.
    Built on the 'meta' device (no memory); the CPU-sized ones also run a forward."""
    with open(preset, "rb") as fh:
        section = tomllib.load(fh)["model"]
    family, layers, d, heads = (section[k] for k in ("family", "num_layers", "embed_dim", "attention_heads"))
    config = load_config(preset).model.build_config()
    with torch.device("meta"):
        model = build_model(config)
    assert type(model) is {"esm2": ESM2, "esm1b": ESM1b}[family]
    assert (len(model.layers), model.embed_dim, model.attention_heads) == (layers, d, heads)
    assert {layer.fc1.out_features for layer in model.layers} == {4 * d}
    count = sum(p.numel() for p in model.parameters())
    assert count == esm_parameter_count(family, layers, d, heads, section.get("max_positions", 1024))
    if count < 50e6:
        torch.manual_seed(0)
        model = build_model(config).eval()
        tokens = Alphabet().get_batch_converter()([("x", "MKTAYIAKQRQISFVKSHFSRQ")])[2]
        with torch.no_grad():
            logits = model(tokens)["logits"]
        assert logits.shape == (1, tokens.shape[1], 33) and torch.isfinite(logits).all()


def fair_esm_model(preset: str):
    """fair-esm's own class for the published model a preset reproduces (random weights, meta)."""
    import esm

    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    if preset == "esm1b_t33_650M":  # esm1b_t33_650M_UR50S's args
        args = argparse.Namespace(arch="roberta_large", layers=33, embed_dim=1280, ffn_embed_dim=5120,
                                  attention_heads=20, max_positions=1024, emb_layer_norm_before=True,
                                  token_dropout=True)
        return esm.ProteinBertModel(args, alphabet)
    layers, dim = {"esm2_t33_650M": (33, 1280), "esm2_t6_8M": (6, 320)}[preset]
    return esm.ESM2(layers, dim, 20, alphabet, token_dropout=True)


@pytest.mark.parametrize("preset", ["esm2_t6_8M", "esm2_t33_650M", "esm1b_t33_650M"])
def test_published_presets_have_the_published_models_tensors(preset):
    """The presets named after published models build exactly those models' tensors: the same
    state-dict names and shapes as fair-esm's class (so the published weights load strictly),
    hence the published parameter counts (7.5M, 651M, 652M)."""
    config = load_config(REPO / "src/protlm/train/presets" / f"{preset}.toml").model.build_config()
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in fair_esm_model(preset).state_dict().items()}
    assert ours == theirs


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
