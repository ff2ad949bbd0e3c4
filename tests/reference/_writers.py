"""Reference models with random weights, written in the exact published file formats.

fair-esm files: `{"args": Namespace(arch="roberta_large", encoder_layers=..., ...), "model": {...}}`
for ESM-1b and `{"cfg": {..., "model": Namespace(encoder_layers=..., ...)}, "model": {...}}` for
ESM-2, keys prefixed `encoder.sentence_encoder.` (backbone) / `encoder.` (LM head), contact
regression in a separate `<stem>-contact-regression.pt` holding `{"model": {contact_head.*}}`.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import torch
from torch import nn

CONTACT_PREFIX = "contact_head."


def init_like_training(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Weights as after training: N(0, 0.02) matrices, non-trivial biases and LayerNorms.

    Default nn.Embedding init is N(0, 1), which makes logits ~100, where fp32 ulps alone exceed
    1e-5; LayerNorm weights/biases are moved off 1/0 so a swapped or missing one is detected.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lm_head.weight") or "decoder.weight" in name:
                continue  # tied to the token embedding
            if "layer_norm" in name.lower() or "LayerNorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
    return model.eval()


def reference_esm1b(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4, max_positions=1024, seed=0):
    """fair-esm's ProteinBertModel (ESM-1b) and the `args` Namespace a published file carries."""
    import esm

    args = Namespace(
        arch="roberta_large", encoder_layers=layers, encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=ffn_embed_dim, encoder_attention_heads=heads,
        max_positions=max_positions, token_dropout=True, dropout=0.1, attention_dropout=0.0,
        activation_dropout=0.0, max_tokens=4096, seed=1, data="/path/to/ur50s",
    )
    # fair-esm's loader strips the `encoder_` prefix before building the model.
    model_args = {k.split("encoder_", 1)[-1]: v for k, v in vars(args).items()}
    model_args["emb_layer_norm_before"] = True
    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm1.ProteinBertModel(Namespace(**model_args), alphabet)
    init_like_training(model, seed)
    with torch.no_grad():
        model.embed_tokens.weight[alphabet.mask_idx].zero_()  # as fair-esm's loader does
    return model, args


def reference_esm2(layers=2, embed_dim=64, heads=4, seed=0, token_dropout=True):
    """fair-esm's ESM2 and the `cfg` dict a published file carries."""
    import esm

    model = esm.model.esm2.ESM2(layers, embed_dim, heads, "ESM-1b", token_dropout)
    init_like_training(model, seed)
    cfg = {
        "_name": None,
        "common": {"seed": 1, "fp16": True},
        "model": Namespace(_name="esm2", arch=f"esm2_t{layers}", encoder_layers=layers,
                           encoder_embed_dim=embed_dim, encoder_attention_heads=heads,
                           token_dropout=token_dropout, dropout=0.0, max_positions=1024),
        "task": {"_name": "masked_lm"},
    }
    return model, cfg


def published_state(ref_model: nn.Module) -> tuple[dict, dict]:
    """(backbone + LM head with published prefixes, contact regression) state dicts."""
    model, reg = {}, {}
    for k, v in ref_model.state_dict().items():
        v = v.detach().clone()
        if k.startswith(CONTACT_PREFIX):
            reg[k] = v
        elif k.startswith("lm_head."):
            model[f"encoder.{k}"] = v
        else:
            model[f"encoder.sentence_encoder.{k}"] = v
    return model, reg


def write_fair_esm(ref_model: nn.Module, meta: Namespace | dict, path: str | Path,
                   regression: bool = True) -> Path:
    """Save like the published files: ESM-1b when `meta` is a Namespace, ESM-2 when a cfg dict."""
    path = Path(path)
    model_state, reg_state = published_state(ref_model)
    key = "args" if isinstance(meta, Namespace) else "cfg"
    torch.save({key: meta, "model": model_state}, path)
    if regression:
        torch.save({"model": reg_state}, path.with_name(f"{path.stem}-contact-regression.pt"))
    return path


def load_with_fair_esm(path: str | Path, name: str):
    """Read a written file back with fair-esm's own loader (trusted file: weights_only=False)."""
    import esm

    path = Path(path)
    data = torch.load(path, map_location="cpu", weights_only=False)
    reg_path = path.with_name(f"{path.stem}-contact-regression.pt")
    reg = torch.load(reg_path, map_location="cpu", weights_only=False) if reg_path.exists() else None
    return esm.pretrained.load_model_and_alphabet_core(name, data, reg)


def hf_model(family: str, layers=2, hidden=64, heads=4, seed=0):
    """transformers.EsmForMaskedLM with random weights: 'esm1b' (absolute) or 'esm2' (rotary)."""
    from transformers import EsmConfig, EsmForMaskedLM

    common = dict(vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=hidden,
                  num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden,
                  max_position_embeddings=1026, layer_norm_eps=1e-5, token_dropout=True,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "esm1b":
        cfg = EsmConfig(position_embedding_type="absolute", emb_layer_norm_before=True, **common)
    else:
        cfg = EsmConfig(position_embedding_type="rotary", emb_layer_norm_before=False, **common)
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"  # attention maps (contacts) need the explicit path
    model = EsmForMaskedLM(cfg)
    init_like_training(model, seed)
    return model.eval()


# ProtT5-XL-U50's published config.json (Rostlab/prot_t5_xl_uniref50), encoder fields.
PROT_T5_XL = dict(vocab_size=128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32,
                  feed_forward_proj="relu", relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
PROT_T5_DEBUG = {**PROT_T5_XL, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}


# The reference shapes every fair-esm parity test runs: both families, the published t6 width,
# and ESM-2 without token dropout.
FAIR_ESM_SHAPES = [
    ("esm1b", dict(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4)),
    ("esm2", dict(layers=2, embed_dim=64, heads=4)),
    ("esm2", dict(layers=6, embed_dim=320, heads=20)),  # the esm2_t6_8M_UR50D shape
    ("esm2", dict(layers=2, embed_dim=64, heads=4, token_dropout=False)),
]


def hf_t5(seed: int = 0, full: bool = False, **overrides):
    """transformers' T5EncoderModel (or the full T5ForConditionalGeneration) with random,
    training-like weights: N(0, 1/fan_in) matrices (activations stay O(1) at any width, as in
    trained models), q with T5's extra 1/sqrt(d_kv) (T5 has no score scaling: unscaled random
    queries make every softmax nearly one-hot, a chaotic net where fp32 rounding alone moves
    24-layer outputs by 5e-3), N(0, 1) embeddings, RMS-norm scales moved off 1, a relative position table
    of N(0, 1) (it must matter)."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    cfg = T5Config(**{**PROT_T5_DEBUG, **overrides}, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = (T5ForConditionalGeneration if full else T5EncoderModel)(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("SelfAttention.q.weight"):  # T5 folds the 1/sqrt(d_kv) score
                p.copy_((p.shape[1] * cfg.d_kv) ** -0.5 * torch.randn(p.shape, generator=g))  # scale into q
            elif p.ndim == 2 and "shared" not in name and "embed_tokens" not in name:
                p.copy_(p.shape[1] ** -0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()
