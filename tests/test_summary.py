"""``minibnn summary`` and ``minibnn.commands.summary``: counts checked against the models' own
formulas."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
from h5edit import edited
import numpy as np
import pytest

from minibnn.commands.cli import main
from minibnn.run.files import load_run
from minibnn.nn import models
from minibnn.commands.summary import format_summary, provenance_lines, summarize


def test_binary_cnn_counts() -> None:
    w = 8
    model = models.binary_cnn((3, 32, 32), width=w)
    rows, t = summarize(model)
    by_name = {r.name: r for r in rows}
    chans = [w, w, 2 * w, 2 * w, 4 * w, 4 * w]
    hw = [32, 32, 16, 16, 8, 8]            # output size of conv i (pooling comes after)
    binary_params = sum(chans[i - 1] * chans[i] * 9 for i in range(1, 6))
    assert t["binary_params"] == binary_params
    for i in range(1, 6):
        row = by_name[f"conv{i + 1}"]
        assert row.input_bits == "1-bit" and row.float_macs == 0
        assert row.binary_macs == chans[i] * hw[i] ** 2 * chans[i - 1] * 9
        assert row.output_shape == (chans[i], hw[i], hw[i])
    conv1, head = by_name["conv1"], by_name["head"]
    assert conv1.input_bits == "32-bit" and conv1.float_macs == w * 32 * 32 * 27
    assert head.input_bits == "1-bit" and head.float_macs == 4 * w * 16 * 10  # real weights
    assert t["float_macs"] == conv1.float_macs + head.float_macs
    float_params = sum(v.size for k, v in model.init(np.random.default_rng(0))[0].items()
                       if k not in model.binary_names) + sum(
        v.size for v in model.init(np.random.default_rng(0))[1].values())
    assert t["float_params"] == float_params
    assert t["memory_bytes"] == binary_params / 8 + float_params * 4
    assert t["compression"] == pytest.approx((binary_params + float_params) * 4
                                             / t["memory_bytes"])


def test_mlp_and_birealnet_and_float64() -> None:
    rows, t = summarize(models.binary_mlp((1, 28, 28), hidden=(64, 32)), np.float64)
    fc2 = next(r for r in rows if r.name == "fc2")
    assert fc2.binary_macs == 64 * 32 and fc2.input_bits == "1-bit"
    assert t["float_bits"] == 64 and rows[0].input_bits == "64-bit"
    text = format_summary(models.birealnet((3, 32, 32), width=8, blocks_per_stage=(1, 1)))
    assert "add" in text and "64-bit" not in text and "% binary" in text


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_model_options_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "summary", "--model", "binary_cnn", "--dataset", "cifar10",
                           "--width", "4")
    assert code == 0 and out.startswith("binary_cnn: input 3x32x32, 10 classes")
    assert "conv6" in out and "x smaller" in out
    code, _, err = run_cli(capsys, "summary", "--model", "binary_cnn", "--hidden", "8,8")
    assert code == 2 and err.count("\n") == 1 and "--hidden" in err
    code, _, err = run_cli(capsys, "summary", "no/such.h5")
    assert code == 2 and "not found" in err


def test_cli_on_a_run_file_uses_its_stored_description(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out_path = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "16,8",
                 "--train-subset", "200", "--no-progress", "--out", out_path]) == 0
    capsys.readouterr()
    d = load_run(out_path).description
    assert d is not None and d["input_shape"] == [1, 28, 28] and d["num_classes"] == 10
    assert len(d["mean"]) == len(d["std"]) == 1 and d["minibnn_version"]
    code, out, _ = run_cli(capsys, "summary", out_path)
    assert code == 0 and "fc2" in out and "binary_mlp: input 1x28x28" in out
    packed = str(tmp_path / "run.packed.h5")
    assert main(["export", out_path, "--out", packed]) == 0
    capsys.readouterr()
    code, out_packed, _ = run_cli(capsys, "summary", packed)
    table = out.split("\nprovenance:\n")[0].rstrip("\n")   # a run file adds its provenance
    assert code == 0 and out_packed.rstrip("\n") == table  # the same model, the same table
    for extra in (["--width", "4"], ["--dtype", "float64"]):
        code, _, err = run_cli(capsys, "summary", out_path, *extra)
        assert code == 2 and "not both" in err and extra[0] in err
    with edited(out_path) as f:
        f.attrs["description"] = json.dumps({"input_shape": [1, 28], "num_classes": 10})
    code, _, err = run_cli(capsys, "summary", out_path)
    assert code == 2 and "description is corrupt" in err


def test_a_run_files_own_shape_wins_over_its_datasets_name(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A CNN trained on 3x32x32 synthetic images: the name "synthetic" alone says 1x28x28, so
    only the stored description can give the table its input shape."""
    import minibnn.run.train as train
    from minibnn.data import image_shape, load_dataset
    from minibnn.run.spec import spec_from_options

    assert image_shape("synthetic")[0] == (1, 28, 28)
    ds = load_dataset("synthetic", shape=(3, 32, 32), n_train=100, n_test=50)
    out_path = str(tmp_path / "cnn.h5")
    with monkeypatch.context() as m:
        m.setattr(train, "load_data", lambda spec, data_dir=None: ds)
        train.fit(spec_from_options(dict(model="binary_cnn", width=4, dataset="synthetic",
                                         epochs=1, batch_size=50)), out_path,
                  progress=False, log=lambda _: None)
    code, out, _ = run_cli(capsys, "summary", out_path)
    assert code == 0 and out.startswith("binary_cnn: input 3x32x32, 10 classes")


def test_provenance_follows_the_table_when_the_description_has_it() -> None:
    from minibnn.data import load_dataset
    from minibnn.run.provenance import collect, format_provenance
    from minibnn.run.spec import Local

    model = models.binary_mlp((1, 28, 28), hidden=(8,))
    record = collect(load_dataset("synthetic", n_train=10, n_test=5, seed=7), Local())
    description = {"provenance": [dict(record, from_epoch=1), dict(record, from_epoch=3)]}
    text = format_summary(model, description=description)
    table = format_summary(model)
    assert text.startswith(table + "\nprovenance:\n  session from epoch 1:\n")
    body = ["    " + line for line in format_provenance(record)]
    assert text.endswith("\n".join(["  session from epoch 3:"] + body))
    assert "seed=7" in text and text.count("session from epoch") == 2
    for old in (None, {}, {"input_shape": [1, 28, 28]}, {"provenance": []}):
        assert provenance_lines(old) == [] and format_summary(model, description=old) == table


def test_cli_summary_of_a_run_file_shows_its_provenance(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out_path = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "16,8",
                 "--train-subset", "100", "--no-progress", "--out", out_path]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "summary", out_path)
    assert code == 0 and "\nprovenance:\n  session from epoch 1:\n    data: synthetic (" in out
    assert "versions: minibnn " in out


def test_reactnet_counts_every_binary_conv_inside_its_concat() -> None:
    """The widening block's two halves (a Concat) are walked like any container: every binary
    weight is counted once, and the binary MACs are the hand count over the binary convs."""
    from minibnn.nn.fold import walk
    from minibnn.nn.models import reactnet
    from minibnn.nn.modules import BinaryConv2d

    model = reactnet((3, 16, 16), width=2, blocks_per_stage=(1, 2))
    params, _ = model.init(np.random.default_rng(0), np.float32)
    rows, totals = summarize(model)
    assert totals["binary_params"] == sum(params[n].size for n in model.binary_names)
    # stage 1 (16x16): the 3x3 conv 2->2 and the two 1x1 halves 2->2; stage 2 (8x8): the
    # stride-2 3x3 4->4, two 1x1 halves 4->4, then a 3x3 8->8 and a 1x1 8->8
    hand = (16 * 16 * (2 * 2 * 9 + 2 * (2 * 2)) + 8 * 8 * (4 * 4 * 9 + 2 * (4 * 4))
            + 8 * 8 * (8 * 8 * 9 + 8 * 8))
    assert totals["binary_macs"] == hand
    assert sum(isinstance(m, BinaryConv2d) for m in walk(model.net)) == 8
    assert any(r.kind == "concat" for r in rows)
