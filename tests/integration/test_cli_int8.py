"""`--dtype int8` through the command line: embed close to fp32, convert refuses to store it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from protlm import build_model
from protlm.cli.main import cli
from protlm.embed.h5 import read as read_h5, read_file_meta as read_h5_meta
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import DEBUG_CONFIGS


def test_embed_int8_close_to_fp32_and_cached(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), tmp_path / "m")
    fasta = shared_data / "sequences" / "some_proteins.fasta"
    out = {}
    for dtype in ("fp32", "int8", "int8"):
        path = tmp_path / f"{dtype}-{len(out)}.h5"
        r = CliRunner().invoke(cli, ["embed", str(fasta), "--model", str(model), "-o", str(path),
                                     "--dtype", dtype, "--no-progress"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert ("cached in" in r.output) == (len(out) == 1)  # quantized on the first int8 run only
        assert read_h5_meta(path)["dtype"] == dtype
        out[len(out)] = {rid: rec["mean"] for rid, rec in read_h5(path).items()}
    assert (tmp_path / "m.int8.safetensors").is_file()
    for rid, ref in out[0].items():
        a, b = ref.astype(np.float64).ravel(), out[1][rid].astype(np.float64).ravel()
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
        np.testing.assert_array_equal(out[1][rid], out[2][rid])  # the cached weights are the same


def test_convert_refuses_int8(tmp_path):
    torch.manual_seed(0)
    model = save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), tmp_path / "m")
    r = CliRunner().invoke(cli, ["convert", str(model), str(tmp_path / "out"), "--dtype", "int8"])
    assert r.exit_code == 2 and "'int8' is not one of 'fp32', 'bf16', 'fp16'" in r.output, r.output
    assert not (tmp_path / "out").exists()
    from protlm.errors import ProtlmError
    from protlm.pretrained.writers import convert_checkpoint

    with pytest.raises(ProtlmError, match="inference only"):  # the library call says why
        convert_checkpoint(str(model), str(tmp_path / "out"), dtype="int8")


def test_embed_dtype_auto_measures_the_model_then_records_its_choice(tmp_path, shared_data, monkeypatch):
    """`--dtype auto` on the command line: the fastest precision measured on this model, with its
    mean embeddings within cosine 0.999 of fp32, is what runs and what the output file records."""
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), tmp_path / "m")
    fasta = shared_data / "sequences" / "some_proteins.fasta"
    r = CliRunner().invoke(cli, ["embed", str(fasta), "--model", str(model), "-o", str(tmp_path / "a.h5"),
                                 "--dtype", "auto", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("--dtype auto: "))
    chosen = line.split()[2]
    assert "measured on the model: fp32 " in line and chosen in ("fp32", "bf16", "int8")
    assert read_h5_meta(tmp_path / "a.h5")["dtype"] == chosen
    assert list((tmp_path / "cache" / "auto").glob("*.json"))
