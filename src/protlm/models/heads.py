"""Heads composed with the backbone: the attention-based contact head."""

from __future__ import annotations

import torch
from torch import nn

from protlm.contacts.features import apc, symmetrize


class ContactPredictionHead(nn.Module):
    """Logistic regression over symmetrized, APC-corrected attention maps of all layers x heads.

    Parameters are `regression.weight` (1, layers*heads), layer-major, and `regression.bias`,
    the same tensors as fair-esm's `-contact-regression.pt`.
    """

    def __init__(self, num_layers: int, num_heads: int, eos_idx: int,
                 prepend_bos: bool = True, append_eos: bool = True):
        super().__init__()
        self.num_layers, self.num_heads = num_layers, num_heads
        self.eos_idx, self.prepend_bos, self.append_eos = eos_idx, prepend_bos, append_eos
        self.regression = nn.Linear(num_layers * num_heads, 1)

    def _features(self, tokens_BT: torch.Tensor, attn_BXTT: torch.Tensor) -> torch.Tensor:
        """(B, X, T, T) attention maps -> (B, X, L, L) symmetrized, APC-corrected features."""
        if self.append_eos:
            # EOS rows/columns are zeroed before cropping: shorter sequences in a padded
            # batch have their EOS inside the cropped window.
            keep = tokens_BT.ne(self.eos_idx).to(attn_BXTT)
            attn_BXTT = attn_BXTT * (keep[:, None, :, None] * keep[:, None, None, :])
            attn_BXTT = attn_BXTT[..., :-1, :-1]
        if self.prepend_bos:
            attn_BXTT = attn_BXTT[..., 1:, 1:]  # BOS/EOS stripped: the map covers residues only
        return apc(symmetrize(attn_BXTT.to(self.regression.weight)))

    def forward(self, tokens_BT: torch.Tensor, attentions_BNHTT: torch.Tensor) -> torch.Tensor:
        """Reference-compatible: all layers' maps (B, layers, heads, T, T) -> contacts (B, L, L)."""
        B, N, H, T, _ = attentions_BNHTT.shape
        feats = self._features(tokens_BT, attentions_BNHTT.reshape(B, N * H, T, T))
        return torch.sigmoid(self.regression(feats.permute(0, 2, 3, 1)).squeeze(3))

    def layer_logits(self, tokens_BT: torch.Tensor, attn_BHTT: torch.Tensor, layer: int) -> torch.Tensor:
        """One layer's contribution to the contact logits (B, L, L), without the bias.

        The regression is linear in the per-head features, so summing these over layers and
        adding the bias equals `forward` while holding one layer's maps at a time.
        """
        w = self.regression.weight[0, layer * self.num_heads : (layer + 1) * self.num_heads]
        return torch.einsum("bhij,h->bij", self._features(tokens_BT, attn_BHTT), w)

    def finish(self, logits_BLL: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits_BLL + self.regression.bias)
