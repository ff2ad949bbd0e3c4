"""protlm embed vs fair-esm's extract.py procedure: wall time and agreement, same weights.

Random weights with a published architecture (weights cannot be downloaded here; speed and
agreement do not depend on their values). Usage:

    python benchmarks/embed_throughput.py --fasta ../shared/data/sequences/some_proteins.fasta \
        --arch esm2_t6_8M_UR50D --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch


def fair_esm_extract(ref, alphabet, fasta, layer, toks_per_batch):
    """What fair-esm's scripts/extract.py does for `--include mean per_tok`, kept in memory."""
    import esm

    ds = esm.FastaBatchedDataset.from_file(fasta)
    batches = ds.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(
        ds, collate_fn=alphabet.get_batch_converter(1022), batch_sampler=batches)
    out = {}
    with torch.no_grad():
        for labels, strs, toks in loader:
            reps = ref(toks, repr_layers=[layer], return_contacts=False)["representations"][layer]
            for i, label in enumerate(labels):
                L = min(1022, len(strs[i]))
                out[label.split()[0]] = (reps[i, 1 : L + 1].clone(), reps[i, 1 : L + 1].mean(0).clone())
    return out


def main():
    import esm

    from protlm import build_model
    from protlm.embed import EmbedConfig, extract
    from protlm.runtime.options import InferenceOptions
    from protlm.pretrained.registry import get

    p = argparse.ArgumentParser()
    p.add_argument("--fasta", required=True)
    p.add_argument("--arch", default="esm2_t6_8M_UR50D")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    cfg = get(args.arch).config
    model = build_model(cfg).eval()
    ref = esm.model.esm2.ESM2(cfg.num_layers, cfg.embed_dim, cfg.attention_heads,
                              esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True).eval()
    ref.load_state_dict(model.state_dict())
    n = cfg.num_layers
    ecfg = EmbedConfig(repr_layers=(n,), include=("mean", "per_tok"))
    opts = InferenceOptions(toks_per_batch=args.toks_per_batch)

    times = {"protlm": [], "fair-esm": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = {r.id: r for r in extract(model, model.alphabet, args.fasta, ecfg, opts)}
        times["protlm"].append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = fair_esm_extract(ref, esm.Alphabet.from_architecture("ESM-1b"), args.fasta, n,
                                  args.toks_per_batch)
        times["fair-esm"].append(time.perf_counter() - t)
    residues = sum(r.per_tok[n].shape[0] for r in ours.values())
    diff = max(max((ours[k].per_tok[n] - v[0]).abs().max().item(),
                   (ours[k].mean[n] - v[1]).abs().max().item()) for k, v in theirs.items())
    print(f"{args.arch} on {args.fasta}: {len(ours)} records, {residues} residues, "
          f"toks_per_batch {args.toks_per_batch}, threads {torch.get_num_threads()}")
    for name, ts in times.items():
        best = min(ts)
        print(f"  {name:9s} best of {len(ts)}: {best:.2f} s  ({residues / best:.0f} residues/s)")
    print(f"  max abs diff per_tok/mean vs fair-esm: {diff:.2e}")


if __name__ == "__main__":
    main()
