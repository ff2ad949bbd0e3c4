"""Heads composed with the backbone: the attention-based contact head and its pure feature
functions (`symmetrize`, `apc`, kept beside the head as fair-esm keeps them)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from protlm.errors import ProtlmWarning


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dimensions."""
    return x + x.transpose(-1, -2)


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction (Dunn et al. 2008) over the last two dimensions.

    Removes the background coupling a_i * a_j / a expected from row and column sums alone.
    """
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12


UNFITTED_MESSAGE = ("this model has no fitted contact regression: its contact maps are not calibrated "
                   "(fit one with `protlm contacts fit --head attention`)")


class UncalibratedContactsWarning(ProtlmWarning):
    """Contacts were predicted with a contact head that was never fitted."""


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
        # Set by the loaders (and by fitting): False when no fitted regression came with the
        # weights, so contacts are the untrained regression's output and mean little.
        self.fitted = False

    def reset_unfitted(self, seed: int = 0) -> None:
        """Re-draw the regression as nn.Linear's default init from a fixed seed: a checkpoint
        without a fitted head then gives the same (uncalibrated) maps on every load, so
        two runs, or a resumed one, agree."""
        g = torch.Generator().manual_seed(seed)
        bound = 1 / self.regression.in_features ** 0.5
        with torch.no_grad():
            w, b = self.regression.weight, self.regression.bias
            w.copy_(torch.empty(w.shape).uniform_(-bound, bound, generator=g))
            b.copy_(torch.empty(b.shape).uniform_(-bound, bound, generator=g))
        self.fitted = False

    def _warn_if_unfitted(self) -> None:
        if not self.fitted:
            # one line per call site and process (Python's default warning filter)
            warnings.warn(UNFITTED_MESSAGE, UncalibratedContactsWarning, stacklevel=3)

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
        self._warn_if_unfitted()
        feats = self._features(tokens_BT, attentions_BNHTT.reshape(B, N * H, T, T))
        return torch.sigmoid(self.regression(feats.permute(0, 2, 3, 1)).squeeze(3))

    def layer_logits(self, tokens_BT: torch.Tensor, attn_BHTT: torch.Tensor, layer: int,
                     padding_mask_BT: torch.Tensor | None = None) -> torch.Tensor:
        """One layer's contribution to the contact logits (B, L, L), without the bias.

        The regression is linear in the per-head features, so summing these over layers and
        adding the bias equals `forward` while holding one layer's maps at a time. Padding
        rows/columns (`padding_mask_BT`, True = pad) are treated as zero, as in `forward` after
        the backbone zeroes them.

        Equal to `sum_h w_h * apc(symmetrize(A_h))` (A_h the EOS/padding-zeroed, cropped map)
        up to float rounding, but in three passes over the maps and no (B, H, L, L) temporary:
        symmetrize is linear, so sum_h w_h (A_h + A_h^T) = S + S^T with S = sum_h w_h A_h; and
        the APC term of head h is the outer product a_h a_h^T / sum(a_h), where a_h = row sums
        + column sums of A_h (the row sums of A_h + A_h^T, which is symmetric).
        """
        w_H = self.regression.weight[0, layer * self.num_heads : (layer + 1) * self.num_heads]
        p_BHTT = attn_BHTT.float()
        keep_BT = torch.ones_like(tokens_BT, dtype=p_BHTT.dtype)
        if self.append_eos:
            keep_BT = keep_BT * tokens_BT.ne(self.eos_idx)
        if padding_mask_BT is not None:
            keep_BT = keep_BT * ~padding_mask_BT
        lo, hi = int(self.prepend_bos), tokens_BT.size(1) - int(self.append_eos)
        crop_BT = torch.zeros_like(keep_BT)
        crop_BT[:, lo:hi] = keep_BT[:, lo:hi]  # positions kept after zeroing and cropping
        s_BTT = torch.einsum("bhij,h->bij", p_BHTT, w_H.float())
        s_BTT = s_BTT * (crop_BT[:, :, None] * crop_BT[:, None, :])
        rows_BHT = torch.einsum("bhij,bj->bhi", p_BHTT, crop_BT)
        # a matmul, not einsum: einsum copies the maps to contract over their rows
        cols_BHT = (crop_BT[:, None, None, :] @ p_BHTT).squeeze(2)
        a_BHL = ((rows_BHT + cols_BHT) * crop_BT[:, None, :])[..., lo:hi]
        scale_BH = w_H.float() / a_BHL.sum(-1)  # w_h / sum(A_h + A_h^T)
        apc_BLL = (a_BHL * scale_BH[..., None]).transpose(1, 2) @ a_BHL  # (B, L, L)
        s_BLL = s_BTT[:, lo:hi, lo:hi]
        return s_BLL + s_BLL.transpose(1, 2) - apc_BLL

    def finish(self, logits_BLL: torch.Tensor) -> torch.Tensor:
        self._warn_if_unfitted()
        return torch.sigmoid(logits_BLL + self.regression.bias)
