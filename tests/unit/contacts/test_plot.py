"""Contact pictures carry a colorbar, so a flat map is visibly flat rather than a mystery square."""

import numpy as np

from protlm.contacts.plot import contact_figure, plot_contact_map


def test_every_picture_has_a_probability_colorbar(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.random((30, 30)).astype(np.float32)
    pred = (pred + pred.T) / 2
    true = (rng.random((30, 30)) < 0.1).astype(np.int8)
    for kwargs in ({}, {"true_LL": true}):
        fig = contact_figure(pred, **kwargs)
        image_ax, bar_ax = fig.axes[0], fig.axes[1]
        assert bar_ax.get_ylabel() == "contact probability"
        lo, hi = image_ax.images[0].get_clim()
        assert lo == 0 and hi == float(pred.max())
    out = plot_contact_map(pred, tmp_path / "m.png", true_LL=true)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_residue_ticks_are_whole_numbers():
    import matplotlib.pyplot as plt

    fig = contact_figure(np.full((20, 20), 0.5, dtype=np.float32))  # L=20: the default locator steps by 2.5
    ax = fig.axes[0]
    fig.canvas.draw()
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)
