"""protlm's own checkpoint format: a folder with `config.json` and `model.safetensors`.

safetensors holds tensors only, so loading it can never run code. config.json names the model
`family` ('esm1b', 'esm2', 't5'; files written before families existed are ESM) and, for T5,
the `vocabulary` the model was used with (token ids can differ between tokenizer files).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from protlm.io import atomic_path, atomic_write
from protlm.alphabet import Alphabet
from protlm.dtypes import cast_state
from protlm.errors import NotFoundError
from protlm.models.esm import ESM
from protlm.pretrained.registry import family_of

FORMAT_NAME = "protlm"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TIED_KEYS = ("lm_head.weight",)  # the same tensor as embed_tokens.weight; stored once


def is_protlm_dir(path: str | Path) -> bool:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError):
        return False


def save_protlm(model: ESM, path: str | Path, dtype: torch.dtype | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write `model` as a protlm folder; each file lands atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu()
             for k, v in cast_state(model, model.state_dict(), dtype).items() if k not in TIED_KEYS}
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT_NAME})
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "family": model.config.family,
            "model": model.config.to_dict(),
            "contact_head_fitted": bool(getattr(getattr(model, "contact_head", None), "fitted", False)),
            **(extra or {})}
    if model.alphabet != Alphabet():
        meta["vocabulary"] = list(model.alphabet.all_toks)
    atomic_write(path / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return path


def read_protlm_config(path: str | Path) -> dict[str, Any]:
    from protlm.pretrained.checkpoint import CheckpointError

    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        what = "has no " + CONFIG_FILE + " (not a protlm checkpoint folder)" if Path(path).exists() else "no such folder"
        raise NotFoundError(f"{path}: {what}")
    try:
        meta = json.loads(config.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a protlm checkpoint (config.json has no format='protlm')")
    return meta


def load_protlm_state(weights: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(weights))


def load_protlm(path: str | Path, weights_file: str | Path | None = None) -> ESM:
    """Build the model from `config.json` and load `model.safetensors` strictly (fp32).

    CheckpointError when config.json is not a model description or the weights do not match
    it (every missing, unexpected and misshapen key listed)."""
    from safetensors import SafetensorError

    from protlm.pretrained.checkpoint import CheckpointError, load_state_strict

    meta = read_protlm_config(path)
    try:
        family = family_of(meta.get("family", "esm"))
        config = family.config_cls.from_dict(meta["model"])
        alphabet = family.tokenizer(None)
        if meta.get("vocabulary"):
            alphabet = dataclasses.replace(alphabet, all_toks=list(meta["vocabulary"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load protlm checkpoint: {CONFIG_FILE} is not a model "
                              f"description ({type(e).__name__}: {e})") from None
    model = family.build(config, alphabet)
    weights = Path(weights_file or Path(path) / WEIGHTS_FILE)
    try:
        state = load_protlm_state(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot load protlm checkpoint: {weights.name} is missing, "
                              f"corrupt or truncated ({e})") from None
    load_state_strict(model, state, str(path))
    if getattr(model, "contact_head", None) is not None:  # CARP has no attention contact head
        model.contact_head.fitted = bool(meta.get("contact_head_fitted", False))
    return model
