"""Hugging Face T5 layouts <-> protlm's T5 encoder: key maps as literal dicts, config maps.

Reads `T5EncoderModel` files (Rostlab/prot_t5_xl_half_uniref50-enc) and full
`T5ForConditionalGeneration` files (Rostlab/prot_t5_xl_uniref50), of which only the encoder is
kept: the decoder and LM head are dropped by name (DROPPED_PREFIXES), nothing else is.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from protlm.models.config import T5Config
from protlm.pretrained.checkpoint import CheckpointError
from protlm.pretrained.convert import rename_layer_key

# HF key -> protlm key outside the layer stack. `shared` and `encoder.embed_tokens` are one tied
# tensor; files hold either or both. The relative position table lives in the first block only.
HF_TO_PROTLM_GLOBAL = {
    "shared.weight": "embed_tokens.weight",
    "encoder.embed_tokens.weight": "embed_tokens.weight",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "relative_attention_bias.weight",
    "encoder.final_layer_norm.weight": "emb_layer_norm_after.weight",
}
# HF key under `encoder.block.{i}.` -> protlm key under `layers.{i}.`
HF_TO_PROTLM_LAYER = {
    "layer.0.SelfAttention.q.weight": "self_attn.q_proj.weight",
    "layer.0.SelfAttention.k.weight": "self_attn.k_proj.weight",
    "layer.0.SelfAttention.v.weight": "self_attn.v_proj.weight",
    "layer.0.SelfAttention.o.weight": "self_attn.out_proj.weight",
    "layer.0.layer_norm.weight": "self_attn_layer_norm.weight",
    "layer.1.DenseReluDense.wi.weight": "fc1.weight",  # ReLU FFN
    "layer.1.DenseReluDense.wi_0.weight": "fc1.weight",  # gated FFN: the activated branch
    "layer.1.DenseReluDense.wi_1.weight": "fc1_linear.weight",  # gated FFN: the linear branch
    "layer.1.DenseReluDense.wo.weight": "fc2.weight",
    "layer.1.layer_norm.weight": "final_layer_norm.weight",
}
HF_LAYER_PREFIX = "encoder.block."
DROPPED_PREFIXES = ("decoder.", "lm_head.")  # the full model's decoder side; embeddings need none

PROTLM_TO_HF_GLOBAL = {
    "embed_tokens.weight": "shared.weight",
    "relative_attention_bias.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    "emb_layer_norm_after.weight": "encoder.final_layer_norm.weight",
}


class TiedEmbeddingError(CheckpointError):
    """`shared.weight` and `encoder.embed_tokens.weight` differ in a file."""


def hf_to_protlm(state: Mapping[str, torch.Tensor], config: T5Config) -> dict[str, torch.Tensor]:
    """T5 keys -> protlm keys; decoder/LM-head keys dropped; unknown keys kept (strict loading
    reports them as unexpected)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        if key in HF_TO_PROTLM_GLOBAL:
            new = HF_TO_PROTLM_GLOBAL[key]
            if new in out and not torch.equal(out[new], value):
                raise TiedEmbeddingError("shared.weight and encoder.embed_tokens.weight differ; "
                                         "T5 ties them")
            out[new] = value
            continue
        out[rename_layer_key(key, HF_LAYER_PREFIX, HF_TO_PROTLM_LAYER, "layers.") or key] = value
    return out


def protlm_to_hf(state: Mapping[str, torch.Tensor], gated: bool) -> dict[str, torch.Tensor]:
    """protlm T5 keys -> `T5EncoderModel` keys (`shared.weight` holds the embedding)."""
    fc1 = "layer.1.DenseReluDense.wi_0.weight" if gated else "layer.1.DenseReluDense.wi.weight"
    layer_map = {v: k for k, v in HF_TO_PROTLM_LAYER.items() if "DenseReluDense.wi" not in k}
    layer_map.update({"fc1.weight": fc1, "fc1_linear.weight": "layer.1.DenseReluDense.wi_1.weight"})
    out = {}
    for key, value in state.items():
        if key.startswith("contact_head."):
            continue  # protlm's own fitted head: no place in the T5 layout
        if key in PROTLM_TO_HF_GLOBAL:
            out[PROTLM_TO_HF_GLOBAL[key]] = value
            continue
        new = rename_layer_key(key, "layers.", layer_map, HF_LAYER_PREFIX)
        if new is None:
            raise KeyError(f"no Hugging Face T5 name for protlm parameter {key!r}")
        out[new] = value
    return out


def hf_config_to_protlm(hf: Mapping[str, Any]) -> T5Config:
    """A T5 `config.json` (model_type t5) -> T5Config (the encoder's fields only)."""
    if hf.get("model_type") != "t5":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 't5'")
    return T5Config(
        num_layers=hf["num_layers"], d_model=hf["d_model"], num_heads=hf["num_heads"],
        d_kv=hf["d_kv"], d_ff=hf["d_ff"], feed_forward_proj=hf.get("feed_forward_proj", "relu"),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        vocab_size=hf["vocab_size"], layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    )


def protlm_config_to_hf(cfg: T5Config, pad_idx: int, eos_idx: int) -> dict[str, Any]:
    """T5Config -> a `config.json` dict for transformers' T5EncoderModel."""
    return {
        "architectures": ["T5EncoderModel"], "model_type": "t5", "is_encoder_decoder": False,
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "feed_forward_proj": cfg.feed_forward_proj,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "dropout_rate": cfg.dropout,
        "pad_token_id": pad_idx, "eos_token_id": eos_idx, "decoder_start_token_id": pad_idx,
        "tie_word_embeddings": True, "use_cache": False, "torch_dtype": "float32",
    }
