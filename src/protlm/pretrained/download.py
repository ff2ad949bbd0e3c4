"""Where published weights live on disk, and fetching them when online.

Resolution order for a published name (first hit wins, no network until step 3):
  1. fair-esm's cache: `<torch hub dir>/checkpoints/<name>.pt` (+ `<name>-contact-regression.pt`),
     the same files `esm.pretrained` downloads, so an existing fair-esm cache is reused;
  2. the Hugging Face cache for `entry.hf_repo` (config.json + weights);
  3. download the single published file (`entry.url`): fair-esm's from dl.fbaipublicfiles.com,
     CARP's from Zenodo, into the cache of step 1;
  4. download the HF snapshot (ProtT5: Rostlab's repos, weights as pytorch_model.bin).
When everything fails, `WeightsNotFoundError` says which files to put where.
"""

from __future__ import annotations

from protlm.errors import ProtlmError
import os
from pathlib import Path

import torch

from protlm.pretrained.registry import ModelEntry

HF_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
# Rostlab's ProtT5 repos publish pytorch_model.bin (read with weights_only=True) and the
# tokenizer files the token ids are read from.
HF_PATTERNS_T5 = [*HF_PATTERNS, "pytorch_model.bin", "spiece.model", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json"]
OFFLINE_ENV = "PROTLM_OFFLINE"  # "1": never try the network (HF_HUB_OFFLINE is honoured too)


class WeightsNotFoundError(ProtlmError, FileNotFoundError):
    """Published weights are neither cached nor downloadable; the message says what to do."""


def checkpoint_dir() -> Path:
    """fair-esm's cache folder: `torch.hub.get_dir()/checkpoints` (TORCH_HOME is honoured)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_fair_esm(entry: ModelEntry) -> Path | None:
    if entry.url is None:
        return None
    path = checkpoint_dir() / f"{entry.name}.pt"
    return path if path.is_file() else None


def regression_path(model_path: Path) -> Path:
    """`<stem>-contact-regression.pt` beside a model file, fair-esm's naming."""
    return model_path.with_name(f"{model_path.stem}-contact-regression.pt")


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _download_url(url: str, dst: Path) -> None:
    # download_url_to_file writes to a temporary file and renames it: no partial files are left.
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=True)


def _hf_snapshot(entry: ModelEntry, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = HF_PATTERNS_T5 if entry.config.family == "t5" else HF_PATTERNS
    return Path(snapshot_download(entry.hf_repo, allow_patterns=patterns, local_files_only=local_only))


def _cached_hf(entry: ModelEntry) -> Path | None:
    if not entry.hf_repo:
        return None
    try:
        path = _hf_snapshot(entry, local_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    return path if (path / "config.json").is_file() else None


def _download_fair_esm(entry: ModelEntry) -> Path:
    dst = checkpoint_dir() / f"{entry.name}.pt"
    if entry.regression_url:
        reg = regression_path(dst)
        if not reg.is_file():
            _download_url(entry.regression_url, reg)
    _download_url(entry.url, dst)
    return dst


def instructions(entry: ModelEntry) -> str:
    """What to download and where to put it, for machines without internet access."""
    d = checkpoint_dir()
    lines = [f"weights for {entry.name!r} are not cached and could not be downloaded. Either:"]
    if entry.url:
        lines += [f"  put {entry.url}", f"    at {d / (entry.name + '.pt')}"]
    if entry.regression_url:
        lines += [f"  and {entry.regression_url}", f"    at {d / (entry.name + '-contact-regression.pt')}"]
    if entry.hf_repo:
        lines += [f"  {'or ' if entry.url else ''}fetch the Hugging Face repo {entry.hf_repo} "
                  "(config.json, the weights and any tokenizer files)",
                  f"    into the HF cache on a connected machine: huggingface-cli download {entry.hf_repo}",
                  "    then copy the cache folder (HF_HOME) here,"]
    lines += ["  or pass the path of a local .pt file, HF folder or protlm folder instead of the name."]
    return "\n".join(lines)


def resolve(entry: ModelEntry) -> Path:
    """Path of a fair-esm .pt file or an HF folder holding the published weights of `entry`."""
    path = cached_fair_esm(entry) or _cached_hf(entry)
    if path is not None:
        return path
    errors = []
    if not _offline():
        if entry.url:
            try:
                return _download_fair_esm(entry)
            except Exception as e:  # noqa: BLE001 - reported below with the instructions
                errors.append(f"{entry.url}: {e}")
        if entry.hf_repo:
            try:
                return _hf_snapshot(entry, local_only=False)
            except Exception as e:  # noqa: BLE001
                errors.append(f"huggingface.co/{entry.hf_repo}: {e}")
    else:
        errors.append(f"downloads disabled ({OFFLINE_ENV} or HF_HUB_OFFLINE is set)")
    raise WeightsNotFoundError(instructions(entry) + "\nattempts:\n  " + "\n  ".join(errors))
