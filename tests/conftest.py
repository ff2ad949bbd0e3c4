"""Shared fixtures: real data from ../shared/data and tiny debug models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data folder missing: {SHARED_DATA} (see the README)")
    return SHARED_DATA


@pytest.fixture
def debug_model():
    """factory: debug_model('esm1b_debug' | 'esm2_debug', seed=0) -> eval-mode ESM."""
    from protlm import build_model
    from protlm.pretrained.registry import DEBUG_CONFIGS

    def make(name: str = "esm2_debug", seed: int = 0):
        torch.manual_seed(seed)
        return build_model(DEBUG_CONFIGS[name]).eval()

    return make
