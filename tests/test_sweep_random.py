"""``[random]`` in a sweep spec: reproducible draws, checked specs, resume, and the report."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from minibnn.commands.cli import main
from minibnn.commands.sweep import sweep
from minibnn.commands.sweep_report import best_after, show_sweep
from minibnn.commands.sweep_spec import parse_sweep
from minibnn.errors import MinibnnError

BASE = """
[base]
dataset = "synthetic"
hidden = [16, 16]
epochs = 1
train-subset = 200
optimizer = "sgd"
"""
RANDOM = BASE + """
[random]
trials = 6
seed = 7
lr = {log-uniform = [1e-3, 1.0]}
momentum = {uniform = [0.0, 0.9]}
batch-size = {int-uniform = [20, 60]}
schedule = {choice = ["constant", "linear"]}
"""


def _quiet(_: str) -> None:
    pass


def test_draws_are_reproducible_within_their_ranges_and_named_in_the_points():
    a, b = parse_sweep(RANDOM), parse_sweep(RANDOM)
    assert a.axes == ("trial", "lr", "momentum", "batch-size", "schedule")
    assert [p.values for p in a.points] == [p.values for p in b.points]
    assert [p.values["trial"] for p in a.points] == list(range(6))
    for p in a.points:
        v, spec = p.values, p.spec
        assert 1e-3 <= v["lr"] <= 1.0 and 0.0 <= v["momentum"] <= 0.9
        assert isinstance(v["batch-size"], int) and 20 <= v["batch-size"] <= 60
        assert v["schedule"] in ("constant", "linear")
        assert spec.binary_optimizer.lr == v["lr"] and spec.loop.batch_size == v["batch-size"]
        assert spec.binary_optimizer.momentum == v["momentum"]
        assert len(f"{v['lr']:.10g}".replace(".", "").lstrip("0")) <= 5    # 4 digits kept
    # log-uniform is uniform in log: over many trials the log-median is near the middle
    many = parse_sweep(RANDOM.replace("trials = 6", "trials = 400"))
    logs = np.log10([p.values["lr"] for p in many.points])
    assert abs(np.median(logs) - (-1.5)) < 0.15
    assert {p.values["schedule"] for p in many.points} == {"constant", "linear"}


def test_another_seed_draws_others_and_more_trials_keep_the_first():
    first = parse_sweep(RANDOM)
    other = parse_sweep(RANDOM.replace("seed = 7", "seed = 8"))
    assert [p.id for p in other.points] != [p.id for p in first.points]
    more = parse_sweep(RANDOM.replace("trials = 6", "trials = 9"))
    assert [p.id for p in more.points][:6] == [p.id for p in first.points]
    # a changed range changes that option only
    moved = parse_sweep(RANDOM.replace("uniform = [0.0, 0.9]", "uniform = [0.5, 0.9]"))
    for p, q in zip(first.points, moved.points):
        assert p.values["lr"] == q.values["lr"] and p.values["momentum"] != q.values["momentum"]


def test_with_a_grid_every_trial_runs_at_every_grid_point():
    parsed = parse_sweep(RANDOM + "[grid]\nseed = [0, 1]\n")
    assert parsed.axes == ("seed", "trial", "lr", "momentum", "batch-size", "schedule")
    assert len(parsed.points) == 12
    assert [(p.values["trial"], p.values["seed"]) for p in parsed.points[:3]] == \
        [(0, 0), (0, 1), (1, 0)]


def test_repeated_draws_are_one_run():
    parsed = parse_sweep(BASE + "[random]\ntrials = 10\nschedule = {choice = ['linear']}\n")
    assert len(parsed.points) == 1 and parsed.repeated_trials == 9


@pytest.mark.parametrize("table, message", [
    ("trials = 0\nlr = {uniform = [0.1, 0.2]}", "trials must be a positive integer"),
    ("trials = 2\nseed = -1\nlr = {uniform = [0.1, 0.2]}", "seed must be an integer >= 0"),
    ("trials = 2", "no option to draw"),
    ("trials = 2\nlr = [0.1, 0.2]", "lr must be one distribution"),
    ("trials = 2\nlr = {normal = [0.1, 0.2]}", "lr must be one distribution"),
    ("trials = 2\nlr = {uniform = [0.2, 0.1]}", "lr uniform needs [lo, hi], two numbers lo < hi"),
    ("trials = 2\nlr = {log-uniform = [0.0, 0.1]}", "two numbers 0 < lo < hi"),
    ("trials = 2\nbatch-size = {int-uniform = [1.5, 9]}", "two integers lo < hi"),
    ("trials = 2\nschedule = {choice = []}", "choice must be a non-empty list"),
    ("trials = 2\nepochs = {int-uniform = [1, 2]}", "'epochs' is given twice"),
    ("trials = 2\nlr = {uniform = [0.1, 0.2]}\nlr = {uniform = [0.1, 0.2]}", "not valid TOML"),
    ("trials = 2\ndevice = {choice = ['cpu']}", "machine-local"),
    ("trials = 2\nlearning-rate = {uniform = [0.1, 0.2]}", "unknown option 'learning-rate'"),
    ("trials = 2\nalpha = {uniform = [0.1, 0.2]}", "--alpha does not apply to --optimizer sgd"),
    ("trials = 200000\nlr = {uniform = [0.1, 0.2]}", "more than the 100,000"),
])
def test_bad_random_tables_are_one_line_errors(table, message):
    with pytest.raises(MinibnnError) as info:
        parse_sweep(BASE + "[random]\n" + table + "\n", "s.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_a_bad_random_spec_with_exit_2(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(BASE + "[random]\ntrials = 2\nlr = {uniform = [1, 0]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr uniform needs" in err[0]


@pytest.mark.slow
def test_a_random_sweep_runs_resumes_and_reports(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(RANDOM.replace("trials = 6", "trials = 3"))
    out = tmp_path / "out"
    sweep(str(spec), str(out), workers=1, progress=False, log=_quiet)
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "done" for r in rows)
    assert {"lr", "momentum", "batch-size", "schedule"} <= set(rows[0])
    # more trials: the first three are not trained again
    spec.write_text(RANDOM.replace("trials = 6", "trials = 4"))
    lines: list[str] = []
    sweep(str(spec), str(out), workers=1, progress=False, log=lines.append,
          replace_spec=True)
    assert any("3 already done, 1 to run" in line for line in lines), lines
    text = show_sweep(str(out), str(tmp_path / "plot.png"))
    assert "best test_acc after 4 trials" in text and (tmp_path / "plot.png").stat().st_size


def test_best_after_k_trials():
    rows = [{"trial": "0", "status": "done", "val_acc": "0.5"},
            {"trial": "1", "status": "failed", "val_acc": ""},
            {"trial": "2", "status": "done", "val_acc": "0.4"},
            {"trial": "3", "status": "done", "val_acc": "0.7"}]
    assert best_after(rows, "val_acc") == [0.5, 0.5, 0.5, 0.7]
    assert best_after(rows, "val_acc", "min") == [0.5, 0.5, 0.4, 0.4]
    assert all(math.isnan(v) for v in best_after(rows[1:2], "val_acc"))


def test_rounded_draws_stay_inside_their_range():
    """4 significant digits can round past an end (0.99999 -> 1.0, out of momentum's range):
    draws are clamped to [lo, hi]."""
    parsed = parse_sweep(BASE + "[random]\ntrials = 3000\nseed = 1\n"
                         "momentum = {uniform = [0.9, 0.99999]}\n"
                         "lr = {log-uniform = [1e-3, 0.12346]}\n")
    values = [p.values for p in parsed.points]
    assert all(0.9 <= v["momentum"] <= 0.99999 for v in values)
    assert all(1e-3 <= v["lr"] <= 0.12346 for v in values)


def test_a_repeated_grid_value_is_an_error_with_random_too_and_repeats_count_trials():
    with pytest.raises(MinibnnError, match="lr repeats a value"):
        parse_sweep(BASE + "[grid]\nlr = [0.01, 0.01]\n[random]\ntrials = 3\n"
                    "momentum = {uniform = [0.0, 0.5]}\n")
    parsed = parse_sweep(BASE + "[grid]\nseed = [0, 1, 2]\n[random]\ntrials = 4\n"
                         "schedule = {choice = ['linear']}\n")
    assert parsed.repeated_trials == 3 and len(parsed.points) == 3
