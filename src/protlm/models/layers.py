"""Building blocks shared by every model (ESM-1b, ESM-2, ProtT5): one attention, one pre-LN layer.

Parameter names follow fair-esm (q_proj, self_attn_layer_norm, fc1, ...) so published
state dicts map onto these modules with only prefix changes. The T5 variant is the same layer
with other options: RMS norm, no biases, no query scaling, ReLU or gated FFN, an additive
relative-position bias. Activations are (B, T, D) for a padded batch or (N, D) for a packed
one; a layout object (protlm.models.layout) says which, and picks the attention kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from protlm.models.layout import Layout


def gelu(x: torch.Tensor) -> torch.Tensor:
    # ESM uses the exact erf form (the tanh approximation differs by ~1e-3), written out as the
    # reference does so that fp32 results match it to the last bit rather than to a few ulps.
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # T5 v1.1's "gated-gelu" uses the tanh approximation (transformers' "gelu_new"), not erf.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "relu": F.relu, "silu": F.silu}


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale only, no mean subtraction, no bias; the variance is taken in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Accumulating the mean square in fp32 keeps half-precision inputs from overflowing.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class RelativePositionBias(nn.Embedding):
    """T5's bucketed relative positions: one learned scalar per (bucket, head), added to the scores.

    Computed once per forward and shared by every layer (checkpoints store it in the first).
    Bidirectional buckets: half for keys after the query, half for keys before; within each half,
    exact offsets below num_buckets/4, then logarithmic bins up to `max_distance`.
    """

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__(num_buckets, num_heads)
        self.num_buckets, self.max_distance = num_buckets, max_distance

    def buckets(self, length: int, device=None) -> torch.Tensor:
        """(L, L) long: the bucket of key position j seen from query position i."""
        pos = torch.arange(length, dtype=torch.long, device=device)
        rel = pos[None, :] - pos[:, None]  # key - query
        half = self.num_buckets // 2
        out = (rel > 0).long() * half
        dist = rel.abs()
        exact = half // 2
        # Float ops in this order decide where each bin starts: the trained tables were indexed so.
        log_bin = exact + (torch.log(dist.float() / exact) / math.log(self.max_distance / exact)
                           * (half - exact)).long()
        log_bin = log_bin.clamp(max=half - 1)
        return out + torch.where(dist < exact, dist, log_bin)

    def forward(self, length: int) -> torch.Tensor:
        """(1, H, L, L) additive attention bias for a sequence of `length` tokens."""
        return super().forward(self.buckets(length, self.weight.device)).permute(2, 0, 1).unsqueeze(0)


class LearnedPositionalEmbedding(nn.Embedding):
    """ESM-1b positions: row padding_idx + 1 + position, padding tokens get row padding_idx."""

    def __init__(self, max_positions: int, embed_dim: int, padding_idx: int):
        # fairseq reserves rows 0..padding_idx, hence the offset (1026 rows for ESM-1b).
        super().__init__(max_positions + padding_idx + 1, embed_dim, padding_idx)
        self.max_positions = max_positions

    def forward(self, layout: Layout) -> torch.Tensor:
        """(B, T, D) or (N, D): the embedding of every token's position in its sequence."""
        if layout.max_seqlen > self.max_positions:
            raise ValueError(
                f"sequence of {layout.max_seqlen} tokens exceeds the model's "
                f"{self.max_positions} positions (BOS/EOS included)"
            )
        return super().forward(layout.position_ids(self.padding_idx))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the head dimension (ESM-2, GPT-NeoX half-split form)."""

    def __init__(self, dim: int):
        super().__init__()
        # Persistent: published ESM-2 checkpoints store inv_freq, and it is copied, not recomputed.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def table(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (length, hd), computed in fp32 (a bf16 arange would round positions
        past 256) and then cast."""
        t = torch.arange(length, device=device, dtype=self.inv_freq.dtype)
        emb = torch.cat((torch.outer(t, self.inv_freq),) * 2, dim=-1)  # (L, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, q_XHd: torch.Tensor, k_XHd: torch.Tensor, positions_X: torch.Tensor, max_seqlen: int):
        """q, k (..., T or N, H, hd) rotated by each token's position (T,) or (N,), all below
        `max_seqlen` (a host number: the table is built without reading the device)."""
        cos, sin = self.table(max_seqlen, q_XHd.device, q_XHd.dtype)
        # the table's rows for each token, (T or N, 1, hd): broadcast over heads (and batch)
        cos, sin = cos[positions_X].unsqueeze(-2), sin[positions_X].unsqueeze(-2)
        return q_XHd * cos + self._rotate_half(q_XHd) * sin, k_XHd * cos + self._rotate_half(k_XHd) * sin


class MultiheadAttention(nn.Module):
    """Self-attention used by every model, in any layout (protlm.models.layout).

    The layout picks the kernel: SDPA over a padded batch, the explicit softmax when the caller
    asks for the attention maps (contacts, `need_head_weights`), a varlen kernel over a packed
    batch. INT8 inference swaps this module for protlm.models.int8.Int8MultiheadAttention,
    which overrides `project_qkv` only.

    T5 options: `head_dim` independent of embed_dim (inner width H * head_dim), `bias=False`,
    `scale_queries=False` (T5 folds 1/sqrt(d) into its initialisation, so its scores are unscaled).
    """

    def __init__(self, embed_dim: int, num_heads: int, rotary: bool = False, dropout: float = 0.0,
                 head_dim: int | None = None, bias: bool = True, scale_queries: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        inner = num_heads * self.head_dim
        self.scaling = self.head_dim**-0.5 if scale_queries else 1.0
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.rot_emb = RotaryEmbedding(self.head_dim) if rotary else None

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, layout: Layout, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) or (N, D) -> (out, same shape; probabilities (B, H, T, T) or None)."""
        q, k, v = self.project_qkv(x)
        if self.scaling != 1.0:
            q = q * self.scaling  # before rotary, as in the reference (it matters for rounding)
        q, k, v = (layout.heads(t, self.num_heads) for t in (q, k, v))  # (..., H, hd)
        if self.rot_emb is not None:
            q, k = self.rot_emb(q, k, layout.positions, layout.max_seqlen)
        dropout_p = self.dropout if self.training else 0.0
        out, probs = layout.attend(q, k, v, dropout_p, need_weights)
        return self.out_proj(out.flatten(-2)), probs


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    # T5 activations can overflow fp16 in the residual stream; like the reference, clamp to the
    # largest finite value (1000 below it once an inf appeared) instead of propagating inf/NaN.
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(x.dtype).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return x.clamp(-limit, limit)


class TransformerLayer(nn.Module):
    """Pre-norm encoder layer: x + Attn(N(x)); x + FFN(N(x)).

    ESM: LayerNorm, biases, erf GELU, scaled queries. T5 (`norm="rms"`, `bias=False`,
    `scale_queries=False`, `head_dim`, activation/gated from the checkpoint, `clamp_half=True`).
    """

    def __init__(self, embed_dim: int, ffn_embed_dim: int, num_heads: int, rotary: bool,
                 eps: float = 1e-5, dropout: float = 0.0, attention_dropout: float = 0.0, *,
                 head_dim: int | None = None, bias: bool = True, norm: str = "layer",
                 activation: str = "gelu", gated: bool = False, scale_queries: bool = True,
                 clamp_half: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads, rotary, attention_dropout,
                                            head_dim, bias, scale_queries)
        make_norm = {"layer": nn.LayerNorm, "rms": RMSNorm}[norm]
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        self.self_attn_layer_norm = make_norm(embed_dim, eps=eps)
        # FFN: fc2(act(fc1(x))), or fc2(act(fc1(x)) * fc1_linear(x)) when gated (T5 v1.1's GEGLU).
        self.fc1 = nn.Linear(embed_dim, ffn_embed_dim, bias=bias)
        self.fc1_linear = nn.Linear(embed_dim, ffn_embed_dim, bias=bias) if gated else None
        self.fc2 = nn.Linear(ffn_embed_dim, embed_dim, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.final_layer_norm = make_norm(embed_dim, eps=eps)
        self.dropout = dropout
        self.clamp_half = clamp_half

    def forward(self, x: torch.Tensor, layout: Layout, need_weights: bool = False):
        """x (B, T, D) or (N, D), as `layout` says: everything but attention is per token."""
        h, attn = self.self_attn(self.self_attn_layer_norm(x), layout, need_weights)
        x = self._residual(x, h)
        x_ln = self.final_layer_norm(x)
        h = self.act(self.fc1(x_ln))
        if self.fc1_linear is not None:
            h = h * self.fc1_linear(x_ln)
        return self._residual(x, self.fc2(h)), attn

    def _residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(h, self.dropout, self.training)
        return clamp_fp16(x) if self.clamp_half else x


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
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


__all__ = [
    "gelu", "gelu_tanh", "ACTIVATIONS", "RMSNorm", "RelativePositionBias", "clamp_fp16",
    "LearnedPositionalEmbedding", "RotaryEmbedding", "MultiheadAttention",
    "TransformerLayer", "RobertaLMHead", "init_weights",
]
