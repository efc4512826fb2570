"""Bit-packed inference of a training run: pack its checkpoint, export it, load it, evaluate it.

The glue between run files (``minibnn.run.files``), the trainer's model and data
(``minibnn.run.train``), the packed model (``minibnn.nn.packed``) and the packed file format
(``minibnn.deploy.packed_file``)::

    pm = pack_run("runs/x.h5")                  # the run's checkpoint, packed in memory
    export_packed("runs/x.h5")                  # -> runs/x.packed.h5
    pm = load_packed("runs/x.packed.h5")        # rebuilt and checked against its spec's model
    evaluate_packed("runs/x.packed.h5", check=True)   # test accuracy, packed vs float

``minibnn eval --packed`` and ``minibnn export --packed`` call these.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from minibnn import kernels
from minibnn.errors import DataFileError, MinibnnError
from minibnn.run.files import RunFile, check_arrays, load_run
from minibnn.deploy.packed_file import is_packed_file, read_packed, save_packed
from minibnn.run.lock import one_writer
from minibnn.nn import functional as F
from minibnn.nn.fold import fold_sites
from minibnn.nn.models import Model
from minibnn.nn.packed import (PackedModel, binary_layers, layer_from_bits, layer_geometry,
                               pack_model)
from minibnn.data import image_shape
from minibnn.run.spec import RunSpec, read_stored_config
from minibnn.run.train import (check_model_checkpoint, check_same_data, eval_backend,
                               load_data, model_from_spec, run_model)

#: whom the stored arrays are checked against
MODEL_IN_CONFIG = "the model in its spec"


def _model_for(spec: RunSpec, input_shape: tuple[int, ...] | None,
               num_classes: int | None) -> Model:
    """The run's model; its input shape and class count come from the dataset's name unless
    given (no data is loaded)."""
    if input_shape is None or num_classes is None:
        input_shape, num_classes = image_shape(spec.data.name)
    return model_from_spec(spec, tuple(input_shape), int(num_classes))


def pack_run(path: str, *, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> PackedModel:
    """Pack the checkpoint of a run file in memory.

    The model is rebuilt from the run's spec; its input shape and class count come from the
    run's stored description (or its dataset's name) unless given.
    """
    return _pack_loaded_run(load_run(path), path, input_shape, num_classes)


def _pack_loaded_run(run: RunFile, path: str, input_shape: tuple[int, ...] | None,
                     num_classes: int | None) -> PackedModel:
    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint to pack")
    if input_shape is None or num_classes is None:
        spec, _, model = run_model(run)
    else:
        spec, _ = read_stored_config(run.config_json)
        model = _model_for(spec, input_shape, num_classes)
    check_model_checkpoint(run.checkpoint, model, spec.loop.dtype, path)
    return pack_model(model, run.checkpoint.params, run.checkpoint.buffers,
                      config_json=run.config_json, epoch=run.checkpoint.epoch,
                      source=os.path.abspath(path))


def load_packed(path: str) -> PackedModel:
    """Read a packed file and rebuild its model from the stored spec; a file that does not
    match that model (arrays, layer geometry, folds) is a one-line ``DataFileError``."""
    stored = read_packed(path)
    try:
        spec, _ = read_stored_config(stored.config_json)
        model = _model_for(spec, stored.input_shape, stored.num_classes)
    except (MinibnnError, ValueError) as exc:
        raise DataFileError(f"{path}: stored spec does not build a model: "
                            f"{str(exc).splitlines()[0]}") from None
    dtype = np.dtype(spec.loop.dtype)
    expected_params, expected_buffers = model.init(np.random.default_rng(0), dtype)
    binary = {m.key("w"): m for m in binary_layers(model)}
    check_arrays(stored.real, {k: v for k, v in expected_params.items() if k not in binary},
                 path, "real/", "parameter", MODEL_IN_CONFIG)
    check_arrays(stored.buffers, expected_buffers, path, "buffers/", "buffer", MODEL_IN_CONFIG)
    if set(stored.layers) != set(binary):
        raise DataFileError(f"{path}: packed layers {sorted(stored.layers)} do not match the "
                            f"model's binary weights {sorted(binary)}")
    sites = fold_sites(model)
    layers = {}
    for name, st in stored.layers.items():
        module, site = binary[name], sites.get(name)
        want = (layer_geometry(module), module.shape, module.scale,
                "" if site is None else site.bn.name)
        got = ((st.kind, st.stride, st.padding), st.shape, st.scale is not None, st.fold)
        if got != want:
            raise DataFileError(f"{path}: packed/{name} (kind {st.kind}, shape {st.shape}, "
                                f"stride {st.stride}, padding {st.padding}, scale "
                                f"{st.scale is not None}, fold {st.fold!r}) does not match "
                                "the model in its spec")
        scale = None if st.scale is None else st.scale.astype(dtype)
        layer = layer_from_bits(name, st.kind, st.shape, st.stride, st.padding, st.bits, scale,
                                dtype)
        if site is not None:
            layer = dataclasses.replace(layer, fold=st.threshold, fold_bn=site.bn.name,
                                        pool=site.pool_args)
        layers[name] = layer
    return PackedModel(model, stored.real, stored.buffers, layers, stored.config_json,
                       stored.epoch, stored.source)


def default_packed_path(run_path: str) -> str:
    """``runs/x.h5`` -> ``runs/x.packed.h5``."""
    stem = run_path[:-3] if run_path.endswith(".h5") else run_path
    return f"{stem}.packed.h5"


def export_packed(run_path: str, out_path: str | None = None) -> dict[str, Any]:
    """Pack a run file's checkpoint into ``out_path`` (default ``RUN.packed.h5``).

    Returns the sizes: binary weights as float32 bytes vs packed bytes (``weight_ratio``, ~32
    when the fan-in K is a multiple of 64) and both file sizes.
    """
    if is_packed_file(run_path):
        raise MinibnnError(f"{run_path} is already a packed file")
    out = out_path or default_packed_path(run_path)
    if os.path.abspath(out) == os.path.abspath(run_path):
        raise MinibnnError(f"--out {out} would overwrite the run file")
    pm = pack_run(run_path)
    if not pm.layers:
        raise MinibnnError(f"{run_path} has no binary weights to pack (trained with --weights "
                           "real); export it with --format onnx or --format torch")
    with one_writer(out, "output"):
        save_packed(out, pm)
    sizes: dict[str, Any] = pm.sizes()
    sizes.update(out=out, run_file_bytes=os.path.getsize(run_path),
                 packed_file_bytes=os.path.getsize(out))
    return sizes


def evaluate_packed(source: str | PackedModel, *, batch_size: int = 1000, check: bool = False,
                    backend: str | None = None, data_dir: str | None = None
                    ) -> dict[str, Any]:
    """Test loss and accuracy with the packed forward pass on the run's dataset.

    ``source``: a packed file, a run file (packed in memory from its checkpoint), or a
    PackedModel.  With ``check`` the float path runs too and the result holds ``differ`` (test
    predictions that disagree, 0 expected) and ``max_logit_diff`` (0.0 without scale).
    ``data_dir`` replaces the stored (machine-local) data folder.  The forward passes run
    under ``kernels.use_backend(eval_backend(stored, "cpu", backend))``:
    ``backend``, else the run's own setting (``"auto"`` for a GPU run).  The result is the
    same whichever kernels run.
    """
    if isinstance(source, PackedModel) or is_packed_file(source):
        pm = source if isinstance(source, PackedModel) else load_packed(source)
        spec, stored = read_stored_config(pm.config_json)
        description = None                  # a packed file keeps no data description
    else:
        run = load_run(source)
        spec, stored = read_stored_config(run.config_json)
        pm = _pack_loaded_run(run, source, None, None)
        description = run.description
    ds = load_data(spec, data_dir or stored.data_dir, test_only=True)
    check_same_data(str(source), description, ds)
    with kernels.use_backend(eval_backend(stored, "cpu", backend)):
        return _evaluate(pm, ds.x_test, ds.y_test, batch_size, check)


def _evaluate(pm: PackedModel, x: np.ndarray, y: np.ndarray, batch_size: int, check: bool
              ) -> dict[str, Any]:
    float_params = pm.float_params() if check else None
    total_loss, correct, differ, max_diff = 0.0, 0, 0, 0.0
    seconds = {"packed": 0.0, "float": 0.0}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        t0 = time.perf_counter()
        logits = pm.forward(xb)
        seconds["packed"] += time.perf_counter() - t0
        loss, _ = F.softmax_cross_entropy(logits, yb)
        total_loss += float(loss) * len(xb)
        pred = logits.argmax(axis=1)
        correct += int((pred == yb).sum())
        if float_params is not None:
            t0 = time.perf_counter()
            ref, _, _ = pm.model.forward(float_params, pm.buffers, xb, train=False)
            seconds["float"] += time.perf_counter() - t0
            differ += int((ref.argmax(axis=1) != pred).sum())
            max_diff = max(max_diff, float(np.max(np.abs(ref - logits))))
    result: dict[str, Any] = {"test_loss": total_loss / len(x), "test_acc": correct / len(x),
                              "epoch": pm.epoch, "n": len(x), "seconds": seconds["packed"],
                              **pm.sizes()}
    if check:
        result.update(differ=differ, max_logit_diff=max_diff, float_seconds=seconds["float"])
    return result


__all__ = ["default_packed_path", "evaluate_packed", "export_packed", "load_packed", "pack_run"]
