"""`load_model_and_alphabet`: published names, fair-esm .pt files, HF folders, protlm folders.

HF folders are read by their `model_type`: 'esm' (EsmForMaskedLM) or 't5' (T5EncoderModel or
the full T5ForConditionalGeneration, of which the encoder is kept; ProtT5); the family's config,
builder, key map and tokenizer come from protlm.pretrained.registry.

Safety: .pt files are read with `torch.load(weights_only=True)`, allowing tensors, containers and
exactly one metadata class, `argparse.Namespace` (ESM-1b's `args` and ESM-2's `cfg["model"]`
are Namespaces). A pickle that names anything else (e.g. `os.system`) is refused, never run.
Loading is strict: every key and shape must match, apart from an explicit list allowed missing.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import pickle
import zipfile
from argparse import Namespace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from protlm.alphabet import Alphabet
from protlm.errors import NotFoundError, ProtlmError
from protlm.models.config import ESMConfig
from protlm.models.esm import ESM, build_model
from protlm.pretrained import convert, convert_carp, download, protlm_format, registry

# The only non-tensor class published fair-esm files need (see the module docstring).
SAFE_GLOBALS = [Namespace]
CONTACT_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")
TIED_KEY, EMBED_KEY = "lm_head.weight", "embed_tokens.weight"


class CheckpointError(ProtlmError, ValueError):
    """A checkpoint that cannot be loaded: unsafe, corrupt, wrong family or mismatched keys."""


# ------------------------------------------------------------------ safe reading
def safe_torch_load(path: str | Path) -> Any:
    """torch.load with weights_only=True and only SAFE_GLOBALS allowed; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no such checkpoint file: {path}")
    if not _starts_like_checkpoint(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                              "is it the right file?")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path}: refused to unpickle: the file holds more than tensors, containers and "
                f"argparse.Namespace ({_detail(e)}); nothing in it was executed"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_detail(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{_detail(e)})") from None


def _is_zip(path: Path) -> bool:
    # mmap avoids a second in-memory copy of large files; only the zip format supports it.
    return zipfile.is_zipfile(path)


def _starts_like_checkpoint(path: Path) -> bool:
    # torch.save writes a zip archive, or (legacy) pickles of protocol >= 2, which open with the
    # PROTO opcode 0x80. Anything else, e.g. a text file, would reach the unpickler and fail with
    # a bare KeyError: 101. Empty and truncated files pass here and are reported as truncated.
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head in (b"", b"PK\x03\x04") or head.startswith(b"\x80")


def _detail(e: Exception) -> str:
    """The informative part of torch's long weights-only message (e.g. the refused GLOBAL)."""
    boiler = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boiler)]
    return " ".join(useful)[:300] or type(e).__name__


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (never runs code); CheckpointError when it is broken."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise NotFoundError(f"no such weights file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


# ------------------------------------------------------------------ strict loading
def _short(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_strict(model: ESM, state: Mapping[str, torch.Tensor], source: str,
                      allowed_missing: Iterable[str] = ()) -> list[str]:
    """Load `state` (protlm keys) into `model`; every difference is listed in one CheckpointError.

    `lm_head.weight` is tied to `embed_tokens.weight`: it may be absent, and when present it must
    equal the embedding. Returns the allowed keys that were missing (left at initialisation).
    """
    expected = model.state_dict()
    state = dict(state)
    tied = state.pop(TIED_KEY, None)
    if tied is not None and EMBED_KEY in state and not torch.equal(tied.float(), state[EMBED_KEY].float()):
        raise CheckpointError(f"{source}: the LM head's decoder weight differs from the token "
                              "embedding it must be tied to")
    allowed = set(allowed_missing) | {TIED_KEY}
    missing = set(expected) - set(state) - allowed
    unexpected = set(state) - set(expected)
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:12]))
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model "
                              f"({model.config.family}, {model.num_layers} layers, d={model.embed_dim}):\n  "
                              + "\n  ".join(problems))
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    return sorted((set(expected) - set(state)) - {TIED_KEY})


def _check_family(config: ESMConfig, state: Mapping[str, torch.Tensor], source: str, declared: str) -> None:
    found = convert.detect_family(state)
    if found != "unknown" and found != config.family:
        what = {"esm1b": "ESM-1b (learned position table)", "esm2": "ESM-2 (rotary inv_freq)"}
        raise CheckpointError(f"{source}: wrong model family: the weights are {what[found]} but "
                              f"{declared} declares {what[config.family]}")


# ------------------------------------------------------------------ formats
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
    _check_family(config, state, str(path), declared)
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
    from protlm.pretrained.convert_t5 import TiedEmbeddingError
    from protlm.pretrained.vocab_files import VocabFileError

    family = registry.family_for_hf("t5")
    try:
        config = family.hf_config(hf_cfg)
        alphabet = family.tokenizer(path)
        state = family.hf_to_protlm(_hf_state(path), config)
    except (ValueError, KeyError, VocabFileError, TiedEmbeddingError) as e:
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
    _check_family(config, state, str(path), declared)
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


def packaged_root():
    """Folder of the weights shipped inside protlm (a Traversable)."""
    return importlib.resources.files("protlm") / "weights"


def model_identity(name_or_path: str) -> str:
    """What a model name or path stands for, to key caches and resumable outputs: a published
    name, or an absolute path + its newest modification time.

    Packaged weights (e.g. 'protlm_small') are keyed by a hash of their files' contents, so a
    new release of the shipped weights does not reuse vectors from the old one, while a
    reinstall of the same release (another path, new modification times) still resumes.
    """
    p = Path(name_or_path)
    entry = registry.REGISTRY.get(str(name_or_path))
    if not p.exists() and entry is not None and entry.packaged:
        p = Path(str(packaged_root() / entry.packaged))
        return f"{name_or_path}:{_contents_hash(p) if p.exists() else 'missing'}"
    if p.exists():
        files = [p, *p.glob("*")] if p.is_dir() else [p]
        newest = max(f.stat().st_mtime for f in files)
        return f"{p.resolve()}@{newest:.0f}"
    return str(name_or_path)


def _contents_hash(folder: Path) -> str:
    """SHA-256 (first 16 hex digits) over the names and bytes of a folder's files (small folders:
    the packaged weights are ~15 MB)."""
    h = hashlib.sha256()
    for f in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def load_published(name: str) -> ESM:
    entry = registry.get(name)
    if entry.packaged:
        folder = packaged_root() / entry.packaged
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
            from protlm.contacts.fit import REGRESSION_FILE, load_contact_regression  # fit imports this module

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


def load_model_and_alphabet(name_or_path: str | Path, device: str | torch.device | None = None,
                            dtype: str | None = None):
    """(model in eval mode, Alphabet) from a published name or a checkpoint path.

    `dtype` (None: fp32 as loaded): an inference precision, fp32 | bf16 | fp16 | int8 | auto
    (protlm.engine.precision; int8 weights are cached after the first quantization).
    Paths: a fair-esm .pt file (ESM-1b or ESM-2, contact regression read from beside it), an HF
    folder (EsmForMaskedLM or T5 layout), a protlm folder. Names: see `protlm.pretrained.registry`;
    a published model's Hugging Face repo id (e.g. 'facebook/esm2_t6_8M_UR50D') works too.
    Weights load as fp32 whatever the file holds (ProtT5's half encoder is fp16) before `dtype`
    applies.
    """
    text = str(name_or_path)
    if Path(text).exists():
        model = load_path(text)
    elif text in registry.REGISTRY:
        model = load_published(text)
    elif registry.by_hf_repo(text) is not None:  # a Hugging Face repo id of a published model
        model = load_published(registry.by_hf_repo(text).name)
    elif text.endswith(".pt") or "/" in text or "\\" in text:
        raise NotFoundError(f"no such checkpoint: {text}")
    else:
        registry.get(text)  # raises UnknownModelError listing the published names
        raise AssertionError("unreachable")
    if dtype is not None:
        from protlm.engine.precision import prepare_model  # precision imports this package

        model = prepare_model(model, str(device or "cpu"), dtype, source=text)
    elif device is not None:
        model = model.to(device)
    return model.eval(), model.alphabet
