"""Rank batches: workers split the batches without overlap and keep their order; padded and
packed layouts of a batch hold the same crops and masks."""

import itertools

import numpy as np
import pytest
import torch

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.data.sampler import BatchPlan
from protlm.models.layout import pack
from protlm.train.batches import make_batch, rank_loader


def _plan(shared_data, tmp_path, packed=False):
    fasta = tmp_path / "p.fasta"
    fasta.write_bytes((shared_data / "sequences" / "some_proteins.fasta").read_bytes())
    index = FastaIndex.open(fasta)
    lengths = np.array([len(index[i].sequence) for i in range(len(index))])
    return str(fasta), BatchPlan(np.arange(len(index)), lengths, 1200, 300, seed=3, packed=packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_workers_yield_the_single_process_batches_in_order(shared_data, tmp_path, packed):
    fasta, plan = _plan(shared_data, tmp_path, packed)
    n = 2 * len(plan.epoch_batches(0)) + 1  # into the second epoch
    one = list(itertools.islice(rank_loader(fasta, plan, 0, 0, rank=0, world=1), n))
    two = list(itertools.islice(rank_loader(fasta, plan, 0, 0, rank=0, world=1, num_workers=2), n))
    assert [(e, b) for e, b, _ in one] == [(e, b) for e, b, _ in two]
    assert len({(e, b) for e, b, _ in two}) == n  # no batch twice
    for (_, _, a), (_, _, b) in zip(one, two):
        assert a.packed == b.packed == packed
        for x, y in zip(a, b):
            assert (x is None and y is None) or torch.equal(x, y)


def test_packed_layout_holds_the_padded_examples(shared_data, tmp_path):
    """Same records -> the same tokens, crops and masks in both layouts; only the layout differs."""
    fasta, plan = _plan(shared_data, tmp_path, packed=True)
    index, alphabet = FastaIndex.open(fasta), Alphabet()
    rows = plan.epoch_batches(0)[0]
    assert len(rows) >= 3 and len(set(plan.costs[rows].tolist())) > 1  # ragged: padding to remove
    padded = make_batch(index, rows, plan, 0, alphabet, 0.15, packed=False)
    packed = make_batch(index, rows, plan, 0, alphabet, 0.15, packed=True)
    assert not padded.packed and packed.packed
    tokens_N, cu = pack(padded.inputs, alphabet.padding_idx)
    assert torch.equal(packed.inputs, tokens_N) and torch.equal(packed.cu_seqlens, cu)
    targets_N = padded.targets[padded.inputs.ne(alphabet.padding_idx)]
    assert torch.equal(packed.masked_at, targets_N.ne(IGNORE_INDEX).nonzero().squeeze(1))
    assert torch.equal(packed.targets, targets_N[packed.masked_at])
    assert packed.num_masked() == padded.num_masked() == len(packed.masked_at) > 20
    assert packed.num_tokens(alphabet.padding_idx) == padded.num_tokens(alphabet.padding_idx) == len(tokens_N)
    assert packed.inputs.eq(alphabet.mask_idx).any()
