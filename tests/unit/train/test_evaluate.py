"""Held-out and other-family perplexity against the frequency baseline, on the same positions."""

import math
from collections import Counter

import pytest

from protlm.alphabet import Alphabet
from protlm.data.fasta import read_fasta, write_fasta
from protlm.data.masking import IGNORE_INDEX
from protlm.train.config import load_config
from protlm.train.evaluate import eval_plan, frequency_baseline, model_perplexity


@pytest.fixture
def cfg(tmp_path, shared_data):
    recs = [(r.id, r.sequence) for r in read_fasta(shared_data / "sequences" / "some_proteins.fasta")]
    write_fasta(recs, tmp_path / "train.fasta")
    write_fasta([(f"other{i}", s[:120]) for i, (_, s) in enumerate(recs[:4])], tmp_path / "other.fasta")
    return load_config(None, [f'data.train_fasta="{tmp_path / "train.fasta"}"', "data.valid_fraction=0.3",
                              "data.max_length=200", "data.toks_per_batch=800", "data.min_seqs=1"])


def test_other_fasta_is_evaluated_whole_with_training_frequencies(cfg, tmp_path, debug_model):
    other = str(tmp_path / "other.fasta")
    plan = eval_plan(cfg, other)
    assert plan.sequences == [r.sequence for r in read_fasta(other)]  # every record, none held back
    # the baseline by hand: training-split frequencies (add-one) scored at the fixed masked positions
    a = Alphabet()
    held = set(eval_plan(cfg).sequences)
    recs = list(read_fasta(cfg.data.train_fasta))
    assert 0 < len(held) < len(recs)
    counts = Counter("".join(r.sequence for r in recs if r.sequence not in held))
    freq = {t: counts.get(t, 0) + 1 for t in a.standard_toks}
    total = sum(freq.values())
    ce, n = 0.0, 0
    for _, batch in plan.batches(a):
        for t in batch.targets[batch.targets != IGNORE_INDEX].tolist():
            ce -= math.log(freq[a.get_tok(t)] / total)
            n += 1
    base = frequency_baseline(cfg, other)
    assert base["valid_tokens"] == n and base["baseline_ce"] == pytest.approx(ce / n, rel=1e-9)
    # the model is scored at exactly those positions; the held-out split is a different set
    got = model_perplexity(debug_model("esm2_debug"), cfg, other)
    assert got["valid_tokens"] == n and math.isfinite(got["valid_ppl"])
    assert model_perplexity(debug_model("esm2_debug"), cfg)["valid_tokens"] != n
