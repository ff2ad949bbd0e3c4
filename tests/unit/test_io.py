"""protlm.io: the one atomic-write helper (complete file or old file, temp removed, unique names)."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

from protlm.io import atomic_path, atomic_write, stale_temps

matplotlib.use("Agg")


def test_success_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, "new content")
    assert target.read_text() == "new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C too
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_temp_names_are_unique_hidden_and_in_the_same_folder(tmp_path):
    target = tmp_path / "out.h5"
    with atomic_path(target) as a, atomic_path(target) as b:  # two writers of one target
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".out.h5.") and a.exists() and b.exists()
        assert sorted(stale_temps(target)) == sorted([a, b])
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a" and stale_temps(target) == []  # the last one renamed wins
    with atomic_path(tmp_path / "out.h5.x.h5") as other:  # another output's temp is not ours
        assert stale_temps(target) == [] and stale_temps(tmp_path / "out.h5.x.h5") == [other]


def test_suffix_ends_the_temp_name_so_extension_adding_writers_work(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with atomic_path(tmp_path / "m.npy", suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy")
        np.save(tmp, x)  # numpy appends .npy to a name without it
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), x)
    import matplotlib.pyplot as plt

    fig = plt.figure()
    with atomic_path(tmp_path / "p.png", suffix=".png") as tmp:
        fig.savefig(tmp)  # the format comes from the extension
    plt.close(fig)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "p.png"]


def test_published_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_a_writer_that_replaces_the_temp_file_still_gets_the_umask_mode(tmp_path):
    """safetensors' save_file writes a new file over the temp (mode 0600): the published file
    gets the umask's mode all the same."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, tmp)
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
