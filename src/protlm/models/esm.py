"""The ESM encoder: ESM-1b and ESM-2 are one backbone configured by `ESMConfig`."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from protlm.alphabet import Alphabet
from protlm.models.config import ESMConfig
from protlm.models.encoder import resolve_layers, run_encoder
from protlm.models.heads import ContactPredictionHead
from protlm.models.layers import LearnedPositionalEmbedding, RobertaLMHead, TransformerLayer
from protlm.models.layout import Layout, Packed, Padded
from protlm.models.varlen import select_backend

# Token dropout: training masked 15% x 80% of residues with <mask> and zeroed their
# embeddings; at inference embeddings are rescaled by (1 - 0.12) / (1 - observed mask ratio).
MASK_RATIO_TRAIN = 0.15 * 0.8


class ESM(nn.Module):
    """ESM-1b / ESM-2 masked language model with a contact head.

    forward(tokens) returns fair-esm's dict: `logits` (B, T, V), `representations`
    {layer: (B, T, D)}, `attentions` (B, layers, heads, T, T) when `need_head_weights`,
    `contacts` (B, L, L) when `return_contacts`. forward(tokens_N, cu_seqlens=...) computes the
    same on a packed batch without padding (protlm.models.layout).
    """

    def __init__(self, config: ESMConfig, alphabet: Alphabet | None = None):
        super().__init__()
        self.config = cfg = config
        self.alphabet = alphabet = alphabet or Alphabet()
        if len(alphabet) != cfg.alphabet_size:
            raise ValueError(f"alphabet has {len(alphabet)} tokens, config expects {cfg.alphabet_size}")
        self.padding_idx, self.mask_idx = alphabet.padding_idx, alphabet.mask_idx
        self.cls_idx, self.eos_idx = alphabet.cls_idx, alphabet.eos_idx

        self.embed_tokens = nn.Embedding(cfg.alphabet_size, cfg.embed_dim, padding_idx=self.padding_idx)
        self.embed_positions = (
            LearnedPositionalEmbedding(cfg.max_positions, cfg.embed_dim, self.padding_idx)
            if cfg.position_embedding == "learned" else None
        )
        self.emb_layer_norm_before = (
            nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps) if cfg.emb_layer_norm_before else None
        )
        rotary = cfg.position_embedding == "rotary"
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.embed_dim, cfg.ffn_embed_dim, cfg.attention_heads, rotary,
                             cfg.layer_norm_eps, cfg.dropout, cfg.attention_dropout)
            for _ in range(cfg.num_layers)
        )
        self.emb_layer_norm_after = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.lm_head = RobertaLMHead(cfg.embed_dim, cfg.alphabet_size, self.embed_tokens.weight,
                                     cfg.layer_norm_eps)
        self.contact_head = ContactPredictionHead(
            cfg.num_layers, cfg.attention_heads, self.eos_idx, alphabet.prepend_bos, alphabet.append_eos
        )

    # fair-esm attribute names
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def alphabet_size(self) -> int:
        return self.config.alphabet_size

    @property
    def token_dropout(self) -> bool:
        return self.config.token_dropout

    @property
    def prepend_bos(self) -> bool:
        return self.alphabet.prepend_bos

    @property
    def append_eos(self) -> bool:
        return self.alphabet.append_eos

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def attention_heads(self) -> int:
        return self.config.attention_heads

    def layout(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
               attention_backend: str | None = None) -> Layout:
        """Padded tokens (B, T), or packed tokens (N,) with `cu_seqlens`: their layout."""
        if cu_seqlens is None:
            return Padded.of(tokens, self.padding_idx)
        if tokens.ndim != 1:
            raise ValueError(f"packed tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
        if tokens.eq(self.padding_idx).any():
            raise ValueError("packed tokens must hold no padding (see protlm.models.layout.pack)")
        # The kernel is chosen once here, for the dtype q/k/v will have, and every layer runs it.
        backend = select_backend(tokens.device, self._compute_dtype(tokens.device),
                                 self._attention_dropout(), attention_backend)
        return Packed.from_cu_seqlens(cu_seqlens.to(tokens.device), tokens.numel(), backend)

    def embed(self, tokens: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        """Token ids -> layer-0 representation: (B, T, D) padded, (N, D) packed."""
        layout = layout or self.layout(tokens)
        x = self.embed_tokens(tokens)
        if self.config.token_dropout:
            is_mask = tokens.eq(self.mask_idx)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            # The mask ratio is per sequence, as fair-esm computes it per row of a padded batch.
            observed_B = layout.sequence_sum(is_mask.long()).to(x.dtype) / layout.lengths_B
            x = x * (1 - MASK_RATIO_TRAIN) / layout.per_token(1 - observed_B)
        if self.embed_positions is not None:
            x = x + self.embed_positions(layout)
        if self.emb_layer_norm_before is not None:
            x = self.emb_layer_norm_before(x)
        return layout.zero_padding(x)

    def forward(
        self,
        tokens: torch.Tensor,
        repr_layers: Iterable[int] = (),
        need_head_weights: bool = False,
        return_contacts: bool = False,
        return_logits: bool = True,
        cu_seqlens: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        attention_backend: str | None = None,
    ) -> dict:
        """fair-esm's forward; `return_logits=False` skips the LM head (embeddings never need it).

        Padded tokens (B, T): outputs (B, T, ...). Packed tokens (N,) with `cu_seqlens` (B+1,)
        int (sequence b is tokens[cu_seqlens[b]:cu_seqlens[b+1]], each with its BOS/EOS; see
        protlm.models.layout.pack): the same numbers without padding, outputs (N, ...), plus
        `attention_backend`, the varlen kernel that ran (`attention_backend=` forces one of
        protlm.models.varlen). No attention maps or contacts for a packed batch.
        logits_at (M,) long or a bool mask: apply the LM head only there (MLM training needs
        logits at the masked positions only).
        """
        layout = self.layout(tokens, cu_seqlens, attention_backend)
        x, result = run_encoder(self, self.embed(tokens, layout), layout, repr_layers,
                                need_head_weights, return_contacts, tokens)
        if return_logits:
            result["logits"] = self.lm_head(x if logits_at is None else x[logits_at])
        if layout.packed:
            result["attention_backend"] = layout.attention_backend
        return result

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the layers' activations: autocast's when it is on, else the weights'."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.embed_tokens.weight.dtype

    def _attention_dropout(self) -> float:
        return self.config.attention_dropout if self.training else 0.0

    def resolve_layers(self, repr_layers: Iterable[int]) -> list[int]:
        """fair-esm's layer numbering -> sorted distinct indices: 0 = embeddings, -1 = the last.

        The one place layer numbers are checked (InputError, a ValueError, when out of range).
        """
        return resolve_layers(repr_layers, self.num_layers)

    def predict_contacts(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens, return_contacts=True)["contacts"]


class ESM1b(ESM):
    """ESM-1b (Rives et al. 2021): learned positions, LayerNorm on embeddings before and after."""

    def __init__(self, config: ESMConfig, alphabet: Alphabet | None = None):
        if config.position_embedding != "learned":
            raise ValueError("ESM1b needs position_embedding='learned'")
        super().__init__(config, alphabet)


class ESM2(ESM):
    """ESM-2 (Lin et al. 2023): rotary positions, no embedding LayerNorm before the stack."""

    def __init__(self, config: ESMConfig, alphabet: Alphabet | None = None):
        if config.position_embedding != "rotary":
            raise ValueError("ESM2 needs position_embedding='rotary'")
        super().__init__(config, alphabet)


def build_model(config: ESMConfig, alphabet: Alphabet | None = None) -> ESM:
    """The model class for a config: ESM1b for learned positions, ESM2 for rotary."""
    cls = ESM1b if config.position_embedding == "learned" else ESM2
    return cls(config, alphabet)
