"""The T5 encoder as ProtT5 uses it (Elnaggar et al. 2021), with the ESM models' interface.

Differences from the ESM backbone are all options of the shared layers (protlm.models.layers):
RMS norm without mean subtraction or bias, no biases anywhere, unscaled attention scores,
ReLU or gated FFN from the checkpoint's `feed_forward_proj`, and relative position buckets whose
bias is computed once per forward and added in every layer. No embedding scaling, no LM head
(embeddings only), no BOS: a sequence is its residues then `</s>`.

representations[i]: 0 = token embeddings, i = output of layer i, num_layers = after the final
norm; transformers' `T5EncoderModel(output_hidden_states=True).hidden_states` are the same list.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from protlm.alphabet import Alphabet
from protlm.errors import InputError
from protlm.models.config import T5Config
from protlm.models.encoder import resolve_layers, run_encoder
from protlm.models.heads import ContactPredictionHead
from protlm.models.layers import RMSNorm, RelativePositionBias, TransformerLayer
from protlm.models.layout import Padded


class T5Encoder(nn.Module):
    """forward(tokens) -> {'representations': {layer: (B, T, D)}, 'attentions' (B, layers,
    heads, T, T) with `need_head_weights`, 'contacts' (B, L, L) with `return_contacts`}.

    Padded batches only: the relative position bias is per (query, key) pair, which the packed
    kernels cannot take, so the engine runs T5 on its padded path (`supports_packing` False).
    """

    supports_packing = False

    def __init__(self, config: T5Config, alphabet: Alphabet | None = None):
        super().__init__()
        self.config = cfg = config
        self.alphabet = alphabet = alphabet or Alphabet.prot_t5()
        if len(alphabet) != cfg.vocab_size:
            raise ValueError(f"alphabet has {len(alphabet)} tokens, config expects {cfg.vocab_size}")
        self.padding_idx, self.eos_idx = alphabet.padding_idx, alphabet.eos_idx
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.relative_attention_bias = RelativePositionBias(
            cfg.relative_attention_num_buckets, cfg.num_heads, cfg.relative_attention_max_distance)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.d_ff, cfg.num_heads, False, cfg.layer_norm_epsilon,
                             cfg.dropout, cfg.dropout, head_dim=cfg.d_kv, bias=False, norm="rms",
                             activation=cfg.activation, gated=cfg.gated, scale_queries=False,
                             clamp_half=True)
            for _ in range(cfg.num_layers)
        )
        self.emb_layer_norm_after = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)  # T5's final_layer_norm
        # No published contact head: fitted on structures (`protlm contacts fit --head attention`).
        self.contact_head = ContactPredictionHead(cfg.num_layers, cfg.num_heads, self.eos_idx,
                                                  prepend_bos=False, append_eos=True)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def embed_dim(self) -> int:
        return self.config.d_model

    @property
    def attention_heads(self) -> int:
        return self.config.num_heads

    def forward(self, tokens: torch.Tensor, repr_layers: Iterable[int] = (), need_head_weights: bool = False,
                return_contacts: bool = False, return_logits: bool = False,
                cu_seqlens: torch.Tensor | None = None) -> dict:
        """tokens (B, T), right-padded with <pad>. No logits: the encoder has no LM head."""
        if return_logits:
            raise InputError("the ProtT5 encoder has no LM head (it gives representations, "
                             "attentions and contacts)")
        if cu_seqlens is not None:
            raise InputError("the T5 encoder runs padded batches only (relative positions need "
                             "per-pair biases that the packed kernels do not take)")
        x = self.embed_tokens(tokens)  # T5 does not scale its embeddings
        # Positions are column indices: rows are right-padded, so each starts at 0.
        bias_1HTT = self.relative_attention_bias(tokens.size(-1)).to(x.dtype)
        layout = Padded.of(tokens, self.padding_idx, attn_bias=bias_1HTT)
        _, result = run_encoder(self, x, layout, repr_layers, need_head_weights, return_contacts, tokens)
        return result

    def resolve_layers(self, repr_layers: Iterable[int]) -> list[int]:
        return resolve_layers(repr_layers, self.num_layers)

    def predict_contacts(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens, return_contacts=True)["contacts"]


def build_t5(config: T5Config, alphabet: Alphabet | None = None) -> T5Encoder:
    return T5Encoder(config, alphabet)


__all__ = ["T5Encoder", "build_t5"]
