"""``run.lock``: one writer at a time, and no lock file left behind."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minibnn.errors import MinibnnError
from minibnn.run import lock
from minibnn.run.lock import hold, one_writer


def test_the_lock_file_goes_when_the_block_ends_even_on_error(tmp_path):
    path = tmp_path / "run.h5"
    with one_writer(str(path)):
        assert (tmp_path / "run.h5.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "run.h5.lock").exists()
    with pytest.raises(ZeroDivisionError):
        with one_writer(str(path)):
            1 / 0
    assert not (tmp_path / "run.h5.lock").exists()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = str(tmp_path / "x.lock")
    code = ("import sys, time; from minibnn.run.lock import hold\n"
            "with hold(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MinibnnError, match=f"in use by process {holder.pid}"):
            with hold(path, "x"):
                pass
        assert Path(path).exists()                  # the holder's file is not touched
    finally:
        holder.kill()
        holder.wait()
    with hold(path, "x"):                           # the kernel dropped the dead holder's lock
        pass
    assert not Path(path).exists()


def test_a_lock_file_replaced_while_locking_is_locked_anew(tmp_path, monkeypatch):
    """The race removal opens: the file we opened was unlinked (its holder finished) and a new
    one made before our flock; locking the old inode would let two writers in, so _acquire
    notices the path names another file and locks that one."""
    path = tmp_path / "x.lock"
    real_flock = fcntl.flock
    calls = []

    def flock_after_a_swap(fd: int, op: int) -> None:
        if not calls:                               # the first attempt: swap the file
            os.unlink(path)
            path.write_text("someone else\n")
        calls.append(fd)
        real_flock(fd, op)

    monkeypatch.setattr(lock.fcntl, "flock", flock_after_a_swap)
    with hold(str(path), "x"):
        assert len(calls) == 2
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()


def test_a_failed_train_leaves_no_lock_file(tmp_path):
    out = tmp_path / "run.h5"
    proc = subprocess.run([sys.executable, "-m", "minibnn", "train", "--dataset", "cifar10",
                           "--data-dir", str(tmp_path / "nonexistent"), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_pid_that_cannot_be_written_does_not_break_the_lock(tmp_path, monkeypatch):
    """A full disk while writing the holder's pid: the lock still holds, and goes."""
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.os, "pwrite", full)
    path = tmp_path / "x.lock"
    with hold(str(path), "x"):
        assert path.exists()
    assert not path.exists()
    with hold(str(path), "x"):                       # and it can be taken again
        pass
