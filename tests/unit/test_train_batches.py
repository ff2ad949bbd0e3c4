"""Rank batches: data-loader workers split the batches without overlap and keep their order."""

import itertools

import numpy as np
import torch

from protlm.data.index import FastaIndex
from protlm.data.sampler import BatchPlan
from protlm.train.batches import rank_loader


def _plan(shared_data, tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_bytes((shared_data / "sequences" / "some_proteins.fasta").read_bytes())
    index = FastaIndex.open(fasta)
    lengths = np.array([len(index[i].sequence) for i in range(len(index))])
    return str(fasta), BatchPlan(np.arange(len(index)), lengths, 1200, 300, seed=3)


def test_workers_yield_the_single_process_batches_in_order(shared_data, tmp_path):
    fasta, plan = _plan(shared_data, tmp_path)
    n = 2 * len(plan.epoch_batches(0)) + 1  # into the second epoch
    one = list(itertools.islice(rank_loader(fasta, plan, 0, 0, rank=0, world=1), n))
    two = list(itertools.islice(rank_loader(fasta, plan, 0, 0, rank=0, world=1, num_workers=2), n))
    assert [(e, b) for e, b, *_ in one] == [(e, b) for e, b, *_ in two]
    assert len({(e, b) for e, b, *_ in two}) == n  # no batch twice
    for (_, _, x1, y1), (_, _, x2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
