"""Building blocks shared by every ESM variant: one attention, one pre-LN layer, heads.

Parameter names follow fair-esm (q_proj, self_attn_layer_norm, fc1, ...) so published
state dicts map onto these modules with only prefix changes. Layout is (B, L, D), or (N, D) for a
packed batch (sequences concatenated, described by a `Packing`; see protlm.models.packing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from protlm.models.packing import Packing
from protlm.models.varlen import varlen_attention


def gelu(x: torch.Tensor) -> torch.Tensor:
    # ESM uses the exact erf form (the tanh approximation differs by ~1e-3), written out as the
    # reference does so that fp32 results match it to the last bit rather than to a few ulps.
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class LearnedPositionalEmbedding(nn.Embedding):
    """ESM-1b positions: index = padding_idx + 1 + position, padding tokens get padding_idx."""

    def __init__(self, max_positions: int, embed_dim: int, padding_idx: int):
        # fairseq reserves rows 0..padding_idx, hence the offset (1026 rows for ESM-1b).
        super().__init__(max_positions + padding_idx + 1, embed_dim, padding_idx)
        self.max_positions = max_positions

    def forward(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        if tokens_BL.size(1) > self.max_positions:
            raise ValueError(
                f"sequence of {tokens_BL.size(1)} tokens exceeds the model's "
                f"{self.max_positions} positions (BOS/EOS included)"
            )
        mask = tokens_BL.ne(self.padding_idx).int()
        positions = (torch.cumsum(mask, dim=1) * mask).long() + self.padding_idx
        return super().forward(positions)

    def forward_packed(self, packing: Packing) -> torch.Tensor:
        """(N, D) embeddings of a packed batch: positions restart at every sequence's BOS."""
        if packing.max_seqlen > self.max_positions:
            raise ValueError(
                f"sequence of {packing.max_seqlen} tokens exceeds the model's "
                f"{self.max_positions} positions (BOS/EOS included)"
            )
        # The same offset as the padded path: its cumsum gives padding_idx + 1 at BOS.
        return super().forward(packing.positions_N + self.padding_idx + 1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the head dimension (ESM-2, GPT-NeoX half-split form)."""

    def __init__(self, dim: int):
        super().__init__()
        # Persistent: published ESM-2 checkpoints store inv_freq, and it is copied, not recomputed.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def _cos_sin(self, length: int, device, dtype):
        t = torch.arange(length, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + self._rotate_half(x) * sin

    def forward(self, q_BHLd: torch.Tensor, k_BHLd: torch.Tensor):
        cos, sin = self._cos_sin(q_BHLd.size(-2), q_BHLd.device, q_BHLd.dtype)
        return self._rotate(q_BHLd, cos, sin), self._rotate(k_BHLd, cos, sin)

    def forward_packed(self, q_NHd: torch.Tensor, k_NHd: torch.Tensor, packing: Packing):
        """Rotary on a packed batch: each token rotated by its position within its sequence."""
        cos, sin = self._cos_sin(packing.max_seqlen, q_NHd.device, q_NHd.dtype)
        # Rows of the table the padded path would use, gathered per token; (N, 1, hd) over heads.
        cos, sin = cos[packing.positions_N].unsqueeze(1), sin[packing.positions_N].unsqueeze(1)
        return self._rotate(q_NHd, cos, sin), self._rotate(k_NHd, cos, sin)


class MultiheadAttention(nn.Module):
    """Self-attention used by every model.

    SDPA on the fast path; the explicit softmax path runs only when the caller asks for the
    attention maps (contacts, `need_head_weights`). Given a `packing`, the input is a packed
    (N, D) batch and a varlen kernel confines attention to each sequence: `packing.attention_backend`,
    or the first usable one (protlm.models.varlen.select_backend).
    """

    def __init__(self, embed_dim: int, num_heads: int, rotary: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.rot_emb = RotaryEmbedding(self.head_dim) if rotary else None

    def _heads(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_BLD.shape
        return x_BLD.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)

    def forward(
        self,
        x_BLD: torch.Tensor,
        key_padding_mask_BL: torch.Tensor | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (out (B, L, D), attention probabilities (B, H, L, L) or None).

        With `packing`, x is (N, D) and so is the output; maps are never returned then.
        """
        if packing is not None:
            if need_weights or key_padding_mask_BL is not None:
                raise ValueError("a packed batch has no padding mask and no attention maps; "
                                 "use the padded layout for need_weights")
            return self._forward_packed(x_BLD, packing), None
        B, L, D = x_BLD.shape
        # The query is scaled before rotary, as in the reference (it matters for rounding).
        q = self._heads(self.q_proj(x_BLD) * self.scaling)
        k = self._heads(self.k_proj(x_BLD))
        v = self._heads(self.v_proj(x_BLD))
        if self.rot_emb is not None:
            q, k = self.rot_emb(q, k)
        dropout_p = self.dropout if self.training else 0.0

        if not need_weights:
            mask = None
            if key_padding_mask_BL is not None:
                mask = ~key_padding_mask_BL[:, None, None, :]  # True = attend
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=1.0)
            probs = None
        else:
            scores = q @ k.transpose(-1, -2)  # (B, H, L, L)
            if key_padding_mask_BL is not None:
                scores = scores.masked_fill(key_padding_mask_BL[:, None, None, :], float("-inf"))
            # Softmax in fp32 whatever the compute dtype, as the reference does.
            probs = torch.softmax(scores.float(), dim=-1)
            out = F.dropout(probs.type_as(v), p=dropout_p, training=self.training) @ v
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.out_proj(out), probs

    def _forward_packed(self, x_ND: torch.Tensor, packing: Packing) -> torch.Tensor:
        N, D = x_ND.shape
        H, hd = self.num_heads, self.head_dim
        q = (self.q_proj(x_ND) * self.scaling).view(N, H, hd)  # scaled before rotary, as above
        k = self.k_proj(x_ND).view(N, H, hd)
        v = self.v_proj(x_ND).view(N, H, hd)
        if self.rot_emb is not None:
            q, k = self.rot_emb.forward_packed(q, k, packing)
        dropout_p = self.dropout if self.training else 0.0
        # No record of the kernel on the module: an attribute written here is a side effect that
        # torch.compile cannot keep inside an activation-checkpointed layer (the graph would break).
        out, _ = varlen_attention(q, k, v, packing, dropout_p, packing.attention_backend)
        return self.out_proj(out.reshape(N, D))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm encoder layer: x + Attn(LN(x)); x + FFN(LN(x)) with erf GELU."""

    def __init__(self, embed_dim: int, ffn_embed_dim: int, num_heads: int, rotary: bool,
                 eps: float = 1e-5, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, rotary, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc1 = nn.Linear(embed_dim, ffn_embed_dim)
        self.fc2 = nn.Linear(ffn_embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = dropout

    def forward(self, x_BLD, key_padding_mask_BL=None, need_weights: bool = False,
                packing: Packing | None = None):
        """x (B, L, D), or (N, D) with `packing`: everything but attention is per token."""
        h, attn = self.self_attn(self.self_attn_layer_norm(x_BLD), key_padding_mask_BL, need_weights, packing)
        x_BLD = x_BLD + F.dropout(h, self.dropout, self.training)
        h = self.fc2(gelu(self.fc1(self.final_layer_norm(x_BLD))))
        x_BLD = x_BLD + F.dropout(h, self.dropout, self.training)
        return x_BLD, attn


class RobertaLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> projection tied to the token embedding (+ bias)."""

    def __init__(self, embed_dim: int, output_dim: int, weight: nn.Parameter, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.weight = weight  # tied: the same Parameter object as embed_tokens.weight
        self.bias = nn.Parameter(torch.zeros(output_dim))

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(gelu(self.dense(x_BLD)))
        return F.linear(x, self.weight) + self.bias


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation for training from scratch (normal(0, 0.02), zero biases)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = [
    "gelu", "LearnedPositionalEmbedding", "RotaryEmbedding", "MultiheadAttention",
    "TransformerLayer", "RobertaLMHead", "init_weights",
]
