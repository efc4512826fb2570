"""A command whose reader went away (``minibnn explain ... | head``) ends quietly: no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv", [
    ["-m", "minibnn", "explain", "--lr", "0.1", "--momentum", "0.9"],
    ["-m", "minibnn", "summary", "--model", "binary_cnn", "--dataset", "cifar10"],
    ["-m", "minibnn", "train", "--help"],
    ["-m", "verification", "--only", "P1"],
])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)                                   # the reader is gone before the first line
    try:
        proc = subprocess.run([sys.executable, *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, timeout=300)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr
