"""Reading checkpoints without running code, and loading them strictly.

Safety: .pt files are read with `torch.load(weights_only=True)`, allowing tensors, containers and
exactly one metadata class, `argparse.Namespace` (ESM-1b's `args` and ESM-2's `cfg["model"]`
are Namespaces). A pickle that names anything else (e.g. `os.system`) is refused, never run.
safetensors files hold tensors only. Loading is strict: every key and shape must match, apart
from an explicit list allowed missing; every difference is listed in one CheckpointError.
"""

from __future__ import annotations

import pickle
import zipfile
from argparse import Namespace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from protlm.errors import NotFoundError, ProtlmError
from protlm.pretrained import convert

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


def _short(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
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


def check_family(config,  state: Mapping[str, torch.Tensor], source: str, declared: str) -> None:
    found = convert.detect_family(state)
    if found != "unknown" and found != config.family:
        what = {"esm1b": "ESM-1b (learned position table)", "esm2": "ESM-2 (rotary inv_freq)"}
        raise CheckpointError(f"{source}: wrong model family: the weights are {what[found]} but "
                              f"{declared} declares {what[config.family]}")
