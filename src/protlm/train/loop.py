"""Masked-language-model training: one function, `train(cfg)`, on one device or under torchrun."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.data.sampler import BatchPlan, heldout_mask
from protlm.models import build_model
from protlm.models.layers import init_weights
from protlm.train import checkpoint as ckpt
from protlm.train.batches import fixed_batches, rank_loader
from protlm.train.config import ConfigError, TrainConfig
from protlm.train.metrics import MetricsLogger
from protlm.train.parallelize import Dist, all_reduce_sum, init_distributed, parallelize, pick_device, unwrap
from protlm.train.schedule import lr_multiplier


def make_plans(cfg: TrainConfig, index: FastaIndex) -> tuple[BatchPlan, BatchPlan]:
    """(train plan, held-out plan); the split is by a hash of the record ID."""
    d = cfg.data
    held = heldout_mask(np.asarray(index.id_hashes), d.valid_fraction)
    lengths = np.asarray(index.lengths)
    train = BatchPlan(np.flatnonzero(~held), lengths, d.toks_per_batch, d.max_length, d.seed, d.min_seqs)
    valid = BatchPlan(np.flatnonzero(held), lengths, d.toks_per_batch, d.max_length, d.valid_seed, d.min_seqs)
    if len(train.indices) == 0 or len(valid.indices) == 0:
        raise ConfigError(f"{d.train_fasta}: split gives {len(train.indices)} training and "
                         f"{len(valid.indices)} held-out records; adjust data.valid_fraction")
    return train, valid


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def masked_ce_sum(model: nn.Module, inputs_BT, targets_BT, autocast_dtype) -> torch.Tensor:
    """Sum of cross-entropy over the masked positions (a scalar)."""
    with torch.autocast(inputs_BT.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits_BTV = model(inputs_BT)["logits"]
    return F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def evaluate(model: nn.Module, fasta: str, plan: BatchPlan, d: Dist, device, autocast_dtype,
             mask_prob: float = 0.15) -> dict[str, float]:
    """Held-out perplexity: exp(mean masked cross-entropy), masks fixed by plan.seed."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum CE, masked tokens)
    for inputs_BT, targets_BT in fixed_batches(fasta, plan, d.rank, d.world, mask_prob):
        inputs_BT, targets_BT = inputs_BT.to(device), targets_BT.to(device)
        total[0] += masked_ce_sum(model, inputs_BT, targets_BT, autocast_dtype).double()
        total[1] += (targets_BT != IGNORE_INDEX).sum()
    all_reduce_sum(total, d)
    model.train(was_training)
    ce = (total[0] / total[1]).item()
    return {"valid_ce": ce, "valid_ppl": math.exp(ce), "valid_tokens": int(total[1].item())}


def train_step(model, micro_batches, optimizer, scheduler, cfg: TrainConfig, d: Dist, device, autocast_dtype):
    """One optimiser step over `accum_steps` micro-batches; returns (mean masked CE, tokens).

    The loss is the sum of CE over every masked token of the global step divided by their global
    count, so the update is the same for any number of ranks or micro-batches. DDP and FSDP
    average gradients over ranks, hence the factor `world`.
    """
    counts = torch.tensor([float((t != IGNORE_INDEX).sum()) for _, t in micro_batches], dtype=torch.float64)
    n_masked = all_reduce_sum(counts.sum().to(device), d).item()
    ce_total = torch.zeros((), dtype=torch.float64, device=device)
    for k, (inputs_BT, targets_BT) in enumerate(micro_batches):
        inputs_BT, targets_BT = inputs_BT.to(device), targets_BT.to(device)
        sync = k == len(micro_batches) - 1
        ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else _null()
        with ctx:
            ce = masked_ce_sum(model, inputs_BT, targets_BT, autocast_dtype)
            (ce * (d.world / max(n_masked, 1.0))).backward()
        ce_total += ce.detach().double()
    if cfg.optim.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ce_mean = all_reduce_sum(ce_total, d).item() / max(n_masked, 1.0)
    return ce_mean


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or resume) per `cfg`; returns the last logged metrics."""
    requested = cfg.parallel.device
    d = init_distributed("cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu")
    device = pick_device(requested, d)
    autocast_dtype = torch.bfloat16 if (cfg.parallel.bf16 and device.type == "cuda") else None
    out, fasta = Path(cfg.output.dir), cfg.data.train_fasta
    ckpt_root = out / "checkpoints"
    if not fasta:
        raise ConfigError("data.train_fasta is not set")
    index = FastaIndex.open(fasta) if d.is_main else None
    if d.world > 1:
        torch.distributed.barrier()  # rank 0 builds the index once; the others then open it
    index = index or FastaIndex.open(fasta)
    train_plan, valid_plan = make_plans(cfg, index)
    if d.world > max(1, cfg.data.min_seqs):
        raise ConfigError(f"data.min_seqs ({cfg.data.min_seqs}) must be >= the number of ranks ({d.world})")

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.build_config())
    init_weights(model)  # BERT-style normal(0, 0.02), as ESM pretraining
    model.contact_head.requires_grad_(False)  # MLM pretraining does not train the contact head
    model = parallelize(model, cfg.parallel.mode, d, device, cfg.parallel.activation_checkpointing)
    optimizer = make_optimizer(model, cfg)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, s.kind, s.warmup_steps, s.total_steps))

    step, position = 0, {"epoch": 0, "batch": 0}
    found = ckpt.latest(ckpt_root) if resume else None
    if found is not None:
        trainer = ckpt.load_checkpoint(found, model, optimizer, scheduler)
        step, position = trainer["step"], trainer["position"]
    stop = cfg.stop_at or s.total_steps
    logger = MetricsLogger(out, d.is_main, cfg.output.tensorboard, cfg.output.progress, start=step, total=stop)
    if found is not None:
        logger.note(f"resumed from {found} at step {step}")
    loader = rank_loader(fasta, train_plan, position["epoch"], position["batch"], d.rank, d.world,
                         cfg.data.num_workers, cfg.data.mask_prob)
    extra = {"training_config": cfg.to_dict()}
    metrics: dict = {}
    model.train()
    t0, tokens = time.perf_counter(), 0
    while step < stop:
        micro = []
        for _ in range(cfg.optim.accum_steps):
            epoch, b, inputs_BT, targets_BT = next(loader)
            micro.append((inputs_BT, targets_BT))
            tokens += int((inputs_BT != unwrap(model).padding_idx).sum())
        position = {"epoch": epoch, "batch": b + 1}  # the next global batch to read
        # Deterministic per-step RNG (dropout), so a resumed run draws what the straight run drew.
        torch.manual_seed(hash((cfg.seed, step, d.rank)) % 2**62)
        loss = train_step(model, micro, optimizer, scheduler, cfg, d, device, autocast_dtype)
        step += 1
        metrics = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], "epoch": epoch}
        elapsed = time.perf_counter() - t0
        metrics["tokens_per_s"] = tokens * d.world / max(elapsed, 1e-9)
        if step % cfg.output.eval_every == 0 or step == stop:
            metrics.update(evaluate(model, fasta, valid_plan, d, device, autocast_dtype, cfg.data.mask_prob))
        logger.log(metrics, force=step % cfg.output.log_every == 0 or "valid_ppl" in metrics)
        if step % cfg.output.checkpoint_every == 0 or step == stop:
            model_state, optim_state = ckpt.gather_state(model, optimizer)
            if d.is_main:
                ckpt.save_checkpoint(ckpt_root, step, model_state, optim_state, unwrap(model), scheduler,
                                     position, extra, cfg.output.keep_last)
            if d.world > 1:
                torch.distributed.barrier()
    logger.close()
    return metrics
