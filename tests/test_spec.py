"""The typed run spec: one variant per model and optimiser with only its own options, every
irrelevant option a one-line error, stored specs round-trip, older flat configs still read."""
from __future__ import annotations

import json

import pytest

from minibnn import optim
from minibnn.commands.cli import main
from minibnn.errors import MinibnnError
from minibnn.nn import models
from minibnn.run.spec import (MODEL_VARIANTS, OPTIMIZER_VARIANTS, OPTION_SECTIONS, Local, RunSpec,
                              config_json, flag, read_stored_config, spec_from_dict,
                              spec_from_options, variant_options)

#: a valid value of every model / binary-optimiser option (as the CLI spells it)
SAMPLE = {"hidden": "64,64", "width": "8", "act_ste": "clipped", "weight_ste": "clipped",
          "scale": None, "init_scale": "0.5", "layout": "nchw", "weights": "real",
          "activations": "real", "alpha": "0.01", "gamma": "0.01",
          "threshold": "1e-6", "sigma": "0.01", "lr": "0.1", "momentum": "0.9",
          "weight_decay": "1e-4", "decoupled": None, "schedule": "cosine"}


def _irrelevant() -> list[tuple[str, str, str]]:
    """(section, choice, option) for every option that ``choice`` does not take."""
    cases = []
    for section, variants in (("model", MODEL_VARIANTS), ("binary_optimizer", OPTIMIZER_VARIANTS)):
        options = sorted(o for o, (s, f) in OPTION_SECTIONS.items() if s == section and f != "name")
        assert set(options) == set(SAMPLE) & set(options)
        for choice, variant in variants.items():
            for option in options:
                if OPTION_SECTIONS[option][1] not in variant_options(variant):
                    cases.append((section, choice, option))
    return cases


@pytest.mark.parametrize("section, choice, option", _irrelevant())
def test_every_irrelevant_flag_is_a_one_line_error(section: str, choice: str, option: str,
                                                   tmp_path, capsys) -> None:
    kind = "--model" if section == "model" else "--optimizer"
    argv = ["train", "--dataset", "synthetic", kind, choice, flag(option),
            "--out", str(tmp_path / "x.h5")]
    if SAMPLE[option] is not None:
        argv.insert(argv.index(flag(option)) + 1, SAMPLE[option])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0]
    assert f"{flag(option)} does not apply to {kind} {choice}" in err
    assert not (tmp_path / "x.h5").exists()


def test_every_relevant_flag_is_taken_and_stored() -> None:
    for name, variant in MODEL_VARIANTS.items():
        fields = variant_options(variant)
        spec = spec_from_options({"model": name, "optimizer": "sgd",
                                  **{f: _parsed(f) for f in fields}})
        assert {f: getattr(spec.model, f) for f in fields} == {f: _parsed(f) for f in fields}
    for name, variant in OPTIMIZER_VARIANTS.items():
        fields = variant_options(variant)
        spec = spec_from_options({"optimizer": name, **{f: _parsed(f) for f in fields}})
        assert type(spec.binary_optimizer) is variant
        assert {f: getattr(spec.binary_optimizer, f) for f in fields} == \
            {f: _parsed(f) for f in fields}


def _parsed(option: str):
    text = SAMPLE[option]
    if text is None:
        return True
    if option == "hidden":
        return tuple(int(v) for v in text.split(","))
    if option == "width":
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


@pytest.mark.parametrize("model", sorted(MODEL_VARIANTS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_VARIANTS))
def test_defaults_come_from_the_builders_and_round_trip(model: str, optimizer: str) -> None:
    spec = spec_from_options({"model": model, "optimizer": optimizer})
    built, constructed = models.defaults(model), optim.defaults(optimizer)
    for f in variant_options(type(spec.model)):
        want = built[f]
        assert getattr(spec.model, f) == (tuple(want) if isinstance(want, list) else want)
    for f in variant_options(type(spec.binary_optimizer)):
        if f != "schedule":
            assert getattr(spec.binary_optimizer, f) == constructed[f], f
    text = spec.to_json()
    assert spec_from_dict(json.loads(text)) == spec
    assert spec_from_options(spec.options()) == spec
    back, local = read_stored_config(config_json(spec, Local(backend="numpy")))
    assert back == spec and local == Local(backend="numpy")


def test_real_schedule_follows_the_binary_schedule_unless_given() -> None:
    assert spec_from_options({"schedule": "cosine"}).real_optimizer.schedule == "cosine"
    assert spec_from_options({"schedule": "cosine", "real_schedule": "constant"}
                             ).real_optimizer.schedule == "constant"
    assert spec_from_options({"optimizer": "bop"}).real_optimizer.schedule == "linear"


def test_stored_specs_must_be_complete_and_known() -> None:
    stored = spec_from_options({}).to_dict()
    del stored["binary_optimizer"]["gamma"]
    with pytest.raises(MinibnnError, match=r"lacks the fields \['binary_optimizer.gamma'\]"):
        spec_from_dict(stored)
    stored = spec_from_options({}).to_dict()
    stored["loop"]["warmup"] = 3
    with pytest.raises(MinibnnError, match=r"unknown fields \['loop.warmup'\]"):
        spec_from_dict(stored)
    stored = spec_from_options({}).to_dict()
    stored["binary_optimizer"]["lr"] = 0.1            # an option CEMA does not take
    with pytest.raises(MinibnnError, match="--lr does not apply to --optimizer cema"):
        spec_from_dict(stored)
    with pytest.raises(MinibnnError, match="exactly the sections"):
        spec_from_dict({"model": {}})


#: ``TrainConfig(optimizer="bop", model="binary_cnn", dataset="synthetic", backend="numpy",
#: val_split=10, schedule="cosine").validate().to_json()`` of the flat config (6b48fd0), with
#: real_schedule absent as in files written before it existed
OLD_FLAT_BOP = {
    "act_ste": "approx", "alpha": None, "backend": "numpy", "batch_size": 100, "data_dir": None,
    "dataset": "synthetic", "decoupled": None, "device": "cpu", "dtype": "float32",
    "epochs": 10, "gamma": 0.0001, "hidden": None, "init_scale": 1.0, "label_smoothing": 0.0,
    "lr": None, "model": "binary_cnn", "momentum": None, "optimizer": "bop", "real_lr": 0.001,
    "real_weight_decay": 0.0, "scale": False, "schedule": "cosine", "seed": 0, "shift": 2,
    "sigma": None, "test_every_epoch": False, "threshold": 1e-08, "train_subset": None,
    "val_split": 10, "weight_decay": None, "weight_ste": "identity", "width": 32}


def test_older_flat_configs_read_as_the_same_spec() -> None:
    spec, local = read_stored_config(json.dumps(OLD_FLAT_BOP))
    assert spec == spec_from_options({"optimizer": "bop", "model": "binary_cnn",
                                      "dataset": "synthetic", "val_split": 10,
                                      "real_schedule": "cosine"})
    assert local == Local(backend="numpy")
    # bop takes no schedule: the old file's cosine survives only as the real lr's schedule
    assert spec.real_optimizer.schedule == "cosine"
    assert not hasattr(spec.binary_optimizer, "schedule")


def test_machine_local_settings_are_not_part_of_the_spec(tmp_path) -> None:
    out = str(tmp_path / "run.h5")
    assert main(["train", "--dataset", "synthetic", "--hidden", "16,16", "--epochs", "1",
                 "--train-subset", "100", "--backend", "numpy", "--out", out,
                 "--no-progress"]) == 0
    from minibnn.run.files import load_run

    stored = json.loads(load_run(out).config_json)
    assert set(stored) == {"spec", "local"} and stored["local"]["backend"] == "numpy"
    assert "backend" not in json.dumps(stored["spec"]) and isinstance(
        spec_from_dict(stored["spec"]), RunSpec)


def test_the_run_file_doc_lists_every_variant_and_its_fields() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-file.md").read_text()
    table = doc.split("### The run spec", 1)[1].split("###", 1)[0]
    rows = [[c.strip(" `") for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    listed: dict[str, tuple[str, ...]] = {}
    for _, names, fields in rows:
        for name in names.split("`, `"):
            listed[name] = tuple(f.strip() for f in fields.replace("`", "").split(","))
    for variants in (MODEL_VARIANTS, OPTIMIZER_VARIANTS):
        for name, variant in variants.items():
            assert listed[name] == variant_options(variant), name


def test_cifar10_defaults_to_the_standard_augmentation_and_what_is_given_wins() -> None:
    """CIFAR-10 trains with RandomCrop(32, padding=4) + RandomHorizontalFlip unless told
    otherwise; the MNIST family keeps its 2-pixel shift into the background."""
    from minibnn.run.spec import Data

    assert spec_from_options({"dataset": "cifar10"}).data == Data("cifar10", 4, "zero", True)
    mine = spec_from_options({"dataset": "cifar10", "shift": 2, "flip": False})
    assert (mine.data.shift, mine.data.fill, mine.data.flip) == (2, "zero", False)
    assert spec_from_options({"dataset": "mnist"}).data == Data("mnist", 2, "min", False)
    assert spec_from_options({}).data == Data()


def test_train_cli_takes_the_cifar10_recipe_and_no_flip_turns_it_off() -> None:
    from minibnn.commands.cli import build_parser, given_options, spec_from_args, TRAIN_OPTIONS

    def spec(*argv: str):  # type: ignore[no-untyped-def]
        args = build_parser().parse_args(["train", *argv])
        args.given = given_options(TRAIN_OPTIONS, ["train", *argv])
        return spec_from_args(args)

    assert spec("--dataset", "cifar10").data.flip is True
    off = spec("--dataset", "cifar10", "--no-flip", "--shift", "0")
    assert (off.data.flip, off.data.shift, off.data.fill) == (False, 0, "zero")
    assert spec("--dataset", "mnist", "--flip").data.flip is True
