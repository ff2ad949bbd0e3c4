"""ProtT5 pieces without a reference model: vocabulary, tokenizer files, buckets, registry."""

from __future__ import annotations

import io
import json

import pytest
import torch

from protlm import Alphabet
from protlm.alphabet import prot_t5_vocab
from protlm.models.layers import RelativePositionBias
from protlm.pretrained import registry
from protlm.pretrained.vocab_files import VocabFileError, read_folder_vocab, spiece_pieces

# The published tokenizer's ids (T5Tokenizer.from_pretrained("Rostlab/prot_t5_xl_uniref50")
# .get_vocab()) as dumped in public code: a secondary-structure training script's comment
# "{'<pad>': 0, '</s>': 1, '<unk>': 2, '▁A': 3, '▁L': 4, ..., '▁U': 26, '▁Z': 27" and a
# ProtT5 tokenizer re-implementation ("A": 3, "L": 4, ... "Z": 27, pad 0, eos 1, unk 2); both agree.
PUBLISHED = {"<pad>": 0, "</s>": 1, "<unk>": 2, "▁A": 3, "▁L": 4, "▁G": 5, "▁V": 6, "▁S": 7, "▁R": 8,
             "▁E": 9, "▁D": 10, "▁T": 11, "▁I": 12, "▁P": 13, "▁K": 14, "▁F": 15, "▁Q": 16, "▁N": 17,
             "▁Y": 18, "▁M": 19, "▁H": 20, "▁W": 21, "▁C": 22, "▁X": 23, "▁B": 24, "▁O": 25, "▁U": 26,
             "▁Z": 27}


def test_builtin_vocabulary_matches_the_published_ids():
    a = Alphabet.prot_t5()
    assert len(a) == 128  # vocab_size of the published config.json
    assert {t: a.tok_to_idx[t] for t in PUBLISHED} == PUBLISHED
    assert a.tok_to_idx["<extra_id_0>"] == 127 and a.tok_to_idx["<extra_id_99>"] == 28
    assert (a.padding_idx, a.eos_idx, a.unk_idx, a.cls_idx, a.mask_idx) == (0, 1, 2, None, None)


def test_published_recipe_uzob_to_x_eos_no_bos():
    a = Alphabet.prot_t5()
    assert a.encode("MUZOBK") == [19, 23, 23, 23, 23, 14]
    _, _, tokens = a.get_batch_converter()([("a", "AC"), ("b", "MKV")])
    assert tokens.tolist() == [[3, 22, 1, 0], [19, 14, 6, 1]]  # residues, </s>, padding
    assert a.clean("mkv*") == "MKV" and a.residue_offset == 0 and a.num_specials == 1
    with pytest.raises(ValueError, match="invalid residue '.'"):
        a.clean("MK.V")  # ProtT5 has no gap token


def test_matches_transformers_t5_tokenizer_on_the_published_recipe():
    transformers = pytest.importorskip("transformers")
    vocab = [(t, 0.0) for t in prot_t5_vocab()[:28]]  # the 28 spiece pieces; sentinels added by T5
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=100)
    seq = "MKTAYIAKQRQUZOBISFVKSHFSRQ"
    recipe = " ".join("X" if c in "UZOB" else c for c in seq)
    assert tok(recipe)["input_ids"] == Alphabet.prot_t5().encode(seq) + [1]


def _spiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    text = ["A L G V S R E D T I P K F Q N Y M H W C X B O U Z"] * 20 + ["A A L L G"] * 50
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=28,
                                   model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def test_spiece_model_gives_its_ids_and_t5_sentinels(tmp_path):
    sp = _spiece_model(tmp_path)
    pieces = spiece_pieces((tmp_path / "spiece.model").read_bytes())
    assert pieces == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    tokens, source = read_folder_vocab(tmp_path)
    assert source == "spiece.model" and len(tokens) == 128 and tokens[-1] == "<extra_id_0>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0}))
    assert len(read_folder_vocab(tmp_path)[0]) == 28


def test_folder_ids_win_over_the_builtin_mapping(tmp_path):
    """A folder whose spiece.model orders residues differently gives its own ids."""
    sp = _spiece_model(tmp_path)
    a = registry.FAMILIES["t5"].tokenizer(tmp_path)
    assert a.encode("AL") == [sp.piece_to_id("▁A"), sp.piece_to_id("▁L")]
    assert a.eos_idx == 1 and a.padding_idx == 0


def test_tokenizer_json_is_read(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = [(t, 0.0) for t in prot_t5_vocab()]
    tk = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=2))
    tk.save(str(tmp_path / "tokenizer.json"))
    assert read_folder_vocab(tmp_path) == (prot_t5_vocab(), "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(VocabFileError):
        read_folder_vocab(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(VocabFileError, match="not a sentencepiece model"):
        read_folder_vocab(tmp_path)


def test_relative_buckets_match_transformers():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rp = RelativePositionBias(32, 4, 128)
    pos = torch.arange(700)
    ref = t5.T5Attention._relative_position_bucket(pos[None, :] - pos[:, None], True, 32, 128)
    assert torch.equal(rp.buckets(700), ref)


def test_registry_entries_and_families():
    for name, repo in (("prot_t5_xl_uniref50", "Rostlab/prot_t5_xl_uniref50"),
                       ("prot_t5_xl_half_uniref50-enc", "Rostlab/prot_t5_xl_half_uniref50-enc")):
        e = registry.get(name)
        assert e.hf_repo == repo and e.url is None and e.regression_url is None
        c = e.config
        assert (c.num_layers, c.d_model, c.num_heads, c.d_kv, c.d_ff, c.feed_forward_proj) == (
            24, 1024, 32, 128, 16384, "relu")
        assert e.family.name == "t5"
    assert registry.family_of(registry.get("esm2_t6_8M_UR50D").config).name == "esm"
    assert registry.family_for_hf("t5").name == "t5"
    with pytest.raises(ValueError, match="model_type 'bert'"):
        registry.family_for_hf("bert")


def test_protlm_folder_round_trip_keeps_family_and_vocabulary(tmp_path, debug_model):
    from protlm.pretrained.load import load_model_and_alphabet
    from protlm.pretrained.protlm_format import save_protlm

    model = debug_model("prot_t5_debug")
    save_protlm(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["family"] == "t5" and meta["vocabulary"][:2] == ["<pad>", "</s>"]
    again, alphabet = load_model_and_alphabet(tmp_path / "m")
    assert type(again).__name__ == "T5Encoder" and alphabet == model.alphabet
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_no_lm_head_no_packing(debug_model):
    from protlm.errors import InputError

    model = debug_model("prot_t5_debug")
    tokens = torch.tensor([[3, 4, 1]])
    with pytest.raises(InputError, match="no LM head"):
        model(tokens, return_logits=True)
    with pytest.raises(InputError, match="padded batches only"):
        model(tokens[0], cu_seqlens=torch.tensor([0, 3]))
    out = model(tokens, repr_layers=[-1], need_head_weights=True, return_contacts=True)
    assert out["representations"][2].shape == (1, 3, 64) and out["attentions"].shape == (1, 2, 4, 3, 3)
    assert out["contacts"].shape == (1, 2, 2)  # residues only: </s> stripped, no BOS
