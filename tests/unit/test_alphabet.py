"""Alphabet: identical to fair-esm's, batch converter parity on real sequences, input rules."""

from __future__ import annotations

import re
import warnings

import esm
import pytest
import torch

from protlm.alphabet import Alphabet, InvalidSequenceError, pad_tokens
from protlm.data.fasta import load_fasta


@pytest.fixture(scope="module")
def ref():
    return esm.Alphabet.from_architecture("ESM-1b")


def test_tokens_and_indices_equal_fair_esm(ref):
    a = Alphabet.from_architecture("ESM-1b")
    assert a.all_toks == ref.all_toks
    assert a.to_dict() == ref.to_dict()
    for attr in ("padding_idx", "cls_idx", "eos_idx", "unk_idx", "mask_idx", "prepend_bos", "append_eos"):
        assert getattr(a, attr) == getattr(ref, attr), attr
    assert len(a) == len(ref) == 33
    assert Alphabet.from_architecture("ESM-2").all_toks == ref.all_toks


def test_unsupported_architecture():
    with pytest.raises(ValueError, match="unsupported"):
        Alphabet.from_architecture("msa_transformer")


def test_batch_converter_equals_fair_esm_on_real_sequences(shared_data, ref):
    records = load_fasta(shared_data / "sequences" / "some_proteins.fasta")
    batch = [(r.id, r.sequence) for r in records]
    assert len(batch) >= 10 and len({len(s) for _, s in batch}) > 5  # mixed lengths -> padding
    labels, strs, tokens = Alphabet().get_batch_converter()(batch)
    ref_labels, ref_strs, ref_tokens = ref.get_batch_converter()(batch)
    assert labels == ref_labels and strs == ref_strs
    assert tokens.dtype == ref_tokens.dtype == torch.int64
    assert torch.equal(tokens, ref_tokens)


def test_batch_converter_special_tokens_and_truncation(ref):
    batch = [("a", "MK<mask>TA<unk>Y"), ("b", "M")]
    assert torch.equal(Alphabet().get_batch_converter()(batch)[2], ref.get_batch_converter()(batch)[2])
    cut = Alphabet().get_batch_converter(truncation_seq_length=3)(batch)[2]
    assert torch.equal(cut, ref.get_batch_converter(truncation_seq_length=3)(batch)[2])
    assert cut.shape == (2, 5)


def test_pad_tokens_layout():
    a = Alphabet()
    t = pad_tokens([a.encode("MKV"), a.encode("A")], a)
    assert t.tolist() == [
        [a.cls_idx, *a.encode("MKV"), a.eos_idx],
        [a.cls_idx, a.get_idx("A"), a.eos_idx, a.padding_idx, a.padding_idx],
    ]


def test_clean_whitespace_case_and_stop():
    a = Alphabet()
    assert a.clean("  mk tA\nyI\t*", "r1") == "MKTAYI"
    assert a.clean("MKV*", "r1") == "MKV"
    assert a.clean("", "r1") == ""


def test_clean_invalid_residue_names_record_and_position():
    a = Alphabet()
    with pytest.raises(InvalidSequenceError) as info:
        a.clean("MK TA1Y", "sp|P1|test")
    err = info.value
    assert (err.record, err.position, err.char) == ("sp|P1|test", 5, "1")  # whitespace dropped first
    assert "sp|P1|test" in str(err) and "position 5" in str(err)
    with pytest.raises(InvalidSequenceError, match="position 3"):
        a.clean("MK*A", "r2")  # a stop codon inside the sequence is not allowed


def test_clean_unknown_maps_to_x():
    a = Alphabet()
    assert a.clean("MK1J#A", "r", unknown="X") == "MKXXXA"
    assert a.encode(a.clean("MK?", "r", unknown="X"))[-1] == a.get_idx("X")


def test_batch_converter_refuses_what_fair_esm_refuses():
    """Lower case, letters outside the alphabet and '*' raise (fair-esm: KeyError) naming the
    record and position; whitespace is dropped as fair-esm's tokenizer does."""
    from protlm.alphabet import InvalidSequenceError

    bc = Alphabet().get_batch_converter()
    for seq, pos, char in (("mkt", 1, "m"), ("MKJ", 3, "J"), ("MK*", 3, "*"), ("MK<foo>T", 3, "<")):
        with pytest.raises(InvalidSequenceError, match=rf"record 'p1': invalid residue '{re.escape(char)}' at position {pos}"):
            bc([("p1", seq)])
    with pytest.raises(InvalidSequenceError, match="record '#1'"):  # no label: its index
        bc([(None, "MK"), (None, "mk")])
    assert bc([("a", "M K\nT")])[2].tolist() == bc([("a", "MKT")])[2].tolist()


def test_batch_converter_takes_any_iterable():
    bc = Alphabet().get_batch_converter()
    with pytest.raises(ValueError, match="empty batch"):
        bc([])
    want = bc([("a", "MKT"), ("b", "AA")])
    for batch in ((x for x in [("a", "MKT"), ("b", "AA")]), zip(["a", "b"], ["MKT", "AA"])):
        labels, strs, tokens = bc(batch)
        assert labels == ["a", "b"] and strs == ["MKT", "AA"] and torch.equal(tokens, want[2])


def test_gaps_are_accepted_as_esm_tokens_with_a_warning():
    """'-' and '.' are gap tokens of ESM's vocabulary (fair-esm embeds them): kept, but said."""
    from protlm.alphabet import GapWarning

    with pytest.warns(GapWarning, match="gap characters"):
        assert Alphabet().clean("MK-T.A") == "MK-T.A"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Alphabet().clean("MKTA")  # no gap: no warning


def test_fair_esm_alphabet_attributes():
    ref, ours = esm.Alphabet.from_architecture("ESM-1b"), Alphabet()
    assert ours.prepend_toks == list(ref.prepend_toks) and ours.append_toks == list(ref.append_toks)
    assert ours.use_msa is ref.use_msa is False
    assert sorted(ours.unique_no_split_tokens) == sorted(ref.unique_no_split_tokens)
    for text in ("MK<mask>T A", "M<cls>K\nL<eos>", "<mask><mask>"):
        assert ours.tokenize(text) == ref.tokenize(text)
