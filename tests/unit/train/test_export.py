import json

import numpy as np
import pytest
import torch

import protlm
from protlm.models.layers import init_weights
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import get
from protlm.train.export import export_checkpoint


def test_fp16_export_keeps_rotary_buffers_exact(tmp_path, debug_model):
    model = debug_model("esm2_debug")
    init_weights(model)
    save_protlm(model, tmp_path / "ckpt", extra={"step": 7, "training_config": {"x": 1}})
    export_checkpoint(tmp_path / "ckpt", tmp_path / "out", torch.float16)
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["step"] == 7 and meta["training_config"] == {"x": 1}
    loaded, _ = protlm.load_model_and_alphabet(tmp_path / "out")
    for name, p in model.named_parameters():
        assert torch.equal(loaded.get_parameter(name), p.detach().half().float()), name
    for name, b in model.named_buffers():
        assert torch.equal(loaded.get_buffer(name), b), name


def test_shipped_protlm_small_loads_offline(monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, alphabet = protlm.load_model_and_alphabet("protlm_small")
    entry = get("protlm_small")
    assert model.config == entry.config
    from protlm.pretrained.identity import packaged_root

    weights = packaged_root() / "protlm_small" / "model.safetensors"
    assert weights.stat().st_size <= 20e6
    meta = json.loads((packaged_root() / "protlm_small" / "config.json").read_text())
    assert meta["training_config"]["model"]["num_layers"] == 6  # the config that produced it
    assert meta["training_config"]["data"]["train_fasta"].endswith("cath_train.fasta")
    # its attention contact head was fitted on structures and ships beside the weights
    assert (packaged_root() / "protlm_small" / "contact_regression.safetensors").is_file()
    assert model.contact_head.fitted
    # it predicts masked residues better than chance on a real protein: each residue masked in
    # turn (one row per position), perplexity over the 20 amino acids well under uniform's 20
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAG"
    tokens = torch.tensor([[alphabet.cls_idx, *alphabet.encode(seq), alphabet.eos_idx]])
    L = len(seq)
    masked = tokens.repeat(L, 1)
    masked[torch.arange(L), torch.arange(L) + 1] = alphabet.mask_idx
    with torch.no_grad():
        logits = model(masked)["logits"]
    assert logits.shape == (L, L + 2, 33) and torch.isfinite(logits).all()
    aa = torch.tensor([alphabet.get_idx(a) for a in "ACDEFGHIKLMNPQRSTVWY"])
    logp = torch.log_softmax(logits[torch.arange(L), torch.arange(L) + 1][:, aa], -1)
    target = torch.tensor(["ACDEFGHIKLMNPQRSTVWY".index(c) for c in seq])
    ppl = float(torch.exp(-logp[torch.arange(L), target].mean()))
    assert ppl < 18.0, ppl
    # so does its bilinear contact head, found by the model's name (`--head bilinear`)
    from protlm.contacts.pipeline import load_for_contacts
    from protlm.contacts.predict import bilinear_contacts

    from protlm.runtime.options import InferenceOptions

    model, alphabet, head = load_for_contacts(InferenceOptions(model="protlm_small"), head="bilinear")
    assert head.config.model == "protlm_small" and head.config.embed_dim == model.config.embed_dim
    m = bilinear_contacts(model, alphabet, head, seq)
    assert m.shape == (L, L) and np.allclose(m, m.T) and ((m > 0) & (m < 1)).all()


def test_init_from_takes_the_weights_of_a_saved_model(tmp_path):
    """A second training stage starts from a saved model's weights (model.init_from); a folder
    of another architecture, or not a model folder at all, is refused naming what differs."""
    from protlm.models import build_model
    from protlm.train.config import ConfigError, ModelSection
    from protlm.train.loop import init_from_weights

    section = ModelSection(num_layers=2, embed_dim=32, attention_heads=4)
    torch.manual_seed(0)
    first = build_model(section.build_config())
    init_weights(first)
    save_protlm(first, tmp_path / "stage1")
    second = build_model(section.build_config())
    init_weights(second)
    init_from_weights(second, tmp_path / "stage1")
    for name, p in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], p), name
    other = build_model(ModelSection(num_layers=3, embed_dim=32, attention_heads=4).build_config())
    with pytest.raises(ConfigError, match="num_layers"):
        init_from_weights(other, tmp_path / "stage1")
    with pytest.raises(ConfigError, match="not a protlm checkpoint"):
        init_from_weights(second, tmp_path)


def test_export_of_several_checkpoints_is_their_parameter_average(tmp_path, debug_model):
    """Weight averaging (python -m protlm.train.export A B OUT): every parameter is the mean of
    the checkpoints'; buffers are kept; checkpoints of another architecture are refused."""
    from protlm.errors import ConfigError
    from protlm.train.export import main

    models = []
    for i in range(3):
        torch.manual_seed(i)
        m = debug_model("esm2_debug")
        init_weights(m)
        save_protlm(m, tmp_path / f"c{i}", extra={"step": 10 * (i + 1)})
        models.append(m)
    main([str(tmp_path / f"c{i}") for i in range(3)] + [str(tmp_path / "avg"), "--dtype", "fp32"])
    avg, _ = protlm.load_model_and_alphabet(tmp_path / "avg")
    for name, p in models[0].named_parameters():
        expect = sum(m.get_parameter(name).detach() for m in models) / 3
        torch.testing.assert_close(avg.get_parameter(name), expect, rtol=0, atol=1e-6)
    assert not torch.equal(avg.embed_tokens.weight, models[0].embed_tokens.weight)  # it did average
    for name, b in models[0].named_buffers():
        assert torch.equal(avg.get_buffer(name), b), name
    meta = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert meta["step"] == 10 and meta["exported_from"] == [str(tmp_path / f"c{i}") for i in range(3)]

    other = debug_model("esm1b_debug")
    save_protlm(other, tmp_path / "other")
    with pytest.raises(ConfigError, match="another architecture"):
        export_checkpoint([tmp_path / "c0", tmp_path / "other"], tmp_path / "bad")


@pytest.mark.parametrize("argv,message,code", [
    (["python", "-m", "protlm.train.export", "{tmp}/nosuch", "{tmp}/out"], "nosuch: no such folder", 1),
    (["python", "-m", "protlm.train.export", "{tmp}", "{tmp}/out"], "has no config.json", 1),
    (["python", "-m", "protlm.train.export", "{tmp}", "{tmp}/out", "--dtype", "int8"], "invalid choice: 'int8'", 2),
    (["python", "scripts/summarize_embeddings.py", "{tmp}/nosuch.h5"], "nosuch.h5: no such file", 1),
    (["python", "scripts/summarize_embeddings.py", "{tmp}/not.h5"], "not an embeddings file", 1),
    (["python", "scripts/eval_perplexity.py", "configs/protlm_small.toml", "--model", "nosuch_model"],
     "nosuch_model", 1),
])
def test_tools_outside_the_cli_report_user_errors_without_a_traceback(tmp_path, argv, message, code):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "not.h5").write_text("text, not HDF5\n")
    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable if a == "python" else a.format(tmp=tmp_path) for a in argv]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert p.returncode == code, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr, p.stderr
