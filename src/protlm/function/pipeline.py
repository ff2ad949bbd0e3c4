"""Function prediction: embeddings -> cross-validated head -> saved head dir -> predictions.

A head dir holds `head.json` (model, layer, pooling, task, target, head kind, classes, CV
metrics) and `head.safetensors` (standardiser + dense layers; see tasks/heads.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protlm.embed.engine import Engine
from protlm.runtime import precision
from protlm.runtime.options import InferenceOptions
from protlm.errors import InputError, NotFoundError
from protlm.io import atomic_path, atomic_write, output_lock
from protlm.pretrained.identity import model_identity
from protlm.function import cv, heads
from protlm.function.data import EmbeddingCache, as_targets, load_fasta_labels, load_labelled
from protlm.data.pooling import POOLINGS

HEAD_FORMAT = "protlm-function-head"


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """What to fit (the model and how it runs: InferenceOptions)."""

    target: str | None = None  # CSV/TSV label column
    task: str = "regression"  # regression | classification
    head: str | None = None  # default: ridge (regression) / logistic (classification)
    label_from_header: int | None = None  # FASTA: 0-based '|'-separated header field
    group: str | None = None  # CSV column for homology-aware folds
    group_from_header: int | None = None  # FASTA: header field used as the group
    id_column: str = "id"
    sequence_column: str = "sequence"
    layer: int = -1
    pooling: str = "mean"
    folds: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.task not in heads.TASKS:
            raise InputError(f"--task must be one of {heads.TASKS}, got {self.task!r}")
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head is not None and self.head not in heads.HEADS:
            raise InputError(f"--head must be one of {heads.HEADS}, got {self.head!r}")

    @property
    def head_kind(self) -> str:
        return self.head or ("ridge" if self.task == "regression" else "logistic")


def cached_embeddings(seqs: list[str], opts: InferenceOptions, layer: int, pooling: str, cache_dir, *,
                      loader=None, chunk: int = 512) -> np.ndarray:
    """(N, D) pooled vectors of `opts.model`; only sequences missing from the cache are run
    through the model (not even loaded when every sequence is cached). Adding to the cache holds
    its lock (protlm.io): a second job adding to the same cache fails at once. Vectors computed in
    another dtype than fp32 (auto as what it picks), or with long sequences windowed rather than
    truncated, are cached apart."""
    opts = opts.resolved()
    ident = precision.keyed(model_identity(opts.model), opts.dtype)
    if opts.long != "truncate":
        ident += f"|long={opts.long}"
    cache = EmbeddingCache(cache_dir, ident, layer, pooling)
    if not cache.missing(seqs):
        return cache.get(seqs)
    with output_lock(cache.path):
        cache = EmbeddingCache(cache_dir, ident, layer, pooling)  # as the last writer left it
        todo = cache.missing(seqs)
        model, alphabet = opts.load(loader, verbose=False)
        # saved every `chunk` sequences: a killed run resumes from the last saved chunk
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            cache.add(part, embed_sequences(model, alphabet, part, layer, pooling, opts))
    return cache.get(seqs)


def embed_sequences(model, alphabet, seqs: list[str], layer: int = -1, pooling: str = "mean",
                    opts: InferenceOptions = InferenceOptions()) -> np.ndarray:
    """(N, D) float32 pooled vectors of one layer, in input order (the engine's packed batches).

    Sequences over the model's limit follow `opts.long`: truncated to their first
    `max_sequence_length` residues by default, as fair-esm's extract.py does (the function heads
    see whole-protein summaries), or windowed; 'error' refuses them.
    """
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    engine = Engine(model, alphabet, [layer], toks_per_batch=opts.toks_per_batch, long=opts.long)
    return engine.pooled(seqs, pooling, opts.progress)[:, 0].numpy()


def save_head(head: heads.Head, out_dir: str | Path, meta: dict) -> None:
    """Write head.safetensors then head.json (written last: its presence marks a complete dir)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "head.safetensors") as tmp:
        save_file(heads.head_arrays(head), str(tmp))
    atomic_write(out / "head.json", json.dumps(_json_safe({"format": HEAD_FORMAT, "version": 1, "kind": head.kind,
                                                           "task": head.task, "classes": head.classes, **meta}),
                                               indent=2, allow_nan=False))


def _json_safe(x):
    """NaN/inf (a CV metric of constant predictions) as null: bare NaN is not JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def load_head(head_dir: str | Path) -> tuple[heads.Head, dict]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(head_dir)
    if not (d / "head.json").is_file() or not (d / "head.safetensors").is_file():
        raise NotFoundError(f"{d}: not a head dir (needs head.json and head.safetensors; "
                            "make one with `protlm function fit`)")
    try:
        meta = json.loads((d / "head.json").read_text())
    except ValueError as e:
        raise InputError(f"{d}/head.json: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{d}/head.json: format {found!r} is not {HEAD_FORMAT!r}")
    try:
        arrays = load_file(str(d / "head.safetensors"))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{d}/head.safetensors: corrupt or truncated ({e})") from None
    return heads.head_from_arrays(arrays, meta["kind"], meta["task"], meta["classes"]), meta


def fit_function(data_path, cfg: FitConfig, opts: InferenceOptions, output, *, cache_dir=None,
                 loader=None) -> dict:
    """Load labelled data, embed (cached), cross-validate, fit on all data, save the head dir.

    Returns the saved metadata (CV metrics under 'cv'). All input errors come before compute.
    """
    if cfg.target is None and cfg.label_from_header is None:
        raise InputError("give --target COLUMN (CSV/TSV) or --label-from-header FIELD (FASTA)")
    data = load_labelled(data_path, cfg.target, cfg.label_from_header, cfg.id_column,
                         cfg.sequence_column, cfg.group, cfg.group_from_header, opts.unknown)
    y = as_targets(data, cfg.task, data_path)
    heads._estimator(cfg.head_kind, cfg.task, cfg.seed)  # head/task mismatch fails before compute
    folds = cv.fold_indices(len(y), cfg.folds, cfg.task, y, data.groups, cfg.seed)
    cache_dir = Path(cache_dir) if cache_dir else Path(output) / "embedding_cache"
    x = cached_embeddings(data.sequences, opts, cfg.layer, cfg.pooling, cache_dir, loader=loader)
    fit = lambda xs, ys: heads.fit_head(xs, ys, cfg.head_kind, cfg.task, cfg.seed)  # noqa: E731
    scores = cv.cross_validate(x, y, cfg.task, fit, folds)
    head = fit(x, y)
    config = {"model": opts.model, **asdict(cfg), "toks_per_batch": opts.toks_per_batch, "device": opts.device,
              "unknown": opts.unknown, "dtype": opts.dtype, "long": opts.long}
    meta = {"model": opts.model, "model_identity": model_identity(opts.model), "layer": cfg.layer,
            "pooling": cfg.pooling, "target": cfg.target if cfg.target else f"header field {cfg.label_from_header}",
            "n_train": int(len(y)), "config": config, "data": str(data_path),
            "cv": {"folds": cfg.folds, "grouped": data.groups is not None, "mean": scores["mean"],
                   "std": scores["std"], "per_fold": scores["folds"]}}
    save_head(head, output, meta)
    return meta


def predict_function(fasta, head_dir, output, opts: InferenceOptions, *, cache_dir=None, loader=None) -> int:
    """Apply a saved head to every record of a FASTA; write CSV `id,prediction` atomically.

    The model recorded in the head is used unless `opts.model` overrides it (e.g. a moved path).
    """
    head, meta = load_head(head_dir)
    data = load_fasta_labels(fasta, None, unknown=opts.unknown)
    Path(output).parent.mkdir(parents=True, exist_ok=True)  # before the embeddings, not after
    opts = dataclasses.replace(opts, model=opts.model or meta["model"])
    x = cached_embeddings(data.sequences, opts, meta["layer"], meta["pooling"],
                          cache_dir or Path(head_dir) / "embedding_cache", loader=loader)
    if x.shape[1] != head.mean_D.shape[0]:
        raise InputError(f"model gives {x.shape[1]}-dim embeddings but the head expects "
                         f"{head.mean_D.shape[0]}; use the model recorded in {head_dir}/head.json")
    pred = head.predict(x)
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prediction"])
        for rid, p in zip(data.ids, pred):
            w.writerow([rid, p if meta["task"] == "classification" else f"{p:.6g}"])
    return len(data.ids)
