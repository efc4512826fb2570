"""``minibnn show DIR`` analysis and run file names: runs grouped over seeds (mean ± sample std
and n, against numpy), the best point for max and min, unfinished points counted, the heatmap's
colour limits (--vmin/--vmax, or the stated auto range), readable run file names, and sweep
folders of the old ``runs/<id>.h5`` names skipped and resumed in place."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest

from minibnn.commands import sweep_report
from minibnn.commands.cli import main
from minibnn.commands.sweep import MAX_LABEL, find_run_files, run_file_name, sweep
from minibnn.commands.sweep_report import show_sweep
from minibnn.commands.sweep_spec import Point, parse_sweep
from minibnn.errors import MinibnnError
from minibnn.run.files import load_run
from minibnn.run.train import fit

BASE = """
[base]
dataset = "synthetic"
hidden = [16, 16]
epochs = 1
train-subset = 200
batch_size = 50
optimizer = "sgd"
decoupled = true
"""
LRS, SEEDS = ["0.01", "0.1", "0.5"], ["0", "1", "2"]
#: (lr, seed) of the points the fake folders leave unfinished
NOT_DONE = {("0.5", "2"): "failed", ("0.1", "1"): "pending"}


def _quiet(_: str) -> None:
    pass


def _fake_folder(tmp_path: Path, seeds: list[str], rng: np.random.Generator
                 ) -> tuple[Path, dict[tuple[str, str], tuple[float, float]]]:
    """A sweep folder (sweep.toml and summary.csv, no training) over lr x seed with random
    test_acc and seconds per point, some points unfinished (``NOT_DONE``); and those values."""
    out = tmp_path / "fake"
    out.mkdir()
    (out / "sweep.toml").write_text(BASE + f"[grid]\nlr = [{', '.join(LRS)}]\n"
                                    f"seed = [{', '.join(seeds)}]\n")
    values, rows = {}, []
    for lr in LRS:
        for seed in seeds:
            acc, seconds = float(rng.uniform(0.5, 0.9)), float(rng.uniform(1, 20))
            status = NOT_DONE.get((lr, seed), "done")
            if status == "done":
                values[(lr, seed)] = (acc, seconds)
            rows.append({"lr": lr, "seed": seed, "status": status, "epochs": 1,
                         "val_acc": "", "test_acc": acc if status == "done" else "",
                         "seconds": seconds, "run_file": f"runs/x{lr}{seed}.h5", "reason": ""})
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out, values


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells split on 2+ spaces) of the table in ``text`` whose header line starts
    with ``header_start`` (after its padding), up to the next line that is not a table row."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(header_start))
    out = []
    for line in lines[first:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < 2:
            break
        out.append(cells)
    return out


def test_runs_that_differ_in_seed_are_grouped_with_numpys_mean_and_sample_std(tmp_path):
    out, values = _fake_folder(tmp_path, SEEDS, np.random.default_rng(3))
    text = show_sweep(str(out), None)
    assert "mean ± std over seed" in text
    header, *rows = _table(text, "lr  n")
    assert header == ["lr", "n", "test_acc", "seconds"]     # epochs: the spec's, left out
    assert [r[0] for r in rows] == LRS
    for lr, n, acc, seconds in rows:
        done = [values[(lr, s)] for s in SEEDS if (lr, s) in values]
        assert int(n) == len(done)
        accs, secs = np.array([a for a, _ in done]), np.array([s for _, s in done])
        assert acc == f"{np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}"
        assert seconds == f"{np.mean(secs):.4g} ± {np.std(secs, ddof=1):.2g}"
    # the per-run table stays, one row per point
    assert len(_table(text, "lr  seed")) == 1 + len(LRS) * len(SEEDS)


def test_the_best_group_for_max_and_min_and_the_unfinished_are_counted(tmp_path):
    out, values = _fake_folder(tmp_path, SEEDS, np.random.default_rng(5))
    means = {lr: (np.mean([values[(lr, s)][0] for s in SEEDS if (lr, s) in values]),
                  np.mean([values[(lr, s)][1] for s in SEEDS if (lr, s) in values]))
             for lr in LRS}
    for metric, best, column, pick in [("test_acc", None, 0, max), ("test_acc", "min", 0, min),
                                       ("seconds", None, 1, min), ("seconds", "max", 1, max)]:
        text = show_sweep(str(out), None, metric, best=best)
        winner = pick(LRS, key=lambda lr: means[lr][column])
        line = next(x for x in text.splitlines() if x.startswith(f"best {metric}"))
        direction = best or ("max" if metric == "test_acc" else "min")
        assert line.startswith(f"best {metric} ({direction}): ")
        n = sum((winner, s) in values for s in SEEDS)
        assert line.endswith(f" (n={n}) at lr={winner}"), line
        assert "2 points not finished, left out (1 failed, 1 pending)" in text


def test_one_run_per_group_shows_no_std_and_a_grid_without_seeds_reads_as_before(tmp_path):
    out, values = _fake_folder(tmp_path, SEEDS[:2], np.random.default_rng(7))
    text = show_sweep(str(out), None)
    header, *rows = _table(text, "lr  n")
    single = next(r for r in rows if r[0] == "0.1")         # seed 1 of lr 0.1 is pending
    assert single[1] == "1" and "±" not in single[2]
    assert single[2] == f"{values[('0.1', '0')][0]:.4f}"
    alone = tmp_path / "one_seed"
    alone.mkdir()
    (alone / "sweep.toml").write_text(BASE + "[grid]\nlr = [0.01, 0.1]\n")
    (alone / "summary.csv").write_text("lr,status,epochs,val_acc,test_acc,seconds,run_file,"
                                       "reason\n0.01,done,1,,0.25,1.0,a.h5,\n"
                                       "0.1,done,1,,0.75,1.0,b.h5,\n")
    text = show_sweep(str(alone), None)
    assert "mean ± std" not in text
    assert text.splitlines()[-1] == "best test_acc (max): 0.7500 at lr=0.1"


def _captured_figure(monkeypatch) -> list:
    """Replace the report's ``save_figure`` with one that keeps the figure to inspect."""
    kept: list = []
    monkeypatch.setattr(sweep_report, "save_figure", lambda fig, path, dpi: kept.append(fig))
    return kept


def test_heatmap_colour_limits_are_vmin_vmax_or_the_stated_auto_range(tmp_path, monkeypatch):
    out, values = _fake_folder(tmp_path, SEEDS, np.random.default_rng(11))
    kept = _captured_figure(monkeypatch)
    png = str(tmp_path / "h.png")
    text = show_sweep(str(out), png, x="lr", y="seed", vmin=0.0, vmax=2.0)
    ax = kept[-1].axes[0]
    assert ax.images[0].get_clim() == (0.0, 2.0)
    assert "colour range 0 to 2, set by --vmin/--vmax" in kept[-1].axes[1].get_ylabel()
    assert text.endswith(f"-> {png} (colour range 0 to 2, set by --vmin/--vmax)")
    # every value is below the middle of 0..2: every cell's text is white
    assert {t.get_color() for t in ax.texts} == {"white"}
    show_sweep(str(out), png, x="lr", y="seed")
    ax = kept[-1].axes[0]
    accs = [a for a, _ in values.values()]
    lo, hi = ax.images[0].get_clim()
    assert (lo, hi) == (min(accs), max(accs))
    assert f"colour range {lo:.4g} to {hi:.4g}, auto" in kept[-1].axes[1].get_ylabel()
    # the cells, row by row (seed up, lr across; unfinished points have none), are white
    # below the middle of the colour range
    assert [t.get_color() for t in ax.texts] == \
        ["white" if values[(lr, s)][0] < (lo + hi) / 2 else "black"
         for s in SEEDS for lr in LRS if (lr, s) in values]
    show_sweep(str(out), png, x="lr", y="seed", vmin=0.1)
    assert kept[-1].axes[0].images[0].get_clim() == (0.1, hi)


@pytest.mark.parametrize("args, message", [
    (["--vmin", "0.9", "--vmax", "0.8"], "--vmin (0.9) must be below --vmax (0.8)"),
    (["--vmin", "0.5", "--vmax", "0.5"], "--vmin (0.5) must be below --vmax (0.5)"),
    (["--vmin", "nan"], "--vmin must be a finite number"),
    (["--vmin", "0.95"], "--vmin (0.95) is not below the highest value shown"),
    (["--vmax", "0.1"], "--vmax (0.1) is not above the lowest value shown"),
])
def test_bad_colour_limits_are_one_line_errors(tmp_path, capsys, args, message):
    out, _ = _fake_folder(tmp_path, SEEDS, np.random.default_rng(13))
    png = tmp_path / "h.png"
    assert main(["show", str(out), "--plot", str(png), "--x", "lr", "--y", "seed"] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not png.exists()


def test_colour_limits_need_a_heatmap(tmp_path, capsys):
    out, _ = _fake_folder(tmp_path, SEEDS, np.random.default_rng(17))
    assert main(["show", str(out), "--vmin", "0.1"]) == 2
    assert "add --plot" in capsys.readouterr().err
    rows = [{"lr": "0.1", "status": "done", "test_acc": "0.5"},
            {"lr": "1", "status": "done", "test_acc": "0.6"}]
    with pytest.raises(MinibnnError, match="lr is the only axis that varies, drawn as a line"):
        sweep_report.plot_sweep(("lr",), rows, str(tmp_path / "l.png"), vmin=0.1)


def test_run_file_names_are_safe_bounded_and_keep_the_id():
    parsed = parse_sweep(BASE.replace("hidden = [16, 16]\n", "") +
                         "[grid]\nhidden = [[8, 8], [16, 8]]\nlr = [0.01]\nseed = [0, 1]\n")
    point = parsed.points[0]
    assert run_file_name(point, ("hidden", "seed")) == f"hidden=8-8_seed=0-{point.id}.h5"
    assert run_file_name(point, ()) == f"{point.id}.h5"
    odd = Point({"schedule": "a b/c:" * 40, "lr": 0.01}, point.spec)   # any text
    name = run_file_name(odd, ("schedule", "lr"))
    assert re.fullmatch(r"[A-Za-z0-9._=-]+", name) and name.startswith("schedule=a-b-c-a-b")
    assert name.endswith(f"-{point.id}.h5")
    assert len(name) == MAX_LABEL + len(f"-{point.id}.h5")


def test_run_files_are_found_by_id_under_either_name(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ["aaaaaaaaaaaa.h5", "lr=1-bbbbbbbbbbbb.h5", "lr=2-aaaaaaaaaaaa.h5",
                 "cccccccccccc.h5.lock", "lr=1-bbbbbbbbbbbb.h5.0a1b2c3d.tmp", "xdddddddddddd.h5"]:
        (runs / name).write_bytes(b"")
    found = find_run_files(str(runs), ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc",
                                       "dddddddddddd"])
    assert found == {"aaaaaaaaaaaa": str(runs / "aaaaaaaaaaaa.h5"),      # the old name wins
                     "bbbbbbbbbbbb": str(runs / "lr=1-bbbbbbbbbbbb.h5")}
    assert find_run_files(str(tmp_path / "none"), ["aaaaaaaaaaaa"]) == {}


def test_a_sweep_names_its_files_and_finds_old_names_finished_or_to_resume(tmp_path):
    text = BASE.replace("epochs = 1", "epochs = 2") + "[grid]\nlr = [0.01, 0.1]\nseed = [0, 1]\n"
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    points = parse_sweep(text).points
    out = tmp_path / "out"
    runs = out / "runs"
    runs.mkdir(parents=True)
    # an old folder: point 0 finished and point 1 stopped after epoch 1, both as runs/<id>.h5
    old_done, old_half = runs / f"{points[0].id}.h5", runs / f"{points[1].id}.h5"
    fit(points[0].spec, str(old_done), progress=False, log=_quiet)
    fit(points[1].spec, str(old_half), progress=False, stop_after=1, log=_quiet)
    stamp = os.stat(old_done).st_mtime_ns
    lines: list[str] = []
    rows = sweep(str(spec), str(out), workers=1, progress=False, log=lines.append)
    assert "1 already done, 3 to run" in lines[0]
    assert [r["status"] for r in rows] == ["done"] * 4
    assert os.stat(old_done).st_mtime_ns == stamp               # skipped, not retrained
    assert load_run(str(old_half)).checkpoint.epoch == 2        # resumed in place
    names = sorted(p.name for p in runs.glob("*.h5"))
    assert names == sorted([old_done.name, old_half.name] +
                           [f"lr={p.values['lr']}_seed={p.values['seed']}-{p.id}.h5"
                            for p in points[2:]])
    with open(out / "summary.csv", newline="") as f:
        assert [r["run_file"] for r in csv.DictReader(f)] == \
            [f"runs/{old_done.name}", f"runs/{old_half.name}"] + \
            [f"runs/{n}" for n in sorted(names) if n not in (old_done.name, old_half.name)]
    # a re-run trains nothing, whichever name each file has
    lines.clear()
    sweep(str(spec), str(out), workers=1, progress=False, log=lines.append)
    assert "4 already done, 0 to run" in lines[0]
