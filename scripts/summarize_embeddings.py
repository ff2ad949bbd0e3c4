"""Print a short summary of a protlm embeddings HDF5 file (used by scripts/run.sh)."""

import sys

import numpy as np

from protlm.embed.h5 import EmbeddingsFile


def main(path: str) -> None:
    with EmbeddingsFile(path) as f:
        print(f"{path}: {len(f)} records, model={f.meta.get('model')}, layers={f.meta.get('layers', [])}")
        means = []
        for rid in f.ids:
            arrays = f[rid]
            parts = [f"{k}{tuple(v.shape)}" for k, v in arrays.items()]
            print(f"  {rid:28s} " + "  ".join(parts))
            if "mean" in arrays:
                means.append(arrays["mean"][-1])
        if len(means) > 1:
            m = np.stack(means)
            m = m / np.linalg.norm(m, axis=1, keepdims=True)
            sim = m @ m.T
            off = sim[~np.eye(len(m), dtype=bool)]
            print(f"mean-embedding cosine similarity between proteins: min {off.min():.3f}, max {off.max():.3f}")


if __name__ == "__main__":
    from protlm.cli.main import run_script

    run_script(main, sys.argv[1] if len(sys.argv) > 1 else "out/embeddings.h5")
