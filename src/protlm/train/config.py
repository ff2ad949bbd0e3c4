"""Training configuration: a dataclass tree loaded from TOML, with `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protlm.errors import ConfigError, NotFoundError
from protlm.models.config import ESMConfig, esm1b_config, esm2_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib joined the standard library in 3.11 as tomli
    import tomli as tomllib


@dataclass
class ModelSection:
    family: str = "esm2"  # "esm2" (rotary) or "esm1b" (learned positions)
    num_layers: int = 6
    embed_dim: int = 320
    attention_heads: int = 20
    max_positions: int = 1024  # ESM-1b's learned position table (tokens incl. BOS/EOS)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    # Start from these weights instead of a random initialisation: a training checkpoint folder
    # (runs/x/checkpoints/step_N) or an exported protlm folder of the same architecture. Only the
    # weights are taken: optimiser, schedule and data order start afresh (a second stage).
    # A resumed run restores its own checkpoint instead.
    init_from: str = ""

    def build_config(self) -> ESMConfig:
        extra = dict(dropout=self.dropout, attention_dropout=self.attention_dropout,
                     max_positions=self.max_positions)
        if self.family not in ("esm2", "esm1b"):
            raise ConfigError(f"model.family must be 'esm2' or 'esm1b', got {self.family!r}")
        try:
            if self.family == "esm2":
                return esm2_config(self.num_layers, self.embed_dim, self.attention_heads, **extra)
            return esm1b_config(num_layers=self.num_layers, embed_dim=self.embed_dim,
                                attention_heads=self.attention_heads, ffn_embed_dim=4 * self.embed_dim, **extra)
        except ValueError as e:  # ESMConfig's own checks, e.g. embed_dim not divisible by heads
            raise ConfigError(f"[model]: {e}") from None


@dataclass
class DataSection:
    train_fasta: str = ""
    valid_fraction: float = 0.05  # held out by a hash of the record ID
    toks_per_batch: int = 8192  # tokens per global micro-batch: real ones if packed, else rows x longest
    max_length: int = 1022  # residues per sequence; longer ones are randomly cropped
    min_seqs: int = 1  # sequences per batch at least (>= world size)
    num_workers: int = 0
    seed: int = 0  # shuffle, crops and masks
    valid_seed: int = 1234  # fixed masks and crops for validation
    mask_prob: float = 0.15
    # Packed batches: sequences concatenated up to toks_per_batch real tokens, attention within
    # each, LM head at masked positions only. false: padded, length-bucketed batches (as before).
    packed: bool = True


@dataclass
class OptimSection:
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # 0 disables clipping
    accum_steps: int = 1  # micro-batches per optimiser step


@dataclass
class ScheduleSection:
    kind: str = "linear"  # warmup then "linear" decay to 0, or "inverse_sqrt"
    warmup_steps: int = 100
    total_steps: int = 1000


@dataclass
class OutputSection:
    dir: str = "runs/train"
    checkpoint_every: int = 200
    eval_every: int = 200
    log_every: int = 10
    keep_last: int = 2
    tensorboard: bool = False
    progress: bool = True


@dataclass
class ParallelSection:
    mode: str = "auto"  # auto (ddp when several ranks) | none | ddp | fsdp
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # autocast on GPU only; CPU stays fp32
    # false | true (every layer) | k (every k-th layer) | "selective" (every layer, matmul and
    # attention outputs kept, the rest recomputed); see parallelize.apply_activation_checkpointing
    activation_checkpointing: bool | int | str = field(default=False, metadata={"any": True})
    compile: bool | str = field(default="auto", metadata={"any": True})  # auto: on CUDA only


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    output: OutputSection = field(default_factory=OutputSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    seed: int = 0  # model initialisation
    stop_at: int = 0  # stop (resumably) at this step; 0 = schedule.total_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls, d: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) in [{where or 'top level'}]: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        if fields[name].metadata.get("any"):
            kwargs[name] = value  # several types allowed: checked in load_config
        elif dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"config [{name}] must be a table")
            kwargs[name] = _from_dict(type(default), value, name)
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}".strip("."))
    return cls(**kwargs)


def _coerce(value, default, key: str):
    if isinstance(default, tuple):
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"config {key} must be a list of numbers, got {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config {key} must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"config {key} must be a number, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"config {key} must be a string, got {value!r}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int) and isinstance(value, float):
        if value != int(value):
            raise ConfigError(f"config {key} must be an integer, got {value!r}")
        return int(value)
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-3' -> (['optim', 'lr'], 0.001); values are TOML, else plain strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """TOML file (optional) + overrides -> validated TrainConfig."""
    d: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                d = tomllib.load(fh)
        except FileNotFoundError:
            raise NotFoundError(f"no such config file: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for text in overrides:
        keys, value = parse_override(text)
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    cfg = _from_dict(TrainConfig, d, "")
    if cfg.parallel.mode not in ("auto", "none", "ddp", "fsdp"):
        raise ConfigError(f"parallel.mode must be auto/none/ddp/fsdp, got {cfg.parallel.mode!r}")
    if cfg.schedule.kind not in ("linear", "inverse_sqrt"):
        raise ConfigError(f"schedule.kind must be linear or inverse_sqrt, got {cfg.schedule.kind!r}")
    if not (isinstance(cfg.parallel.compile, bool) or cfg.parallel.compile == "auto"):
        raise ConfigError(f"parallel.compile must be true, false or \"auto\", got {cfg.parallel.compile!r}")
    try:
        checkpointing_plan(cfg.parallel.activation_checkpointing)
    except ValueError as e:
        raise ConfigError(f"parallel.activation_checkpointing: {e}") from None
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """ConfigError naming the key and value of the first setting that training cannot use.

    Checked up front, so that a bad value fails before the data is indexed or a model is built,
    not as a torch error (or a division by zero) somewhere inside the loop.
    """
    m, d, o, s, out = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.output
    rules = [  # (key, value, accepted, what is accepted); NaN fails every comparison: refused
        ("model.num_layers", m.num_layers, m.num_layers >= 1, ">= 1"),
        ("model.embed_dim", m.embed_dim, m.embed_dim >= 1, ">= 1"),
        ("model.attention_heads", m.attention_heads, m.attention_heads >= 1, ">= 1"),
        ("model.max_positions", m.max_positions, m.max_positions >= 3, ">= 3 (BOS, a residue, EOS)"),
        ("model.dropout", m.dropout, 0 <= m.dropout < 1, "in [0, 1)"),
        ("model.attention_dropout", m.attention_dropout, 0 <= m.attention_dropout < 1, "in [0, 1)"),
        ("data.valid_fraction", d.valid_fraction, 0 < d.valid_fraction < 1, "in (0, 1)"),
        ("data.toks_per_batch", d.toks_per_batch, d.toks_per_batch >= 1, ">= 1"),
        ("data.max_length", d.max_length, d.max_length >= 1, ">= 1"),
        ("data.min_seqs", d.min_seqs, d.min_seqs >= 1, ">= 1"),
        ("data.num_workers", d.num_workers, d.num_workers >= 0, ">= 0"),
        ("data.mask_prob", d.mask_prob, 0 < d.mask_prob < 1, "in (0, 1)"),
        ("optim.lr", o.lr, 0 < o.lr < math.inf, "> 0"),
        ("optim.betas", list(o.betas), len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
         "two numbers in [0, 1)"),
        ("optim.eps", o.eps, 0 < o.eps < math.inf, "> 0"),
        ("optim.weight_decay", o.weight_decay, 0 <= o.weight_decay < math.inf, ">= 0"),
        ("optim.clip_norm", o.clip_norm, 0 <= o.clip_norm < math.inf, ">= 0 (0 disables clipping)"),
        ("optim.accum_steps", o.accum_steps, o.accum_steps >= 1, ">= 1"),
        ("schedule.total_steps", s.total_steps, s.total_steps >= 1, ">= 1"),
        ("schedule.warmup_steps", s.warmup_steps, 0 <= s.warmup_steps <= s.total_steps,
         f"in [0, schedule.total_steps = {s.total_steps}]"),
        ("stop_at", cfg.stop_at, cfg.stop_at >= 0, ">= 0 (0 = schedule.total_steps)"),
        ("output.dir", out.dir, bool(out.dir.strip()), "a folder"),
        ("output.checkpoint_every", out.checkpoint_every, out.checkpoint_every >= 1, ">= 1"),
        ("output.eval_every", out.eval_every, out.eval_every >= 1, ">= 1"),
        ("output.log_every", out.log_every, out.log_every >= 1, ">= 1"),
        ("output.keep_last", out.keep_last, out.keep_last >= 0, ">= 0 (0 keeps every checkpoint)"),
    ]
    for key, value, accepted, what in rules:
        if not accepted:
            raise ConfigError(f"{key} must be {what}, got {value!r}")
    if m.family == "esm1b" and d.max_length + 2 > m.max_positions:  # learned table: BOS + residues + EOS
        raise ConfigError(f"data.max_length ({d.max_length}) + 2 exceeds model.max_positions "
                          f"({m.max_positions}), the learned position table of an esm1b model")


def checkpointing_plan(value: bool | int | str) -> tuple[int, bool]:
    """parallel.activation_checkpointing -> (every k-th layer recomputed, 0 = none; selective).

    false / 0 / "none": (0, False); true / "full" / 1: (1, False); k >= 2: (k, False);
    "selective": (1, True).
    """
    if isinstance(value, bool):
        return int(value), False
    if isinstance(value, int) and value >= 0:
        return value, False
    named = {"none": (0, False), "full": (1, False), "selective": (1, True)}
    if isinstance(value, str) and value in named:
        return named[value]
    raise ValueError(f"expected true, false, a layer interval k >= 0, \"full\" or \"selective\"; got {value!r}")


def compile_enabled(value: bool | str, device_type: str) -> bool:
    """parallel.compile on this device: "auto" compiles on CUDA only."""
    return device_type == "cuda" if value == "auto" else bool(value)
