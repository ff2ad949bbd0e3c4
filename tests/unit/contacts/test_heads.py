"""Attention-head fitting, the bilinear head and windowed prediction, on debug models."""

import dataclasses

import numpy as np
import pytest
import torch

from protlm import build_model
from protlm.contacts import pipeline
from protlm.contacts.bilinear import BilinearTrainConfig, load_bilinear, save_bilinear
from protlm.pretrained.contact_regression import load_contact_regression, read_regression, save_regression
from protlm.contacts.predict import attention_contacts, attention_features, predict_contacts
from protlm.pretrained.registry import DEBUG_CONFIGS
from protlm.data.windows import merge_2d, window_spans


@pytest.fixture(scope="module")
def chains(shared_data):
    from protlm.alphabet import Alphabet

    specs = [shared_data / "structures" / f"{n}.cif" for n in ("1l2y", "2axd", "1aki")]
    return pipeline.load_structures(specs, Alphabet.from_architecture("ESM-1b"))


def test_attention_fit_loads_into_contact_head(debug_model, chains, tmp_path):
    model = debug_model("esm2_debug")
    w, b = pipeline.fit_attention_head(model, model.alphabet, chains, C=1e4)  # weak penalty: a random model's features are tiny
    X = model.num_layers * model.attention_heads
    assert w.shape == (1, X) and b.shape == (1,) and (w != 0).any()
    pt = save_regression(w, b, tmp_path / "esm2_debug-contact-regression.pt")
    raw = torch.load(pt, weights_only=True)  # the reference's regression-file layout
    assert set(raw["model"]) == {"contact_head.regression.weight", "contact_head.regression.bias"}
    fresh = debug_model("esm2_debug")
    load_contact_regression(fresh, pt)
    assert torch.equal(fresh.contact_head.regression.weight, w)
    # the features the fit saw are exactly what the head reads at prediction time
    seq = chains[1].sequence
    f_XLL = attention_features(fresh, fresh.alphabet, seq)
    expect = torch.sigmoid(torch.einsum("xij,x->ij", f_XLL, w[0]) + b).numpy()
    np.testing.assert_allclose(attention_contacts(fresh, fresh.alphabet, seq), expect, atol=1e-5)
    st = save_regression(w, b, tmp_path / "reg.safetensors")
    assert torch.equal(read_regression(st)["contact_head.regression.bias"], b)


def test_regression_shape_mismatch_is_reported(debug_model, tmp_path):
    path = save_regression(torch.zeros(1, 3), torch.zeros(1), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_contact_regression(debug_model("esm2_debug"), path)
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a contact-regression file"):
        read_regression(tmp_path / "other.pt")


def test_bilinear_train_save_load_round_trip(debug_model, chains, tmp_path):
    model = debug_model("esm2_debug")
    cfg = BilinearTrainConfig(proj_dim=8, epochs=15)
    head = pipeline.fit_bilinear_head(model, model.alphabet, chains[:2], cfg, model_name="esm2_debug")
    folder = save_bilinear(head, tmp_path / "bilinear_contact")
    loaded = load_bilinear(folder)
    assert loaded.config == head.config and loaded.config.model == "esm2_debug"
    seq = chains[1].sequence
    a = predict_contacts(model, model.alphabet, seq, head)
    b = predict_contacts(model, model.alphabet, seq, loaded)
    assert a.shape == (len(seq), len(seq)) and np.array_equal(a, b)
    np.testing.assert_allclose(a, a.T, atol=1e-6)
    assert ((a > 0) & (a < 1)).all()


def test_bilinear_training_lowers_loss(debug_model, chains):
    from protlm.contacts.bilinear import _pair_targets
    from protlm.contacts.predict import representations

    model = debug_model("esm2_debug")
    h = representations(model, model.alphabet, chains[2].sequence)[None]
    t, m = _pair_targets(chains[2].contacts())

    def loss(head):
        with torch.no_grad():
            z = head.logits(h)[0]
            return torch.nn.functional.binary_cross_entropy_with_logits(0.5 * (z + z.T)[m], t[m]).item()

    untrained = pipeline.fit_bilinear_head(model, model.alphabet, chains[2:], BilinearTrainConfig(proj_dim=8, epochs=0))
    trained = pipeline.fit_bilinear_head(model, model.alphabet, chains[2:], BilinearTrainConfig(proj_dim=8, epochs=40))
    assert loss(trained) < loss(untrained)


def test_bilinear_probabilities_are_calibrated_to_the_contact_rate(debug_model, chains):
    """Positives are up-weighted in training; the bias correction afterwards makes the mean
    predicted probability match the contact rate (not ~0.5); a constant shift keeps the ranking."""
    from protlm.contacts.bilinear import _pair_targets

    model = debug_model("esm2_debug")
    head = pipeline.fit_bilinear_head(model, model.alphabet, chains, BilinearTrainConfig(proj_dim=8, epochs=40))
    probs, targets = [], []
    for c in chains:
        t, m = _pair_targets(c.contacts())
        probs.append(torch.as_tensor(predict_contacts(model, model.alphabet, c.sequence, head))[m])
        targets.append(t[m])
    rate, mean = float(torch.cat(targets).mean()), float(torch.cat(probs).mean())
    assert 0 < rate < 0.2 and 0.5 * rate < mean < 2 * rate, (rate, mean)


def test_long_protein_uses_windows_of_the_model_limit(chains):
    torch.manual_seed(0)
    config = dataclasses.replace(DEBUG_CONFIGS["esm1b_debug"], max_positions=34)  # 32 residues
    model = build_model(config).eval()
    seq = chains[2].sequence[:70]
    pred = predict_contacts(model, model.alphabet, seq)
    spans = window_spans(70, 32)
    assert len(spans) > 2
    parts = [torch.from_numpy(attention_contacts(model, model.alphabet, seq[s:e])) for s, e in spans]
    np.testing.assert_allclose(pred, merge_2d(parts, spans, 70).numpy(), atol=1e-6)
    assert pred.shape == (70, 70) and pred[0, 69] == 0  # never in one window together
    short = seq[:30]  # within the limit: one plain forward
    np.testing.assert_allclose(predict_contacts(model, model.alphabet, short),
                               model.predict_contacts(model.alphabet.get_batch_converter()([("s", short)])[2])[0]
                               .detach().numpy(), atol=1e-6)
