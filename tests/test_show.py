"""``minibnn show``: per-epoch tables of run files side by side, and their PNG curves."""
from __future__ import annotations

from pathlib import Path

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
    rows = out[4:]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]      # the longer run sets the rows


def test_plot_writes_a_png_and_bad_names_are_one_line_errors(
        runs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curves.png"
    assert main(["show", *runs, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    assert main(["show", runs[0], "--plot", str(tmp_path / "x.xyz")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert main(["show", runs[0], "--plot", str(tmp_path / "no" / "dir.png")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.h5")]) == 2
    assert "not found" in capsys.readouterr().err


def test_labels_fall_back_to_file_names() -> None:
    same = [{"optimizer": "cema", "seed": 0}, {"optimizer": "cema", "seed": 0}]
    assert run_labels(same, ["a/x.h5", "b/y.h5"]) == ["x.h5", "y.h5"]
    assert run_labels([{"seed": 0}, {"seed": 1}], ["x", "y"]) == ["seed=0", "seed=1"]
