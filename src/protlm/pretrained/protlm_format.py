"""protlm's own checkpoint format: a folder with `config.json` and `model.safetensors`.

safetensors holds tensors only, so loading it can never run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from protlm.io import atomic_path, atomic_write
from protlm.models.config import ESMConfig
from protlm.models.esm import ESM, build_model

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
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items() if k not in TIED_KEYS}
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT_NAME})
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    atomic_write(path / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return path


def read_protlm_config(path: str | Path) -> dict[str, Any]:
    meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a protlm checkpoint (config.json has no format='protlm')")
    return meta


def load_protlm_state(weights: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(weights))


def load_protlm(path: str | Path, weights_file: str | Path | None = None) -> ESM:
    """Build the model from `config.json` and load `model.safetensors` strictly (fp32)."""
    meta = read_protlm_config(path)
    model = build_model(ESMConfig.from_dict(meta["model"]))
    state = load_protlm_state(weights_file or Path(path) / WEIGHTS_FILE)
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in TIED_KEYS]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
    return model
