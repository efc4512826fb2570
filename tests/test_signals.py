"""SIGTERM behaves like Ctrl-C: ``minibnn train`` says what the run file keeps and how to resume,
``minibnn sweep`` takes its workers with it; both exit 143."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minibnn.run.files import load_run

REPO = Path(__file__).resolve().parent.parent


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "minibnn", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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
    spec = tmp_path / "s.toml"
    spec.write_text('[base]\ndataset = "synthetic"\nepochs = 200\ntrain-subset = 500\n'
                    '[grid]\nseed = [0, 1]\n')
    out = tmp_path / "sweep"
    proc = _start(["sweep", str(spec), "--out", str(out), "--workers", "2", "--no-progress"])
    runs = out / "runs"
    _wait_for(lambda: runs.exists() and any(runs.glob("*.h5")))
    workers = _children(proc.pid)
    assert workers, "the sweep started no worker process"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "minibnn: terminated" in err and "Traceback" not in err
    _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)
