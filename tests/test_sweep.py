"""``minibnn sweep``: spec parsing, one run file per point, skip/resume on rerun, failed points,
local worker processes and a real Dask scheduler with two workers (loopback)."""
from __future__ import annotations

import csv
import subprocess
import sys
import time
import os
from pathlib import Path

import numpy as np
import pytest

from minibnn.commands.cli import main
from minibnn.errors import MinibnnError
from minibnn.run.files import load_run
from minibnn.commands.sweep import sweep
from minibnn.commands.sweep_spec import parse_sweep, spec_id
from minibnn.run.train import fit

BASE = """
[base]
dataset = "synthetic"
hidden = [16, 16]
epochs = 2
train-subset = 200
batch_size = 50
optimizer = "sgd"
decoupled = true
"""
GRID = BASE + """
[grid]
lr = [0.01, 0.1]
weight-decay = [0.0, 1e-3]
"""


def _quiet(_: str) -> None:
    pass


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_spec_is_the_product_of_the_grid_with_both_spellings() -> None:
    parsed = parse_sweep(GRID + "seed = [0, 1]\n")
    assert parsed.axes == ("lr", "weight-decay", "seed") and len(parsed.points) == 8
    first = parsed.points[0].spec
    assert first.binary_optimizer.lr == 0.01 and first.binary_optimizer.weight_decay == 0.0
    assert first.model.hidden == (16, 16) and first.binary_optimizer.decoupled is True
    assert first.data.train_subset == 200 and first.loop.batch_size == 50
    assert {p.spec.loop.seed for p in parsed.points} == {0, 1}
    # the id is the spec's: the same point under another grid order has the same id
    again = parse_sweep(BASE + "[grid]\nweight_decay = [1e-3, 0.0]\nlr = [0.1, 0.01]\n")
    assert {p.id for p in again.points} == {p.id for p in parse_sweep(GRID).points}
    hidden = parse_sweep(BASE.replace("hidden = [16, 16]\n", "") +
                         "[grid]\nhidden = [[8, 8], [16, 8]]\n")
    assert [p.spec.model.hidden for p in hidden.points] == [(8, 8), (16, 8)]


@pytest.mark.parametrize("text, message", [
    (BASE + "[grid]\nlearning-rate = [0.1]\n", "unknown option 'learning-rate'"),
    (BASE + "[grdi]\nlr = [0.1]\n", "unknown table(s) ['grdi']"),
    (BASE + "[grid]\nseed = [1.5]\n", "--seed must be an integer"),
    (BASE + "[grid]\nalpha = [0.1]\n", "point alpha=0.1: --alpha does not apply to "
     "--optimizer sgd"),
    (BASE + "[grid]\nlr = []\n", "lr must be a non-empty list"),
    (BASE + "[grid]\nlr = 0.1\n", "lr must be a non-empty list"),
    (BASE + "[grid]\ndevice = ['cpu']\n", "'device' is machine-local"),
    (BASE + "[grid]\nepochs = [1, 2]\n", "'epochs' is given twice"),
    (BASE + "[grid]\nlr = [0.1, 0.1]\n", "lr repeats a value"),
    (BASE.replace("hidden = [16, 16]\n", "") + "[grid]\nhidden = [\"16,16\", [16, 16]]\n",
     "are the same run"),
    (BASE + "[grid]\nlr = [\n", "not valid TOML"),
    (BASE + "out = 'x.h5'\n", "unknown option 'out'"),
    (BASE + "lr = '0.1'\n", "--lr must be a finite number"),
    (BASE + "data-dir = 3\n", "--data-dir must be a path"),
])
def test_bad_specs_are_one_line_errors_before_anything_runs(tmp_path: Path, text: str,
                                                            message: str, capsys) -> None:
    with pytest.raises(MinibnnError) as info:
        parse_sweep(text, "s.toml")
    assert message in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "out"
    assert main(["sweep", _write(tmp_path, text), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minibnn: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_a_sweep_runs_every_point_and_a_rerun_trains_nothing(tmp_path: Path, capsys) -> None:
    spec, out = _write(tmp_path, GRID), tmp_path / "out"
    assert main(["sweep", spec, "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    rows = _rows(out)
    assert [(r["lr"], r["weight-decay"]) for r in rows] == [("0.01", "0.0"), ("0.01", "0.001"),
                                                            ("0.1", "0.0"), ("0.1", "0.001")]
    assert {r["status"] for r in rows} == {"done"} and {r["epochs"] for r in rows} == {"2"}
    for row, point in zip(rows, parse_sweep(GRID).points):
        # named by the options that vary, then the id
        assert row["run_file"] == \
            f"runs/lr={row['lr']}_weight-decay={row['weight-decay']}-{point.id}.h5"
        run = load_run(str(out / row["run_file"]))
        assert float(row["test_acc"]) == run.metrics["test_acc"][-1]
        assert run.checkpoint.epoch == 2
    stamps = {p: os.stat(p).st_mtime_ns for p in (out / "runs").iterdir()}
    capsys.readouterr()
    assert main(["sweep", spec, "--out", str(out), "--no-progress"]) == 0
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert {p: os.stat(p).st_mtime_ns for p in (out / "runs").iterdir()} == stamps
    assert main(["show", str(out), "--plot", str(tmp_path / "heat.png")]) == 0
    shown = capsys.readouterr().out
    assert "weight-decay" in shown and "plotted test_acc" in shown
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unfinished_point_resumes_exactly(tmp_path: Path) -> None:
    text = BASE + "[grid]\nlr = [0.1]\n"
    straight = sweep(_write(tmp_path, text), str(tmp_path / "a"), workers=1, progress=False,
                     log=_quiet)
    point = parse_sweep(text).points[0]
    half = tmp_path / "b" / "runs" / f"{point.id}.h5"
    half.parent.mkdir(parents=True)
    fit(point.spec, str(half), progress=False, stop_after=1, log=_quiet)   # "killed" after 1
    assert load_run(str(half)).checkpoint.epoch == 1
    resumed = sweep(_write(tmp_path, text), str(tmp_path / "b"), workers=1, progress=False,
                    log=_quiet)
    assert straight[0]["status"] == resumed[0]["status"] == "done"
    a = load_run(str(tmp_path / "a" / "runs" / f"{point.id}.h5"))
    b = load_run(str(half))
    for name, value in a.checkpoint.params.items():
        np.testing.assert_array_equal(value, b.checkpoint.params[name])
    assert a.metrics["train_loss"] == b.metrics["train_loss"]


def test_a_failing_point_is_marked_and_the_others_go_on(tmp_path: Path, capsys) -> None:
    text = BASE.replace('optimizer = "sgd"\ndecoupled = true\n', "") + \
        "[grid]\nreal-lr = [1e-3, 1e38]\n"
    out = tmp_path / "out"
    assert main(["sweep", _write(tmp_path, text), "--out", str(out), "--workers", "2",
                 "--no-progress"]) == 1
    rows = {r["real-lr"]: r for r in _rows(out)}
    assert rows["0.001"]["status"] == "done" and rows["0.001"]["reason"] == ""
    assert rows["1e+38"]["status"] == "failed"
    assert rows["1e+38"]["reason"].startswith("training diverged")
    assert "failed: training diverged" in capsys.readouterr().out


def test_one_sweep_per_folder(tmp_path: Path) -> None:
    from minibnn.run.lock import hold

    out = tmp_path / "out"
    out.mkdir()
    with hold(str(out / ".lock"), "the sweep"):
        with pytest.raises(MinibnnError, match=f"in use by process {os.getpid()}"):
            sweep(_write(tmp_path, GRID), str(out), workers=1, progress=False, log=_quiet)


def test_a_sweep_on_a_real_dask_scheduler_with_two_workers(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="the dist extra (dask[distributed])")
    text = BASE + "[grid]\nlr = [0.01, 0.1]\nseed = [0, 1]\n"
    spec = _write(tmp_path, text)
    local = sweep(spec, str(tmp_path / "local"), workers=2, progress=False, log=_quiet)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        on_dask = sweep(spec, str(tmp_path / "dask"), scheduler=cluster.scheduler_address,
                        progress=False, log=_quiet)
        with distributed.Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
    assert [r["status"] for r in on_dask] == ["done"] * 4
    for a, b in zip(local, on_dask):          # the same points, bit for bit
        assert a["test_acc"] == b["test_acc"]
        ra, rb = load_run(a["run_file"]), load_run(b["run_file"])
        for name, value in ra.checkpoint.params.items():
            np.testing.assert_array_equal(value, rb.checkpoint.params[name])
    with pytest.raises(MinibnnError, match="cannot reach the Dask scheduler"):
        sweep(spec, str(tmp_path / "gone"), scheduler="tcp://127.0.0.1:9", progress=False,
              log=_quiet)


def test_spec_ids_are_stable() -> None:
    point = parse_sweep(BASE + "[grid]\nlr = [0.1]\n").points[0]
    assert spec_id(point.spec) == point.id and len(point.id) == 12
    # the ids of sweep folders made before the layout was a choice (commit f088428): a re-run
    # still finds their run files; the nchw layout is another run, with another id
    from minibnn.run.spec import spec_from_options

    assert spec_id(spec_from_options({})) == "617313ed1919"
    assert spec_id(spec_from_options({"model": "binary_cnn", "dataset": "synthetic",
                                      "width": 8})) == "dfcb9d161691"
    assert spec_id(spec_from_options({"layout": "nchw"})) != "617313ed1919"


def test_a_grid_too_large_is_refused_before_it_is_built() -> None:
    values = ", ".join(str(i) for i in range(400))
    text = BASE + f"[grid]\nseed = [{values}]\nlr = [{values}]\n"
    with pytest.raises(MinibnnError, match="the grid has 160,000 points .* more than the "
                                           "100,000"):
        parse_sweep(text)


def test_empty_spec_and_list_options_in_the_clis_spelling() -> None:
    with pytest.raises(MinibnnError, match="the spec is empty"):
        parse_sweep("")
    point = parse_sweep(BASE.replace("hidden = [16, 16]", 'hidden = "16,16"')).points[0]
    assert point.spec.model.hidden == (16, 16)
    with pytest.raises(MinibnnError, match="threads is not a sweep setting"):
        parse_sweep(BASE + "threads = 2\n")


def test_another_sweep_in_the_folder_is_refused_unless_replaced(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = BASE + "[grid]\nlr = [0.1]\n"
    sweep(_write(tmp_path, first), out, workers=1, progress=False, log=_quiet)
    sweep(_write(tmp_path, first + "\n# a comment\n"), out, workers=1, progress=False,
          log=_quiet)                                       # the same points: fine
    other = BASE + "[grid]\nlr = [0.1, 0.2]\n"
    with pytest.raises(MinibnnError, match="holds another sweep .*--replace-spec"):
        sweep(_write(tmp_path, other), out, workers=1, progress=False, log=_quiet)
    rows = sweep(_write(tmp_path, other), out, workers=1, progress=False, log=_quiet,
                 replace_spec=True)
    assert [r["status"] for r in rows] == ["done", "done"]


@pytest.mark.parametrize("address", ["tcp://nonsense", "http://host:8786", "tcp://h:99999"])
def test_a_malformed_scheduler_address_is_a_one_line_error(tmp_path: Path,
                                                          address: str) -> None:
    with pytest.raises(MinibnnError, match="--scheduler must be a Dask scheduler address"):
        sweep(_write(tmp_path, GRID), str(tmp_path / "o"), scheduler=address, progress=False,
              log=_quiet)


def _start_cluster(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """A killable one-process Dask cluster (scripts/dask_cluster.py) and its address."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "dask_cluster.py"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    address = proc.stdout.readline().strip()
    assert address.startswith("tcp://127.0.0.1:"), "the test's Dask cluster did not start"
    return proc, address


@pytest.mark.slow
def test_a_lost_dask_scheduler_is_one_line_and_a_rerun_finishes(tmp_path: Path) -> None:
    """The scheduler is killed (kill -9) while a point trains: the sweep says so in one line
    with the counts, leaves that point unfinished (not failed), prints no traceback, and a
    re-run on a new scheduler finishes every point."""
    pytest.importorskip("distributed", reason="the dist extra (dask[distributed])")
    text = BASE.replace("epochs = 2", "epochs = 6") + "[grid]\nlr = [0.01, 0.03, 0.1]\n"
    spec, out = _write(tmp_path, text), tmp_path / "out"
    cluster, address = _start_cluster(tmp_path)
    try:
        sweep_proc = subprocess.Popen(
            [sys.executable, "-m", "minibnn", "sweep", spec, "--out", str(out), "--scheduler",
             address, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 120
        while not any((out / "runs").glob("*.h5")) and time.monotonic() < deadline:
            time.sleep(0.2)                       # the first point has written an epoch
        cluster.kill()
        _, err = sweep_proc.communicate(timeout=120)
    finally:
        cluster.kill()
        cluster.wait()
    lines = err.strip().splitlines()
    assert sweep_proc.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"the Dask scheduler at {address} was lost" in lines[0]
    assert "unfinished; re-run to resume" in lines[0]
    statuses = [row["status"] for row in _rows(out)]
    assert "failed" not in statuses and statuses.count("done") < 3, statuses
    cluster, address = _start_cluster(tmp_path)
    try:
        sweep(spec, str(out), scheduler=address, progress=False, log=_quiet)
    finally:
        cluster.kill()
        cluster.wait()
    assert [row["status"] for row in _rows(out)] == ["done"] * 3
