"""Print a short summary of a protlm embeddings HDF5 file (used by scripts/run.sh)."""

import sys

import h5py
import numpy as np


def main(path: str) -> None:
    with h5py.File(path, "r") as f:
        ids = list(f.keys())
        print(f"{path}: {len(ids)} records, model={f.attrs.get('model')}, layers={[int(x) for x in f.attrs.get('layers', [])]}")
        means = []
        for rid in ids:
            g = f[rid]
            parts = [f"{k}{tuple(g[k].shape)}" for k in g.keys()]
            print(f"  {rid:28s} " + "  ".join(parts))
            if "mean" in g:
                means.append(g["mean"][-1])
        if len(means) > 1:
            m = np.stack(means)
            m = m / np.linalg.norm(m, axis=1, keepdims=True)
            sim = m @ m.T
            off = sim[~np.eye(len(m), dtype=bool)]
            print(f"mean-embedding cosine similarity between proteins: min {off.min():.3f}, max {off.max():.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/embeddings.h5")
