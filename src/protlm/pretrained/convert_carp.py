"""The published CARP `.pt` layout <-> protlm's CARP: config fields and a literal key map.

A published file (Zenodo record 6564798, what `sequence_models.pretrained.load_carp` reads) is
a dict of plain values and tensors, so `torch.load(weights_only=True)` reads it:
    {'d_embed', 'd_model', 'n_layers', 'kernel_size', 'activation', 'slim', 'r',
     'model': 'carp_640M', 'model_state_dict': ByteNetLM.state_dict()}
The package's pointwise layers are 1x1 Conv1d's, weights (O, I, 1); protlm's are nn.Linear,
(O, I): the trailing axis is dropped on the way in and added on the way out.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from protlm.models.carp import CARPConfig

CONFIG_KEYS = ("d_embed", "d_model", "n_layers", "kernel_size", "activation", "slim", "r")
STATE_KEY = "model_state_dict"

# package key -> protlm key outside the block stack
PUBLISHED_TO_PROTLM_GLOBAL = {
    "embedder.embedder.weight": "embed_tokens.weight",
    "embedder.up_embedder.conv.weight": "up_embedder.weight",
    "embedder.up_embedder.conv.bias": "up_embedder.bias",
    "decoder.conv.weight": "lm_head.decoder.weight",
    "decoder.conv.bias": "lm_head.decoder.bias",
    "last_norm.weight": "lm_head.norm.weight",
    "last_norm.bias": "lm_head.norm.bias",
}
# package key under `embedder.layers.{i}.` -> protlm key under `layers.{i}.`
PUBLISHED_TO_PROTLM_LAYER = {
    "sequence1.0.weight": "ln1.weight", "sequence1.0.bias": "ln1.bias",
    "sequence1.2.conv.weight": "ff1.weight", "sequence1.2.conv.bias": "ff1.bias",
    "sequence1.3.weight": "ln2.weight", "sequence1.3.bias": "ln2.bias",
    "conv.weight": "conv.weight", "conv.bias": "conv.bias",
    "sequence2.0.weight": "ln3.weight", "sequence2.0.bias": "ln3.bias",
    "sequence2.2.conv.weight": "ff2.weight", "sequence2.2.conv.bias": "ff2.bias",
}
LAYER_PREFIX = "embedder.layers."
POINTWISE = ("up_embedder.weight", "lm_head.decoder.weight", ".ff1.weight", ".ff2.weight")


def is_carp_checkpoint(data: Any) -> bool:
    """True for a dict in the published CARP layout (fair-esm files have 'args'/'cfg' instead)."""
    return isinstance(data, dict) and STATE_KEY in data and "d_model" in data


def published_config(data: Mapping[str, Any], n_tokens: int = 30) -> CARPConfig:
    """The CARPConfig a published file describes; ValueError naming what is missing or refused."""
    missing = [k for k in CONFIG_KEYS if k not in data]
    if missing:
        raise ValueError(f"not a CARP checkpoint: it lacks {missing}")
    name = str(data.get("model", ""))
    if "bigcarp" in name or data.get("tokens") is not None:
        raise ValueError(f"{name!r} is a BiG-CARP model (gene-cluster tokens), not a protein CARP")
    if data.get("rank") is not None:
        raise ValueError("factorized (rank-limited) CARP weights are not supported")
    return CARPConfig(n_tokens=n_tokens, d_embedding=int(data["d_embed"]), d_model=int(data["d_model"]),
                      n_layers=int(data["n_layers"]), kernel_size=int(data["kernel_size"]), r=int(data["r"]),
                      slim=bool(data["slim"]), activation=str(data["activation"]))


def published_to_protlm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ByteNetLM keys -> protlm keys (a `model.` prefix of the package's CARP wrapper is dropped);
    unknown keys are kept, so strict loading reports them as unexpected."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("model.")
        new = PUBLISHED_TO_PROTLM_GLOBAL.get(key)
        if new is None and key.startswith(LAYER_PREFIX):
            index, _, rest = key[len(LAYER_PREFIX):].partition(".")
            if rest in PUBLISHED_TO_PROTLM_LAYER and index.isdigit():
                new = f"layers.{index}.{PUBLISHED_TO_PROTLM_LAYER[rest]}"
        new = new or key
        if new.endswith(POINTWISE) and value.ndim == 3 and value.shape[-1] == 1:
            value = value[..., 0]  # 1x1 conv (O, I, 1) -> linear (O, I)
        out[new] = value
    return out


def protlm_to_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """protlm keys -> ByteNetLM keys (pointwise weights back to (O, I, 1))."""
    glob = {v: k for k, v in PUBLISHED_TO_PROTLM_GLOBAL.items()}
    layer = {v: k for k, v in PUBLISHED_TO_PROTLM_LAYER.items()}
    out = {}
    for key, value in state.items():
        if key.endswith(POINTWISE):
            value = value[..., None]
        if key in glob:
            out[glob[key]] = value
            continue
        index, _, rest = key.removeprefix("layers.").partition(".")
        if not key.startswith("layers.") or rest not in layer:
            raise KeyError(f"no published CARP name for protlm parameter {key!r}")
        out[f"{LAYER_PREFIX}{index}.{layer[rest]}"] = value
    return out


def published_dict(config: CARPConfig, state: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """A dict in the published layout (what `torch.save` writes as a CARP .pt)."""
    return {"d_embed": config.d_embedding, "d_model": config.d_model, "n_layers": config.n_layers,
            "kernel_size": config.kernel_size, "activation": config.activation, "slim": config.slim,
            "r": config.r, "model": name, STATE_KEY: protlm_to_published(state)}


def load_published_carp(data: Mapping[str, Any], source: str):
    """A CARP model from a published-layout dict (already read with weights_only=True); strict:
    every key and shape must match the config the file declares."""
    from protlm.models.carp import build_carp
    from protlm.pretrained.checkpoint import CheckpointError, load_state_strict

    state = data[STATE_KEY]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: '{STATE_KEY}' is not a state dict")
    state = published_to_protlm(state)
    emb = state.get("embed_tokens.weight")
    try:
        config = published_config(data, n_tokens=emb.shape[0] if emb is not None else 30)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    if config.n_tokens != 30:
        raise CheckpointError(f"{source}: the embedding has {config.n_tokens} rows; CARP's alphabet has 30")
    model = build_carp(config)
    load_state_strict(model, state, source)
    return model
