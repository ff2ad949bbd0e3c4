"""How a batch of sequences is laid out, and the attention kernel that layout needs.

Every encoder (ESM-1b, ESM-2, ProtT5) runs one forward whatever the layout; the layout object
answers the few questions where they differ:

- `Padded`: tokens (B, T), right-padded; activations (B, T, D). Attention is SDPA with a key
  padding mask (and T5's relative-position bias), or the explicit softmax when the maps are
  wanted (contacts, `need_head_weights`).
- `Packed`: the sequences concatenated with no padding, tokens (N,) plus `cu_seqlens` (B+1,)
  int32 (0 first, N last: the layout flash-attn's `flash_attn_varlen_func` and
  `torch.nn.attention.varlen.varlen_attn` take); activations (N, D). Attention stays within
  each sequence through a varlen kernel (protlm.models.varlen). No maps: they need `Padded`.

Both give per-token positions (0 at each sequence's first token), per-sequence sums and the
query/key/value heads in one token-major shape (..., H, hd), so rotary embeddings, token
dropout and the projections are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from protlm.models.varlen import varlen_attention


def cu_seqlens_from_lengths(lengths_B: torch.Tensor) -> torch.Tensor:
    """Sequence lengths (B,) -> boundaries (B+1,) int32: [0, l0, l0+l1, ...]."""
    cu = torch.zeros(len(lengths_B) + 1, dtype=torch.int32, device=lengths_B.device)
    cu[1:] = torch.cumsum(lengths_B, 0)
    return cu


def pack(tokens_BT: torch.Tensor, padding_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded tokens (B, T) -> (tokens_N, cu_seqlens (B+1,) int32), padding dropped.

    Rows are expected right-padded (what the batch converter makes): ESM-2's rotary positions
    count from the first column of a padded row, so only then do both layouts see the same
    positions.
    """
    keep_BT = tokens_BT.ne(padding_idx)
    return tokens_BT[keep_BT], cu_seqlens_from_lengths(keep_BT.sum(1))


def unpack(x_N: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Packed (N, ...) -> one (L_b, ...) view per sequence."""
    return list(torch.split(x_N, torch.diff(cu_seqlens).tolist()))


def repad(x_N: torch.Tensor, cu_seqlens: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Packed (N, ...) -> right-padded (B, T_max, ...), T_max the longest sequence."""
    return torch.nn.utils.rnn.pad_sequence(unpack(x_N, cu_seqlens), batch_first=True, padding_value=value)


@dataclass(frozen=True)
class Padded:
    """A right-padded batch: tokens (B, T), activations (B, T, D).

    key_mask_BT: True at padding, None when no row is padded (SDPA then runs unmasked);
    attn_bias: float, broadcastable to (B, H, T, T), added to every layer's scores (T5).
    """

    pad_BT: torch.Tensor  # (B, T) bool, True at padding
    key_mask_BT: torch.Tensor | None
    attn_bias: torch.Tensor | None = None

    @classmethod
    def of(cls, tokens_BT: torch.Tensor, padding_idx: int, attn_bias: torch.Tensor | None = None) -> "Padded":
        if tokens_BT.ndim != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens_BT.shape)}")
        pad_BT = tokens_BT.eq(padding_idx)
        return cls(pad_BT, pad_BT if pad_BT.any() else None, attn_bias)

    packed = False

    @property
    def max_seqlen(self) -> int:
        return self.pad_BT.shape[1]

    @property
    def lengths_B(self) -> torch.Tensor:
        return (~self.pad_BT).sum(-1)

    @property
    def positions(self) -> torch.Tensor:
        """(T,): the column index, as fair-esm's rotary embedding counts (rows start at 0)."""
        return torch.arange(self.max_seqlen, device=self.pad_BT.device)

    def position_ids(self, padding_idx: int) -> torch.Tensor:
        """(B, T) rows of ESM-1b's learned table: fairseq's cumulative count from padding_idx + 1,
        padding_idx at padding."""
        mask = (~self.pad_BT).int()
        return (torch.cumsum(mask, dim=1) * mask).long() + padding_idx

    def sequence_sum(self, values_BT: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums (B,) of a per-token quantity."""
        return values_BT.sum(-1)

    def per_token(self, values_B: torch.Tensor) -> torch.Tensor:
        """A per-sequence quantity (B,) broadcast against activations (B, T, D)."""
        return values_B[:, None, None]

    def zero_padding(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return x_BTD * (~self.pad_BT).unsqueeze(-1).to(x_BTD.dtype)

    def heads(self, x_BTI: torch.Tensor, num_heads: int) -> torch.Tensor:
        """(B, T, H * hd) -> (B, T, H, hd)."""
        B, T, _ = x_BTI.shape
        return x_BTI.view(B, T, num_heads, -1)

    def attend(self, q_BTHd, k_BTHd, v_BTHd, dropout_p: float, need_weights: bool):
        """-> (out (B, T, H, hd), probabilities (B, H, T, T) or None); q already scaled."""
        q, k, v = (t.transpose(1, 2) for t in (q_BTHd, k_BTHd, v_BTHd))  # (B, H, T, hd)
        if not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._sdpa_mask(q.dtype),
                                                 dropout_p=dropout_p, scale=1.0)
            return out.transpose(1, 2), None
        scores = q @ k.transpose(-1, -2)  # (B, H, T, T)
        if self.attn_bias is not None:
            scores = scores + self.attn_bias
        if self.key_mask_BT is not None:
            scores = scores.masked_fill(self.key_mask_BT[:, None, None, :], float("-inf"))
        # Softmax in fp32 whatever the compute dtype, as the reference does.
        probs = torch.softmax(scores.float(), dim=-1)
        out = F.dropout(probs.type_as(v), p=dropout_p, training=dropout_p > 0) @ v
        return out.transpose(1, 2), probs

    def _sdpa_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        mask = None if self.key_mask_BT is None else ~self.key_mask_BT[:, None, None, :]  # True = attend
        if self.attn_bias is not None:  # one float mask: the bias, -inf at padded keys
            bias = self.attn_bias if mask is None else self.attn_bias.masked_fill(~mask, float("-inf"))
            return bias.to(dtype)
        return mask


@dataclass(frozen=True)
class Packed:
    """Where each sequence lies in a packed batch, computed once per forward, used by every layer.

    `bounds` is a host copy of the boundaries for per-sequence loops (one device sync per
    forward rather than one per layer); `max_seqlen` is what varlen kernels take;
    `attention_backend` names the kernel every layer runs (None: chosen per call, see
    protlm.models.varlen).
    """

    cu_seqlens: torch.Tensor  # (B+1,) int32
    seq_id_N: torch.Tensor  # (N,) long: which sequence each token belongs to
    positions_N: torch.Tensor  # (N,) long: position within its own sequence, 0 at BOS
    bounds: tuple[tuple[int, int], ...]  # (start, end) per sequence
    max_seqlen: int
    attention_backend: str | None = None

    packed = True

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, num_tokens: int,
                        attention_backend: str | None = None) -> "Packed":
        if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with B+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"cu_seqlens must hold integers, got {cu_seqlens.dtype}")
        cu = cu_seqlens.tolist()
        lengths = [e - s for s, e in zip(cu[:-1], cu[1:])]
        if cu[0] != 0 or cu[-1] != num_tokens or min(lengths) < 0:
            raise ValueError(
                f"cu_seqlens must rise from 0 to the number of tokens ({num_tokens}), got {cu[:4]}..{cu[-1]}"
            )
        device = cu_seqlens.device
        lengths_B = torch.tensor(lengths, device=device)
        seq_id = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_B,
                                         output_size=num_tokens)
        starts_N = cu_seqlens.to(device=device, dtype=torch.long)[seq_id]
        positions = torch.arange(num_tokens, device=device) - starts_N
        return cls(cu_seqlens.to(torch.int32), seq_id, positions,
                   tuple(zip(cu[:-1], cu[1:])), max(lengths), attention_backend)

    @property
    def num_sequences(self) -> int:
        return len(self.bounds)

    @property
    def lengths_B(self) -> torch.Tensor:
        return torch.diff(self.cu_seqlens)

    @property
    def positions(self) -> torch.Tensor:
        return self.positions_N

    def position_ids(self, padding_idx: int) -> torch.Tensor:
        """(N,) rows of ESM-1b's learned table: the padded layout's offset, restarting per sequence."""
        return self.positions_N + padding_idx + 1

    def sequence_sum(self, values_N: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums (B,) of a per-token quantity (N,), in its dtype."""
        out = values_N.new_zeros(self.num_sequences)
        return out.index_add_(0, self.seq_id_N, values_N)

    def per_token(self, values_B: torch.Tensor) -> torch.Tensor:
        """A per-sequence quantity (B,) broadcast against activations (N, D)."""
        return values_B[self.seq_id_N].unsqueeze(-1)

    def zero_padding(self, x_ND: torch.Tensor) -> torch.Tensor:
        return x_ND  # there is none

    def heads(self, x_NI: torch.Tensor, num_heads: int) -> torch.Tensor:
        """(N, H * hd) -> (N, H, hd)."""
        return x_NI.view(x_NI.shape[0], num_heads, -1)

    def attend(self, q_NHd, k_NHd, v_NHd, dropout_p: float, need_weights: bool):
        """-> (out (N, H, hd), None): attention within each sequence; never maps."""
        if need_weights:
            raise ValueError("a packed batch has no attention maps; use the padded layout for them")
        # No record of the kernel on a module: an attribute written here is a side effect that
        # torch.compile cannot keep inside an activation-checkpointed layer (the graph would break).
        out, _ = varlen_attention(q_NHd, k_NHd, v_NHd, self.cu_seqlens, self.max_seqlen, self.bounds,
                                  dropout_p, self.attention_backend)
        return out, None


Layout = Padded | Packed

__all__ = ["Layout", "Padded", "Packed", "cu_seqlens_from_lengths", "pack", "unpack", "repad"]
