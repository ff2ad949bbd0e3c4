import torch

from protlm import Alphabet
from protlm.data.masking import IGNORE_INDEX, mask_tokens


def _batch(alphabet: Alphabet, n_seqs: int, length: int, seed: int = 0):
    """(B, T) batch of random residues with BOS/EOS and ragged padding."""
    g = torch.Generator().manual_seed(seed)
    aa = torch.tensor(alphabet.standard_aa_idx)
    tokens = torch.full((n_seqs, length + 2), alphabet.padding_idx)
    lengths = torch.randint(length // 2, length + 1, (n_seqs,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = alphabet.cls_idx
        tokens[i, 1 : n + 1] = aa[torch.randint(len(aa), (n,), generator=g)]
        tokens[i, n + 1] = alphabet.eos_idx
    return tokens


def test_proportions_on_a_million_tokens():
    alphabet = Alphabet()
    tokens = _batch(alphabet, 1700, 830)
    special = (tokens == alphabet.cls_idx) | (tokens == alphabet.eos_idx) | (tokens == alphabet.padding_idx)
    n_res = int((~special).sum())
    assert n_res > 1_000_000
    inputs, targets = mask_tokens(tokens, torch.Generator().manual_seed(1), alphabet)
    selected = targets != IGNORE_INDEX
    # selected 15% of residues; of those 80% <mask>, 10% another residue, 10% unchanged
    sel = int(selected.sum())
    assert abs(sel / n_res - 0.15) < 0.003
    masked = int((inputs[selected] == alphabet.mask_idx).sum())
    same = int((inputs[selected] == tokens[selected]).sum())
    rand = sel - masked - same
    # a random residue equals the original 1/20 of the time: those land in "unchanged"
    assert abs(masked / sel - 0.80) < 0.003
    assert abs(same / sel - (0.10 + 0.10 / 20)) < 0.003
    assert abs(rand / sel - 0.10 * 19 / 20) < 0.003
    assert torch.isin(inputs[selected & (inputs != alphabet.mask_idx)], torch.tensor(alphabet.standard_aa_idx)).all()
    # targets only at selected positions, and they hold the original token
    assert torch.equal(targets[selected], tokens[selected])
    # special tokens never touched or targeted
    assert torch.equal(inputs[special], tokens[special])
    assert not selected[special].any()
    # unselected positions are unchanged
    assert torch.equal(inputs[~selected], tokens[~selected])


def test_deterministic_and_input_untouched():
    alphabet = Alphabet()
    tokens = _batch(alphabet, 8, 50)
    before = tokens.clone()
    a = mask_tokens(tokens, torch.Generator().manual_seed(3), alphabet)
    b = mask_tokens(tokens, torch.Generator().manual_seed(3), alphabet)
    c = mask_tokens(tokens, torch.Generator().manual_seed(4), alphabet)
    assert torch.equal(tokens, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_all_special_batch_selects_nothing():
    alphabet = Alphabet()
    tokens = torch.tensor([[alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx]] * 4)
    inputs, targets = mask_tokens(tokens, torch.Generator().manual_seed(0), alphabet, mask_prob=1.0)
    assert torch.equal(inputs, tokens)
    assert (targets == IGNORE_INDEX).all()
