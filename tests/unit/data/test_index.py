import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from protlm.data.fasta import FastaError, load_fasta, read_fasta
from protlm.data.index import FastaIndex, id_hash


def _write(path, records, width=7):
    with open(path, "w") as fh:
        for rid, seq in records:
            fh.write(f">{rid} some description\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")


RECORDS = [("a", "MKTAYIAKQR"), ("b", "QISFVKSHFSRQLEERLGLIEVQ"), ("c", "M"), ("d", "ACDEFGHIKLMNPQRSTVWY" * 3)]


def test_random_access_matches_streaming(tmp_path):
    path = tmp_path / "x.fasta"
    _write(path, RECORDS)
    index = FastaIndex.open(path)
    assert len(index) == 4
    assert list(index.lengths) == [len(s) for _, s in RECORDS]
    for i in [3, 0, 2, 1]:
        assert (index[i].id, index[i].sequence) == RECORDS[i]
    assert [r.sequence for r in load_fasta(path)] == [index[i].sequence for i in range(4)]
    assert index.id_hashes[1] == id_hash("b")


def test_shared_data_index(shared_data, tmp_path):
    src = shared_data / "sequences" / "some_proteins.fasta"
    path = tmp_path / "some.fasta"
    path.write_bytes(src.read_bytes())
    index = FastaIndex.open(path)
    records = load_fasta(src)
    assert len(index) == len(records)
    assert all(index[i].sequence == r.sequence and index[i].id == r.id for i, r in enumerate(records))


def test_index_built_once_and_rebuilt_when_stale(tmp_path):
    path = tmp_path / "x.fasta"
    _write(path, RECORDS)
    FastaIndex.open(path)
    stamp = os.stat(f"{path}.pidx").st_mtime_ns
    FastaIndex.open(path)
    assert os.stat(f"{path}.pidx").st_mtime_ns == stamp
    _write(path, RECORDS[:2])
    assert len(FastaIndex.open(path)) == 2


def test_gzip_input(tmp_path):
    plain = tmp_path / "x.fasta"
    _write(plain, RECORDS)
    gz = tmp_path / "y.fasta.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    index = FastaIndex.open(gz)
    assert [index[i].sequence for i in range(len(index))] == [s for _, s in RECORDS]


@pytest.mark.parametrize("text,needle", [
    (">a\nMKV\n>a\nMKV\n", "duplicate record ID 'a'"),
    (">a\nMKV\n>b\n", "record 'b' has an empty sequence"),
    ("MKV\n", "before the first '>'"),
    ("", "no FASTA records"),
    (">a\nMKV\n>b\nMK1V\n", "line 4"),
])
def test_bad_input_names_the_record(tmp_path, text, needle):
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    with pytest.raises(FastaError, match=needle):
        FastaIndex.open(path)
    assert not os.path.exists(f"{path}.pidx.json")


MALFORMED = {
    "duplicate_id": b">a\nMKV\n>b\nMKL\n>a\nMKT\n",
    "empty_record": b">a\nMKV\n>b\n>c\nMK\n",
    "data_before_header": b"MKV\n>a\nMKV\n",
    "binary": b">a\nMKV\n" + bytes(range(256)),
    "binary_with_newlines": b"PK\x03\x04\x14\x00\n\x00\x00\x08\n",
    "invalid_residue": b">a\nMKV\n>b\nMKV\nMK1V\n",
    "empty_header": b">a\nMKV\n>\nMKV\n",
    "no_records": b"; just a comment\n\n",
}


def _message(fn) -> str:
    with pytest.raises(FastaError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_streaming_reader_and_index_report_the_same_error(tmp_path, case):
    """One scanner: read_fasta and FastaIndex.open reject the same files with the same words."""
    path = tmp_path / "bad.fasta"
    path.write_bytes(MALFORMED[case])
    streamed = _message(lambda: list(read_fasta(path)))
    indexed = _message(lambda: FastaIndex.open(path))
    assert streamed == indexed
    assert streamed.startswith(f"{path}: ")
    expected = {"duplicate_id": "line 5: duplicate record ID 'a'", "empty_record": "line 3: record 'b' has an empty",
                "data_before_header": "line 1: sequence data before", "binary": "line 3: binary data",
                "binary_with_newlines": "line 1: binary data", "invalid_residue": "line 5: record 'b': invalid residue '1' at position 6",
                "empty_header": "line 3: empty header", "no_records": "no FASTA records"}[case]
    assert expected in streamed


def test_gzip_errors_name_the_file_given(tmp_path):
    gz = tmp_path / "bad.fasta.gz"
    gz.write_bytes(gzip.compress(MALFORMED["duplicate_id"]))
    assert _message(lambda: list(read_fasta(gz))) == _message(lambda: FastaIndex.open(gz))


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.fasta"
    path.write_bytes(b"\xef\xbb\xbf>a desc\r\nMKV\r\n>b\r\nQL*\r\n")
    index = FastaIndex.open(path)
    assert [(r.id, r.sequence) for r in read_fasta(path)] == [("a", "MKV"), ("b", "QL")]
    assert [(index[i].id, index[i].description, index[i].sequence) for i in range(2)] == [
        ("a", "a desc", "MKV"), ("b", "b", "QL")]


def test_memory_flat_in_file_size(tmp_path):
    """Opening and reading a 200k-record file keeps resident memory small (memory map)."""
    path = tmp_path / "big.fasta"
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    with open(path, "w") as fh:
        for i in range(200_000):
            fh.write(f">r{i}\n{''.join(rng.choice(aa, 100))}\n")
    FastaIndex.open(path)  # build in this process
    code = ("import resource, sys; from protlm.data.index import FastaIndex;"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"ix = FastaIndex.open({str(path)!r}); s = sum(len(ix[i].sequence) for i in range(0, len(ix), 97));"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    grown_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_kb < 10_000  # the 22 MB file and 6 MB index are not loaded
