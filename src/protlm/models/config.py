"""One frozen config for the ESM backbone; ESM-1b and ESM-2 differ only in its fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ESMConfig:
    """Hyperparameters named as in the papers (Rives et al. 2021; Lin et al. 2023)."""

    num_layers: int = 33
    embed_dim: int = 1280
    attention_heads: int = 20
    ffn_embed_dim: int = 5120
    position_embedding: Literal["learned", "rotary"] = "learned"
    max_positions: int = 1024  # learned positions: tokens per sequence incl. BOS/EOS
    emb_layer_norm_before: bool = True
    token_dropout: bool = True
    alphabet_size: int = 33
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0  # residual dropout (training only)
    attention_dropout: float = 0.0

    def __post_init__(self):
        if self.embed_dim % self.attention_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}"
            )
        if self.position_embedding not in ("learned", "rotary"):
            raise ValueError(f"unknown position_embedding {self.position_embedding!r}")

    @property
    def family(self) -> str:
        return "esm1b" if self.position_embedding == "learned" else "esm2"

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Residues per sequence the model accepts (BOS and EOS excluded).

        ESM-2 has no hard limit (rotary), but it was trained on crops of 1022 residues too.
        """
        return self.max_positions - 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ESMConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ESMConfig fields: {sorted(unknown)}")
        return cls(**d)


def esm1b_config(**overrides) -> ESMConfig:
    """ESM-1b: learned positions, LayerNorm on the embeddings before and after the stack."""
    base = dict(position_embedding="learned", emb_layer_norm_before=True, token_dropout=True)
    return ESMConfig(**{**base, **overrides})


def esm2_config(num_layers: int, embed_dim: int, attention_heads: int, **overrides) -> ESMConfig:
    """ESM-2: rotary positions, no embedding LayerNorm before, FFN = 4 d, token dropout."""
    base = dict(
        num_layers=num_layers,
        embed_dim=embed_dim,
        attention_heads=attention_heads,
        ffn_embed_dim=4 * embed_dim,
        position_embedding="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
    )
    return ESMConfig(**{**base, **overrides})
