"""`load_model`: published names, fair-esm .pt files, HF folders, protlm folders -> a model.

HF folders are read by their `model_type`: 'esm' (EsmForMaskedLM) or 't5' (T5EncoderModel or
the full T5ForConditionalGeneration, of which the encoder is kept; ProtT5); the family's config,
builder, key map and tokenizer come from protlm.pretrained.registry. Files are read safely and
loaded strictly (protlm.pretrained.checkpoint). Loading returns an fp32 model in eval mode: an
inference precision (bf16, int8, ...) is applied by whoever asks for it (protlm.runtime.precision,
or `protlm.load_model_and_alphabet(..., dtype=...)`).
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import torch

from protlm.alphabet import Alphabet
from protlm.errors import NotFoundError
from protlm.models.esm import ESM, build_model
from protlm.pretrained import convert, convert_carp, download, identity, protlm_format, registry
from protlm.pretrained.checkpoint import (CheckpointError, check_family, load_safetensors, load_state_strict,
                                          safe_torch_load)
from protlm.pretrained.contact_regression import REGRESSION_FILE, load_contact_regression

CONTACT_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")


def load_fair_esm(path: str | Path, regression: str | Path | None = None) -> ESM:
    """A published fair-esm .pt (ESM-1b `args` or ESM-2 `cfg`), with `<stem>-contact-regression.pt`
    beside it when present (or `regression` if given)."""
    path = Path(path)
    data = safe_torch_load(path)
    if convert_carp.is_carp_checkpoint(data):  # Microsoft's CARP layout (sequence-models)
        return convert_carp.load_published_carp(data, str(path))
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"{path}: not a fair-esm checkpoint (expected a dict with 'model' and "
                              "'args' or 'cfg')")
    state = convert.strip_fair_esm_prefixes(data["model"])
    try:
        config = convert.fair_esm_config(data, state)
    except (ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    declared = "its `cfg` (ESM-2)" if "cfg" in data else "its `args` (ESM-1b, arch=roberta_large)"
    check_family(config, state, str(path), declared)
    model = build_model(config)
    if config.family == "esm1b":
        state = convert.fair_esm_v1_fixups(state, model.alphabet)

    reg_path = Path(regression) if regression else download.regression_path(path)
    if reg_path.is_file():
        reg = safe_torch_load(reg_path)
        reg_state = reg.get("model", reg) if isinstance(reg, dict) else None
        if not isinstance(reg_state, dict):
            raise CheckpointError(f"{reg_path}: not a contact-regression file")
        state.update(reg_state)
    elif regression:
        raise NotFoundError(f"contact regression file not found: {reg_path}")
    left = load_state_strict(model, state, str(path), allowed_missing=CONTACT_KEYS)
    if left:
        model.contact_head.reset_unfitted()
    model.contact_head.fitted = not left
    return model


def _hf_state(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for s in shards for k, v in load_safetensors(path / s).items()}
    if (path / "pytorch_model.bin").is_file():
        return safe_torch_load(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: HF folder without model.safetensors or pytorch_model.bin")


def load_hf(path: str | Path):
    """A Hugging Face folder (config.json + weights) of any supported family."""
    path = Path(path)
    try:
        hf_cfg = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    try:
        family = registry.family_for_hf(hf_cfg.get("model_type"))
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    return {"esm": load_hf_esm, "t5": load_hf_t5}[family.name](path, hf_cfg)


def load_hf_t5(path: Path, hf_cfg: dict):
    """A T5 folder (ProtT5): encoder weights, any dtype (cast to the model's fp32), token ids from
    the folder's spiece.model / tokenizer.json when present."""
    family = registry.family_for_hf("t5")
    try:
        config = family.hf_config(hf_cfg)
        alphabet = family.tokenizer(path)
        state = family.hf_to_protlm(_hf_state(path), config)
    except (ValueError, KeyError) as e:  # CheckpointErrors (vocab, tied embeddings) included: named by path
        raise CheckpointError(f"{path}: {e}") from None
    if len(alphabet) != config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer files give {len(alphabet)} tokens, config.json "
                              f"vocab_size is {config.vocab_size}")
    model = family.build(config, alphabet)
    load_state_strict(model, state, str(path), allowed_missing=CONTACT_KEYS)
    model.contact_head.fitted = False  # ProtT5 has no published contact head
    return model


def load_hf_esm(path: Path, hf_cfg: dict) -> ESM:
    """A Hugging Face folder in the EsmForMaskedLM layout."""
    alphabet = Alphabet()
    try:
        config = convert.hf_config_to_protlm(hf_cfg, alphabet)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    state = convert.hf_to_protlm(_hf_state(path), config.num_layers)
    if config.position_embedding == "rotary":
        # The published facebook/esm2 files carry an unused learned position table from an early
        # conversion; transformers ignores it on load too.
        state.pop("embed_positions.weight", None)
    declared = f"config.json (position_embedding_type={hf_cfg.get('position_embedding_type')!r})"
    check_family(config, state, str(path), declared)
    model = build_model(config, alphabet)
    # Rotary inv_freq is copied when the file has it (fp16-trained values differ from a recompute);
    # only when absent is the model's own computation kept.
    inv_freq = [f"layers.{i}.self_attn.rot_emb.inv_freq" for i in range(config.num_layers)]
    left = load_state_strict(model, state, str(path), allowed_missing=[*CONTACT_KEYS, *inv_freq])
    if set(CONTACT_KEYS) & set(left):
        model.contact_head.reset_unfitted()
    # a folder protlm wrote from a model without a fitted head says so (transformers keeps
    # unknown config keys); published folders hold the fitted head
    model.contact_head.fitted = (not set(CONTACT_KEYS) & set(left)
                                 and hf_cfg.get(UNFITTED_HF_KEY, True) is not False)
    return model


UNFITTED_HF_KEY = "protlm_contact_head_fitted"  # in config.json of HF folders protlm writes


def load_published(name: str) -> ESM:
    entry = registry.get(name)
    if entry.packaged:
        folder = identity.packaged_root() / entry.packaged
        with importlib.resources.as_file(folder) as p:
            if not protlm_format.is_protlm_dir(p):
                raise CheckpointError(f"packaged weights for {name!r} are missing or broken at {p}")
            return load_path(p)
    path = download.resolve(entry)
    model = load_path(path)
    fields = ("family", "num_layers", "embed_dim", "attention_heads")  # CARP has no heads: None
    got, want = ({f: getattr(c, f, None) for f in fields} for c in (model.config, entry.config))
    if got != want:
        raise CheckpointError(f"{path}: does not hold {name!r}: file {got}, registry {want}")
    return model


def load_path(path: str | Path) -> ESM:
    """Any supported checkpoint on disk: fair-esm .pt file, HF folder or protlm folder."""
    path = Path(path)
    if path.is_dir():
        if protlm_format.is_protlm_dir(path):
            model = protlm_format.load_protlm(path)
            beside = path / REGRESSION_FILE  # a fitted attention head shipped with the weights
            if beside.is_file():
                load_contact_regression(model, beside)
            return model
        if (path / "config.json").is_file():
            return load_hf(path)
        raise CheckpointError(f"{path}: folder has no config.json (expected a protlm or HF folder)")
    if path.is_file():
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: pass the folder holding config.json, not the weights file")
        return load_fair_esm(path)
    raise NotFoundError(f"no such checkpoint: {path}")


def load_model(name_or_path: str | Path) -> torch.nn.Module:
    """The fp32 model (eval mode) of a published name or a checkpoint path.

    Paths: a fair-esm .pt file (ESM-1b or ESM-2, contact regression read from beside it; or
    CARP's published layout), an HF folder (EsmForMaskedLM or T5 layout), a protlm folder.
    Names: see `protlm.pretrained.registry`; a published model's Hugging Face repo id (e.g.
    'facebook/esm2_t6_8M_UR50D') works too. Weights load as fp32 whatever the file holds
    (ProtT5's half encoder is fp16).
    """
    text = str(name_or_path)
    if Path(text).exists():
        return load_path(text).eval()
    if text in registry.REGISTRY:
        return load_published(text).eval()
    if registry.by_hf_repo(text) is not None:  # a Hugging Face repo id of a published model
        return load_published(registry.by_hf_repo(text).name).eval()
    if text.endswith(".pt") or "/" in text or "\\" in text:
        raise NotFoundError(f"no such checkpoint: {text}")
    registry.get(text)  # raises UnknownModelError listing the published names
    raise AssertionError("unreachable")


def load_model_and_alphabet(name_or_path: str | Path, device: str | torch.device | None = None):
    """(fp32 model in eval mode on `device`, its Alphabet): `load_model`, fair-esm's pair."""
    model = load_model(name_or_path)
    if device is not None:
        model = model.to(device)
    return model, model.alphabet
