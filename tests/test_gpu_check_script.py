"""``scripts/gpu_check.sh --dry-run``: the one-shot GPU script's plumbing, on the CPU.

The dry run takes every step of a GPU run in the same order; the GPU parts report "skipped:
no GPU", the CPU half of the training comparison runs (tiny, on the synthetic set here), and
the NVRTC build runs wherever NVRTC is installed (CI installs it: ``MINIBNN_REQUIRE_NVRTC``).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

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
    if os.environ.get("MINIBNN_REQUIRE_NVRTC") == "1":
        assert status["build"].startswith("ok"), status["build"]
        assert "kernel builds" in (out / "build.txt").read_text()
    assert "synthetic" in (out / "summary.txt").read_text()   # no MNIST cache: said so
    assert "final test accuracy" in (out / "mnist-cpu.txt").read_text()
    assert (out / "mnist-cpu.h5").exists()


def test_unknown_option_is_one_line_exit_2(tmp_path):
    proc = _run("--fast", cache=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--fast" in proc.stderr
