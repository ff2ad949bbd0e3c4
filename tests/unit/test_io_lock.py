"""protlm.io: one writer per output, refused at once with the holder's PID, never stale."""

from __future__ import annotations

import os
import signal

import pytest

from protlm.io import OutputLockedError, lock_path, output_lock

def test_second_writer_is_refused_with_the_holders_pid(tmp_path, hold_in_subprocess):
    out = tmp_path / "emb.h5"
    holder = hold_in_subprocess(out)
    try:
        assert lock_path(out).read_text().strip() == str(holder.pid)
        with pytest.raises(OutputLockedError, match=rf"emb.h5 is being written by process {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.stdin.close()
        holder.wait()
    assert not lock_path(out).exists()  # removed on a normal release
    with output_lock(out) as lock:  # free again
        assert lock.read_text().strip() == str(os.getpid())


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, hold_in_subprocess):
    out = tmp_path / "maps"
    holder = hold_in_subprocess(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # the file stays, the kernel dropped the flock
    with output_lock(out):
        assert lock_path(out).read_text().strip() == str(os.getpid())


def test_lock_is_per_output_and_beside_it(tmp_path):
    with output_lock(tmp_path / "a" / "x.h5") as lock:  # creates the missing folder
        assert lock == tmp_path / "a" / "x.h5.lock"
        with output_lock(tmp_path / "a" / "y.h5"):  # another output: no conflict
            pass
        with pytest.raises(OutputLockedError):  # the same output, even from this process
            with output_lock(tmp_path / "a" / "x.h5"):
                pass
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []


def test_released_lock_file_is_not_reused_by_a_late_opener(tmp_path, monkeypatch):
    """A process that opened OUTPUT.lock just before the holder removed it must not count the
    removed file as the lock (two writers would each hold a different file)."""
    import protlm.io as lk

    out = tmp_path / "o"
    real_flock = lk.fcntl.flock
    state = {"raced": False}

    def flock_after_release(fd, op):
        if not state["raced"]:  # the holder releases between our open and our flock
            state["raced"] = True
            os.unlink(lock_path(out))
        return real_flock(fd, op)

    monkeypatch.setattr(lk.fcntl, "flock", flock_after_release)
    with output_lock(out) as lock:
        assert lock.exists() and lock.read_text().strip() == str(os.getpid())
        monkeypatch.setattr(lk.fcntl, "flock", real_flock)
        with pytest.raises(OutputLockedError):
            with output_lock(out):
                pass
