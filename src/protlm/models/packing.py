"""Packed (varlen) batches: sequences concatenated along one token axis, no padding at all.

A packed batch is a 1-D token tensor `tokens_N` (every sequence with its own BOS/EOS, one after
another) plus `cu_seqlens` (int32, length B+1, 0 first, N last), the layout flash-attn's
`flash_attn_varlen_func` and `torch.nn.attention.varlen.varlen_attn` take. Sequence b owns the
tokens cu_seqlens[b]:cu_seqlens[b+1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
class Packing:
    """Where each sequence lies in a packed batch, computed once per forward, used by every layer.

    `bounds` is a host copy of the boundaries for per-sequence loops (one device sync per
    forward rather than one per layer); `max_seqlen` is what varlen kernels take;
    `attention_backend` names the kernel every layer must use (None: chosen per call, see
    protlm.models.varlen).
    """

    cu_seqlens: torch.Tensor  # (B+1,) int32
    seq_id_N: torch.Tensor  # (N,) long: which sequence each token belongs to
    positions_N: torch.Tensor  # (N,) long: position within its own sequence, 0 at BOS
    bounds: tuple[tuple[int, int], ...]  # (start, end) per sequence
    max_seqlen: int
    attention_backend: str | None = None

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, num_tokens: int,
                        attention_backend: str | None = None) -> "Packing":
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

    def segment_sum(self, values_N: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums (B,) of a per-token quantity (N,), in its dtype."""
        out = values_N.new_zeros(self.num_sequences)
        return out.index_add_(0, self.seq_id_N, values_N)


__all__ = ["cu_seqlens_from_lengths", "pack", "unpack", "repad", "Packing"]
