"""``scripts/gpu_check.sh --dry-run``: the one-shot GPU script's plumbing, on the CPU.

The dry run takes every step of a GPU run in the same order; the GPU parts report "skipped:
no GPU", the CPU half of the training comparison runs (tiny, on the synthetic set here), and
the NVRTC build runs wherever NVRTC is installed (CI installs it: ``MINIBNN_REQUIRE_NVRTC``).
"""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from minibnn.backend import gpu_available

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
STEPS = ("env", "build", "gpu-tests", "verify", "bench", "mnist-gpu", "mnist-cpu", "cifar10-gpu",
         "cifar10-cpu")


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MINIBNN_CACHE": str(cache)}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.slow
def test_dry_run_takes_every_step_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", str(out), cache=tmp_path / "empty-cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    status = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.split()
              and line.split()[0] in STEPS}
    assert list(status) == list(STEPS)                       # every step, in this order
    for name in ("verify", "bench", "mnist-gpu", "cifar10-gpu"):
        assert status[name].startswith("skipped: no GPU"), (name, status[name])
    for name in ("env", "gpu-tests", "mnist-cpu"):
        assert status[name].startswith("ok"), (name, status[name])
    # two files come back (a borrowed machine returns at most 8): the summary and the details
    assert sorted(p.name for p in out.iterdir()) == ["details.tar.gz", "summary.txt"]
    with tarfile.open(out / "details.tar.gz") as tar:
        details = {Path(m.name).name: tar.extractfile(m).read().decode()
                   for m in tar.getmembers() if m.isfile()}
    assert {f"{name}.txt" for name in STEPS} <= set(details)
    if os.environ.get("MINIBNN_REQUIRE_NVRTC") == "1":
        assert status["build"].startswith("ok"), status["build"]
        assert "kernel builds" in details["build.txt"]
    summary = (out / "summary.txt").read_text()
    assert "synthetic" in summary                            # no MNIST cache: said so
    assert "final test accuracy" in details["mnist-cpu.txt"] and "final test accuracy" in summary


@pytest.mark.slow
def test_steps_past_the_budget_are_skipped_saying_so(tmp_path):
    env_budget = {"GPU_CHECK_BUDGET_S": "5"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MINIBNN_CACHE": str(tmp_path), **env_budget})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "skipped: over the 5s budget" in summary


def test_unknown_option_is_one_line_exit_2(tmp_path):
    proc = _run("--fast", cache=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--fast" in proc.stderr


@pytest.mark.skipif(gpu_available(), reason="a GPU is present: the real run is the check itself")
def test_a_real_run_without_a_gpu_fails_saying_so(tmp_path):
    """Without --dry-run the machine was lent for its GPU: finding none is a failure in the
    summary (with the probe's reason) and exit 1, never a quiet dry run."""
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "MINIBNN_CACHE": str(tmp_path),
                               "GPU_CHECK_BUDGET_S": "12"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = (tmp_path / "out" / "summary.txt").read_text().splitlines()[0]
    assert first.startswith("gpu ") and "failed: no usable GPU on a real run" in first
