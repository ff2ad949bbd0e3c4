"""Parity with transformers' EsmForMaskedLM in both directions (HF folder -> protlm, protlm -> HF)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import _writers as W
from protlm import Alphabet
from protlm.cli.main import cli
from protlm.data.fasta import load_fasta
from protlm.pretrained.load import load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm

TOL = 1e-5


@pytest.fixture(scope="module")
def batch(shared_data):
    """Real sequences of mixed lengths (padded batch), one with a <mask> token."""
    recs = sorted(load_fasta(shared_data / "sequences" / "few_proteins.fasta"), key=lambda r: len(r.sequence))
    seqs = [(r.id, r.sequence) for r in recs]
    seqs[0] = (seqs[0][0], seqs[0][1][:5] + "<mask>" + seqs[0][1][6:])
    tokens = Alphabet().get_batch_converter()(seqs)[2]
    assert tokens.eq(1).any() and tokens.eq(32).any()
    return tokens


def compare(hf, model, tokens):
    """Max abs diffs between an EsmForMaskedLM and a protlm model on non-padding positions."""
    mask = tokens.ne(model.padding_idx)
    n = model.num_layers
    with torch.no_grad():
        h = hf(tokens, attention_mask=mask.long(), output_hidden_states=True, output_attentions=True)
        hf_contacts = hf.esm.predict_contacts(tokens, mask.long())
        o = model(tokens, repr_layers=range(n + 1), need_head_weights=True, return_contacts=True)
        fast = model(tokens, repr_layers=range(n + 1))
    assert len(h.hidden_states) == n + 1
    d = {"logits": (h.logits - o["logits"])[mask].abs().max().item(),
         "logits_sdpa": (h.logits - fast["logits"])[mask].abs().max().item(),
         "contacts": (hf_contacts - o["contacts"]).abs().max().item()}
    for i in range(n + 1):
        d[f"hidden{i}"] = (h.hidden_states[i] - o["representations"][i])[mask].abs().max().item()
        d[f"hidden{i}_sdpa"] = (h.hidden_states[i] - fast["representations"][i])[mask].abs().max().item()
    pair = mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, T, T): real query and key
    for i, a in enumerate(h.attentions):
        d[f"attn{i}"] = (a - o["attentions"][:, i]).abs()[pair.expand_as(a)].max().item()
    return d


@pytest.mark.parametrize("family", ["esm1b", "esm2"])
def test_hf_folder_written_by_transformers_loads_with_parity(tmp_path, batch, family):
    hf = W.hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_model_and_alphabet(tmp_path / "hf")
    assert model.config.family == family and not model.training
    d = compare(hf, model, batch)
    print(f"\n{family} HF->protlm max abs diff: {max(d.values()):.3g} (worst: {max(d, key=d.get)})")
    assert max(d.values()) <= TOL, d


def test_rotary_inv_freq_is_copied_not_recomputed(tmp_path, batch):
    hf = W.hf_model("esm2")
    with torch.no_grad():  # fp16-rounded values, as in checkpoints trained in half precision
        hf.esm.rotary_embeddings.inv_freq.copy_(hf.esm.rotary_embeddings.inv_freq.half().float())
    stored = hf.esm.rotary_embeddings.inv_freq.clone()
    recomputed = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))  # head_dim 16
    assert not torch.equal(stored, recomputed)  # so copying is distinguishable from recomputing
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_model_and_alphabet(tmp_path / "hf")
    for layer in model.layers:
        assert torch.equal(layer.self_attn.rot_emb.inv_freq, stored)
    assert max(compare(hf, model, batch).values()) <= TOL


@pytest.mark.parametrize("family", ["esm1b", "esm2"])
def test_protlm_convert_to_hf_loads_in_transformers(tmp_path, batch, debug_model, family):
    from transformers import EsmForMaskedLM

    model = W.init_like_training(debug_model(f"{family}_debug"), seed=3)
    save_protlm(model, tmp_path / "src")
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "src"), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    keys = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.decoder.weight" not in keys  # tied: transformers re-ties it to the embedding
    if family == "esm2":  # per-layer inv_freq: the published facebook/esm2 layout
        assert "esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq" in keys
    hf = EsmForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert torch.equal(hf.lm_head.decoder.weight, model.embed_tokens.weight)
    d = compare(hf, model, batch)
    print(f"\n{family} protlm->HF max abs diff: {max(d.values()):.3g} (worst: {max(d, key=d.get)})")
    assert max(d.values()) <= TOL, d
    # ... and back: HF -> protlm gives the same tensors.
    again, _ = load_model_and_alphabet(tmp_path / "hf")
    ref_state = model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in again.state_dict().items())


def test_fair_esm_file_to_hf(tmp_path, batch):
    from transformers import EsmForMaskedLM

    ref, cfg = W.reference_esm2(layers=2, embed_dim=64, heads=4)
    path = W.write_fair_esm(ref, cfg, tmp_path / "esm2_t2_test.pt")
    result = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    hf = EsmForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    mask = batch.ne(1)
    with torch.no_grad():
        r = ref(batch, return_contacts=True)
        h = hf(batch, attention_mask=mask.long())
        c = hf.esm.predict_contacts(batch, mask.long())
    assert (h.logits - r["logits"])[mask].abs().max() <= TOL
    assert (c - r["contacts"]).abs().max() <= TOL
