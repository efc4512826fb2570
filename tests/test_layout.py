"""The layout is an explicit choice, and both layouts train the same network.

``layout="nchw"`` runs the layers as written in ``nn/functional`` (with ``--backend numpy``, the
code the README teaches); ``layout="nhwc"`` runs the fast engine (fused BatchNorm+sign, channels-
last groups with packed activations). Trained side by side from the same start on the same
batches:

  * float64: the same binary weights after every step (every +-1 value, every layer);
  * float32: the same losses up to rounding (relative 1e-4 over the first steps; the engines
    add in other orders, so in float32 a weight whose filter sits within rounding of its
    threshold can flip in one and not the other, and the runs drift apart from then on).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.run.files import load_run
from minibnn.nn.channels_last import ChannelsLast
from minibnn.nn.containers import Sequential
from minibnn.nn.modules import BatchNormSign
from minibnn.run.spec import spec_from_options
from minibnn.run.train import (TrainState, fit, model_from_spec, optimizer_from_spec,
                               train_step)

SHAPE = (3, 16, 16)
MODELS = {"binary_cnn": {"width": 8}, "birealnet": {"width": 8}, "binary_mlp": {}}


def _side_by_side(name: str, dtype: type, steps: int) -> list[tuple[float, float, list[str]]]:
    """(loss nchw, loss nhwc, binary weights that differ) after each step."""
    runs = {}
    for layout, backend in (("nchw", "numpy"), ("nhwc", "auto")):
        spec = spec_from_options({"model": name, **MODELS[name], "layout": layout,
                                  "dataset": "synthetic"})
        model = model_from_spec(spec, SHAPE, 10)
        optimizer = optimizer_from_spec(spec, model, steps_per_epoch=steps)
        rng = np.random.default_rng(0)
        params, buffers = model.init(rng, dtype)
        runs[layout] = (model, optimizer, TrainState(params, buffers, optimizer.init(params),
                                                     rng), backend)
    data = np.random.default_rng(1)
    out = []
    for _ in range(steps):
        x = data.standard_normal((32,) + SHAPE).astype(dtype)
        y = data.integers(0, 10, 32)
        losses = {}
        for layout, (model, optimizer, state, backend) in runs.items():
            with kernels.use_backend(backend):
                losses[layout] = float(train_step(model, optimizer, state, x, y)[0])
        a, b = runs["nchw"][2].params, runs["nhwc"][2].params
        differ = [k for k in runs["nchw"][0].binary_names
                  if not np.array_equal(a[k] >= 0, b[k] >= 0)]
        out.append((losses["nchw"], losses["nhwc"], differ))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_in_float64_both_layouts_find_the_same_binary_weights_at_every_step(name: str) -> None:
    for step, (_, _, differ) in enumerate(_side_by_side(name, np.float64, 6), start=1):
        assert not differ, f"step {step}: binary weights differ in {differ}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_in_float32_both_layouts_give_the_same_losses_up_to_rounding(name: str) -> None:
    for step, (a, b, _) in enumerate(_side_by_side(name, np.float32, 3), start=1):
        assert abs(a - b) <= 1e-4 * abs(a), f"step {step}: loss {a} (nchw) vs {b} (nhwc)"


def test_nothing_rewrites_a_model_silently() -> None:
    """A hand-built Sequential runs its layers as written; only layout="nhwc" groups them."""
    spec = spec_from_options({"model": "binary_cnn", "width": 4, "dataset": "synthetic"})
    fast = model_from_spec(spec, SHAPE, 10)
    readable = model_from_spec(spec.replace(layout="nchw"), SHAPE, 10)
    assert fast.config["layout"] == "nhwc" and readable.config["layout"] == "nchw"
    assert any(isinstance(s, ChannelsLast) for s in fast.net.steps())
    assert readable.net.steps() == readable.net.layers
    assert not any(isinstance(s, (ChannelsLast, BatchNormSign)) for s in readable.net.steps())
    by_hand = Sequential(readable.net.layers)
    assert by_hand.layout == "nchw" and by_hand.steps() == by_hand.layers


def test_the_run_file_records_the_layout_and_resume_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    lines: list[str] = []
    spec = spec_from_options({"model": "binary_cnn", "width": 4, "dataset": "synthetic",
                              "train_subset": 100, "epochs": 2, "layout": "nchw"})
    fit(spec, str(path), progress=False, log=lines.append, stop_after=1)
    assert "layout nchw" in lines[0]
    assert load_run(str(path)).config_json.count('"layout": "nchw"') == 1
    fit(None, str(path), resume=True, progress=False, log=lines.append)
    assert load_run(str(path)).checkpoint.epoch == 2


def test_a_bad_layout_is_a_one_line_error() -> None:
    with pytest.raises(MinibnnError, match="unknown layout 'nwhc'; expected one of nhwc, nchw"):
        spec_from_options({"model": "binary_cnn", "layout": "nwhc"})
    with pytest.raises(MinibnnError, match="--layout must be one of"):
        Sequential([], layout="NCHW")
