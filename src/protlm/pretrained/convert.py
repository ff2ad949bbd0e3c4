"""Checkpoint layouts <-> protlm: key maps as literal dicts, config maps as pure functions.

protlm's parameter names are fair-esm's (after its published files' prefixes are stripped), so
fair-esm files need prefix rules only. The Hugging Face `EsmForMaskedLM` layout renames every
parameter; its map is written out below. Pure functions only: the writers (`save_hf`,
`convert_checkpoint`) are in protlm.pretrained.writers, the T5 maps in convert_t5.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Mapping

import torch

from protlm.alphabet import Alphabet
from protlm.models.config import ESMConfig, esm1b_config, esm2_config

# ---------------------------------------------------------------- fair-esm .pt files
# Published files nest the encoder (fairseq): `encoder.sentence_encoder.<name>` for the backbone,
# `encoder.<name>` for the LM head. Regression files carry `contact_head.regression.*` as is.
FAIR_ESM_PREFIXES = ("encoder.sentence_encoder.", "encoder.")
# ESM-1b is fairseq's `roberta_large` architecture; ESM-1 and MSA Transformer are not supported.
ESM1B_ARCHS = ("roberta_large",)


def strip_fair_esm_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published fair-esm keys -> protlm keys (the first matching prefix is removed)."""
    out = {}
    for key, value in state.items():
        for prefix in FAIR_ESM_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _arg(ns: Namespace, name: str, default: Any = None) -> Any:
    # fairseq stored some hyperparameters as `encoder_<name>`; fair-esm strips that prefix.
    for key in (f"encoder_{name}", name):
        if hasattr(ns, key):
            return getattr(ns, key)
    return default


def fair_esm_config(data: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> ESMConfig:
    """The ESMConfig declared by a published file's metadata (`args` for ESM-1b, `cfg` for ESM-2).

    The family is read from the metadata, never from the file name. `state` has protlm keys;
    it only decides `emb_layer_norm_before` for ESM-1b, as fair-esm does.
    """
    if "cfg" in data:
        m = data["cfg"]["model"]
        if isinstance(m, Mapping):  # a plain-dict cfg reads the same as fairseq's Namespace
            m = Namespace(**m)
        return esm2_config(
            _arg(m, "layers"), _arg(m, "embed_dim"), _arg(m, "attention_heads"),
            token_dropout=bool(getattr(m, "token_dropout", True)),
        )
    if "args" in data:
        args = data["args"]
        arch = getattr(args, "arch", None)
        if arch not in ESM1B_ARCHS:
            raise ValueError(f"unsupported fair-esm architecture {arch!r} (supported: ESM-1b "
                             f"'roberta_large' files with `args`, ESM-2 files with `cfg`)")
        return esm1b_config(
            num_layers=_arg(args, "layers"),
            embed_dim=_arg(args, "embed_dim"),
            ffn_embed_dim=_arg(args, "ffn_embed_dim"),
            attention_heads=_arg(args, "attention_heads"),
            max_positions=_arg(args, "max_positions", 1024),
            token_dropout=bool(getattr(args, "token_dropout", False)),
            emb_layer_norm_before=any(k.startswith("emb_layer_norm_before.") for k in state),
        )
    raise ValueError("not a fair-esm checkpoint: it has neither `args` (ESM-1b) nor `cfg` (ESM-2); "
                     f"top-level keys: {sorted(data)}")


def fair_esm_v1_fixups(state: dict[str, torch.Tensor], alphabet: Alphabet) -> dict[str, torch.Tensor]:
    """ESM-1b's <mask> embedding row is zeroed on load, as fair-esm does ("for token drop").

    The row never reaches the encoder (token dropout zeroes masked inputs), but the LM head is
    tied to it, so the <mask> logit column depends on it.
    """
    state = dict(state)
    for key in ("embed_tokens.weight", "lm_head.weight"):  # the same tensor in the model (tied)
        if key in state:
            w = state[key].clone()
            w[alphabet.mask_idx] = 0
            state[key] = w
    return state


def detect_family(state: Mapping[str, torch.Tensor]) -> str:
    """'esm1b' when the weights hold learned positions, 'esm2' when they hold rotary inv_freq."""
    if "embed_positions.weight" in state:
        return "esm1b"
    if any(k.endswith("rot_emb.inv_freq") for k in state):
        return "esm2"
    return "unknown"


# ---------------------------------------------------------------- Hugging Face EsmForMaskedLM
# HF key -> protlm key for tensors outside the layer stack.
HF_TO_PROTLM_GLOBAL = {
    "esm.embeddings.word_embeddings.weight": "embed_tokens.weight",
    "esm.embeddings.position_embeddings.weight": "embed_positions.weight",
    "esm.embeddings.layer_norm.weight": "emb_layer_norm_before.weight",
    "esm.embeddings.layer_norm.bias": "emb_layer_norm_before.bias",
    "esm.encoder.emb_layer_norm_after.weight": "emb_layer_norm_after.weight",
    "esm.encoder.emb_layer_norm_after.bias": "emb_layer_norm_after.bias",
    "esm.contact_head.regression.weight": "contact_head.regression.weight",
    "esm.contact_head.regression.bias": "contact_head.regression.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
    "lm_head.decoder.weight": "lm_head.weight",  # tied to the word embeddings
}
# HF key under `esm.encoder.layer.{i}.` -> protlm key under `layers.{i}.`
HF_TO_PROTLM_LAYER = {
    "attention.self.query.weight": "self_attn.q_proj.weight",
    "attention.self.query.bias": "self_attn.q_proj.bias",
    "attention.self.key.weight": "self_attn.k_proj.weight",
    "attention.self.key.bias": "self_attn.k_proj.bias",
    "attention.self.value.weight": "self_attn.v_proj.weight",
    "attention.self.value.bias": "self_attn.v_proj.bias",
    "attention.self.rotary_embeddings.inv_freq": "self_attn.rot_emb.inv_freq",
    "attention.output.dense.weight": "self_attn.out_proj.weight",
    "attention.output.dense.bias": "self_attn.out_proj.bias",
    "attention.LayerNorm.weight": "self_attn_layer_norm.weight",  # pre-LN of the attention block
    "attention.LayerNorm.bias": "self_attn_layer_norm.bias",
    "intermediate.dense.weight": "fc1.weight",
    "intermediate.dense.bias": "fc1.bias",
    "output.dense.weight": "fc2.weight",
    "output.dense.bias": "fc2.bias",
    "LayerNorm.weight": "final_layer_norm.weight",  # pre-LN of the FFN block
    "LayerNorm.bias": "final_layer_norm.bias",
    # transformers >= 5 writes these two LayerNorms with BERT's legacy names (gamma/beta).
    "attention.LayerNorm.gamma": "self_attn_layer_norm.weight",
    "attention.LayerNorm.beta": "self_attn_layer_norm.bias",
    "LayerNorm.gamma": "final_layer_norm.weight",
    "LayerNorm.beta": "final_layer_norm.bias",
}
HF_LAYER_PREFIX = "esm.encoder.layer."
# transformers >= 5 keeps one model-level rotary buffer instead of one per layer; 5.x's
# save_pretrained reverses its load-time rename rule and writes the rule's pattern literally.
HF_SHARED_INV_FREQ = (
    "esm.rotary_embeddings.inv_freq",
    "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq",
)
# Buffers some HF files carry that are derived, never learned.
HF_IGNORED = ("esm.embeddings.position_ids",)

PROTLM_TO_HF_GLOBAL = {v: k for k, v in HF_TO_PROTLM_GLOBAL.items()}
# Writing uses the published facebook/esm names (weight/bias), which every transformers reads.
PROTLM_TO_HF_LAYER = {v: k for k, v in HF_TO_PROTLM_LAYER.items() if not k.endswith(("gamma", "beta"))}


def rename_layer_key(key: str, src_prefix: str, table: Mapping[str, str], dst_prefix: str) -> str | None:
    """`<src_prefix><i>.<rest>` -> `<dst_prefix><i>.<table[rest]>`; None when `key` is not one."""
    if not key.startswith(src_prefix):
        return None
    idx, _, rest = key[len(src_prefix):].partition(".")
    if not idx.isdigit() or rest not in table:
        return None
    return f"{dst_prefix}{idx}.{table[rest]}"


def hf_to_protlm(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """EsmForMaskedLM keys -> protlm keys. Unknown keys are kept as they are, so strict
    loading reports them as unexpected rather than dropping them silently."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in HF_IGNORED:
            continue
        if key in HF_SHARED_INV_FREQ:
            for i in range(num_layers):
                out.setdefault(f"layers.{i}.self_attn.rot_emb.inv_freq", value)
            continue
        if key in HF_TO_PROTLM_GLOBAL:
            out[HF_TO_PROTLM_GLOBAL[key]] = value
            continue
        out[rename_layer_key(key, HF_LAYER_PREFIX, HF_TO_PROTLM_LAYER, "layers.") or key] = value
    return out


def protlm_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """protlm keys -> EsmForMaskedLM keys. The tied decoder is left out (transformers re-ties it);
    rotary inv_freq is written per layer, the layout of the published facebook/esm2 files."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue
        if key in PROTLM_TO_HF_GLOBAL:
            out[PROTLM_TO_HF_GLOBAL[key]] = value
            continue
        new = rename_layer_key(key, "layers.", PROTLM_TO_HF_LAYER, HF_LAYER_PREFIX)
        if new is None:
            raise KeyError(f"no Hugging Face name for protlm parameter {key!r}")
        out[new] = value
    return out


def hf_config_to_protlm(hf: Mapping[str, Any], alphabet: Alphabet) -> ESMConfig:
    """An HF `config.json` (model_type esm) -> ESMConfig."""
    if hf.get("model_type") != "esm":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'esm'")
    if hf.get("is_folding_model"):
        raise ValueError("ESMFold checkpoints are not supported (is_folding_model=true)")
    kind = hf.get("position_embedding_type", "absolute")
    if kind not in ("absolute", "rotary"):
        raise ValueError(f"unsupported position_embedding_type {kind!r}")
    for field, want in (("pad_token_id", alphabet.padding_idx), ("mask_token_id", alphabet.mask_idx)):
        if hf.get(field) is not None and hf[field] != want:
            raise ValueError(f"config.json {field}={hf[field]} differs from the ESM alphabet's {want}")
    common = dict(
        num_layers=hf["num_hidden_layers"], embed_dim=hf["hidden_size"],
        attention_heads=hf["num_attention_heads"], ffn_embed_dim=hf["intermediate_size"],
        alphabet_size=hf.get("vocab_size", len(alphabet)),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
        token_dropout=bool(hf.get("token_dropout", False)),
        emb_layer_norm_before=bool(hf.get("emb_layer_norm_before") or False),
    )
    # HF counts the rows of the position table, fairseq counts usable positions: HF rows =
    # positions + padding_idx + 1 (rows 0..padding_idx are reserved).
    positions = hf.get("max_position_embeddings", 1026) - alphabet.padding_idx - 1
    return ESMConfig(position_embedding="learned" if kind == "absolute" else "rotary",
                     max_positions=positions, **common)


def protlm_config_to_hf(cfg: ESMConfig, alphabet: Alphabet) -> dict[str, Any]:
    """ESMConfig -> an HF `config.json` dict for EsmForMaskedLM."""
    return {
        "architectures": ["EsmForMaskedLM"],
        "model_type": "esm",
        "vocab_size": cfg.alphabet_size,
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.attention_heads,
        "intermediate_size": cfg.ffn_embed_dim,
        "max_position_embeddings": cfg.max_positions + alphabet.padding_idx + 1,
        "position_embedding_type": "absolute" if cfg.position_embedding == "learned" else "rotary",
        "emb_layer_norm_before": cfg.emb_layer_norm_before,
        "token_dropout": cfg.token_dropout,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "pad_token_id": alphabet.padding_idx,
        "mask_token_id": alphabet.mask_idx,
        "eos_token_id": alphabet.eos_idx,
        "tie_word_embeddings": True,
        "is_folding_model": False,
        "torch_dtype": "float32",
    }
