"""Activation checkpointing options and per-layer compile: the gradients of the plain model,
state-dict keys unchanged, and each option recomputing what it says (counted in backward)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from protlm import build_model
from protlm.data.masking import IGNORE_INDEX, mask_tokens
from protlm.models import varlen
from protlm.models.config import esm2_config
from protlm.models.layers import init_weights
from protlm.models.layout import pack
from protlm.runtime.compile import compile_layers
from protlm.runtime.distributed import Dist
from protlm.train.parallelize import apply_activation_checkpointing, parallelize

LAYERS = 4


def _model(dropout=0.1):
    torch.manual_seed(0)
    m = build_model(esm2_config(LAYERS, 32, 4, dropout=dropout, attention_dropout=dropout))
    init_weights(m)
    return m.train()


def _batch(packed: bool):
    torch.manual_seed(1)
    tokens = torch.randint(4, 24, (3, 30))
    tokens[:, 0], tokens[:, -1] = 0, 2
    tokens[1, 20:] = 1  # a shorter row: padding, or a shorter sequence when packed
    tokens[1, 19] = 2
    inputs, targets = mask_tokens(tokens, torch.Generator().manual_seed(0))
    if not packed:
        return {"tokens": inputs}, targets
    keep = inputs.ne(1)
    tokens_N, cu = pack(inputs, 1)
    return {"tokens": tokens_N, "cu_seqlens": cu}, targets[keep]


def _loss(model, packed):
    kwargs, targets = _batch(packed)
    torch.manual_seed(7)  # the same dropout draws in every run
    logits = model(**kwargs)["logits"]
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)


def _grads(model, packed):
    model.zero_grad()
    _loss(model, packed).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _backward_ops(model, packed):
    loss = _loss(model, packed)
    with _CountOps() as ops:
        loss.backward()
    return ops.counts


OPTIONS = [(1, False), (2, False), (1, True)]  # every layer, every 2nd layer, selective


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("every,selective", OPTIONS, ids=["full", "every2", "selective"])
def test_checkpointing_same_grads_same_keys(every, selective, packed):
    plain, ckpt = _model(), _model()
    keys = list(ckpt.state_dict())
    apply_activation_checkpointing(ckpt, every, selective)
    assert list(ckpt.state_dict()) == keys  # checkpoints still load and save unchanged
    ga, gb = _grads(plain, packed), _grads(ckpt, packed)  # dropout on: redrawn identically
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-6)


def test_each_option_recomputes_what_it_says():
    """GELU's erf runs in backward once per recomputed layer; the matmuls of the forward run
    again only under whole-layer recomputation, not under selective checkpointing."""
    counts = {}
    for name, every, selective in [("none", 0, False), ("full", 1, False), ("every2", 2, False),
                                   ("selective", 1, True)]:
        m = _model(dropout=0.0)
        apply_activation_checkpointing(m, every, selective)
        c = _backward_ops(m, packed=True)
        counts[name] = (c.get("erf", 0), c.get("mm", 0) + c.get("addmm", 0))
    erf, mm = {k: v[0] for k, v in counts.items()}, {k: v[1] for k, v in counts.items()}
    assert erf == {"none": 0, "full": LAYERS, "every2": LAYERS // 2, "selective": LAYERS}, counts
    assert mm["selective"] == mm["none"] < mm["every2"] < mm["full"], counts
    assert mm["full"] - mm["none"] == 2 * (mm["every2"] - mm["none"])  # 6 linear layers per layer


def _traceable_attention(q_NHd, k_NHd, v_NHd, cu, max_seqlen, bounds, dropout_p):
    """Block-diagonal SDPA over the whole pack: no host loop, so compile traces it whole, as it
    traces varlen_attn on CUDA (the CPU loop is left out of graphs on purpose)."""
    seq_N = torch.searchsorted(cu[1:], torch.arange(q_NHd.shape[0], device=cu.device), right=True)
    same_BNN = (seq_N[:, None] == seq_N[None, :])[None, None]
    q, k, v = (t.transpose(0, 1)[None] for t in (q_NHd, k_NHd, v_NHd))  # (1, H, N, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=same_BNN, dropout_p=dropout_p, scale=1.0)
    return out[0].transpose(0, 1)


@pytest.mark.parametrize("every,selective", [(0, False)] + OPTIONS, ids=["none", "full", "every2", "selective"])
def test_compiled_layers_trace_whole_and_match_eager(monkeypatch, every, selective):
    """Checkpointing composed with per-layer compile (aot_eager: the graphs autograd sees,
    without code generation) gives the eager gradients, in one graph per layer kind."""
    from torch._dynamo.utils import counters

    monkeypatch.setitem(varlen._KERNELS, "sdpa_loop", _traceable_attention)
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = _model(dropout=0.0), _model(dropout=0.0)
    apply_activation_checkpointing(compiled, every, selective)
    compile_layers(compiled, backend="aot_eager")
    keys = list(eager.state_dict())
    assert list(compiled.state_dict()) == keys
    ga, gb = _grads(eager, packed=True), _grads(compiled, packed=True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2  # all layers share; every2: with and without
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-6)
    torch._dynamo.reset()


def test_single_process_is_unwrapped(debug_model):
    model = debug_model("esm1b_debug")
    assert parallelize(model, "auto", Dist(), torch.device("cpu")) is model
    # compile "auto" is off on CPU: layers keep their own forward
    assert all("forward" not in vars(layer) for layer in model.layers)


def test_process_group_left_only_by_its_creator(tmp_path, monkeypatch):
    """A group init_distributed created is destroyed by leave_distributed (gloo's threads left to
    interpreter exit can abort a finished run); one created by the caller is left alone."""
    import torch.distributed as dist

    from protlm.runtime.distributed import init_distributed, leave_distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == Dist()  # one process: no group at all
    real_init = dist.init_process_group

    def group_of_one(backend, name="store"):
        real_init(backend, store=dist.FileStore(str(tmp_path / name), 1), rank=0, world_size=1)

    group_of_one("gloo")
    try:
        d = Dist(0, 2, 0, owned=False)  # the caller's group
        leave_distributed(d)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(dist, "init_process_group", lambda backend: group_of_one(backend, "store2"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the stub joins a group of one
    d = init_distributed("cpu")
    assert d.owned and dist.is_initialized()
    leave_distributed(d)
    assert not dist.is_initialized()
