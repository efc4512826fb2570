"""Nothing lost, nothing silent: one writer per run file, kill -9 mid-write, stale temporaries,
full disks, divergence, hyperparameters that overflow the dtype, bad sizes and paths, Ctrl-C,
and the messages around them (issue 12).  Every error is one line on stderr with exit 2."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minibnn.run import files as run_io
from minibnn.run import resources
from minibnn.run import train as train_module
from minibnn.commands.cli import main
from minibnn.errors import MinibnnError
from minibnn.run.files import load_run

#: a small, quick training on the synthetic set
SMALL = ["--dataset", "synthetic", "--shift", "0", "--hidden", "32,32", "--train-subset", "500",
         "--no-progress"]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minibnn: error:"), err
    return err[0]


def _start_training(out: str, epochs: int = 400, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A training in another process (long enough to be interrupted)."""
    return subprocess.Popen([sys.executable, "-m", "minibnn", "train", *SMALL, "--epochs",
                             str(epochs), "--out", out, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = str(tmp_path / "run.h5")
    proc = _start_training(out)
    try:
        _wait_for(lambda: os.path.exists(out))      # an epoch is on disk, the lock is held
        pid = str(proc.pid)
        source = str(tmp_path / "source.h5")
        assert main(["train", *SMALL, "--epochs", "1", "--out", source]) == 0
        capsys.readouterr()
        for argv in (["train", *SMALL, "--out", out, "--overwrite"],
                     ["train", "--resume", out],
                     ["export", source, "--out", out, "--overwrite"],
                     ["export", source, "--format", "onnx", "--out", out, "--overwrite"]):
            assert main(argv) == 2, argv
            line = _one_line_error(capsys)
            assert f"in use by process {pid}" in line, line
        assert main(["eval", out]) == 0               # readers are never blocked
    finally:
        proc.kill()
        proc.wait()
    assert main(["train", "--resume", out, "--stop-after", "1", "--no-progress"]) == 0


def test_kill_9_during_writes_then_eval_and_resume(tmp_path, capsys):
    """kill -9 at several moments of a training that writes a larger file every epoch: the
    run file stays readable, eval works, resume continues, and the next write removes the
    temporaries the kills left."""
    out = str(tmp_path / "run.h5")
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "minibnn", "train", "--dataset", "synthetic", "--shift", "0",
             "--hidden", "512,512", "--train-subset", "200", "--no-progress", "--epochs", "400",
             "--out", out, "--overwrite"] if not os.path.exists(out) else
            [sys.executable, "-m", "minibnn", "train", "--resume", out, "--no-progress"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: os.path.exists(out))
        time.sleep(float(rng.uniform(0.5, 3.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert main(["eval", out]) == 0, capsys.readouterr().err
    capsys.readouterr()
    stale = tmp_path / "run.h5.abcd1234.tmp"          # what a killed write leaves
    stale.write_bytes(b"x" * 100)
    foreign = tmp_path / "run.h5.notours.tmp"          # not atomic_path's pattern: kept
    foreign.write_bytes(b"y")
    before = load_run(out).checkpoint.epoch
    assert main(["train", "--resume", out, "--stop-after", "1", "--no-progress"]) == 0
    assert load_run(out).checkpoint.epoch == before + 1
    assert not stale.exists() and foreign.exists()
    assert not [p for p in os.listdir(tmp_path) if run_io.temporary_pattern(out).fullmatch(p)]


def test_not_enough_disk_space_is_refused_before_training(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run.h5")
    real = shutil.disk_usage
    monkeypatch.setattr(resources.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    trained = []
    monkeypatch.setattr(train_module, "train_epoch",
                        lambda *a, **k: trained.append(1) or {})
    assert main(["train", *SMALL, "--out", out]) == 2
    line = _one_line_error(capsys)
    assert "not enough disk space" in line and out in line and "1000 B free" in line
    assert not trained and not os.path.exists(out)


def test_a_failing_write_keeps_the_previous_run_file(tmp_path, capsys, monkeypatch):
    """Every write error is one line naming the path and the OS error; the last good file
    stays as it was."""
    out = str(tmp_path / "run.h5")
    assert main(["train", *SMALL, "--epochs", "2", "--stop-after", "1", "--out", out]) == 0
    good = open(out, "rb").read()
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run_io.os, "fsync", full)
    assert main(["train", "--resume", out]) == 2
    line = _one_line_error(capsys)
    assert f"could not write {out}: No space left on device" in line
    assert open(out, "rb").read() == good


def _tiny_filesystem(path: Path) -> bool:
    """Mount a 1 MiB tmpfs on ``path``; False where this machine does not allow it."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_really_full_filesystem(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _tiny_filesystem(disk):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); the write-error path "
                    "is tested with a failing fsync above")
    try:
        out = str(disk / "run.h5")
        assert main(["train", *SMALL, "--hidden", "256,256", "--epochs", "2", "--out", out]) == 2
        line = _one_line_error(capsys)
        assert "not enough disk space" in line or "No space left" in line
        (disk / "filler").write_bytes(b"\0" * 900_000)        # too small even for a tiny run
        assert main(["train", *SMALL, "--hidden", "8,8", "--epochs", "1",
                     "--out", str(disk / "small.h5")]) == 2
        _one_line_error(capsys)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_divergence_names_the_step_and_keeps_the_last_good_epoch(tmp_path, capsys):
    out = str(tmp_path / "run.h5")
    assert main(["train", *SMALL, "--real-lr", "1e37", "--epochs", "2", "--out", out]) == 2
    line = _one_line_error(capsys)
    assert "training diverged: at step 2 (epoch 1) the loss is not finite" in line
    assert "first non-finite array: params/fc1.w" in line      # the first in the model's order
    assert "nothing was written" in line and not os.path.exists(out)


def test_divergence_warns_nothing(tmp_path, recwarn):
    """NumPy's overflow RuntimeWarnings stay inside: the divergence error says it all."""
    assert main(["train", *SMALL, "--real-lr", "1e37", "--epochs", "2",
                 "--out", str(tmp_path / "r.h5")]) == 2
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_finite_but_exploding_loss_counts_as_divergence(tmp_path, capsys):
    out = str(tmp_path / "run.h5")
    assert main(["train", *SMALL, "--real-lr", "1e10", "--epochs", "2", "--out", out]) == 2
    line = _one_line_error(capsys)
    assert "training diverged" in line and "ln(10)" in line


@pytest.mark.parametrize("argv,words", [
    (["--lr", "1e308", "--optimizer", "sgd"], "--lr 1e+308 overflows float32"),
    (["--init-scale", "1e300", "--optimizer", "sgd"], "--init-scale 1e+300 overflows float32"),
    (["--real-lr", "1e-60"], "--real-lr 1e-60 underflows float32 to 0"),
    (["--shift", "40"], "--shift 40 is not smaller than the 28x28 images"),
    (["--data-dir", "."], "the synthetic set is generated and reads no files"),
    (["--out", ""], "--out is empty"),
])
def test_bad_options_are_refused_before_training(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    trained = []
    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **k: trained.append(1) or {})
    assert main(["train", *SMALL, *argv]) == 2
    line = _one_line_error(capsys)
    assert words in line, line
    assert not trained and not [p for p in Path(".").rglob("*.h5")]


def test_a_missing_data_dir_is_refused_even_when_the_data_is_cached(tmp_path, capsys):
    """A typo in an explicit --data-dir is not hidden by the cache; a run whose stored
    data_dir is gone still evaluates from the cache."""
    assert main(["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"]) == 2
    assert "--data-dir /nonexistent/mnist does not exist" in _one_line_error(capsys)
    assert main(["eval", str(tmp_path / "r.h5"), "--data-dir", "/nonexistent/mnist"]) == 2
    assert "--data-dir /nonexistent/mnist does not exist" in _one_line_error(capsys)


def test_the_training_line_comes_after_the_data_loads(tmp_path, capsys):
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "r.h5")]) == 2
    captured = capsys.readouterr()
    assert "training" not in captured.out


REAL_TRAIN_EPOCH = train_module.train_epoch


def _interrupt_at(monkeypatch, epoch: int) -> None:
    real = REAL_TRAIN_EPOCH

    def epoch_or_interrupt(model, optimizer, state, *args, **kwargs):
        if state.epoch + 1 == epoch:
            raise KeyboardInterrupt
        return real(model, optimizer, state, *args, **kwargs)
    monkeypatch.setattr(train_module, "train_epoch", epoch_or_interrupt)


def test_ctrl_c_says_what_the_run_file_keeps(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run.h5")
    _interrupt_at(monkeypatch, 1)
    assert main(["train", *SMALL, "--epochs", "3", "--out", out]) == 130
    err = capsys.readouterr().err
    assert "no epoch had finished: nothing was written" in err and not os.path.exists(out)
    _interrupt_at(monkeypatch, 2)
    assert main(["train", *SMALL, "--epochs", "3", "--out", out]) == 130
    err = capsys.readouterr().err
    assert f"{out} keeps epoch 1; continue with --resume {out}" in err
    assert load_run(out).checkpoint.epoch == 1


def test_stop_after_does_not_claim_a_final_accuracy(tmp_path, capsys):
    out = str(tmp_path / "run.h5")
    assert main(["train", *SMALL, "--epochs", "3", "--stop-after", "1", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "final test accuracy" not in printed
    assert f"stopped after epoch 1 of 3; continue with --resume {out}" in printed
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    assert "final test accuracy" in capsys.readouterr().out


def test_no_progress_frames_when_stderr_is_not_a_terminal(tmp_path):
    """Under a pipe (a log file) there is one line per epoch and no tqdm frames."""
    out = str(tmp_path / "run.h5")
    done = subprocess.run([sys.executable, "-m", "minibnn", "train", "--dataset", "synthetic",
                           "--shift", "0", "--hidden", "32,32", "--train-subset", "500",
                           "--epochs", "2", "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "batch/s" not in done.stderr and "it/s" not in done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("epoch")] == [
        line for line in done.stdout.splitlines() if "train loss" in line]
    assert len([line for line in done.stdout.splitlines() if "train loss" in line]) == 2


@pytest.mark.parametrize("size", [["--hidden", "100000000,10"],
                                  ["--model", "binary_cnn", "--width", "100000"]])
def test_memory_impossible_sizes_are_one_line(tmp_path, capsys, size):
    out = str(tmp_path / "never.h5")
    assert main(["train", "--dataset", "synthetic", *size, "--no-progress", "--out", out]) == 2
    line = _one_line_error(capsys)
    assert "needs ~" in line and "GiB" in line and "this machine has" in line
    assert not os.path.exists(out)


def test_the_api_refuses_what_the_cli_refuses():
    from minibnn.run.spec import spec_from_options

    with pytest.raises(MinibnnError, match="overflows float32"):
        spec_from_options({"optimizer": "sgd", "lr": 1e300})
    assert spec_from_options({"optimizer": "sgd", "lr": 1e300, "dtype": "float64"})


def test_the_space_check_counts_the_file_being_replaced(tmp_path, monkeypatch):
    """Fresh, several epochs: two copies at once from the second write on; one epoch: one; a
    resume: the file on disk is the one replaced (its bytes are taken already)."""
    from minibnn.run.train import _space_needed

    out = tmp_path / "run.h5"
    assert _space_needed(1000, str(out), writes=3) == 2000
    assert _space_needed(1000, str(out), writes=1) == 1000
    out.write_bytes(b"x" * 900)
    assert _space_needed(1000, str(out), writes=3) == 1100
    assert _space_needed(1000, str(out), writes=1) == 1100


def test_a_run_that_passed_the_space_check_has_room_for_every_epoch(tmp_path, capsys,
                                                                   monkeypatch):
    """The bytes on disk at the peak of every epoch's write (the new file beside the one it
    replaces) never exceed what the check asked to be free at the start."""
    from minibnn.run import files as files_module

    out = str(tmp_path / "run.h5")

    def used() -> int:
        return sum(p.stat().st_size for p in tmp_path.iterdir() if p.is_file())

    asked = []
    real_check = resources.check_free_space
    monkeypatch.setattr(train_module, "check_free_space",
                        lambda path, need: asked.append(need) or real_check(path, need))
    peaks = []
    real_atomic = files_module.atomic_path

    def atomic_watching(path, *args, **kwargs):
        manager = real_atomic(path, *args, **kwargs)

        class Watch:
            def __enter__(self):
                return manager.__enter__()

            def __exit__(self, *exc):
                peaks.append(used())                 # both copies are on disk here
                return manager.__exit__(*exc)
        return Watch()

    monkeypatch.setattr(files_module, "atomic_path", atomic_watching)
    assert main(["train", *SMALL, "--epochs", "3", "--out", out]) == 0
    assert asked and len(peaks) >= 3
    assert max(peaks) <= asked[0], (peaks, asked)


def test_os_errors_read_as_one_line():
    """errno first; else the message HDF5 buries in its multi-line text; else the first line."""
    from minibnn.errors import os_reason

    assert os_reason(OSError(28, "No space left on device")) == "No space left on device"
    hdf5 = OSError("Can't synchronously write data (file write failed: time = Mon Dec  7\n, "
                   "filename = 'x.tmp', errno = 28, error message = 'No space left on device', "
                   "buf = 0x1)")
    assert os_reason(hdf5) == "No space left on device"
    assert os_reason(OSError("first line\nsecond")) == "first line"


def test_an_export_to_a_full_filesystem_is_one_line(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _tiny_filesystem(disk):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); os_reason is tested above")
    try:
        run = str(tmp_path / "run.h5")
        assert main(["train", *SMALL, "--hidden", "256,256", "--epochs", "1", "--out", run]) == 0
        capsys.readouterr()
        (disk / "filler").write_bytes(b"\0" * 900_000)        # leaves ~100 KiB
        for fmt, name in (("packed", "run.packed.h5"), ("onnx", "run.onnx")):
            assert main(["export", run, "--format", fmt, "--out", str(disk / name)]) == 2
            line = _one_line_error(capsys)
            assert "No space left on device" in line, line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]   # no temporaries or locks
    finally:
        subprocess.run(["umount", str(disk)], check=False)
