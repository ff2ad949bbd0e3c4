"""Mutation parsing and the three zero-shot scores, checked against hand computation."""

import pytest
import torch

from protlm.alphabet import pad_tokens
from protlm.variants.mutations import Mutation, MutationError, apply_mutations, centred_window, parse_mutant
from protlm.variants.scoring import score_mutants
from protlm.variants.store import PLLStore
from protlm.data.windows import window_spans

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIE"


def test_parse_single_and_multi():
    assert parse_mutant("K2C", WT) == (Mutation(1, "K", "C"),)
    assert parse_mutant("A4G:K2C", WT) == (Mutation(1, "K", "C"), Mutation(3, "A", "G"))
    assert parse_mutant("K1C", WT, offset=0) == (Mutation(1, "K", "C"),)
    assert apply_mutations(WT, parse_mutant("M1A:K2C", WT)).startswith("ACTA")


@pytest.mark.parametrize("bad, msg", [
    ("H2C", r"'H2C'.*wild-type letter H at position 2.*has K"),
    ("K99C", r"'K99C'.*position 99 is outside"),
    ("K0C", "outside"),
    ("K2C:K2D", "same position"),
    ("2C", "cannot parse"),
    ("K2J", "not an amino acid"),
])
def test_parse_errors_name_the_mutant(bad, msg):
    with pytest.raises(MutationError, match=msg):
        parse_mutant(bad, WT)


def test_centred_window():
    assert centred_window([5], 10, 20) == (0, 10)
    assert centred_window([50], 100, 20) == (40, 60)
    assert centred_window([2], 100, 20) == (0, 20)
    assert centred_window([98], 100, 20) == (80, 100)
    with pytest.raises(MutationError, match="span"):
        centred_window([0, 50], 100, 20)


def _log_probs(model, seq, mask=()):
    a = model.alphabet
    toks = pad_tokens([a.encode(seq)], a)
    for p in mask:
        toks[0, p + 1] = a.mask_idx
    with torch.no_grad():
        return torch.log_softmax(model(toks)["logits"][0], -1)


def test_masked_marginal_by_hand(debug_model):
    model = debug_model("esm2_debug")
    a = model.alphabet
    got = score_mutants(model, a, WT, ["K2C", "K2C:A4G", "Y5Y"], "masked-marginal", toks_per_batch=2 * (len(WT) + 2))
    lp = _log_probs(model, WT, [1])
    assert got[0] == pytest.approx(float(lp[2, a.get_idx("C")] - lp[2, a.get_idx("K")]), abs=1e-5)
    lp = _log_probs(model, WT, [1, 3])  # positions of one multiple mutant are masked together
    want = lp[2, a.get_idx("C")] - lp[2, a.get_idx("K")] + lp[4, a.get_idx("G")] - lp[4, a.get_idx("A")]
    assert got[1] == pytest.approx(float(want), abs=1e-5)
    assert got[2] == 0.0


def test_masked_marginal_scan_masks_each_position_once_in_packed_forwards(debug_model):
    """A full single-mutant scan (L x 19 variants) runs L masked sequences, not one per variant,
    packed several to a model call; each position's 19 scores come from its one forward."""
    model = debug_model("esm2_debug")
    a = model.alphabet
    mutants = [f"{w}{i}{m}" for i, w in enumerate(WT, 1) for m in "ACDEFGHIKLMNPQRSTVWY" if m != w]
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["cu_seqlens"].numel() - 1),
                                           with_kwargs=True)
    got = score_mutants(model, a, WT, mutants, "masked-marginal", toks_per_batch=8 * (len(WT) + 2))
    hook.remove()
    assert len(mutants) == 19 * len(WT) and sum(seen) == len(WT)  # one masked sequence per position
    assert len(seen) == -(-len(WT) // 8)  # packed: 8 sequences per model call
    lp = _log_probs(model, WT, [4])
    for m, score in zip(mutants, got):
        if m[1:-1] == "5":
            assert score == pytest.approx(float(lp[5, a.get_idx(m[-1])] - lp[5, a.get_idx(m[0])]), abs=1e-5)


def test_wt_marginal_by_hand(debug_model):
    model = debug_model("esm1b_debug")
    a = model.alphabet
    got = score_mutants(model, a, WT, ["K2C:A4G"], "wt-marginal")
    lp = _log_probs(model, WT)
    want = lp[2, a.get_idx("C")] - lp[2, a.get_idx("K")] + lp[4, a.get_idx("G")] - lp[4, a.get_idx("A")]
    assert got[0] == pytest.approx(float(want), abs=1e-5)


def test_pseudo_ll_by_hand(debug_model):
    model = debug_model("esm2_debug")
    a = model.alphabet
    wt = WT[:8]

    def pll(s):
        return sum(float(_log_probs(model, s, [i])[i + 1, a.get_idx(c)]) for i, c in enumerate(s))

    got = score_mutants(model, a, wt, ["K2C:A4G", "M1M"], "pseudo-ll", toks_per_batch=3 * (len(wt) + 2))
    assert got[0] == pytest.approx(pll("MCTGYIAK") - pll(wt), abs=1e-4)
    assert got[1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["masked-marginal", "pseudo-ll"])
def test_long_protein_scored_in_centred_window(debug_model, method):
    model = debug_model("esm2_debug")
    a = model.alphabet
    long_wt = WT * 2  # 62 residues, scored with a 20-residue limit
    got = score_mutants(model, a, long_wt, ["K33A", "M1A"], method, max_len=20)
    # K33 (index 32): window [22, 42), where it is residue 11 -> mutant "K11A" there
    s, e = centred_window([32], len(long_wt), 20)
    assert (s, e) == (22, 42)
    want = score_mutants(model, a, long_wt[s:e], ["K11A"], method)
    assert got[0] == pytest.approx(want[0], abs=1e-5)
    want = score_mutants(model, a, long_wt[:20], ["M1A"], method)
    assert got[1] == pytest.approx(want[0], abs=1e-5)


def test_wt_marginal_windows_average_overlaps(debug_model):
    model = debug_model("esm2_debug")
    a = model.alphabet
    full = score_mutants(model, a, WT, ["K2C", "G28A"], "wt-marginal")
    same = score_mutants(model, a, WT, ["K2C", "G28A"], "wt-marginal", max_len=len(WT))
    assert full == same
    windowed = score_mutants(model, a, WT, ["K2C", "Q11A", "G28A"], "wt-marginal", max_len=16)
    assert window_spans(len(WT), 16) == [(0, 16), (8, 24), (15, 31)]
    one = lambda seq, mut: score_mutants(model, a, seq, [mut], "wt-marginal")[0]
    # K2 lies only in the first window [0, 16): its score is that window's
    assert windowed[0] == pytest.approx(one(WT[:16], "K2C"), abs=1e-5)
    # Q11 (index 10) lies in [0, 16) and [8, 24): the log-probs of both windows are averaged
    assert windowed[1] == pytest.approx((one(WT[:16], "Q11A") + one(WT[8:24], "Q3A")) / 2, abs=1e-5)
    assert windowed[1] != pytest.approx(one(WT[:16], "Q11A"), abs=1e-5)
    # G28 (index 27) lies only in the last window [15, 31), where it is residue 13
    assert windowed[2] == pytest.approx(one(WT[15:], "G13A"), abs=1e-5)


def test_bad_mutant_fails_before_any_forward(debug_model):
    model = debug_model("esm2_debug")

    def boom(*args, **kwargs):
        raise AssertionError("forward ran")

    model.forward = boom
    with pytest.raises(MutationError, match="'A2C'"):
        score_mutants(model, model.alphabet, WT, ["K2C", "A2C"])
    far = f"{WT[1]}2A:{WT[-1]}{len(WT)}A"  # positions further apart than a 10-residue window
    with pytest.raises(MutationError, match=rf"mutant '{far}': mutated positions 2..{len(WT)} span more"):
        score_mutants(model, model.alphabet, WT, ["K2C", far], max_len=10)


def test_pll_store_resumes_after_a_kill(debug_model, tmp_path):
    model = debug_model("esm2_debug")
    a, wt, muts = model.alphabet, WT[:8], ["K2C", "A4G", "T3S"]
    straight = score_mutants(model, a, wt, muts, "pseudo-ll", toks_per_batch=3 * (len(wt) + 2))

    path = tmp_path / "scores.csv.pll.jsonl"
    store = PLLStore(path, "m")
    score_mutants(model, a, wt, muts[:1], "pseudo-ll", pll_store=store)  # wild type + K2C done
    store.close()
    with open(path, "a") as f:
        f.write('{"seq": "MKSAY')  # torn by the kill

    class Recording(PLLStore):
        def add(self, seq, value):
            calls.append(seq)
            super().add(seq, value)

    calls = []
    store2 = Recording(path, "m")
    assert set(store2.values) == {wt, "MCTAYIAK"}
    resumed = score_mutants(model, a, wt, muts, "pseudo-ll", toks_per_batch=3 * (len(wt) + 2), pll_store=store2)
    store2.close()
    assert resumed == pytest.approx(straight, abs=1e-6)
    assert calls == ["MKTGYIAK", "MKSAYIAK"]  # only the unfinished ones ran
    assert len(PLLStore(path, "m").values) == 4  # the torn line was ended, the new lines read
    assert PLLStore(path, "another model").values == {}  # another model starts afresh


def test_pll_store_never_serves_a_changed_wild_type(debug_model, tmp_path):
    """The store is keyed by the scored sequence itself (and the model): after a kill, a rerun
    whose wild type changed under the same FASTA ID recomputes, never reusing the old PLLs."""
    from protlm.runtime.options import InferenceOptions
    from protlm.variants.pipeline import score_file

    model = debug_model("esm2_debug")
    loader = lambda name: (model, model.alphabet)  # noqa: E731
    (tmp_path / "muts.csv").write_text("mutant\nK2C\nA4G\n")
    out = tmp_path / "scores.csv"
    store = PLLStore(tmp_path / "scores.csv.pll.jsonl", "dbg")  # a killed run on the old wild type
    store.add(WT[:10], 123.0)
    store.add("MCTAYIAKQR", 456.0)
    store.close()
    (tmp_path / "wt.fasta").write_text(f">wt\n{WT[:12]}\n")  # same ID, new sequence
    score_file(tmp_path / "wt.fasta", tmp_path / "muts.csv", out,
               InferenceOptions(model="dbg", device="cpu", progress=False), method="pseudo-ll", loader=loader)
    got = [float(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
    want = score_mutants(model, model.alphabet, WT[:12], ["K2C", "A4G"], "pseudo-ll")
    assert got == pytest.approx(want, rel=1e-5)  # the CSV keeps 6 significant digits
