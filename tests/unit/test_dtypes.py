"""One dtype vocabulary; casts keep buffers fp32 (rotary positions stay exact)."""

import pytest
import torch

from protlm.dtypes import canonical, cast_parameters_, parse_dtype
from protlm.runtime.precision import prepare_model
from protlm.errors import ProtlmError


def test_spellings_agree():
    assert canonical("float16") == canonical("fp16") == "fp16"
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is torch.bfloat16
    assert canonical(torch.float32) == "fp32"
    with pytest.raises(ProtlmError, match="unknown dtype 'int4'"):
        parse_dtype("int4")


@pytest.mark.parametrize("dtype", ["bf16", "float16"])
def test_inference_cast_keeps_rotary_buffers_fp32(debug_model, dtype):
    model = prepare_model(debug_model("esm2_debug"), "cpu", dtype)
    assert {b.dtype for b in model.buffers()} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {parse_dtype(dtype)}
    # positions past 256 are exact: a bf16 inv_freq/arange would round them
    rot = model.layers[0].self_attn.rot_emb
    cos, _ = rot.table(600, "cpu", torch.float32)
    want = torch.cos(torch.outer(torch.arange(600.0), rot.inv_freq))
    torch.testing.assert_close(cos[:, : want.shape[1]], want)


def test_cast_parameters_leaves_integer_and_buffers(debug_model):
    model = cast_parameters_(debug_model("esm2_debug"), "fp16")
    assert all(b.dtype == torch.float32 for b in model.buffers())
