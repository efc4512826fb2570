"""SIGTERM behaves like Ctrl-C: ``minibnn train`` says what the run file keeps and how to resume,
``minibnn sweep`` takes its workers with it; both exit 143."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from minibnn.commands.cli import main
from minibnn.run import train
from minibnn.run.files import load_run
from minibnn.run.stop_signals import raise_if_stopped, stop_on_signals

REPO = Path(__file__).resolve().parent.parent


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "minibnn", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _start_sweep(tmp_path: Path, base: str, seeds: str) -> tuple[subprocess.Popen[str], Path,
                                                                 Path]:
    """A two-worker sweep of synthetic points (``base`` [base] lines, ``seeds`` the grid) in
    the background, once its first run file exists: (process, spec file, sweep folder)."""
    spec = tmp_path / "s.toml"
    spec.write_text(f'[base]\ndataset = "synthetic"\n{base}[grid]\nseed = [{seeds}]\n')
    out = tmp_path / "sweep"
    proc = _start(["sweep", str(spec), "--out", str(out), "--workers", "2", "--no-progress"])
    _wait_for(lambda: (out / "runs").exists() and any((out / "runs").glob("*.h5")))
    return proc, spec, out


def _sweep(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The same sweep run to its end in the foreground."""
    return subprocess.run([sys.executable, "-m", "minibnn", "sweep", str(spec), "--out",
                           str(out), "--workers", "2", "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _worker_running_a_point(sweep_pid: int, runs: Path) -> int:
    """A worker of the sweep that holds a run file's writer lock (it is mid-point), found
    through /proc/PID/fd; waits until there is one."""
    found: list[int] = []

    def look() -> bool:
        for pid in _children(sweep_pid):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
            except OSError:                              # it exited meanwhile
                continue
            if any(t.startswith(str(runs)) and t.endswith(".h5.lock") for t in targets):
                found.append(pid)
                return True
        return False

    _wait_for(look)
    return found[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_during_train_says_what_the_file_keeps(tmp_path: Path) -> None:
    out = tmp_path / "run.h5"
    proc = _start(["train", "--dataset", "synthetic", "--epochs", "200", "--train-subset", "500",
                   "--no-progress", "--out", str(out)])
    _wait_for(lambda: out.exists())                          # the first epoch is written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    kept = load_run(str(out)).checkpoint.epoch
    assert f"minibnn: terminated ({out} keeps epoch {kept}; continue with --resume {out})" \
        in err
    assert kept >= 1


@pytest.mark.slow
def test_sigterm_ends_a_sweep_and_its_workers(tmp_path: Path) -> None:
    proc, _, _ = _start_sweep(tmp_path, "epochs = 200\ntrain-subset = 500\n", "0, 1")
    workers = _children(proc.pid)
    assert workers, "the sweep started no worker process"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "minibnn: terminated" in err and "Traceback" not in err
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)


@pytest.mark.slow
def test_kill_9_of_a_sweep_takes_its_workers_and_a_rerun_resumes(tmp_path: Path) -> None:
    proc, spec, out = _start_sweep(
        tmp_path, "epochs = 3\ntrain-subset = 3000\nhidden = [64, 64]\n", "0, 1")
    workers = _children(proc.pid)
    assert workers
    proc.kill()
    proc.communicate(timeout=60)
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)
    rerun = _sweep(spec, out)
    assert rerun.returncode == 0, rerun.stderr
    assert "in use" not in rerun.stderr
    straight = tmp_path / "straight"
    again = _sweep(spec, straight)
    assert again.returncode == 0, again.stderr
    for path in sorted((out / "runs").glob("*.h5")):
        a, b = load_run(str(path)), load_run(str(straight / "runs" / path.name))
        assert a.checkpoint.epoch == b.checkpoint.epoch == 3
        for name, value in a.checkpoint.params.items():
            assert (value == b.checkpoint.params[name]).all(), name


def test_an_interrupt_between_a_write_and_its_note_names_the_epoch_on_disk(tmp_path: Path
                                                                           ) -> None:
    """The window the signal tests can hit: the run file was replaced (a new inode) by the
    write of epoch 2, but the loop had not noted it yet."""
    from minibnn.run.train import _inode, _interrupt_says_what_is_kept

    path = tmp_path / "run.h5"
    path.write_bytes(b"epoch 1")
    saved = {"epoch": 1, "pending": 2, "inode": _inode(str(path))}
    with pytest.raises(KeyboardInterrupt, match="keeps epoch 1;"):
        with _interrupt_says_what_is_kept(str(path), saved):     # write not done yet
            raise KeyboardInterrupt
    replacement = tmp_path / "new"
    replacement.write_bytes(b"epoch 2")
    os.replace(replacement, path)                                # the write is done
    with pytest.raises(KeyboardInterrupt, match="keeps epoch 2;"):
        with _interrupt_says_what_is_kept(str(path), saved):
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_own_point(tmp_path: Path) -> None:
    import csv

    proc, spec, out = _start_sweep(
        tmp_path, "epochs = 4\ntrain-subset = 3000\nhidden = [64, 64]\n", "0, 1, 2")
    victim = _worker_running_a_point(proc.pid, out / "runs")
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err                   # one point failed
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "worker lost (killed by signal 9)"
    assert sum(r["status"] == "done" for r in rows) == 2
    rerun = _sweep(spec, out)
    assert rerun.returncode == 0, rerun.stderr


def _signal_lost_in_a_weakref_callback(signum: int) -> None:
    """Deliver ``signum`` while Python runs a weakref callback: the handler's
    ``KeyboardInterrupt`` is raised inside the callback, where Python drops it ("Exception
    ignored"). This is what made a SIGTERM during training go unnoticed now and then."""
    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signum))
    del thing                                        # runs the callback
    assert ref() is None


def test_a_stop_signal_python_lost_is_raised_at_the_next_check() -> None:
    reported: list[object] = []
    hook_before, handler_before = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    sys.unraisablehook = reported.append             # what Python reports as "ignored"
    try:
        with stop_on_signals() as received:
            _signal_lost_in_a_weakref_callback(signal.SIGTERM)     # no exception here...
            assert received == [signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):
                raise_if_stopped()                              # ...but here
        assert reported == []                        # and no "Exception ignored" report
        assert sys.unraisablehook == reported.append # the block put the hook back
    finally:
        sys.unraisablehook = hook_before
    assert received == [signal.SIGTERM]              # the block's list keeps what came
    raise_if_stopped()                               # outside the block nothing is pending
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_an_inner_stop_block_keeps_the_outer_blocks_signals() -> None:
    with stop_on_signals() as outer:
        _signal_lost_in_a_weakref_callback(signal.SIGTERM)
        with stop_on_signals() as inner:
            assert inner == []
        assert outer == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()


def test_sigterm_lost_during_a_step_still_stops_train_at_that_step(tmp_path: Path,
                                                                     monkeypatch, capsys
                                                                     ) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run.h5"
    real_step = train.train_step
    steps: list[int] = []

    def step_then_lose_a_sigterm(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_step(*args, **kwargs)
        steps.append(1)
        if len(steps) == 12:                         # in the second epoch (8 steps an epoch)
            _signal_lost_in_a_weakref_callback(signal.SIGTERM)
        return result

    monkeypatch.setattr(train, "train_step", step_then_lose_a_sigterm)
    code = main(["train", "--dataset", "synthetic", "--epochs", "5", "--train-subset", "500",
                 "--batch-size", "64", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 143, err
    assert len(steps) == 12                          # it stopped at the step the signal came
    assert f"minibnn: terminated ({out} keeps epoch 1; continue with --resume {out})" in err
    assert "Exception ignored" not in err and "Traceback" not in err
    assert load_run(str(out)).checkpoint.epoch == 1
