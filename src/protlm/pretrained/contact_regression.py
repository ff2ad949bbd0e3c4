"""Fitted attention contact heads on disk: the regression of `ContactPredictionHead`.

The fitted weights are exactly the head's `regression` tensors, so they are saved as fair-esm's
`-contact-regression.pt` layout ({'model': {'contact_head.regression.weight': (1, X),
'contact_head.regression.bias': (1,)}}) or as safetensors (`REGRESSION_FILE` inside a protlm
model folder, where loading the model picks it up). Read without running code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from protlm.errors import NotFoundError
from protlm.io import atomic_path
from protlm.pretrained.checkpoint import CheckpointError, load_safetensors, safe_torch_load

REGRESSION_FILE = "contact_regression.safetensors"
KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")
BILINEAR_CONFIG_FILE = "bilinear_contact.json"  # a bilinear head's folder (protlm.contacts.bilinear)


def save_regression(weight: torch.Tensor, bias: torch.Tensor, path: str | Path) -> Path:
    """`.pt` (fair-esm's regression layout) or `.safetensors` (or a folder: REGRESSION_FILE in it)."""
    path = Path(path)
    if path.is_dir():
        path = path / REGRESSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {KEYS[0]: weight.detach().float().reshape(1, -1).contiguous(),
             KEYS[1]: bias.detach().float().reshape(1).contiguous()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, tmp)
        else:
            torch.save({"model": state}, tmp)
    return path


def read_regression(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a regression file without running code (safetensors or torch.load(weights_only=True))."""
    path = Path(path)
    if path.is_dir():
        path = path / REGRESSION_FILE
    if not path.is_file():
        err = NotFoundError(f"contact regression file not found: {path}")
        if (path.parent / BILINEAR_CONFIG_FILE).is_file():  # a bilinear head's folder, read as the attention one's
            err.hint = f"{path.parent} holds a bilinear head: load it with load_bilinear"
            err.cli_hint = f"{path.parent} holds a bilinear head: add --head bilinear"
        raise err
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        obj = safe_torch_load(path)
        state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise CheckpointError(f"{path}: not a contact-regression file (needs {list(KEYS)})")
    return {k: state[k] for k in KEYS}


def load_contact_regression(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load fitted regression tensors into `model.contact_head` (shapes checked)."""
    state = read_regression(path)
    head = model.contact_head.regression
    want = {KEYS[0]: tuple(head.weight.shape), KEYS[1]: tuple(head.bias.shape)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        raise CheckpointError(f"{path}: regression shapes {got} do not fit this model's contact head {want}")
    return set_regression(model, state[KEYS[0]], state[KEYS[1]])


def set_regression(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    """Put fitted (1, X) weight and (1,) bias into `model.contact_head`; it counts as fitted."""
    head = model.contact_head.regression
    with torch.no_grad():
        head.weight.copy_(weight.reshape(head.weight.shape))
        head.bias.copy_(bias.reshape(head.bias.shape))
    model.contact_head.fitted = True
    return model
