"""``minibnn show``: per-epoch tables of run files side by side with their provenance, and
their PNG curves (per step where stored, else per epoch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minibnn.commands.cli import main
from minibnn.run.spec import spec_from_options
from minibnn.commands.show import run_labels
from minibnn.run.train import fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("show")
    base = dict(dataset="synthetic", hidden=[32, 16], batch_size=50, train_subset=400)
    specs = [dict(epochs=2), dict(epochs=3, optimizer="sgd", lr=0.1, val_split=100)]
    paths = []
    for i, spec in enumerate(specs):
        path = str(d / f"run{i}.h5")
        fit(spec_from_options({**base, **spec}), path, progress=False, log=lambda _: None)
        paths.append(path)
    return paths


def test_table_of_two_runs_labelled_by_their_differences(runs: list[str],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["show", *runs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[1] ") and "optimizer=cema" in out[0] and "lr=" not in out[0]
    assert "optimizer=sgd" in out[1] and "lr=0.1" in out[1] and "val_split=100" in out[1]
    header = out[2]
    assert "val acc [2]" in header and "val acc [1]" not in header and "flips [1]" in header
    rows = out[4:out.index("")]                                # the provenance follows
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]      # the longer run sets the rows


def test_plot_writes_a_png_and_bad_names_are_one_line_errors(
        runs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curves.png"
    assert main(["show", *runs, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    assert main(["show", runs[0], "--plot", str(tmp_path / "x.xyz")]) == 2
    assert "unknown image format .xyz; supported: png" in capsys.readouterr().err
    assert main(["show", runs[0], "--plot", str(tmp_path / "no" / "dir.png")]) == 2
    assert f"the folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.h5")]) == 2
    assert "not found" in capsys.readouterr().err


def test_labels_fall_back_to_file_names() -> None:
    same = [{"optimizer": "cema", "seed": 0}, {"optimizer": "cema", "seed": 0}]
    assert run_labels(same, ["a/x.h5", "b/y.h5"]) == ["x.h5", "y.h5"]
    assert run_labels([{"seed": 0}, {"seed": 1}], ["x", "y"]) == ["seed=0", "seed=1"]


# --- per-step curves, style rules, provenance -------------------------------------------------

def _drawn(monkeypatch: pytest.MonkeyPatch, paths: list[str], tmp_path: Path) -> Any:
    """The figure ``show --plot`` draws for ``paths`` (caught before it is saved)."""
    from minibnn.commands import show_plot

    caught = {}
    monkeypatch.setattr(show_plot, "save_figure",
                        lambda fig, path, dpi: caught.setdefault("fig", fig))
    assert main(["show", *paths, "--plot", str(tmp_path / "x.png")]) == 0
    import matplotlib.pyplot as plt

    axes = {ax.get_title(): ax for ax in caught["fig"].get_axes()}
    plt.close(caught["fig"])
    return axes


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two epochs of 8 steps with every 2nd step logged, a validation split (test at the end
    only)."""
    path = str(tmp_path_factory.mktemp("steps") / "stepped.h5")
    fit(spec_from_options(dict(dataset="synthetic", hidden=[32, 16], batch_size=50,
                               train_subset=500, val_split=100, epochs=2)),
        path, progress=False, log=lambda _: None, local={"log_every": 2})
    return path


def test_plot_draws_steps_with_epoch_points_on_the_step_axis(
        stepped: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from minibnn.run.files import load_run

    axes = _drawn(monkeypatch, [stepped], tmp_path)
    capsys.readouterr()
    rows = load_run(stepped).step_metrics
    assert set(axes) == {"loss", "accuracy", "flip ratio per binary layer", "alpha", "real_lr"}
    assert all(ax.get_xlabel() == "optimiser step" for ax in axes.values())
    lines = {line.get_label(): line for line in axes["loss"].lines}
    assert set(lines) == {"[1] train per step", "[1] val", "[1] test"}
    np.testing.assert_array_equal(lines["[1] train per step"].get_xdata(), rows["step"])
    np.testing.assert_array_equal(lines["[1] val"].get_xdata(), [8, 16])   # epochs' last steps
    np.testing.assert_array_equal(lines["[1] test"].get_xdata(), [16])     # NaN left out
    styles = {(line.get_color(), line.get_linestyle()) for line in lines.values()}
    assert len({c for c, _ in styles}) == 3 and len({s for _, s in styles}) == 3
    assert lines["[1] test"].get_marker() == "o"          # one point: visible as a marker
    for rate in ("alpha", "real_lr"):                     # each rate on its own axes
        (line,) = axes[rate].lines
        np.testing.assert_array_equal(line.get_ydata(), rows[rate])
        assert axes[rate].get_yscale() == "log"
    (flip,) = axes["flip ratio per binary layer"].lines
    positive = rows["flip_ratio:fc2.w"] > 0
    np.testing.assert_array_equal(flip.get_ydata(), rows["flip_ratio:fc2.w"][positive])


def test_plot_without_step_metrics_is_per_epoch_and_marks_a_one_epoch_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "one.h5")
    fit(spec_from_options(dict(dataset="synthetic", hidden=[16, 16], batch_size=50,
                               train_subset=200, epochs=1, optimizer="bop")),
        path, progress=False, log=lambda _: None, local={"log_every": 0})
    axes = _drawn(monkeypatch, [path], tmp_path)
    capsys.readouterr()
    assert {"gamma", "threshold", "real_lr"} <= set(axes)
    assert axes["loss"].get_xlabel() == "epoch"
    for line in axes["loss"].lines + axes["accuracy"].lines:
        assert list(line.get_xdata()) == [1] and line.get_marker() == "o"


def test_show_prints_each_runs_provenance(stepped: str, runs: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from h5edit import edited
    import json

    resumed = str(tmp_path / "resumed.h5")
    fit(spec_from_options(dict(dataset="synthetic", hidden=[16, 16], batch_size=50,
                               train_subset=200, epochs=2)),
        resumed, progress=False, log=lambda _: None, stop_after=1)
    fit(None, resumed, resume=True, progress=False, log=lambda _: None,
        local={"threads": 1})
    old = str(tmp_path / "old.h5")
    Path(old).write_bytes(Path(runs[0]).read_bytes())
    with edited(old) as f:                                # as written before provenance
        description = json.loads(f.attrs["description"])
        del description["provenance"]
        f.attrs["description"] = json.dumps(description)
    assert main(["show", resumed, old]) == 0
    out = capsys.readouterr().out
    mine, theirs = out.split("[1] provenance", 1)[1].split("[2] provenance", 1)
    assert mine.count("session from epoch") == 2
    assert "session from epoch 1:" in mine and "session from epoch 2:" in mine
    assert "data: synthetic" in mine and "versions: minibnn" in mine
    assert "threads: 1" in mine.split("session from epoch 2:", 1)[1]
    assert "not recorded" in theirs
