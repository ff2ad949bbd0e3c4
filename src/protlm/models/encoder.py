"""The forward pass shared by every encoder (ESM, T5): layers, kept representations, maps.

A model passes its embedded tokens; this runs `model.layers`, keeps the asked-for
representations (fair-esm numbering: 0 = embeddings, n = after the final norm), collects or
reduces attention maps, and applies `model.emb_layer_norm_after`.
"""

from __future__ import annotations

from typing import Iterable

import torch

from protlm.errors import InputError


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


def run_encoder(model, tokens_BT: torch.Tensor, x_BTD: torch.Tensor, repr_layers: Iterable[int],
                need_head_weights: bool = False, return_contacts: bool = False,
                attn_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """-> (x after the final norm (B, T, D), {'representations', 'attentions'?, 'contacts'?}).

    `model` has `layers`, `emb_layer_norm_after`, `contact_head`, `padding_idx`, `num_layers`.
    attn_bias: added to every layer's attention scores (T5's shared relative positions).
    """
    repr_layers = set(resolve_layers(repr_layers, model.num_layers))
    padding_mask = tokens_BT.eq(model.padding_idx)
    reps = {0: x_BTD} if 0 in repr_layers else {}
    key_mask = padding_mask if padding_mask.any() else None
    need_maps = need_head_weights or return_contacts
    attn_maps, contact_logits = [], None
    x = x_BTD
    for i, layer in enumerate(model.layers):
        x, attn = layer(x, key_mask, need_weights=need_maps, attn_bias=attn_bias)
        if i + 1 in repr_layers:
            reps[i + 1] = x
        if attn is None:
            continue
        if return_contacts and not need_head_weights:
            # Reduce each layer's maps into the contact logits now, so peak memory holds
            # one layer of attention rather than all of them (padding is zeroed inside).
            part = model.contact_head.layer_logits(tokens_BT, attn, i, key_mask)
            contact_logits = part if contact_logits is None else contact_logits + part
        if need_head_weights:
            if key_mask is not None:
                keep = (~padding_mask).to(attn)
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


__all__ = ["resolve_layers", "run_encoder"]
