"""The forward pass shared by every encoder (ESM, T5): layers, kept representations, maps.

A model passes its embedded tokens and their layout (padded or packed, protlm.models.layout);
this runs `model.layers`, keeps the asked-for representations (fair-esm numbering:
0 = embeddings, n = after the final norm), collects or reduces attention maps, and applies
`model.emb_layer_norm_after`.
"""

from __future__ import annotations

from typing import Iterable

import torch

from protlm.errors import InputError
from protlm.models.layout import Layout


def resolve_layers(repr_layers: Iterable[int], num_layers: int) -> list[int]:
    """fair-esm's layer numbering -> sorted distinct indices: 0 = embeddings, -1 = the last.

    The one place layer numbers are checked (InputError, a ValueError, when out of range).
    """
    n, out = num_layers, set()
    for i in repr_layers:
        if not -(n + 1) <= i <= n:
            raise InputError(f"repr layer {i} out of range for a {n}-layer model (valid: {-(n + 1)}..{n})")
        out.add((i + n + 1) % (n + 1))
    return sorted(out)


def has_mlm_head(model: torch.nn.Module) -> bool:
    """True when the model predicts masked tokens (an `lm_head`); encoders such as ProtT5's
    have none, and no masked perplexity or variant scores."""
    return getattr(model, "lm_head", None) is not None


def run_encoder(model, x: torch.Tensor, layout: Layout, repr_layers: Iterable[int],
                need_head_weights: bool = False, return_contacts: bool = False,
                tokens_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """-> (x after the final norm, {'representations', 'attentions'?, 'contacts'?}).

    x: the embedded tokens, (B, T, D) or (N, D) as `layout` says. `model` has `layers`,
    `emb_layer_norm_after`, `contact_head`, `num_layers`. Maps and contacts need a padded
    layout and `tokens_BT` (the contact head finds EOS in them).
    """
    repr_layers = set(resolve_layers(repr_layers, model.num_layers))
    need_maps = need_head_weights or return_contacts
    if need_maps and layout.packed:
        raise ValueError("attention maps and contacts need padded tokens, not a packed batch")
    reps = {0: x} if 0 in repr_layers else {}
    attn_maps, contact_logits = [], None
    for i, layer in enumerate(model.layers):
        x, attn = layer(x, layout, need_weights=need_maps)
        if i + 1 in repr_layers:
            reps[i + 1] = x
        if attn is None:
            continue
        if return_contacts and not need_head_weights:
            # Reduce each layer's maps into the contact logits now, so peak memory holds
            # one layer of attention rather than all of them (padding is zeroed inside).
            part = model.contact_head.layer_logits(tokens_BT, attn, i, layout.key_mask_BT)
            contact_logits = part if contact_logits is None else contact_logits + part
        if need_head_weights:
            if layout.key_mask_BT is not None:
                keep = (~layout.pad_BT).to(attn)
                attn = attn * (keep[:, None, :, None] * keep[:, None, None, :])  # (B, H, T, T)
            attn_maps.append(attn.to(x.dtype))  # the model's dtype, as fair-esm returns them

    x = model.emb_layer_norm_after(x)
    if model.num_layers in repr_layers:
        reps[model.num_layers] = x  # the last representation is taken after the final norm
    result = {"representations": reps}
    if need_head_weights:
        result["attentions"] = torch.stack(attn_maps, 1)  # (B, layers, heads, T, T)
    if return_contacts and need_head_weights:
        # Every map is held anyway: the reference's own computation, bitwise identical.
        result["contacts"] = model.contact_head(tokens_BT, result["attentions"]).float()
    elif return_contacts:
        result["contacts"] = model.contact_head.finish(contact_logits).float()
    return x, result


__all__ = ["has_mlm_head", "resolve_layers", "run_encoder"]
