"""The ``minibnn`` command end to end on the synthetic set, and its one-line errors."""
import json
import re
import subprocess
import sys

import pytest

from minibnn import optim
from minibnn.commands.cli import main
from minibnn.run.files import load_run


def _run(*args):
    return subprocess.run([sys.executable, "-m", "minibnn", *args], capture_output=True,
                          text=True, timeout=300)


def test_train_then_eval_end_to_end(tmp_path):
    out = tmp_path / "run.h5"
    proc = _run("train", "--dataset", "synthetic", "--hidden", "64,64", "--epochs", "2",
                "--act-ste", "clipped", "--alpha", "0.01", "--shift", "0", "--out", str(out),
                "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2/2" in proc.stdout and out.exists()
    proc = _run("eval", str(out))
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("test accuracy")[1])
    assert accuracy > 0.9


def test_stop_and_resume_from_the_command_line(tmp_path):
    out = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "synthetic", "--hidden", "32,32", "--epochs", "2",
                 "--stop-after", "1", "--out", out, "--no-progress"]) == 0
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    assert load_run(out).checkpoint.epoch == 2


def test_smoke_train_with_defaults_on_synthetic(tmp_path):
    out = str(tmp_path / "s.h5")
    assert main(["train", "--dataset", "synthetic", "--epochs", "2", "--out", out,
                 "--overwrite", "--no-progress"]) == 0
    run = load_run(out)
    stored = json.loads(run.config_json)
    spec = stored["spec"]
    assert spec["model"]["act_ste"] == "approx"
    assert spec["binary_optimizer"]["alpha"] == optim.defaults("cema")["alpha"]
    assert run.metrics["alpha"][1] == pytest.approx(run.metrics["alpha"][0] / 2, rel=1e-12)


def test_resume_may_change_the_machine_local_backend(tmp_path):
    out = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "synthetic", "--hidden", "32,32", "--epochs", "2",
                 "--stop-after", "1", "--out", out, "--no-progress"]) == 0
    assert json.loads(load_run(out).config_json)["local"]["backend"] == "auto"
    assert main(["train", "--resume", out, "--backend", "numpy", "--no-progress"]) == 0
    run = load_run(out)
    assert run.checkpoint.epoch == 2 and json.loads(run.config_json)["local"]["backend"] == "numpy"


def test_existing_run_file_is_not_overwritten_and_resume_takes_no_new_config(tmp_path):
    out = str(tmp_path / "run.h5")
    common = ["--dataset", "synthetic", "--hidden", "32,32", "--train-subset", "201",
              "--batch-size", "100", "--out", out, "--no-progress"]
    assert main(["train", "--epochs", "1", *common]) == 0       # last batch of 1 is merged
    assert main(["train", "--epochs", "1", *common]) == 2        # refuses to overwrite
    assert main(["train", "--epochs", "1", "--overwrite", *common]) == 0
    assert main(["train", "--resume", out, "--epochs", "3"]) == 2
    assert main(["train", "--resume", out, "--no-progress"]) == 0    # already finished


def test_help_explains_the_tool():
    proc = _run("--help")
    assert proc.returncode == 0
    assert "binary" in proc.stdout and "train" in proc.stdout and "eval" in proc.stdout
    proc = _run("train", "--help")
    assert "--alpha" in proc.stdout and "--optimizer" in proc.stdout
    text = " ".join(proc.stdout.split())            # argparse wraps help lines
    for name in ("cema", "bop", "sgd"):            # each optimiser's own defaults are shown
        for field, value in optim.defaults(name).items():
            if field in ("gamma", "threshold", "alpha", "lr", "momentum"):
                # "cema 0.1", or grouped with the optimisers that share the value: "a/cema 0.1"
                grouped = rf"(?<![\w/])([\w]+/)*{name}(/[\w]+)* {re.escape(str(value))}(?![\w.])"
                assert re.search(grouped, text), (name, field, value)
    assert "(default: None)" not in text


@pytest.mark.parametrize("args, message", [
    (["train", "--alpha", "0", "--dataset", "synthetic"], "--alpha must be in (0, 1]"),
    (["train", "--gamma", "1.5", "--dataset", "synthetic"], "--gamma must be in (0, 1]"),
    (["train", "--optimizer", "sgd", "--lr", "-0.1", "--dataset", "synthetic"],
     "--lr must be >= 0"),
    (["train", "--optimizer", "sgd", "--alpha", "0.1", "--dataset", "synthetic"],
     "--alpha does not apply to --optimizer sgd"),
    (["train", "--model", "binary_cnn", "--hidden", "8,8", "--dataset", "synthetic"],
     "--hidden does not apply to --model binary_cnn"),
    (["train", "--backend", "cuda", "--dataset", "synthetic"], "--backend cuda runs on the GPU"),
    (["train", "--optimizer", "cema", "--scale", "--dataset", "synthetic"], "needs latent weights"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "CIFAR-10"),
    (["eval", "/nonexistent/run.h5"], "run file not found"),
    (["train", "--resume", "/nonexistent/run.h5"], "run file not found"),
    (["train", "--optimizer", "adam", "--lr", "nan", "--dataset", "synthetic"],
     "--lr must be a finite number"),
    (["train", "--hidden", "32", "--dataset", "synthetic"], "--hidden needs at least two"),
    (["train", "--batch-size", "1", "--dataset", "synthetic"], "--batch-size must be >= 2"),
    (["train", "--seed", "-1", "--dataset", "synthetic"], "--seed must be >= 0"),
    (["train", "--dataset", "synthetic", "--out", "/proc/run.h5"], "cannot write run file"),
    (["train", "--dataset", "synthetic", "--out", "/tmp"], "is a directory"),
    (["eval", "/tmp"], "is not a file"),
])
def test_bad_input_is_one_line_error(args, message):
    proc = _run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minibnn: error:"), proc.stderr
    assert message in lines[0]


def test_unknown_choice_is_rejected_by_argparse():
    proc = _run("train", "--model", "resnet50")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_corrupt_run_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n garbage")
    proc = _run("eval", str(bad))
    assert proc.returncode == 2 and "corrupt or unreadable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
