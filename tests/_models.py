"""Test models shared by conftest fixtures (importable from any test folder: tests/ is on sys.path)."""

import torch

from protlm.models.layers import init_weights
from protlm.pretrained.registry import build_debug


def perturbed(name: str = "esm2_debug", seed: int = 0):
    """A debug model with realistic N(0, 0.02) weights and LayerNorms/biases moved off 1/0, so a
    1e-5 tolerance means something."""
    torch.manual_seed(seed)
    m = build_debug(name)
    init_weights(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()
