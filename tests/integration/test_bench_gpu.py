"""benchmarks/bench_gpu.py's pieces on CPU: the workloads, the padded batches, the FLOP count behind
'% peak', the interleaved timing, and that the three implementations it times compute the same
mean embeddings and contacts (fp32, tiny shapes). The timings themselves need a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from protlm import build_model
from protlm.data.fasta import write_fasta

CPU = torch.device("cpu")
SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHMLEDPVDAFQ", "MKV", "KALTARQQEVFDLIRDHISQTGMPPTRAEIAQ" * 3]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_gpu")


def test_smoke_workloads_are_the_first_records_and_seeded_random_sequences(bench, tmp_path):
    fasta = tmp_path / "s.fasta"
    records = [(f"r{i}", "ACDEFGHIKL"[i % 10] * (100 + 150 * i)) for i in range(14)]  # the last ones > 1022
    write_fasta(records, fasta)
    work = bench.workloads(True, fasta)
    assert work["mix"] == [s[:1022] for _, s in records[:12]]
    assert [len(s) for s in work["uniform"]] == [371, 371] and [len(s) for s in work["contacts"]] == [120]
    assert set("".join(work["uniform"] + work["contacts"])) <= set(bench.AA)
    assert bench.workloads(True, fasta) == work  # the same sequences on every run


def test_padded_batches_hold_every_sequence_once_within_the_token_budget(bench):
    seqs = ["A" * n for n in (1000, 30, 500, 2000, 4500, 7, 1022, 300, 300)]
    batches = bench.padded_batches(seqs)
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))
    for b in batches:
        padded = len(b) * max(len(seqs[i]) + 2 for i in b)
        assert padded <= bench.TOKS or len(b) == 1  # one sequence over the budget: a batch alone
    lengths = [len(seqs[i]) for b in batches for i in b]
    assert lengths == sorted(lengths)  # fair-esm's extract.py order: shortest first


@pytest.mark.parametrize("family", ["esm2", "esm1b"])
def test_model_flops_is_twice_the_layer_weights_per_token_plus_attention(bench, family):
    """'% peak' divides by 2 x (multiply-adds of the layers' weight matrices) per token plus
    QK^T and AV over each sequence's own length: count the weights on the built model."""
    for smoke in (True, False):
        cfg = bench.config(family, smoke)
        with torch.device("meta"):
            model = build_model(cfg)
        weights = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, nn.Linear))
        tokens = [len(s) + 2 for s in SEQS]
        want = sum(2 * weights * t + 2 * 2 * t * t * cfg.embed_dim * cfg.num_layers for t in tokens)
        assert bench.model_flops(cfg, SEQS) == want


@pytest.fixture(scope="module", params=["esm2", "esm1b"])
def built(bench, request):
    cfg = bench.config(request.param, smoke=True)
    models, autocast = bench.build_all(cfg, CPU, torch.float32)
    return cfg, models, autocast


def test_fp32_runs_use_no_autocast(built):
    assert built[2] is False


def test_every_implementation_computes_the_same_mean_embeddings(bench, built):
    """The agreement the benchmark reports as max|diff|: the protlm engines (padded and packed)
    and its fair-esm and transformers paths give one mean embedding per sequence."""
    cfg, models, autocast = built
    batches = bench.padded_batches(SEQS)
    ref = bench.reference_mean("fair-esm", models["fair-esm"], cfg.embed_dim, SEQS, batches, CPU, autocast)
    tokens = models["protlm"].alphabet.get_batch_converter()([("x", SEQS[1])])[2]  # BOS, residues, EOS
    with torch.no_grad():  # by hand: one sequence alone, the mean over its residues only
        alone = models["protlm"](tokens, repr_layers=[cfg.num_layers])["representations"][cfg.num_layers]
    torch.testing.assert_close(ref[1], alone[0, 1:-1].mean(0), rtol=1e-5, atol=1e-5)
    got = {k: bench._vec(e.pooled(SEQS, "mean")) for k, e in bench.engines(models["protlm"], False).items()}
    got["transformers"] = bench.reference_mean("transformers", models["transformers"], cfg.embed_dim, SEQS,
                                               batches, CPU, autocast)
    assert set(got) == {"protlm-padded", "protlm-packed", "transformers"}
    for name, vec in got.items():
        assert vec.shape == (len(SEQS), cfg.embed_dim)
        torch.testing.assert_close(vec, ref, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.filterwarnings("ignore::protlm.models.heads.UncalibratedContactsWarning")  # random weights
def test_every_implementation_predicts_the_same_contacts(bench, built):
    cfg, models, autocast = built
    seq = SEQS[0]
    maps = {k: bench.contacts_fn(k, m, seq, CPU, autocast)() for k, m in models.items()}
    for name, contacts in maps.items():
        assert contacts.shape == (1, len(seq), len(seq)), name
        torch.testing.assert_close(contacts.float(), maps["fair-esm"].float(), rtol=1e-4, atol=1e-5, msg=name)


def test_interleaved_warms_each_then_runs_rounds_in_turn(bench):
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    res = bench.interleaved(fns, 2, CPU)
    assert calls == list("abc") * 3  # one warm-up each, then rounds a, b, c
    assert set(res) == set("abc")
    for median, peak, warm in res.values():
        assert median >= 0 and warm >= 0 and not peak > 0  # peak memory is measured on CUDA only
