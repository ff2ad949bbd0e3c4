"""Pure key and config maps between fair-esm / Hugging Face layouts and protlm."""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from protlm import Alphabet, build_model
from protlm.pretrained import convert
from protlm.pretrained.registry import DEBUG_CONFIGS, REGISTRY


@pytest.mark.parametrize("name", ["esm1b_debug", "esm2_debug"])
def test_hf_key_map_round_trip_covers_every_parameter(name):
    model = build_model(DEBUG_CONFIGS[name])
    state = model.state_dict()
    hf = convert.protlm_to_hf(state)
    assert "lm_head.decoder.weight" not in hf  # tied, left to transformers
    assert all(k.startswith(("esm.", "lm_head.")) for k in hf)
    back = convert.hf_to_protlm(hf, model.num_layers)
    assert set(back) == set(state) - {"lm_head.weight"}


def test_hf_key_map_matches_transformers_names():
    from transformers import EsmConfig, EsmForMaskedLM

    alphabet = Alphabet()
    for name in ("esm1b_debug", "esm2_debug"):
        cfg = DEBUG_CONFIGS[name]
        hf = EsmForMaskedLM(EsmConfig(**convert.protlm_config_to_hf(cfg, alphabet)))
        ours = set(convert.protlm_to_hf(build_model(cfg).state_dict()))
        theirs = set(hf.state_dict()) - {"lm_head.decoder.weight"}
        if cfg.family == "esm2":  # transformers >= 5: one shared buffer instead of one per layer
            ours = {k for k in ours if "rotary" not in k} | {"esm.rotary_embeddings.inv_freq"}
        assert ours == theirs


def test_hf_legacy_and_shared_names():
    n = 2
    hf = {"esm.encoder.layer.1.LayerNorm.gamma": torch.ones(3),
          "esm.encoder.layer.0.attention.LayerNorm.beta": torch.zeros(3),
          "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq": torch.arange(4.0),
          "esm.embeddings.position_ids": torch.arange(5),
          "esm.pooler.dense.weight": torch.zeros(1)}
    out = convert.hf_to_protlm(hf, n)
    assert "layers.1.final_layer_norm.weight" in out and "layers.0.self_attn_layer_norm.bias" in out
    assert all(torch.equal(out[f"layers.{i}.self_attn.rot_emb.inv_freq"], torch.arange(4.0)) for i in range(n))
    assert "esm.pooler.dense.weight" in out  # unknown keys survive, so strict loading reports them
    assert not any("position_ids" in k for k in out)


def test_hf_config_round_trip_for_published_configs():
    alphabet = Alphabet()
    for entry in REGISTRY.values():
        if entry.config.family in ("t5", "carp"):
            continue  # models/test_t5.py; CARP has no HF layout (models/test_carp.py)
        hf = convert.protlm_config_to_hf(entry.config, alphabet)
        assert convert.hf_config_to_protlm(hf, alphabet) == entry.config
    assert convert.protlm_config_to_hf(REGISTRY["esm1b_t33_650M_UR50S"].config, alphabet)[
        "max_position_embeddings"] == 1026  # HF counts the table rows, fairseq usable positions


def test_hf_config_errors():
    a = Alphabet()
    good = convert.protlm_config_to_hf(DEBUG_CONFIGS["esm2_debug"], a)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        convert.hf_config_to_protlm({**good, "model_type": "bert"}, a)
    with pytest.raises(ValueError, match="ESMFold"):
        convert.hf_config_to_protlm({**good, "is_folding_model": True}, a)
    with pytest.raises(ValueError, match="mask_token_id=5"):
        convert.hf_config_to_protlm({**good, "mask_token_id": 5}, a)


def test_strip_fair_esm_prefixes():
    state = {"encoder.sentence_encoder.layers.0.fc1.weight": 1, "encoder.lm_head.dense.bias": 2,
             "encoder.sentence_encoder.emb_layer_norm_after.weight": 3, "contact_head.regression.bias": 4}
    assert convert.strip_fair_esm_prefixes(state) == {
        "layers.0.fc1.weight": 1, "lm_head.dense.bias": 2, "emb_layer_norm_after.weight": 3,
        "contact_head.regression.bias": 4}


def test_fair_esm_config_from_args_and_cfg():
    args = Namespace(arch="roberta_large", encoder_layers=33, encoder_embed_dim=1280,
                     encoder_ffn_embed_dim=5120, encoder_attention_heads=20, max_positions=1024,
                     token_dropout=True)
    state = {"emb_layer_norm_before.weight": None}
    assert convert.fair_esm_config({"args": args}, state) == REGISTRY["esm1b_t33_650M_UR50S"].config
    assert not convert.fair_esm_config({"args": args}, {}).emb_layer_norm_before
    cfg = {"model": Namespace(encoder_layers=6, encoder_embed_dim=320, encoder_attention_heads=20,
                              token_dropout=True)}
    assert convert.fair_esm_config({"cfg": cfg}, {}) == REGISTRY["esm2_t6_8M_UR50D"].config
    as_dict = {"model": vars(cfg["model"])}
    assert convert.fair_esm_config({"cfg": as_dict}, {}) == REGISTRY["esm2_t6_8M_UR50D"].config


def test_detect_family():
    assert convert.detect_family({"embed_positions.weight": 0}) == "esm1b"
    assert convert.detect_family({"layers.0.self_attn.rot_emb.inv_freq": 0}) == "esm2"
    assert convert.detect_family({"embed_tokens.weight": 0}) == "unknown"
