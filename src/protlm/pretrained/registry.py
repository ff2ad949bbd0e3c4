"""Published models: name -> config and where the weights live. Adding one is one entry."""

from __future__ import annotations

from dataclasses import dataclass

from protlm.errors import ProtlmError
from protlm.models.config import ESMConfig, esm1b_config, esm2_config

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ESMConfig
    has_regression: bool = True  # a published -contact-regression.pt exists
    hf_repo: str | None = None  # Hugging Face hub mirror (EsmForMaskedLM layout)
    packaged: str | None = None  # weights shipped inside protlm (file stem under protlm/weights)

    @property
    def url(self) -> str:
        return f"{FAIR_ESM_URL}/models/{self.name}.pt"

    @property
    def regression_url(self) -> str | None:
        return f"{FAIR_ESM_URL}/regression/{self.name}-contact-regression.pt" if self.has_regression else None


def _esm2(name: str, layers: int, dim: int, heads: int) -> ModelEntry:
    return ModelEntry(name, esm2_config(layers, dim, heads), hf_repo=f"facebook/{name}")


_ENTRIES = [
    ModelEntry("esm1b_t33_650M_UR50S", esm1b_config(), hf_repo="facebook/esm1b_t33_650M_UR50S"),
    *(
        ModelEntry(f"esm1v_t33_650M_UR90S_{i}", esm1b_config(), has_regression=False,
                   hf_repo=f"facebook/esm1v_t33_650M_UR90S_{i}")
        for i in range(1, 6)
    ),
    _esm2("esm2_t6_8M_UR50D", 6, 320, 20),
    _esm2("esm2_t12_35M_UR50D", 12, 480, 20),
    _esm2("esm2_t30_150M_UR50D", 30, 640, 20),
    _esm2("esm2_t33_650M_UR50D", 33, 1280, 20),
    _esm2("esm2_t36_3B_UR50D", 36, 2560, 40),
    _esm2("esm2_t48_15B_UR50D", 48, 5120, 40),
]

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}

# Tiny flavours of each family, used by every test (never downloaded).
DEBUG_CONFIGS: dict[str, ESMConfig] = {
    "esm1b_debug": esm1b_config(num_layers=2, embed_dim=64, ffn_embed_dim=128, attention_heads=4),
    "esm2_debug": esm2_config(2, 64, 4),
}


def register(entry: ModelEntry) -> None:
    REGISTRY[entry.name] = entry


class UnknownModelError(ProtlmError, KeyError):
    """A model name that is neither published nor a path; the message lists the published names."""


def get(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; published names: "
                                f"{', '.join(sorted(REGISTRY))}") from None


# The default model shipped inside protlm: ESM-2 architecture (esm2_t6_8M shape) trained by
# `protlm train configs/protlm_small.toml` on ../shared/data (see docs/training.md).
register(ModelEntry("protlm_small", esm2_config(6, 320, 20), has_regression=False, packaged="protlm_small"))
