"""protlm.evaluate.perplexity: the same masks and the same figure whatever the batches."""

import math

import pytest
import torch

from protlm.alphabet import Alphabet
from protlm.data.fasta import read_fasta
from protlm.data.masking import IGNORE_INDEX
from protlm.evaluate.perplexity import MaskPlan, has_mlm_head, masked_perplexity, subsample


@pytest.fixture(scope="module")
def sequences(shared_data):
    return [r.sequence[:150] for r in read_fasta(shared_data / "sequences" / "some_proteins.fasta")][:8]


@pytest.fixture
def one_thread():
    # one intra-op thread: every kernel then computes a row the same way whatever the batch holds
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _masks(plan: MaskPlan, alphabet: Alphabet) -> dict[str, tuple]:
    """{sequence: (inputs, targets)} of every record, read back out of the packed batches."""
    out = {}
    seqs = sorted(plan.sequences, key=len)  # batches are length-sorted, stable
    k = 0
    for _, batch in plan.batches(alphabet):
        cu = batch.cu_seqlens.tolist()
        targets_N = torch.full_like(batch.inputs, IGNORE_INDEX)
        targets_N[batch.masked_at] = batch.targets
        for a, b in zip(cu[:-1], cu[1:]):
            out[seqs[k]] = (batch.inputs[a:b].tolist(), targets_N[a:b].tolist())
            k += 1
    return out


def test_masks_depend_on_the_sequence_alone(sequences):
    a = Alphabet()
    full = _masks(MaskPlan(sequences, toks_per_batch=10_000), a)
    for tpb in (1, 300):  # one sequence per batch; a few per batch
        assert _masks(MaskPlan(sequences, toks_per_batch=tpb), a) == full
    part = _masks(MaskPlan(sequences[::-1][:3]), a)  # other records, other order
    assert all(part[s] == full[s] for s in part)
    assert _masks(MaskPlan(sequences, seed=7), a) != full


def test_perplexity_is_exactly_reproducible_across_runs_and_batch_sizes(sequences, perturbed_model, one_thread):
    model, a = perturbed_model("esm2_debug"), Alphabet()
    first = masked_perplexity(model, a, MaskPlan(sequences, toks_per_batch=10_000))
    assert masked_perplexity(model, a, MaskPlan(sequences, toks_per_batch=10_000)) == first
    for tpb in (1, 300):
        assert masked_perplexity(model, a, MaskPlan(sequences, toks_per_batch=tpb)) == first
    n_residues = sum(len(s) for s in sequences)
    assert 0.10 * n_residues < first["masked_tokens"] < 0.20 * n_residues  # 15% selected
    assert first["sequences"] == len(sequences) and math.isclose(math.exp(first["cross_entropy"]), first["perplexity"])
    # small random weights: near-uniform over the 33 tokens
    assert 20 < first["perplexity"] < 50


def test_long_sequences_are_cropped_reproducibly(sequences, debug_model):
    model, a = debug_model("esm2_debug"), Alphabet()
    plan = MaskPlan(sequences, max_length=40)
    assert all(len(b.inputs) <= 42 * n for n, b in plan.batches(a))
    assert masked_perplexity(model, a, plan) == masked_perplexity(model, a, MaskPlan(sequences, max_length=40))


def test_model_without_mlm_head_has_no_perplexity(sequences, debug_model):
    model = debug_model("esm2_debug")
    assert has_mlm_head(model)
    model.lm_head = None  # an encoder-only model, such as ProtT5's encoder
    assert not has_mlm_head(model)
    assert masked_perplexity(model, Alphabet(), MaskPlan(sequences)) is None


def test_subsample_is_a_fixed_sample_independent_of_order(sequences):
    picked = {sequences[i] for i in subsample(sequences, 3)}
    assert len(picked) == 3
    assert {sequences[::-1][i] for i in subsample(sequences[::-1], 3)} == picked
    assert subsample(sequences, None) == subsample(sequences, 100) == list(range(len(sequences)))
