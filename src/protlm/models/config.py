"""One frozen config per model family: ESM (ESM-1b and ESM-2 differ only in its fields) and T5."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


class _DictConfig:
    """to_dict / from_dict for a frozen dataclass config (unknown fields are an error)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ESMConfig(_DictConfig):
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


# T5 `feed_forward_proj` -> (activation, gated), as the T5 configs define it: "gated-gelu" is the
# tanh GELU of T5 v1.1 ("gelu_new"); plain "gelu" is the erf form.
T5_FEED_FORWARD = {
    "relu": ("relu", False), "gelu": ("gelu", False), "gated-gelu": ("gelu_new", True),
    "gated-relu": ("relu", True), "gated-silu": ("silu", True), "silu": ("silu", False),
}


@dataclass(frozen=True)
class T5Config(_DictConfig):
    """The T5 encoder (Raffel et al. 2020) as ProtT5 uses it; field names as in T5's config.json.

    Defaults are ProtT5-XL-U50's (Elnaggar et al. 2021): 24 layers, d_model 1024, 32 heads of
    d_kv 128 (inner width 4096 != d_model), d_ff 16384, ReLU FFN, 32 relative-position buckets.
    """

    num_layers: int = 24
    d_model: int = 1024
    num_heads: int = 32
    d_kv: int = 128
    d_ff: int = 16384
    feed_forward_proj: str = "relu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    vocab_size: int = 128
    layer_norm_epsilon: float = 1e-6
    # Relative positions set no hard limit; this is protlm's choice of where to window or
    # truncate (--long), not a published number.
    max_residues: int = 4000
    dropout: float = 0.0  # training only

    def __post_init__(self):
        if self.feed_forward_proj not in T5_FEED_FORWARD:
            raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}; "
                             f"supported: {sorted(T5_FEED_FORWARD)}")

    family = "t5"

    # the ESM attribute names the engine and heads read
    @property
    def embed_dim(self) -> int:
        return self.d_model

    @property
    def attention_heads(self) -> int:
        return self.num_heads

    @property
    def max_sequence_length(self) -> int:
        return self.max_residues

    @property
    def activation(self) -> str:
        return T5_FEED_FORWARD[self.feed_forward_proj][0]

    @property
    def gated(self) -> bool:
        return T5_FEED_FORWARD[self.feed_forward_proj][1]


def prot_t5_xl_config(**overrides) -> T5Config:
    """ProtT5-XL-U50 (Rostlab/prot_t5_xl_uniref50 config.json)."""
    return T5Config(**overrides)
