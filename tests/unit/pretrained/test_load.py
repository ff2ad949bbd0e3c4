"""load_model_and_alphabet: every source kind, strictness, safety, offline errors, CLI convert."""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.pretrained import download, identity, registry
from protlm.errors import NotFoundError
from protlm.pretrained.checkpoint import CheckpointError
from protlm.pretrained.load import load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import DEBUG_CONFIGS, ModelEntry

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reference"))
import _writers as W  # noqa: E402  (reference-format writers shared with tests/reference)


def same_weights(a, b) -> bool:
    sb = b.state_dict()
    return a.state_dict().keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def esm1b_file(tmp_path, name="esm1b_t2_test.pt", regression=True):
    ref, args = W.reference_esm1b()
    return ref, W.write_fair_esm(ref, args, tmp_path / name, regression)


def esm2_file(tmp_path, name="esm2_t2_test.pt", regression=True):
    ref, cfg = W.reference_esm2()
    return ref, W.write_fair_esm(ref, cfg, tmp_path / name, regression)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("family", ["esm1b_debug", "esm2_debug"])
def test_protlm_round_trip(tmp_path, debug_model, family):
    model = W.init_like_training(debug_model(family), seed=1)
    save_protlm(model, tmp_path / "m")
    loaded, alphabet = load_model_and_alphabet(tmp_path / "m")
    assert not loaded.training and loaded.config == model.config
    assert same_weights(loaded, model) and len(alphabet) == 33
    t = alphabet.get_batch_converter()([("a", "MKVLA")])[2]
    with torch.no_grad():
        assert torch.equal(loaded(t)["logits"], model(t)["logits"])


def test_fair_esm_file_family_read_from_contents_not_name(tmp_path):
    _, path = esm2_file(tmp_path, name="esm1b_misleading_name.pt")
    model, _ = load_model_and_alphabet(path)
    assert model.config.family == "esm2"
    _, path = esm1b_file(tmp_path, name="esm2_misleading_name.pt")
    assert load_model_and_alphabet(str(path))[0].config.family == "esm1b"


def test_esm1b_mask_row_zeroed_like_fair_esm(tmp_path):
    ref, args = W.reference_esm1b()
    with torch.no_grad():
        ref.embed_tokens.weight[32].fill_(0.5)  # fair-esm's loader zeroes it; so must protlm
    model, alphabet = load_model_and_alphabet(W.write_fair_esm(ref, args, tmp_path / "e.pt"))
    assert model.embed_tokens.weight[alphabet.mask_idx].abs().max() == 0


def test_missing_regression_warns_at_use_and_keeps_init(tmp_path):
    from protlm.models.heads import UncalibratedContactsWarning

    _, path = esm2_file(tmp_path, regression=False)
    model, alphabet = load_model_and_alphabet(path)
    assert model.contact_head.regression.weight.shape == (1, 8) and not model.contact_head.fitted
    toks = torch.tensor([[alphabet.cls_idx, *alphabet.encode("MKTAYIAK"), alphabet.eos_idx]])
    for kwargs in ({}, {"need_head_weights": True}):  # layer-by-layer and reference paths
        with pytest.warns(UncalibratedContactsWarning, match="no fitted contact regression"):
            model(toks, return_contacts=True, **kwargs)
    (tmp_path / "r").mkdir()
    fitted, _ = load_model_and_alphabet(esm2_file(tmp_path / "r", regression=True)[1])
    assert fitted.contact_head.fitted


def test_protlm_folder_carries_its_fitted_contact_head(tmp_path, debug_model):
    from protlm.pretrained.contact_regression import save_regression

    model = debug_model("esm2_debug")
    save_protlm(model, tmp_path / "m")
    assert not load_model_and_alphabet(tmp_path / "m")[0].contact_head.fitted
    n = model.contact_head.regression.weight.numel()
    save_regression(torch.linspace(-1, 1, n), torch.tensor([0.5]), tmp_path / "m")  # beside the weights
    loaded, _ = load_model_and_alphabet(tmp_path / "m")
    assert loaded.contact_head.fitted
    assert torch.equal(loaded.contact_head.regression.weight[0], torch.linspace(-1, 1, n))
    save_protlm(loaded, tmp_path / "copy")  # the flag survives a re-save
    assert load_model_and_alphabet(tmp_path / "copy")[0].contact_head.fitted


def test_device_argument(tmp_path, debug_model):
    save_protlm(debug_model(), tmp_path / "m")
    model, _ = load_model_and_alphabet(tmp_path / "m", device="cpu")
    assert next(model.parameters()).device.type == "cpu"


# ------------------------------------------------------------------ errors
def test_truncated_file(tmp_path):
    _, path = esm2_file(tmp_path)
    data = path.read_bytes()
    for n in (len(data) // 2, 64, 0):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
            load_model_and_alphabet(path)
        assert str(path) in str(info.value)


def test_truncated_safetensors(tmp_path, debug_model):
    save_protlm(debug_model(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load protlm checkpoint.*header") as info:
        load_model_and_alphabet(tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value)


def test_wrong_family(tmp_path):
    ref, cfg = W.reference_esm2()
    _, args = W.reference_esm1b()
    path = W.write_fair_esm(ref, args, tmp_path / "esm2_weights_esm1b_args.pt")
    with pytest.raises(CheckpointError, match="wrong model family.*ESM-2.*declares ESM-1b"):
        load_model_and_alphabet(path)
    ref1, _ = W.reference_esm1b()
    path = W.write_fair_esm(ref1, cfg, tmp_path / "esm1b_weights_esm2_cfg.pt")
    with pytest.raises(CheckpointError, match="wrong model family.*ESM-1b.*declares ESM-2"):
        load_model_and_alphabet(path)


def rewrite(path: Path, edit) -> Path:
    data = torch.load(path, weights_only=False)
    edit(data["model"])
    torch.save(data, path)
    return path


def test_missing_and_unexpected_keys_listed(tmp_path):
    _, path = esm2_file(tmp_path)

    def edit(state):
        del state["encoder.sentence_encoder.layers.1.fc1.weight"]
        state["encoder.sentence_encoder.layers.7.fc1.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError) as info:
        load_model_and_alphabet(rewrite(path, edit))
    msg = str(info.value)
    assert "missing keys (1): layers.1.fc1.weight" in msg
    assert "unexpected keys (1): layers.7.fc1.weight" in msg


def test_shape_mismatch_listed(tmp_path):
    _, path = esm1b_file(tmp_path)

    def edit(state):
        state["encoder.sentence_encoder.layers.0.fc2.bias"] = torch.zeros(65)

    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): layers.0.fc2.bias: checkpoint \(65,\) vs model \(64,\)"):
        load_model_and_alphabet(rewrite(path, edit))


def test_tied_decoder_must_match_embedding(tmp_path):
    _, path = esm1b_file(tmp_path)

    def edit(state):
        state["encoder.lm_head.weight"] = state["encoder.lm_head.weight"] + 1

    with pytest.raises(CheckpointError, match="tied"):
        load_model_and_alphabet(rewrite(path, edit))


def test_unsupported_architecture(tmp_path):
    torch.save({"args": Namespace(arch="msa_transformer"), "model": {}}, tmp_path / "msa.pt")
    with pytest.raises(CheckpointError, match="unsupported fair-esm architecture 'msa_transformer'"):
        load_model_and_alphabet(tmp_path / "msa.pt")
    torch.save({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="neither `args`"):
        load_model_and_alphabet(tmp_path / "bare.pt")


class Exploit:
    """A pickle payload: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["args", "model", "regression"])
def test_malicious_pickle_refused_and_not_executed(tmp_path, where):
    marker = tmp_path / "pwned"
    ref, path = esm1b_file(tmp_path)
    target = path.with_name(f"{path.stem}-contact-regression.pt") if where == "regression" else path
    data = torch.load(target, weights_only=False)
    if where == "model":
        data["model"]["evil"] = Exploit(marker)
    else:
        data["args" if where == "args" else "extra"] = Exploit(marker)
    torch.save(data, target)
    with pytest.raises(CheckpointError, match="refused to unpickle.*nothing in it was executed") as info:
        load_model_and_alphabet(path)
    assert "system" in str(info.value)  # names what was refused
    assert not marker.exists()


def test_not_found_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model_and_alphabet(tmp_path / "nope.pt")
    with pytest.raises(KeyError, match="unknown model 'esm3_giant'.*esm2_t6_8M_UR50D"):
        load_model_and_alphabet("esm3_giant")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model_and_alphabet(tmp_path / "empty")


# ------------------------------------------------------------------ published names
@pytest.fixture
def temp_entry(monkeypatch):
    """Register a temporary entry; the registry is restored afterwards."""
    def add(entry: ModelEntry) -> ModelEntry:
        monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
        return entry
    return add


def test_packaged_weights(tmp_path, monkeypatch, debug_model, temp_entry):
    assert str(identity.packaged_root()).endswith(os.path.join("protlm", "weights"))
    model = W.init_like_training(debug_model("esm2_debug"), seed=2)
    save_protlm(model, tmp_path / "weights" / "tiny_packaged")
    monkeypatch.setattr(identity, "packaged_root", lambda: tmp_path / "weights")
    temp_entry(ModelEntry("tiny_packaged", DEBUG_CONFIGS["esm2_debug"], packaged="tiny_packaged"))
    loaded, _ = load_model_and_alphabet("tiny_packaged")
    assert same_weights(loaded, model)
    # the key of resumable outputs: the weights' contents, not where they are installed or when
    key = identity.model_identity("tiny_packaged")
    import shutil
    shutil.copytree(tmp_path / "weights", tmp_path / "reinstalled")
    monkeypatch.setattr(identity, "packaged_root", lambda: tmp_path / "reinstalled")
    assert identity.model_identity("tiny_packaged") == key and str(tmp_path) not in key
    save_protlm(W.init_like_training(debug_model("esm2_debug"), seed=3), tmp_path / "reinstalled" / "tiny_packaged")
    assert identity.model_identity("tiny_packaged") != key  # a new release of the weights
    temp_entry(ModelEntry("broken_packaged", DEBUG_CONFIGS["esm2_debug"], packaged="absent"))
    with pytest.raises(CheckpointError, match="packaged weights for 'broken_packaged' are missing"):
        load_model_and_alphabet("broken_packaged")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """torch hub dir in tmp_path; every download attempt fails as it would without network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "_download_url", fail)
    monkeypatch.setattr(download, "_hf_snapshot", fail)
    return calls


def test_offline_error_says_what_to_put_where(tmp_path, offline_hub, temp_entry):
    entry = temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm2_debug"], hf_repo="facebook/esm2_t2_test"))
    with pytest.raises(download.WeightsNotFoundError) as info:
        load_model_and_alphabet(entry.name)
    msg = str(info.value)
    ckpt = tmp_path / "hub" / "checkpoints"
    assert f"put {entry.url}" in msg and str(ckpt / "esm2_t2_test.pt") in msg
    assert entry.regression_url in msg and str(ckpt / "esm2_t2_test-contact-regression.pt") in msg
    assert "facebook/esm2_t2_test" in msg and "network is unreachable" in msg
    assert len(offline_hub) == 3  # HF cache lookup, fair-esm download, HF download: all tried


def test_offline_env_skips_network(tmp_path, offline_hub, temp_entry, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    entry = temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm2_debug"]))
    with pytest.raises(download.WeightsNotFoundError, match="downloads disabled"):
        load_model_and_alphabet(entry.name)
    assert offline_hub == []  # no hf_repo: no HF cache lookup either


def test_published_name_from_torch_hub_cache(tmp_path, offline_hub, temp_entry):
    ref, cfg = W.reference_esm2()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    W.write_fair_esm(ref, cfg, ckpt / "esm2_t2_test.pt")  # as fair-esm's own download leaves it
    temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm2_debug"]))
    model, _ = load_model_and_alphabet("esm2_t2_test")
    assert same_weights(model, load_model_and_alphabet(ckpt / "esm2_t2_test.pt")[0])
    assert torch.equal(model.contact_head.regression.weight, ref.contact_head.regression.weight)
    assert offline_hub == []  # cached: no network
    temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm1b_debug"]))
    with pytest.raises(CheckpointError, match="does not hold 'esm2_t2_test'"):
        load_model_and_alphabet("esm2_t2_test")


def test_download_goes_to_cache(tmp_path, monkeypatch, temp_entry):
    """When online, the fair-esm URLs are fetched into the torch hub cache and then loaded."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ref, cfg = W.reference_esm2()
    (tmp_path / "server").mkdir()
    src = W.write_fair_esm(ref, cfg, tmp_path / "server" / "x.pt")
    served = {"models/esm2_t2_test.pt": src,
              "regression/esm2_t2_test-contact-regression.pt": src.with_name("x-contact-regression.pt")}

    def fake_download(url, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(served[url.split("fair-esm/", 1)[1]].read_bytes())

    monkeypatch.setattr(download, "_download_url", fake_download)
    temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm2_debug"]))
    model, _ = load_model_and_alphabet("esm2_t2_test")
    assert (tmp_path / "hub" / "checkpoints" / "esm2_t2_test-contact-regression.pt").is_file()
    assert torch.equal(model.contact_head.regression.weight, ref.contact_head.regression.weight)


# ------------------------------------------------------------------ CLI
def test_cli_convert_to_protlm_and_back(tmp_path):
    """fair-esm ESM-2 .pt -> protlm -> HF -> protlm: every parameter and buffer survives exactly;
    --dtype casts parameters only (rotary inv_freq stays fp32), under either spelling."""
    _, path = esm2_file(tmp_path)
    runner = CliRunner()
    direct, alphabet = load_model_and_alphabet(path)
    steps = [(str(path), "p", "protlm"), ("p", "h", "hf"), ("h", "back", "protlm")]
    for src, dst, to in steps:
        src = src if src == str(path) else str(tmp_path / src)
        out = runner.invoke(cli, ["convert", src, str(tmp_path / dst), "--to", to])
        assert out.exit_code == 0, out.output
        assert f"wrote {to} checkpoint" in out.output
    back, _ = load_model_and_alphabet(tmp_path / "back")
    assert same_weights(back, direct)
    for name, buf in direct.named_buffers():
        assert torch.equal(back.get_buffer(name), buf), name
    toks = torch.tensor([[alphabet.cls_idx, *alphabet.encode("MKTAYIAKQRQISFVKSHFSRQ"), alphabet.eos_idx]])
    with torch.no_grad():
        assert torch.equal(back(toks)["logits"], direct(toks)["logits"])
    for spelling in ("float16", "fp16"):
        out = runner.invoke(cli, ["convert", str(tmp_path / "p"), str(tmp_path / spelling), "--dtype", spelling])
        assert out.exit_code == 0, out.output
        stored = load_file(str(tmp_path / spelling / "model.safetensors"))
        inv_freq = [k for k in stored if k.endswith("inv_freq")]
        assert inv_freq and all(stored[k].dtype == torch.float32 for k in inv_freq)
        assert stored["embed_tokens.weight"].dtype == torch.float16
        half, _ = load_model_and_alphabet(tmp_path / spelling)
        for name, p in direct.named_parameters():
            assert torch.equal(half.get_parameter(name), p.detach().half().float()), name
        for name, buf in direct.named_buffers():
            assert torch.equal(half.get_buffer(name), buf), name


def test_cli_convert_errors_are_clean(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "args": Exploit(marker)}, tmp_path / "evil.pt")
    out = CliRunner().invoke(cli, ["convert", str(tmp_path / "evil.pt"), str(tmp_path / "dst")])
    assert out.exit_code != 0 and "refused to unpickle" in out.output
    assert not marker.exists() and not (tmp_path / "dst").exists()  # nothing written
    out = CliRunner().invoke(cli, ["convert", str(tmp_path / "missing.pt"), str(tmp_path / "dst")])
    assert out.exit_code != 0 and "no such checkpoint" in out.output
    out = CliRunner().invoke(cli, ["convert", "x", str(tmp_path / "dst"), "--to", "onnx"])
    assert out.exit_code == 2
    _, path = esm2_file(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "vocab.txt").write_text("an earlier checkpoint's file")
    out = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "full"), "--to", "hf"])
    assert out.exit_code == 1 and "is not an empty folder" in out.output
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["vocab.txt"]  # left alone


def test_hf_folder_with_published_esm2_extras(tmp_path, debug_model):
    """facebook/esm2 files also hold an unused learned position table and position_ids."""
    from safetensors.torch import load_file, save_file

    from protlm.pretrained.writers import save_hf

    model = W.init_like_training(debug_model("esm2_debug"), seed=4)
    save_hf(model, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    state["esm.embeddings.position_embeddings.weight"] = torch.randn(1026, 64)
    state["esm.embeddings.position_ids"] = torch.arange(1026)[None]
    save_file(state, str(weights))
    loaded, _ = load_model_and_alphabet(tmp_path / "hf")
    assert same_weights(loaded, model)
    del state["esm.encoder.layer.0.intermediate.dense.bias"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): layers.0.fc1.bias"):
        load_model_and_alphabet(tmp_path / "hf")


def test_hf_wrong_family_and_bad_config(tmp_path, debug_model):
    import json

    from protlm.pretrained.writers import save_hf

    save_hf(W.init_like_training(debug_model("esm2_debug")), tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "position_embedding_type": "absolute", "emb_layer_norm_before": True}))
    with pytest.raises(CheckpointError, match="wrong model family: the weights are ESM-2.*declares ESM-1b"):
        load_model_and_alphabet(tmp_path / "hf")
    cfg_path.write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_model_and_alphabet(tmp_path / "hf")
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_and_alphabet(tmp_path / "hf")


def test_fair_esm_style_accessors_and_hf_repo_ids(tmp_path, offline_hub, temp_entry):
    """protlm.pretrained.<name>(), load_model_and_alphabet_local / _hub (as esm.pretrained) and a
    published model's HF repo id all reach the same cached weights; a typo gets a suggestion."""
    import protlm
    from protlm.pretrained.registry import UnknownModelError

    ref, cfg = W.reference_esm2()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    W.write_fair_esm(ref, cfg, ckpt / "esm2_t2_test.pt")
    temp_entry(ModelEntry("esm2_t2_test", DEBUG_CONFIGS["esm2_debug"], hf_repo="facebook/esm2_t2_test"))
    want = load_model_and_alphabet(ckpt / "esm2_t2_test.pt")[0]
    for model, alphabet in (protlm.pretrained.esm2_t2_test(),
                            protlm.pretrained.load_model_and_alphabet_hub("esm2_t2_test"),
                            protlm.pretrained.load_model_and_alphabet_local(ckpt / "esm2_t2_test.pt"),
                            protlm.load_model_and_alphabet("facebook/esm2_t2_test")):
        assert same_weights(model, want) and not model.training and len(alphabet) == 33
    assert "esm2_t2_test" in dir(protlm.pretrained) and offline_hub == []
    with pytest.raises(AttributeError):
        protlm.pretrained.esm2_t2_tset
    with pytest.raises(UnknownModelError, match="did you mean 'esm2_t2_test'"):
        protlm.pretrained.load_model_and_alphabet_hub("esm2_t2_tset")
    with pytest.raises(NotFoundError, match="no such checkpoint"):
        protlm.pretrained.load_model_and_alphabet_local(tmp_path / "missing.pt")


def test_unfitted_contact_head_is_the_same_on_every_load_and_stays_unfitted(tmp_path):
    """A fair-esm .pt without its -contact-regression.pt: the (uncalibrated) head is the same on
    every load, and stays marked unfitted through HF and protlm folders."""
    ref, cfg = W.reference_esm2()
    path = tmp_path / "noreg.pt"
    W.write_fair_esm(ref, cfg, path)
    download.regression_path(path).unlink(missing_ok=True)
    a, b = load_model_and_alphabet(path)[0], load_model_and_alphabet(path)[0]
    assert not a.contact_head.fitted
    assert torch.equal(a.contact_head.regression.weight, b.contact_head.regression.weight)
    runner = CliRunner()
    assert runner.invoke(cli, ["convert", str(path), str(tmp_path / "hf"), "--to", "hf"]).exit_code == 0
    assert runner.invoke(cli, ["convert", str(tmp_path / "hf"), str(tmp_path / "p")]).exit_code == 0
    for folder in ("hf", "p"):
        m = load_model_and_alphabet(tmp_path / folder)[0]
        assert not m.contact_head.fitted, folder
        assert torch.equal(m.contact_head.regression.weight, a.contact_head.regression.weight)
    fitted = tmp_path / "fitted.pt"
    W.write_fair_esm(ref, cfg, fitted)  # with its regression file: fitted all the way
    assert runner.invoke(cli, ["convert", str(fitted), str(tmp_path / "hf2"), "--to", "hf"]).exit_code == 0
    assert load_model_and_alphabet(tmp_path / "hf2")[0].contact_head.fitted
