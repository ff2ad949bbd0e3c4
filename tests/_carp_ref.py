"""CARP reference models: sequence-models' ByteNetLM with random weights, written as the
published `.pt` files are laid out (importable from every test folder: tests/ is on sys.path
because tests/conftest.py lives there)."""

from __future__ import annotations

from pathlib import Path

import torch

# the published sizes (protlm.models.carp.carp_config), package spellings
SHAPES = {
    "carp_600k": dict(d_model=128, n_layers=16, slim=True),
    "carp_38M": dict(d_model=1024, n_layers=16, slim=True),
    "carp_76M": dict(d_model=1024, n_layers=32, slim=True),
    "carp_640M": dict(d_model=1280, n_layers=56, slim=False),
}


def reference_bytenet(d_model=128, n_layers=16, slim=True, d_embed=8, kernel_size=5, r=128,
                      activation="gelu", seed=0):
    """(ByteNetLM as `sequence_models.pretrained.load_carp` builds it, published config dict).

    Weights: the package's default init plus noise, LayerNorms moved off 1/0 (a swapped or
    missing one is then detected), so every parameter matters."""
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.convolutional import ByteNetLM

    torch.manual_seed(seed)
    model = ByteNetLM(len(PROTEIN_ALPHABET), d_embed, d_model, n_layers, kernel_size, r, dropout=0.0,
                      activation=activation, causal=False, padding_idx=PROTEIN_ALPHABET.index(MASK),
                      final_ln=True, slim=slim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Conv1d) and m.bias is not None:
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    meta = dict(d_embed=d_embed, d_model=d_model, n_layers=n_layers, kernel_size=kernel_size,
                activation=activation, slim=slim, r=r)
    return model.eval(), meta


def write_published(model, meta: dict, path: str | Path, name: str = "carp_600k") -> Path:
    """`torch.save` of the dict the Zenodo files hold: config fields, 'model', 'model_state_dict'."""
    path = Path(path)
    torch.save({**meta, "model": name, "model_state_dict": model.state_dict()}, path)
    return path


def load_reference(path: str | Path):
    """sequence-models' own loader on the file (its CARP wrapper, eval mode)."""
    from sequence_models.pretrained import load_carp

    return load_carp(torch.load(path, map_location="cpu", weights_only=True))
