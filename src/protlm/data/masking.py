"""BERT-style masking for masked-language-model training, as in ESM (Rives et al. 2021).

15% of residue positions are selected; of those 80% become <mask>, 10% a random standard amino
acid and 10% stay unchanged. The loss is taken only at selected positions.
"""

from __future__ import annotations

import torch

from protlm.alphabet import Alphabet

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
