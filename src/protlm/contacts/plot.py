"""Pictures of contact maps (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protlm.io import atomic_path


def contact_figure(pred_LL: np.ndarray, title: str = "", true_LL: np.ndarray | None = None,
                   top_k: int | None = None):
    """The matplotlib figure of a predicted map, with a colorbar of contact probability; with
    `true_LL` (1/0/-1) true contacts are drawn over it.

    True contacts (|i-j| >= 6) are shown as open circles on the lower triangle and the top-L
    predicted pairs as dots on the upper one, the layout of the ESM papers' figures.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    L = pred_LL.shape[0]
    fig, ax = plt.subplots(figsize=(5.6, 5), dpi=120)
    im = ax.imshow(pred_LL, cmap="Blues", vmin=0, vmax=max(float(np.nanmax(pred_LL)), 1e-6), origin="upper")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="contact probability")
    if true_LL is not None:
        i, j = np.nonzero((true_LL == 1) & (np.abs(np.subtract.outer(np.arange(L), np.arange(L))) >= 6))
        low = i > j
        ax.scatter(j[low], i[low], s=6, facecolors="none", edgecolors="grey", linewidths=0.5, label="true contact")
        k = top_k or L
        iu, ju = np.triu_indices(L, 6)
        order = np.argsort(-pred_LL[iu, ju], kind="stable")[:k]
        hit = true_LL[iu[order], ju[order]] == 1
        ax.scatter(ju[order][hit], iu[order][hit], s=4, c="tab:blue", label="top-L, correct")
        ax.scatter(ju[order][~hit], iu[order][~hit], s=4, c="tab:red", label="top-L, wrong")
        ax.legend(loc="lower left", fontsize=6, markerscale=2)
    ax.set_title(title or f"predicted contacts (L={L})", fontsize=9)
    for axis in (ax.xaxis, ax.yaxis):  # residue indices: whole numbers only, even for short proteins
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("residue j")
    ax.set_ylabel("residue i")
    return fig


def plot_contact_map(pred_LL: np.ndarray, path: str | Path, title: str = "",
                     true_LL: np.ndarray | None = None, top_k: int | None = None) -> Path:
    """Save `contact_figure(...)` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    fig = contact_figure(pred_LL, title, true_LL, top_k)
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
