"""Writing checkpoints: `save_hf` (the Hugging Face layout of the model's family) and
`convert_checkpoint` (anything loadable -> a protlm or HF folder), behind `protlm convert`.

Kept apart from the pure key maps (convert, convert_t5) so that loading never imports writing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from protlm.dtypes import cast_state, parse_dtype
from protlm.errors import InputError
from protlm.io import atomic_path, atomic_write
from protlm.pretrained import convert, convert_t5
from protlm.pretrained.load import UNFITTED_HF_KEY, load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm

HF_VOCAB_FILE = "vocab.txt"  # EsmTokenizer's vocabulary: one token per line, in index order
FORMATS = ("protlm", "hf")


def _hf_layout(model, state: dict) -> tuple[dict, dict]:
    """(HF state dict, config.json dict) of a model, in its family's published layout."""
    if model.config.family == "carp":
        raise InputError("CARP has no Hugging Face layout (it is published as sequence-models .pt "
                         "files); use --to protlm")
    if model.config.family == "t5":
        a = model.alphabet
        return (convert_t5.protlm_to_hf(state, model.config.gated),
                convert_t5.protlm_config_to_hf(model.config, a.padding_idx, a.eos_idx))
    return convert.protlm_to_hf(state), convert.protlm_config_to_hf(model.config, model.alphabet)


def save_hf(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as an HF folder (config.json, model.safetensors, vocabulary); files land atomically.

    ESM: EsmForMaskedLM layout. T5: T5EncoderModel layout. vocab.txt lists the token ids protlm
    used (EsmTokenizer reads it; for T5 keep the original spiece.model beside it).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_state, config = _hf_layout(model, cast_state(model, model.state_dict(), dtype))
    hf_state = {k: v.detach().contiguous().cpu().clone() for k, v in hf_state.items()}
    with atomic_path(path / "model.safetensors") as tmp:
        save_file(hf_state, tmp, metadata={"format": "pt"})
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    if getattr(getattr(model, "contact_head", None), "fitted", True) is False:
        config[UNFITTED_HF_KEY] = False  # else a later load could not tell its random head from a fitted one
    atomic_write(path / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write(path / HF_VOCAB_FILE, "\n".join(model.alphabet.all_toks) + "\n")
    return path


def convert_checkpoint(src: str | Path, dst: str | Path, to: str = "protlm",
                       dtype: str | None = None) -> Path:
    """Load anything `load_model_and_alphabet` accepts and write it as a protlm or HF folder."""
    if to not in FORMATS:
        raise InputError(f"unknown target format {to!r}; choose from {FORMATS}")
    torch_dtype = parse_dtype(dtype) if dtype else None
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        # writing over another checkpoint would leave its other files (vocab, regression) behind
        raise InputError(f"{dst}: exists and is not an empty folder; choose a new output folder")
    model, _ = load_model_and_alphabet(src)
    if to == "hf":
        return save_hf(model, dst, torch_dtype)
    return save_protlm(model, dst, torch_dtype, extra={"converted_from": str(src)})
