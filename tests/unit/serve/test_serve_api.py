"""The HTTP API against a debug model on a real uvicorn server: every endpoint's numbers equal
the library command it serves (`protlm embed`, `contacts predict`, `variants score`, `evaluate`),
and every refusal names what and where."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from .conftest import start
from protlm.contacts.predict import attention_contacts
from protlm.data.fasta import load_fasta
from protlm.embed import EmbedConfig
from protlm.embed.pipeline import make_engine
from protlm.runtime.options import InferenceOptions
from protlm.evaluate.perplexity import MaskPlan, masked_perplexity
from protlm.variants.scoring import score_mutants

TOL = 1e-5
NPY, ST = "application/x-npy", "application/x-safetensors"


@pytest.fixture(scope="module")
def records(shared_data):
    recs = load_fasta(shared_data / "sequences" / "some_proteins.fasta")
    return [(r.id, r.sequence) for r in recs if len(r.sequence) < 300][:5]


@pytest.fixture(scope="module")
def server(serve_model):
    with start(serve_model, max_sequences=6, max_residues=2500, max_body_bytes=100_000,
               max_batch_tokens=1024, max_queue_tokens=50_000) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def embed_reference(model, seqs, layers, include, long="truncate"):
    """What `protlm embed` computes: its engine, its default token budget."""
    engine = make_engine(model, model.alphabet, EmbedConfig(tuple(layers), tuple(include)),
                         InferenceOptions(toks_per_batch=4096, long=long))
    out = [None] * len(seqs)
    for idx, recs in engine.run(seqs, set(include)):
        for i, r in zip(idx, recs):
            out[i] = r
    return out


def body(records, **extra):
    return {"sequences": [{"id": i, "sequence": s} for i, s in records], **extra}


def error(reply, status):
    assert reply.status_code == status, reply.text
    return reply.json()["error"]["message"]


def test_health_readiness_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    [m] = client.get("/v1/models").json()["data"]
    assert m["id"] == "debug" and m["ready"] and m["layers"] == 2 and m["embed_dim"] == 64
    assert m["contacts"] and not m["contacts_calibrated"] and m["masked_lm"]


def test_embeddings_equal_protlm_embed(client, records, reference_model):
    r = client.post("/v1/embeddings", json=body(records, layers=[0, -1], include=["per_tok", "mean", "bos"]))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["layers"] == [0, 2] and [d["id"] for d in got["data"]] == [i for i, _ in records]
    ref = embed_reference(reference_model, [s for _, s in records], (0, -1), ("mean", "bos", "per_tok"))
    for d, want, (_, seq) in zip(got["data"], ref, records):
        assert d["length"] == len(seq) and "truncated_from" not in d
        for k in ("mean", "bos", "per_tok"):
            for j, layer in enumerate(("0", "2")):
                torch.testing.assert_close(torch.tensor(d[k][layer]), want[k][j], atol=TOL, rtol=0)


def test_embeddings_as_npy_and_safetensors(client, records, reference_model):
    ref = embed_reference(reference_model, [s for _, s in records], (-1,), ("mean", "per_tok"))
    r = client.post("/v1/embeddings", json=body(records), headers={"Accept": NPY})
    assert r.headers["content-type"] == NPY and r.headers["x-protlm-layers"] == "[2]"
    mean = np.load(io.BytesIO(r.content))
    assert mean.shape == (5, 1, 64) and mean.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(mean), torch.stack([x["mean"] for x in ref]), atol=TOL, rtol=0)
    one = client.post("/v1/embeddings", json=body(records[:1], include=["per_tok"]), headers={"Accept": NPY})
    assert np.load(io.BytesIO(one.content)).shape == (1, len(records[0][1]), 64)
    r = client.post("/v1/embeddings", json=body(records, include=["mean", "per_tok"]), headers={"Accept": ST})
    t = load_safetensors(r.content)
    assert t["mean"].shape == (5, 1, 64) and len([k for k in t if k.startswith("per_tok.")]) == 5
    for i, x in enumerate(ref):
        torch.testing.assert_close(t[f"per_tok.{i}"], x["per_tok"], atol=TOL, rtol=0)
    # npy holds one array: refused before any compute, with what to ask for instead
    msg = error(client.post("/v1/embeddings", json=body(records, include=["mean", "per_tok"]),
                            headers={"Accept": NPY}), 406)
    assert "one array" in msg and ST in msg


def test_long_sequences_as_protlm_embed_long(client, reference_model):
    seq = ("MKTAYIAKQRQISFVKSHFSRQ" * 60)[:1100]  # over the debug model's 1022
    r = client.post("/v1/embeddings", json=body([("long", seq)])).json()["data"][0]
    assert r["truncated_from"] == 1100 and r["length"] == 1022
    w = client.post("/v1/embeddings", json=body([("long", seq)], long="window")).json()["data"][0]
    [ref] = embed_reference(reference_model, [seq], (-1,), ("mean",), long="window")
    torch.testing.assert_close(torch.tensor(w["mean"]["2"]), ref["mean"][0], atol=TOL, rtol=0)
    msg = error(client.post("/v1/embeddings", json=body([("ok", "MKV"), ("long", seq)], long="error")), 422)
    assert "'long' has 1100 residues" in msg and "1022" in msg


def test_residues_outside_the_alphabet(client, reference_model):
    msg = error(client.post("/v1/embeddings", json=body([("a", "MKV"), ("b", "MKTB1A")])), 422)
    assert "record 'b'" in msg and "'1' at position 5" in msg and "unknown_to_x" in msg
    r = client.post("/v1/embeddings", json=body([("b", "mktb1a")], unknown_to_x=True)).json()["data"][0]
    [ref] = embed_reference(reference_model, ["MKTBXA"], (-1,), ("mean",))  # as read_fasta(unknown='X')
    torch.testing.assert_close(torch.tensor(r["mean"]["2"]), ref["mean"][0], atol=TOL, rtol=0)


def test_request_limits_name_the_record(client):
    assert "duplicate record ID 'a'" in error(client.post("/v1/embeddings", json=body([("a", "MK"), ("a", "MV")])), 422)
    msg = error(client.post("/v1/embeddings", json=body([(f"r{i}", "MKV") for i in range(7)])), 413)
    assert "7 sequences" in msg and "limit of 6" in msg
    msg = error(client.post("/v1/embeddings", json=body([("a", "M" * 1200), ("b", "M" * 1200), ("c", "M" * 200)])), 413)
    assert "record 'c' (sequences[2])" in msg and "2600 residues" in msg and "2500" in msg
    big = json.dumps(body([("a", "M" * 120_000)])).encode()
    assert "100000 bytes" in error(client.post("/v1/embeddings", content=big), 413)

    def chunks():  # no Content-Length: the limit applies while reading
        for k in range(0, len(big), 8192):
            yield big[k : k + 8192]
    assert "100000 bytes" in error(client.post("/v1/embeddings", content=chunks(),
                                               headers={"Content-Type": "application/json"}), 413)
    assert "not served here" in error(client.post("/v1/embeddings", json=body([("a", "MK")], model="esm2_t33")), 404)
    assert "layers" in error(client.post("/v1/embeddings", json=body([("a", "MK")], layers=[7])), 422)
    msg = error(client.post("/v1/embeddings", json={"sequences": [{"id": "a", "seq": "MK"}]}), 422)
    assert "sequences.0.sequence: Field required" in msg and "sequences.0.seq" in msg
    assert "empty sequence" in error(client.post("/v1/embeddings", json=body([("a", " * ")])), 422)


def test_error_types_do_not_depend_on_which_layer_refused(client):
    """One `type` per kind of refusal: the body limit (middleware) and the per-request limits
    (service) are both too_large, a schema error and a bad residue both invalid_request."""
    def kind(reply, status):
        assert reply.status_code == status, reply.text
        return reply.json()["error"]["type"]

    big = json.dumps(body([("a", "M" * 120_000)])).encode()
    assert kind(client.post("/v1/embeddings", content=big), 413) == "too_large"
    assert kind(client.post("/v1/embeddings", json=body([(f"r{i}", "MKV") for i in range(7)])), 413) == "too_large"
    assert kind(client.post("/v1/embeddings", json={"sequences": [{"id": "a", "seq": "MK"}]}), 422) == "invalid_request"
    assert kind(client.post("/v1/embeddings", json=body([("a", "MK1")])), 422) == "invalid_request"
    assert kind(client.post("/v1/embeddings", json=body([("a", "MK")], model="esm2_t33")), 404) == "unknown_model"


def test_a_body_that_is_not_json_says_so(client):
    msg = error(client.post("/v1/embeddings", content=b'{"sequences": [,]}',
                            headers={"Content-Type": "application/json"}), 422)
    assert msg == "body: invalid JSON at character 15: Expecting value"
    msg = error(client.post("/v1/embeddings", content=json.dumps(body([("a", "MK")])),
                            headers={"Content-Type": "application/x-www-form-urlencoded"}), 422)
    assert "Content-Type: application/json" in msg

def test_contacts_equal_contacts_predict(client, records, reference_model):
    r = client.post("/v1/contacts", json=body(records[:2]))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["calibrated"] is False  # the debug model's head was never fitted
    for d, (_, seq) in zip(got["data"], records):
        want = attention_contacts(reference_model, reference_model.alphabet, seq)
        np.testing.assert_allclose(np.array(d["contacts"]), want, atol=TOL, rtol=0)
    one = client.post("/v1/contacts", json=body(records[:1]), headers={"Accept": NPY})
    assert np.load(io.BytesIO(one.content)).shape == (len(records[0][1]),) * 2
    assert error(client.post("/v1/contacts", json=body(records[:2]), headers={"Accept": NPY}), 406)


@pytest.mark.parametrize("method", ["masked-marginal", "wt-marginal", "pseudo-ll"])
def test_variants_equal_variants_score(client, reference_model, method):
    wt = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"
    mutants = ["M1A", "K2R:T3A", "S13W", "K2R"]
    r = client.post("/v1/variants", json={"sequence": wt, "mutations": mutants, "method": method})
    assert r.status_code == 200, r.text
    want = score_mutants(reference_model, reference_model.alphabet, wt, mutants, method)
    got = r.json()["scores"]
    assert [s["mutant"] for s in got] == mutants
    np.testing.assert_allclose([s["score"] for s in got], want, atol=1e-4, rtol=0)


def test_landscape_is_every_single_substitution(client, reference_model):
    wt = "MKTAYIAKQRQISFVK"
    r = client.post("/v1/variants", json={"id": "p", "sequence": wt.lower()})
    assert r.status_code == 200, r.text
    got = r.json()
    aas = got["amino_acids"]
    assert got["wild_type"] == wt and len(got["matrix"]) == len(wt)
    mutants = [f"{c}{i + 1}{a}" for i, c in enumerate(wt) for a in aas if a != c]
    want = iter(score_mutants(reference_model, reference_model.alphabet, wt, mutants))
    m = np.array(got["matrix"])
    for i, c in enumerate(wt):
        for j, a in enumerate(aas):
            assert m[i, j] == 0.0 if a == c else abs(m[i, j] - next(want)) < 1e-4
    npy = client.post("/v1/variants", json={"sequence": wt}, headers={"Accept": NPY})
    np.testing.assert_allclose(np.load(io.BytesIO(npy.content)), m, atol=1e-6)


def test_variant_errors_name_the_mutant(client):
    msg = error(client.post("/v1/variants", json={"id": "wt1", "sequence": "MKTAY", "mutations": ["M1A", "K3R"]}), 422)
    assert msg.startswith("wt1: mutations[1]: mutant 'K3R'") and "has T there" in msg
    assert "empty list" in error(client.post("/v1/variants", json={"sequence": "MKTAY", "mutations": []}), 422)
    assert "gap" in error(client.post("/v1/variants", json={"sequence": "MK-TAY"}), 422)


def test_perplexity_equals_evaluate(client, records, reference_model):
    r = client.post("/v1/perplexity", json=body(records, seed=7))
    assert r.status_code == 200, r.text
    got = r.json()
    seqs = [s for _, s in records]
    want = masked_perplexity(reference_model, reference_model.alphabet, MaskPlan(seqs, 7, 1022))
    assert got["masked_tokens"] == want["masked_tokens"]
    # the same masks and losses; the server runs each record in a batch of its own (fp32 logits
    # of other batch shapes: rounding only)
    assert abs(got["perplexity"] - want["perplexity"]) < 1e-6 * want["perplexity"]
    for d, s in zip(got["data"], seqs):
        one = masked_perplexity(reference_model, reference_model.alphabet, MaskPlan([s], 7, 1022))
        assert abs(d["perplexity"] - one["perplexity"]) < 1e-6 * one["perplexity"]
    assert error(client.post("/v1/perplexity", json=body(records[:1]), headers={"Accept": NPY}), 406)


def test_metrics_are_prometheus_text(client, records):
    client.post("/v1/embeddings", json=body(records[:1]))
    text = client.get("/metrics").text
    for name in ('protlm_requests_total{endpoint="/v1/embeddings",status="200"}',
                 'protlm_request_duration_seconds_bucket{endpoint="/v1/embeddings",le="+Inf"}',
                 "protlm_queue_depth 0", "protlm_batch_records_bucket", "protlm_batch_tokens_count",
                 "protlm_residues_total", "protlm_residues_per_second", "protlm_ready 1",
                 'protlm_rejected_total{reason="invalid"}', 'protlm_rejected_total{reason="too_large"}'):
        assert name in text, name


def test_page_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="page.js"' in page.text and client.get("/page.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert set(client.get("/openapi.json").json()["paths"]) >= {"/v1/embeddings", "/v1/contacts", "/v1/variants",
                                                                "/v1/perplexity", "/v1/models", "/metrics"}
    assert client.get("/static/../../etc/passwd").status_code == 404  # no route maps a path to a file
