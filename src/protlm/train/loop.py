"""Masked-language-model training: `train(cfg)`, on one device or under torchrun.

Read top to bottom: `setup` builds what a run needs (a `Run`: device, data plans, model,
optimiser, schedule, the resumed position); `train_step` is one optimiser step; `evaluate` is the
held-out perplexity (protlm.evaluate.perplexity, the protocol every command shares); `train` is
the loop that reads batches, steps, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protlm.alphabet import Alphabet, InvalidSequenceError
from protlm.data.index import FastaIndex
from protlm.data.masking import MLMBatch, masked_ce_sum
from protlm.data.sampler import BatchPlan, heldout_mask
from protlm.errors import NotFoundError, ProtlmError
from protlm.evaluate.perplexity import MaskPlan, masked_perplexity
from protlm.models import build_model
from protlm.models.config import ESMConfig
from protlm.models.layers import init_weights
from protlm.runtime.distributed import Dist, all_reduce_sum, init_distributed, leave_distributed, rank_device
from protlm.train import checkpoint as ckpt
from protlm.train.batches import rank_loader
from protlm.train.config import ConfigError, ModelSection, TrainConfig, validate
from protlm.train.metrics import MetricsLogger
from protlm.train.parallelize import parallelize, unwrap
from protlm.train.schedule import lr_multiplier


# ---------------------------------------------------------------------------------------- set-up

@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 on GPU, None (fp32) on CPU
    model: nn.Module  # wrapped for the parallel mode (DDP, FSDP) and possibly compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_plan: BatchPlan
    valid_plan: MaskPlan
    step: int = 0  # optimiser steps done
    position: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0})  # next global batch
    resumed_from: Path | None = None


def make_plans(cfg: TrainConfig, index: FastaIndex) -> tuple[BatchPlan, MaskPlan]:
    """(train plan, held-out plan); the split is by a hash of the record ID, the held-out masks
    are the shared protocol's (protlm.evaluate.perplexity: seeded by data.valid_seed and each
    sequence's hash)."""
    d = cfg.data
    held = heldout_mask(np.asarray(index.id_hashes), d.valid_fraction)
    train = BatchPlan(np.flatnonzero(~held), np.asarray(index.lengths), d.toks_per_batch, d.max_length, d.seed,
                      d.min_seqs, d.packed)
    valid = held_out_plan(cfg, index, np.flatnonzero(held))
    if len(train.indices) == 0 or not valid.sequences:
        raise ConfigError(f"{d.train_fasta}: split gives {len(train.indices)} training and "
                          f"{len(valid.sequences)} held-out records; adjust data.valid_fraction")
    return train, valid


def held_out_plan(cfg: TrainConfig, index: FastaIndex, records) -> MaskPlan:
    """The masked-perplexity plan of `records` of `index` with the config's [data] settings."""
    d, alphabet = cfg.data, Alphabet()
    seqs = [alphabet.clean(index[int(r)].sequence, record=index[int(r)].id) for r in records]
    return MaskPlan(seqs, d.valid_seed, d.max_length, d.mask_prob, d.toks_per_batch)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (1-D parameters).

    The fused CUDA kernel when every parameter is on a GPU (one launch for all parameters instead
    of a few per tensor); the default implementation elsewhere, so CPU results do not change.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **({"fused": True} if fused else {}))


def _devices(cfg: TrainConfig) -> tuple[Dist, torch.device, torch.dtype | None]:
    """Join the process group; (ranks, this rank's device, autocast dtype)."""
    requested = cfg.parallel.device
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    d = init_distributed("cuda" if use_cuda else "cpu")
    device = rank_device(requested, d)
    autocast_dtype = torch.bfloat16 if (cfg.parallel.bf16 and device.type == "cuda") else None
    return d, device, autocast_dtype


def _plans(cfg: TrainConfig, d: Dist) -> tuple[BatchPlan, MaskPlan]:
    fasta = cfg.data.train_fasta
    if not fasta:
        raise ConfigError("data.train_fasta is not set")
    index = _open_fasta(fasta) if d.is_main else None
    if d.world > 1:
        torch.distributed.barrier()  # rank 0 builds the index once; the others then open it
    plans = make_plans(cfg, index or _open_fasta(fasta))
    if d.world > max(1, cfg.data.min_seqs):
        raise ConfigError(f"data.min_seqs ({cfg.data.min_seqs}) must be >= the number of ranks ({d.world})")
    return plans


def _open_fasta(fasta: str) -> FastaIndex:
    """The training FASTA's index; an invalid residue's error gives advice that `train` can follow
    (the generic one names `--unknown-to-x`, an option of other commands)."""
    if not Path(fasta).is_file():
        raise NotFoundError(f"data.train_fasta = {fasta!r}: no such file (set it in the config's [data] "
                            "section or with --set data.train_fasta=PATH)")
    try:
        return FastaIndex.open(fasta)
    except ProtlmError as e:
        if isinstance(e.__cause__, InvalidSequenceError):
            e.hint = e.cli_hint = ("fix or remove that record: training reads letters of the ESM "
                                   "alphabet only; write unknown residues as X")
        raise


def _model(cfg: TrainConfig, d: Dist, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.build_config())
    init_weights(model)  # BERT-style normal(0, 0.02), as ESM pretraining
    if cfg.model.init_from:
        init_from_weights(model, cfg.model.init_from)
    model.contact_head.requires_grad_(False)  # MLM pretraining does not train the contact head
    p = cfg.parallel
    return parallelize(model, p.mode, d, device, p.activation_checkpointing, p.compile)


def init_from_weights(model: nn.Module, folder: str | Path) -> None:
    """Copy the weights of a protlm folder (a training checkpoint or an exported model) into
    `model`; ConfigError when the folder is not one or its architecture differs."""
    from protlm.pretrained.protlm_format import load_protlm

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ConfigError(f"model.init_from: {folder} is not a protlm checkpoint or model folder "
                          "(config.json and model.safetensors expected)")
    source = load_protlm(folder)
    diff = architecture_diff(source.config, model.config)
    if diff:
        raise ConfigError(f"model.init_from: {folder} has another architecture: {diff}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in source.state_dict().items()})


# Fields of ESMConfig that shape no weight: they may change between stages or on --resume.
_TRAINING_ONLY = ("dropout", "attention_dropout")


def architecture_diff(theirs: ESMConfig, ours: ESMConfig) -> str:
    """'' when a checkpoint's model config (`theirs`) has this config's architecture; else each
    differing field, as its training-config key where it has one, e.g.
    "model.num_layers = 2 there, 3 in this config"."""
    keys = {f.name for f in dataclasses.fields(ModelSection)}
    return "; ".join(f"{'model.' + k if k in keys else k} = {getattr(theirs, k)!r} there, "
                     f"{getattr(ours, k)!r} in this config"
                     for k in vars(ours) if k not in _TRAINING_ONLY and getattr(theirs, k) != getattr(ours, k))


def setup(cfg: TrainConfig, resume: bool = False) -> Run:
    """Devices, data plans, model, optimiser and schedule; restored from the latest checkpoint
    under output.dir when `resume` and one exists."""
    d, device, autocast_dtype = _devices(cfg)
    train_plan, valid_plan = _plans(cfg, d)
    model = _model(cfg, d, device)
    optimizer = make_optimizer(model, cfg)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, s.kind, s.warmup_steps, s.total_steps))
    run = Run(cfg, d, device, autocast_dtype, model, optimizer, scheduler, train_plan, valid_plan)
    run.position["packed"] = cfg.data.packed
    found = ckpt.latest(Path(cfg.output.dir) / "checkpoints") if resume else None
    if found is not None:
        diff = architecture_diff(ckpt.model_config(found), unwrap(model).config)
        if diff:
            raise ConfigError(f"--resume: {found} was written by another architecture ({diff}); resume "
                              "with the checkpoint's values, or start a new run in another output.dir")
        trainer = ckpt.load_checkpoint(found, model, optimizer, scheduler)
        # The next step's rate from this config's schedule, not the one saved with the optimiser:
        # the same value when the schedule is unchanged, the new one when it was lengthened
        # (resuming a finished run with a larger total_steps would otherwise take a step at lr 0).
        for group, base, multiplier in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * multiplier(scheduler.last_epoch)
        # Checkpoints from before packed batches existed have no "packed": they were padded.
        if trainer["position"].get("packed", False) != cfg.data.packed:
            raise ConfigError(
                f"{found} was written with data.packed = {not cfg.data.packed}: its data position "
                f"counts those batches; resume with --set data.packed={str(not cfg.data.packed).lower()}")
        run.step, run.resumed_from = trainer["step"], found
        run.position = {**trainer["position"], "packed": cfg.data.packed}
    return run


# ----------------------------------------------------------------------------------------- step

def train_step(model, micro_batches: list[MLMBatch], optimizer, scheduler, cfg: TrainConfig, d: Dist,
               device, autocast_dtype) -> float:
    """One optimiser step over `accum_steps` micro-batches; returns the mean masked CE.

    The loss is the sum of CE over every masked token of the global step divided by their global
    count, so the update is the same for any number of ranks or micro-batches. DDP and FSDP
    average gradients over ranks, hence the factor `world`.
    """
    counts = torch.tensor([float(b.num_masked()) for b in micro_batches], dtype=torch.float64)
    n_masked = all_reduce_sum(counts.sum().to(device), d).item()
    ce_total = torch.zeros((), dtype=torch.float64, device=device)
    for k, batch in enumerate(micro_batches):
        batch = batch.to(device, non_blocking=True)
        sync = k == len(micro_batches) - 1
        ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with ctx:
            ce = masked_ce_sum(model, batch, autocast_dtype)
            (ce * (d.world / max(n_masked, 1.0))).backward()
        ce_total += ce.detach().double()
    if cfg.optim.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_sum(ce_total, d).item() / max(n_masked, 1.0)


def evaluate(model: nn.Module, plan: MaskPlan, d: Dist, autocast_dtype=None) -> dict[str, float]:
    """Held-out perplexity (protlm.evaluate.perplexity) as the training log names it."""
    r = masked_perplexity(model, Alphabet(), plan, d=d, autocast_dtype=autocast_dtype)
    return {"valid_ce": r["cross_entropy"], "valid_ppl": r["perplexity"], "valid_tokens": r["masked_tokens"]}


# ---------------------------------------------------------------------------------------- loop

def _read_step(loader, accum_steps: int, padding_idx: int) -> tuple[list[MLMBatch], dict, int]:
    """The micro-batches of one optimiser step, the position after them, their real tokens."""
    micro, tokens = [], 0
    for _ in range(accum_steps):
        epoch, b, batch = next(loader)
        micro.append(batch)
        tokens += batch.num_tokens(padding_idx)
    return micro, {"epoch": epoch, "batch": b + 1}, tokens


def _save(run: Run, extra: dict) -> None:
    """Checkpoint the run at its step (collective: every rank calls it; rank 0 writes)."""
    model_state, optim_state = ckpt.gather_state(run.model, run.optimizer)
    if run.d.is_main:
        ckpt.save_checkpoint(Path(run.cfg.output.dir) / "checkpoints", run.step, model_state, optim_state,
                             unwrap(run.model), run.scheduler, run.position, extra, run.cfg.output.keep_last)
    if run.d.world > 1:
        torch.distributed.barrier()


def check_output_dir(cfg: TrainConfig, resume: bool) -> None:
    """ConfigError when output.dir cannot be a run folder, or when it holds an earlier run and
    `resume` is off (training would overwrite its checkpoints and append to its metrics.jsonl)."""
    out = Path(cfg.output.dir)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"output.dir = {cfg.output.dir!r}: {existing} is a file, not a folder")
    if resume or not out.is_dir():
        return
    start_over = "or choose another output.dir, or delete the folder to start over"
    if ckpt.has_checkpoints(out / "checkpoints"):
        raise ConfigError(f"output.dir {out} already holds checkpoints of a run: continue it with "
                          f"--resume, {start_over}")
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        raise ConfigError(f"output.dir {out} already holds the metrics.jsonl of a run: choose another "
                          "output.dir, or delete the folder to start over")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or resume) per `cfg`; returns the last logged metrics.

    ConfigError when a setting is invalid, and when output.dir holds an earlier run but `resume`
    is off; `resume` with no checkpoint in output.dir starts from step 0.
    """
    validate(cfg)
    if cfg.output.tensorboard and importlib.util.find_spec("tensorboard") is None:  # an optional package
        raise ConfigError("output.tensorboard = true needs the tensorboard package (pip install tensorboard), "
                          "or set output.tensorboard = false")
    check_output_dir(cfg, resume)
    run = setup(cfg, resume)
    d, out = run.d, cfg.output
    stop = cfg.stop_at or cfg.schedule.total_steps
    logger = MetricsLogger(Path(out.dir), d.is_main, out.tensorboard, out.progress, start=run.step, total=stop)
    if run.resumed_from is not None:
        logger.note(f"resumed from {run.resumed_from} at step {run.step}")
    loader = rank_loader(cfg.data.train_fasta, run.train_plan, run.position["epoch"], run.position["batch"],
                         d.rank, d.world, cfg.data.num_workers, cfg.data.mask_prob)
    extra = {"training_config": cfg.to_dict()}
    padding_idx = unwrap(run.model).padding_idx
    metrics: dict = {}
    run.model.train()
    t0, tokens = time.perf_counter(), 0
    while run.step < stop:
        micro, position, n = _read_step(loader, cfg.optim.accum_steps, padding_idx)
        run.position.update(position)
        tokens += n
        # Deterministic per-step RNG (dropout), so a resumed run draws what the straight run drew.
        torch.manual_seed(hash((cfg.seed, run.step, d.rank)) % 2**62)
        lr = run.optimizer.param_groups[0]["lr"]  # this step's rate: scheduler.step() sets the next one
        loss = train_step(run.model, micro, run.optimizer, run.scheduler, cfg, d, run.device, run.autocast_dtype)
        run.step += 1
        metrics = {"step": run.step, "loss": loss, "lr": lr,
                   "epoch": position["epoch"], "tokens_per_s": tokens * d.world / max(time.perf_counter() - t0, 1e-9)}
        if run.step % out.eval_every == 0 or run.step == stop:
            metrics.update(evaluate(run.model, run.valid_plan, d, run.autocast_dtype))
        logger.log(metrics, force=run.step % out.log_every == 0 or "valid_ppl" in metrics)
        if run.step % out.checkpoint_every == 0 or run.step == stop:
            _save(run, extra)
    logger.close()
    leave_distributed(d)  # after _save's barrier: every rank has finished its collectives
    return metrics
