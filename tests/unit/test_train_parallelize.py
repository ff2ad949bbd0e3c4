import torch

from protlm.data.masking import IGNORE_INDEX, mask_tokens
from protlm.models.layers import init_weights
from protlm.train.parallelize import Dist, apply_activation_checkpointing, parallelize


def _grads(model, tokens):
    inputs, targets = mask_tokens(tokens, torch.Generator().manual_seed(0), model.alphabet)
    logits = model(inputs)["logits"]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_same_grads_same_keys(debug_model):
    a, b = debug_model("esm2_debug"), debug_model("esm2_debug")
    init_weights(a)
    b.load_state_dict(a.state_dict())
    keys = list(b.state_dict())
    apply_activation_checkpointing(b)
    assert list(b.state_dict()) == keys  # checkpoints still load and save unchanged
    tokens = torch.randint(4, 24, (3, 30))
    tokens[:, 0], tokens[:, -1] = 0, 2
    ga, gb = _grads(a.train(), tokens), _grads(b.train(), tokens)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-6)


def test_single_process_is_unwrapped(debug_model):
    model = debug_model("esm1b_debug")
    assert parallelize(model, "auto", Dist(), torch.device("cpu")) is model
