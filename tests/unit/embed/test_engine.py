"""protlm.embed.engine: packed batches give the padded path's numbers (CPU, fp32), windows included."""

from __future__ import annotations

import pytest
import torch

from protlm import build_model
from protlm.data.fasta import load_fasta
from protlm.embed.engine import Engine
from protlm.embed.pipeline import BackgroundWriter, prefetch
from protlm.errors import InputError
from protlm.models.layers import init_weights
from protlm.pretrained.registry import DEBUG_CONFIGS

TOL = 1e-5
WANT = {"mean", "bos", "max", "per_tok"}


@pytest.fixture(params=["esm1b_debug", "esm2_debug"])
def model(request):
    torch.manual_seed(0)
    m = build_model(DEBUG_CONFIGS[request.param])
    init_weights(m)  # realistic magnitudes, so 1e-5 means something
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def seqs(shared_data):
    recs = load_fasta(shared_data / "sequences" / "some_proteins.fasta")
    return [r.sequence for r in recs][:8] + ["M", "MKV"]


def _all(engine, seqs, want):
    out = [None] * len(seqs)
    for batch, recs in engine.run(seqs, want):
        for i, r in zip(batch, recs):
            out[i] = r
    return out


@pytest.mark.parametrize("long,window", [("truncate", None), ("window", 150)])
def test_packed_equals_padded(model, seqs, long, window):
    kw = dict(repr_layers=(0, -1), toks_per_batch=900, long=long, window=window)
    packed = _all(Engine(model, **kw), seqs, WANT)
    padded = _all(Engine(model, packed=False, **kw), seqs, WANT)
    for p, q in zip(packed, padded):
        for k in WANT:
            torch.testing.assert_close(p[k], q[k], atol=TOL, rtol=0)


def test_matches_a_single_unbatched_forward(model, seqs):
    eng = Engine(model, repr_layers=(-1,), toks_per_batch=700)
    got = _all(eng, seqs, {"mean", "bos", "per_tok"})
    for s, r in zip(seqs, got):
        toks = model.alphabet.get_batch_converter()([("x", s)])[2]
        with torch.no_grad():
            x = model(toks, repr_layers=[-1], return_logits=False)["representations"][2][0]
        torch.testing.assert_close(r["per_tok"][0], x[1 : len(s) + 1], atol=TOL, rtol=0)
        torch.testing.assert_close(r["mean"][0], x[1 : len(s) + 1].mean(0), atol=TOL, rtol=0)
        torch.testing.assert_close(r["bos"][0], x[0], atol=TOL, rtol=0)


def test_windows_cover_long_sequences_and_contacts_run_padded(model, seqs):
    eng = Engine(model, long="window", window=120, toks_per_batch=600)
    s = seqs[0]
    [(_, [r])] = list(eng.run([s], {"per_tok", "contacts"}))
    assert r["per_tok"].shape == (1, len(s), model.embed_dim)
    assert r["contacts"].shape == (len(s), len(s))
    assert Engine(model, long="truncate", window=120).spans(300) == [(0, 120)]
    with pytest.raises(InputError, match="over the limit"):
        Engine(model, long="error", window=120).spans(300)


def test_log_probs_packed_equal_each_sequence_alone(model, seqs):
    """Engine.log_probs (the variant scorers' path): per list, in input order, the log-softmax
    of a lone padded forward, <mask> kept where placed; several lists share a packed forward."""
    a = model.alphabet
    encoded = [a.encode(s[:40]) for s in seqs]
    encoded[0][3] = a.mask_idx
    got = [None] * len(encoded)
    forwards = 0
    for idx, lps in Engine(model, a, toks_per_batch=200).log_probs(encoded):
        forwards += 1
        for i, lp in zip(idx, lps):
            got[i] = lp
    assert forwards < len(encoded)
    for e, lp in zip(encoded, got):
        tokens = torch.tensor([[a.cls_idx, *e, a.eos_idx]])
        with torch.no_grad():
            want = torch.log_softmax(model(tokens)["logits"][0], -1)
        assert lp.shape == want.shape
        torch.testing.assert_close(lp, want, atol=TOL, rtol=0)
    with pytest.raises(InputError, match="over the model's limit"):
        next(Engine(model, a, window=10).log_probs([a.encode("A" * 11)]))


def test_packed_batches_fill_the_real_token_budget(model):
    eng = Engine(model, toks_per_batch=100)
    batches = eng.batches([10, 40, 30, 200, 20], {"mean"})
    assert batches == [[0, 4, 2], [1], [3]]  # 12+22+32=66; +42 > 100; the 202-token one alone


def test_cpu_forwards_keep_the_widest_activation_off_fresh_mmaps(model, seqs):
    """On a CPU a packed forward holds at most cpu_forward_tokens: its FFN activation (plus the
    int8 kernel's extra row) stays within glibc's 32 MiB mmap threshold. A batch is split into
    more forwards, with the same outputs, for embeddings and log-probs alike."""
    from protlm.embed.engine import CPU_ACTIVATION_BYTES, cpu_forward_tokens
    from protlm.models import esm1b_config, esm2_config

    published = {(12, 480): 4352, (30, 640): 3072, (33, 1280): 1536}  # ESM-2 35M, 150M, 650M
    for (layers, dim), tokens in published.items():
        cfg = esm2_config(layers, dim, 20)
        assert cpu_forward_tokens(cfg) == tokens
        assert (tokens + 1) * cfg.ffn_embed_dim * 4 <= CPU_ACTIVATION_BYTES
    assert cpu_forward_tokens(esm1b_config()) == 1536
    assert Engine(model).forward_tokens == min(4096, cpu_forward_tokens(model.config))
    assert Engine(model, toks_per_batch=300).forward_tokens == 300
    with pytest.raises(InputError, match="forward_tokens"):
        Engine(model, forward_tokens=0)

    whole, split = Engine(model, toks_per_batch=2000), Engine(model, toks_per_batch=2000, forward_tokens=400)
    batch = whole.batches([len(s) for s in seqs], {"mean"})[0]
    assert len(split.plan(seqs, batch, {"mean"}).forwards) > len(whole.plan(seqs, batch, {"mean"}).forwards)
    for p, q in zip(_all(split, seqs, {"mean", "per_tok"}), _all(whole, seqs, {"mean", "per_tok"})):
        torch.testing.assert_close(p["per_tok"], q["per_tok"], atol=TOL, rtol=0)
    a = model.alphabet
    encoded = [a.encode(s[:150]) for s in seqs]
    n_split = sum(1 for _ in split.log_probs(encoded))
    assert n_split > sum(1 for _ in whole.log_probs(encoded))
    got = {i: lp for idx, lps in split.log_probs(encoded) for i, lp in zip(idx, lps)}
    for idx, lps in whole.log_probs(encoded):
        for i, lp in zip(idx, lps):
            torch.testing.assert_close(got[i], lp, atol=TOL, rtol=0)


def test_compile_rounds_packed_batches_up_to_a_bucket(model, seqs):
    """Compiled layers give the eager numbers, and a run with many batch sizes compiles only a
    few token counts (multiples of COMPILE_BUCKET), the dummy sequence's rows never reaching
    the output."""
    from protlm.embed.engine import COMPILE_BUCKET

    eng = Engine(model, repr_layers=(-1,), toks_per_batch=300, compile=True)
    got = _all(eng, seqs, {"mean", "per_tok"})
    eager = Engine(model, repr_layers=(-1,), toks_per_batch=300)
    eager.compile = False  # same (compiled) model object, forced through the unbucketed path
    for p, q in zip(got, _all(eager, seqs, {"mean", "per_tok"})):
        assert p["per_tok"].shape == q["per_tok"].shape
        torch.testing.assert_close(p["mean"], q["mean"], atol=1e-4, rtol=0)
    sizes = {sum(min(len(s), 1022) + 2 for s in (seqs[i] for i in b)) for b in eng.batches([len(s) for s in seqs], {"mean"})}
    assert len(sizes) > len(eng.compiled_token_counts) >= 1
    assert all(n % COMPILE_BUCKET == 0 for n in eng.compiled_token_counts) and eng.compile_s > 0


def test_resolve_layers_once_on_the_model(model):
    assert model.resolve_layers([-1, 0, 2, 2]) == [0, 2]
    with pytest.raises(InputError, match="repr layer 3 out of range"):
        model.resolve_layers([3])


def test_prefetch_and_writer_keep_order_and_raise():
    assert list(prefetch(iter(range(10)), depth=2)) == list(range(10))
    seen = []
    with BackgroundWriter(seen.append, depth=2) as w:
        for i in range(20):
            w.put(i)
    assert seen == list(range(20))

    def bad(i):
        raise OSError("disk full")

    w = BackgroundWriter(bad)
    w.put(1)
    with pytest.raises(OSError, match="disk full"):
        w.close()

    def gen():
        yield 1
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        list(prefetch(gen()))


def test_writer_queue_is_bounded():
    """A slow writer makes put() wait: at most `depth` items queued, so memory stays flat."""
    import threading

    release, written = threading.Event(), []

    def slow(i):
        release.wait(5)
        written.append(i)

    w = BackgroundWriter(slow, depth=2)
    t = threading.Thread(target=lambda: [w.put(i) for i in range(10)])
    t.start()
    t.join(0.5)
    assert t.is_alive() and w._q.qsize() <= 2  # blocked: one being written, two waiting
    release.set()
    t.join(5)
    w.close()
    assert written == list(range(10))


def test_writer_with_many_writes_what_waits_as_one_piece_in_order():
    """many=True: a writer that falls behind gets every waiting item at once (fewer, larger
    shards), still in put order, each item once."""
    import threading

    started, release, calls = threading.Event(), threading.Event(), []

    def write(items):
        started.set()
        release.wait(5)
        calls.append(list(items))

    w = BackgroundWriter(write, depth=4, many=True)
    w.put(0)
    assert started.wait(5)  # 0 is being written; 1..4 queue up behind it
    for i in range(1, 5):
        w.put(i)
    release.set()
    w.close()
    assert calls == [[0], [1, 2, 3, 4]]
