"""The training step on packed batches: the same loss and gradients as on padded batches of the
same sequences and masks (CPU, fp32), through masked_ce_sum and through a whole train_step."""

import copy

import numpy as np
import pytest
import torch

from protlm import build_model
from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.sampler import BatchPlan
from protlm.models.layers import init_weights
from protlm.pretrained.registry import DEBUG_CONFIGS
from protlm.train.batches import make_batch
from protlm.train.config import load_config
from protlm.train.loop import make_optimizer, masked_ce_sum, train_step
from protlm.train.parallelize import Dist

TOL = 1e-5


@pytest.fixture(params=["esm1b_debug", "esm2_debug"])
def model(request):
    torch.manual_seed(0)
    m = build_model(DEBUG_CONFIGS[request.param])
    init_weights(m)
    with torch.no_grad():
        for p in m.parameters():  # LayerNorms and biases off 1/0: every parameter matters
            p.add_(0.05 * torch.randn_like(p))
    m.contact_head.requires_grad_(False)
    return m.train()


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """Real proteins (71 to 935 residues, cropped to 300) in packed-plan batches."""
    fasta = tmp_path_factory.mktemp("loop") / "p.fasta"
    fasta.write_bytes((shared_data / "sequences" / "some_proteins.fasta").read_bytes())
    index = FastaIndex.open(fasta)
    plan = BatchPlan(np.arange(len(index)), np.asarray(index.lengths), 1000, 300, seed=5, packed=True)
    return index, plan, plan.epoch_batches(0)


def _both(data, b):
    index, plan, batches = data
    return [make_batch(index, batches[b], plan, 0, Alphabet(), 0.15, packed) for packed in (False, True)]


def _grads(model, batch):
    model.zero_grad()
    ce = masked_ce_sum(model, batch, None)
    (ce / batch.num_masked()).backward()
    return ce, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_gradients_equal_padded(model, data):
    padded, packed = _both(data, 0)
    assert padded.inputs.eq(model.padding_idx).any()  # ragged rows: the padded side pads
    ce_pad, g_pad = _grads(model, padded)
    ce_pack, g_pack = _grads(model, packed)
    n = packed.num_masked()
    assert ce_pack.dtype == torch.float32 and ce_pack.ndim == 0
    assert abs(ce_pack.item() - ce_pad.item()) / n <= TOL, (ce_pack.item(), ce_pad.item())
    assert g_pad.keys() == g_pack.keys() and len(g_pad) > 10
    for k in g_pad:
        assert (g_pad[k] - g_pack[k]).abs().max() <= TOL, k


def test_masked_ce_sum_is_the_sum_over_masked_positions(model, data):
    """By hand: -log softmax at every masked position, added up (not averaged)."""
    padded, _ = _both(data, 1)
    with torch.no_grad():
        got = masked_ce_sum(model.eval(), padded, None)
        logp = torch.log_softmax(model(padded.inputs)["logits"].double(), -1)
    sel = padded.targets.ne(-100)
    want = -logp[sel].gather(-1, padded.targets[sel][:, None]).sum()
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())


def test_train_step_packed_equals_padded(model, data):
    """Two micro-batches of accumulation, clipping, AdamW: the same loss either way."""
    cfg = load_config(None, ["optim.accum_steps=2", "optim.lr=1e-3"])
    losses = []
    for layout in (0, 1):
        m = copy.deepcopy(model)
        opt = make_optimizer(m, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        micro = [_both(data, b)[layout] for b in (2, 3)]
        for _ in range(2):  # the second step sees the first update
            losses.append(train_step(m, micro, opt, sched, cfg, Dist(), torch.device("cpu"), None))
    pad, pack = losses[:2], losses[2:]
    assert pad[1] < pad[0]
    for a, b in zip(pad, pack):
        assert abs(a - b) <= TOL, (pad, pack)


def test_adamw_is_fused_only_on_cuda(model):
    opt = make_optimizer(model, load_config(None))
    assert not opt.defaults.get("fused")  # CPU: the implementation the fp32 figures were taken with
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in opt.param_groups[1]["params"])
