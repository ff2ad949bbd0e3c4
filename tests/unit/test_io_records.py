"""protlm.io: record IDs as file names (injective, safe), sequence hashes, changed records."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protlm.io import (MAX_STEM, ChangedRecordsError, changed_records, check_changed, record_stem,
                            sequence_hash)

LONG = "sp|P12345|" + "x" * 300


def test_awkward_ids_get_distinct_safe_stems():
    ids = ["a/b", "a_b", "a%2Fb", "..", ".", ".hidden", "-rf", "~user", "UniRef50_A0A223SCH7",
           "0|beta-lactamase_P20P|1.58", "é", LONG, LONG + "y", "x" * MAX_STEM]
    stems = [record_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    for rid, stem in zip(ids, stems):
        assert "/" not in stem and stem[0] not in ".-~" and stem not in (".", "..")
        assert len(stem) <= MAX_STEM and stem.isascii()
        if "%-" not in stem:
            assert unquote(stem) == rid  # reversible unless shortened
    assert record_stem("UniRef50_A0A223SCH7") == "UniRef50_A0A223SCH7"  # plain IDs unchanged
    assert record_stem("a/b") == "a%2Fb" and record_stem("..") == "%2E."
    assert record_stem(LONG).startswith("sp%7CP12345%7Cxxx") and "%-" in record_stem(LONG)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(min_size=1, max_size=12),
                          st.text(alphabet="./_%-a", min_size=1, max_size=8),
                          st.text(alphabet="ab", min_size=120, max_size=160)),
                min_size=2, max_size=8, unique=True))
def test_stems_are_injective(ids):
    stems = [record_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    assert all(len(s) <= MAX_STEM and "/" not in s and not s.startswith(".") for s in stems)


def test_sequence_hash_is_sha256_of_the_sequence():
    assert sequence_hash("MKV") == hashlib.sha256(b"MKV").hexdigest()
    assert sequence_hash("MKV") != sequence_hash("MKL")


def test_changed_records_are_named_and_refused_unless_overwriting():
    stored = {"a": sequence_hash("MKV"), "b": sequence_hash("MKL"), "old": None}
    current = [("a", sequence_hash("MKV")), ("b", sequence_hash("MKLL")), ("old", sequence_hash("G")),
               ("new", sequence_hash("W"))]
    changed = changed_records(stored, current)
    assert changed == ["b", "old"]  # without a stored hash a record cannot be trusted either
    with pytest.raises(ChangedRecordsError, match=r"out.h5: 2 record\(s\).*'b', 'old'; rerun with --overwrite-changed"):
        check_changed("out.h5", changed, overwrite=False)
    check_changed("out.h5", changed, overwrite=True)
    with pytest.raises(ChangedRecordsError, match=r"'r4' and 3 more"):
        check_changed("o", [f"r{i}" for i in range(8)], overwrite=False)
