"""BERT-style masking for masked-language-model training, as in ESM (Rives et al. 2021).

15% of residue positions are selected; of those 80% become <mask>, 10% a random standard amino
acid and 10% stay unchanged. The loss is taken only at selected positions.

Examples and batches of masked sequences (`masked_example`, `MLMBatch`) come in two layouts:
- padded: inputs (B, T) right-padded with <pad>, targets (B, T) with IGNORE_INDEX off the masked
  positions; the model computes every position.
- packed: the sequences concatenated, inputs (N,) with boundaries cu_seqlens (B+1,); targets (M,)
  hold only the masked positions' original tokens, at indices masked_at (M,) of the N tokens, so
  the model applies its LM head there only (see protlm.models.layout).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from protlm.alphabet import Alphabet
from protlm.data.sampler import crop_window
from protlm.models.layout import cu_seqlens_from_lengths

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


def mask_tokens(
    tokens_BT: torch.Tensor,
    generator: torch.Generator,
    alphabet: Alphabet | None = None,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_BT, targets_BT) from a token batch (B, T); the input is not modified.

    Special tokens (BOS, EOS, padding, <mask>, <unk>) are never selected. `targets_BT` holds the
    original token at selected positions and IGNORE_INDEX elsewhere. The draws come only from
    `generator` (on the tokens' device), so the same seed gives the same masks.
    """
    alphabet = alphabet or Alphabet()
    specials = [alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx, alphabet.mask_idx, alphabet.unk_idx]
    special = torch.tensor([i for i in specials if i is not None], device=tokens_BT.device)  # CARP: no BOS
    maskable_BT = ~torch.isin(tokens_BT, special)
    # One uniform draw per position decides both selection and what happens to it:
    # u < p*0.8 -> <mask>, p*0.8 <= u < p*0.9 -> random residue, p*0.9 <= u < p -> unchanged.
    u_BT = torch.rand(tokens_BT.shape, generator=generator, device=tokens_BT.device)
    selected_BT = maskable_BT & (u_BT < mask_prob)
    to_mask_BT = selected_BT & (u_BT < mask_prob * mask_frac)
    to_random_BT = selected_BT & ~to_mask_BT & (u_BT < mask_prob * (mask_frac + random_frac))

    aa_idx = torch.tensor(alphabet.standard_aa_idx, device=tokens_BT.device)
    random_BT = aa_idx[torch.randint(len(aa_idx), tokens_BT.shape, generator=generator,
                                     device=tokens_BT.device)]
    inputs_BT = torch.where(to_mask_BT, torch.full_like(tokens_BT, alphabet.mask_idx), tokens_BT)
    inputs_BT = torch.where(to_random_BT, random_BT, inputs_BT)
    targets_BT = torch.where(selected_BT, tokens_BT, torch.full_like(tokens_BT, IGNORE_INDEX))
    return inputs_BT, targets_BT


class MLMBatch(NamedTuple):
    """One micro-batch, padded (cu_seqlens None) or packed; see the module docstring."""

    inputs: torch.Tensor  # (B, T) padded | (N,) packed
    targets: torch.Tensor  # (B, T) with IGNORE_INDEX | (M,) masked positions only
    cu_seqlens: torch.Tensor | None = None  # (B+1,) int32, packed only
    masked_at: torch.Tensor | None = None  # (M,) long indices into inputs, packed only

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def num_tokens(self, padding_idx: int) -> int:
        """Real (non-padding) tokens, BOS/EOS included."""
        return self.inputs.numel() if self.packed else int(self.inputs.ne(padding_idx).sum())

    def num_masked(self) -> int:
        return int(self.targets.ne(IGNORE_INDEX).sum())

    def to(self, device, non_blocking: bool = False) -> "MLMBatch":
        return MLMBatch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self))


def masked_example(seq: str, rng: np.random.Generator, max_length: int, alphabet: Alphabet,
                   mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_T, targets_T) of a clean sequence: crop and masks drawn from `rng` alone."""
    start, end = crop_window(len(seq), max_length, rng)
    bos = [alphabet.cls_idx] if alphabet.prepend_bos else []  # CARP: neither BOS nor EOS
    eos = [alphabet.eos_idx] if alphabet.append_eos else []
    tokens_T = torch.tensor([*bos, *alphabet.encode(seq[start:end]), *eos])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    inputs, targets = mask_tokens(tokens_T[None], gen, alphabet, mask_prob=mask_prob)
    return inputs[0], targets[0]


def collate(pairs, alphabet: Alphabet) -> MLMBatch:
    """Pad to (B, T): inputs with <pad>, targets with IGNORE_INDEX."""
    width = max(len(x) for x, _ in pairs)
    inputs_BT = torch.full((len(pairs), width), alphabet.padding_idx, dtype=torch.long)
    targets_BT = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        inputs_BT[i, : len(x)], targets_BT[i, : len(y)] = x, y
    return MLMBatch(inputs_BT, targets_BT)


def collate_packed(pairs) -> MLMBatch:
    """Concatenate to (N,) with boundaries; keep the masked positions' targets only."""
    inputs_N = torch.cat([x for x, _ in pairs])
    targets_N = torch.cat([y for _, y in pairs])
    masked_at = targets_N.ne(IGNORE_INDEX).nonzero().squeeze(1)  # (M,), found here, not on the GPU
    cu_seqlens = cu_seqlens_from_lengths(torch.tensor([len(x) for x, _ in pairs]))
    return MLMBatch(inputs_N, targets_N[masked_at], cu_seqlens, masked_at)


def masked_logits(model, batch: MLMBatch, autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (M, V), targets (M,)) when packed: the masked positions only; (B*T, V), (B*T,)
    when padded, targets IGNORE_INDEX off the masked positions."""
    with torch.autocast(batch.inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if batch.packed:
            logits = model(batch.inputs, cu_seqlens=batch.cu_seqlens, logits_at=batch.masked_at)["logits"]  # (M, V)
            return logits, batch.targets  # (M,)
        logits = model(batch.inputs)["logits"].flatten(0, 1)  # (B*T, V)
        return logits, batch.targets.flatten()


def masked_ce_sum(model, batch: MLMBatch, autocast_dtype=None) -> torch.Tensor:
    """The sum (not the mean) of the cross-entropy at the batch's masked positions: a 0-d fp32
    tensor, differentiable.

    Each masked position contributes -log p(original token) under the model's logits; positions
    that are not masked (targets IGNORE_INDEX), padding and BOS/EOS contribute nothing. Callers
    divide by the number of masked tokens of the whole optimiser step, all micro-batches and
    ranks together, which a per-batch mean could not give. A padded batch runs the LM head at
    every position; a packed one only at its masked positions (`masked_at`).
    """
    logits, targets = masked_logits(model, batch, autocast_dtype)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
