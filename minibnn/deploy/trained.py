"""``minibnn.load(path)``: a trained model from a run file or a packed file, ready to use.

    model = minibnn.load("runs/binary_mlp-mnist-cema.h5")
    x = model.preprocess(images_uint8)     # (N, C, H, W) uint8 -> standardised float
    model.logits(x)                        # (N, classes) float, BatchNorm in eval mode
    model.predict(x)                       # (N,) class indices
    print(model.summary())
    model.params["fc2.w"]                  # binary weights as int8 +-1, the rest as stored

A run file runs the training code's own eval-mode forward pass (``Model.forward(...,
train=False)``), so its logits are exactly those of ``minibnn eval``; a packed file runs the
bit-packed XNOR-popcount forward (``PackedModel.forward``; same predictions, logits equal up to
float rounding with a mean|w| scale). Nothing here loads a dataset: the input shape, class count
and normalisation come from the file.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from minibnn.backend import check_finite_input
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.nn.models import Model

Array = Any


class TrainedModel:
    """A model with its trained parameters; ``source`` is the file it came from."""

    def __init__(self, model: Model, params: dict[str, np.ndarray],
                 buffers: dict[str, np.ndarray], source: str, epoch: int,
                 mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                 packed: Any = None, classes: tuple[str, ...] | None = None):
        self.model, self.source, self.epoch = model, source, epoch
        #: class names in label order (``predict`` returns indices into it)
        self.classes = tuple(classes) if classes else tuple(
            str(i) for i in range(model.num_classes))
        self._params, self.buffers = params, buffers
        self.mean, self.std = mean, std
        self._packed = packed
        self.dtype = np.dtype(next(iter(params.values())).dtype)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.model.input_shape

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def binary_names(self) -> list[str]:
        return list(self.model.binary_names)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name; binary weights as int8 +-1 (sign(w), sign(0) = +1)."""
        binary = set(self.model.binary_names)
        return {k: np.where(v >= 0, 1, -1).astype(np.int8) if k in binary else v
                for k, v in self._params.items()}

    @property
    def stored_params(self) -> dict[str, np.ndarray]:
        """Parameters exactly as stored: binary weights as latent reals or float +-1."""
        return dict(self._params)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, C, H, W) -> ``(images / 255 - mean[c]) / std[c]`` in the model dtype,
        the standardisation the model was trained with."""
        if self.mean is None or self.std is None:
            raise MinibnnError(f"{self.source} stores no normalisation (written before it was "
                               "stored): standardise the images yourself")
        from minibnn.data import standardise

        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise DTypeError(f"preprocess: images must be uint8, got {images.dtype}")
        self._check_shape(images)
        return standardise(images, self.mean, self.std, self.dtype)

    def _check_shape(self, x: Array) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"{self.model.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")

    def logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """(N, classes) logits of standardised x (N, C, H, W), eval mode, in batches.

        x must be finite: NaN or infinite values are a one-line error
        (``backend.check_finite_input``), never a confident class."""
        if not isinstance(x, np.ndarray):
            raise DTypeError(f"logits: x must be a NumPy array, got {type(x).__name__}")
        self._check_shape(x)
        if x.dtype != self.dtype:
            raise DTypeError(f"logits: the model is {self.dtype.name}, got x {x.dtype} "
                             f"(convert it: x.astype(np.{self.dtype.name}))")
        check_finite_input("logits", x)           # NaN/inf: a one-line error, never a class
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            if self._packed is not None:
                out.append(self._packed.forward(xb))
            else:
                out.append(self.model.forward(self._params, self.buffers, xb, train=False)[0])
        if not out:
            return np.empty((0, self.num_classes), self.dtype)
        return np.concatenate(out)

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class indices (N,) of standardised x."""
        return self.logits(x, batch_size).argmax(axis=1)

    def summary(self) -> str:
        """The ``minibnn summary`` table of this model."""
        from minibnn.commands.summary import format_summary

        return format_summary(self.model, self.dtype, self._params, self.buffers)

    def export_onnx(self, out: str) -> None:
        """Write this model as an ONNX graph (``minibnn.deploy.onnx_export``)."""
        from minibnn.deploy.onnx_export import build_onnx

        with open(out, "wb") as f:
            f.write(build_onnx(self.model, self._params, self.buffers).SerializeToString())

    def __repr__(self) -> str:
        kind = "packed" if self._packed is not None else "run"
        return (f"TrainedModel({self.model.name}, input {self.input_shape}, "
                f"{self.num_classes} classes, epoch {self.epoch}, {kind} file {self.source!r})")


def load(path: str) -> TrainedModel:
    """The trained model stored in ``path``: a run file (its checkpoint) or a packed file."""
    from minibnn.deploy.inference import load_packed
    from minibnn.run.files import load_run
    from minibnn.deploy.packed_file import is_packed_file
    from minibnn.run.train import check_model_checkpoint, run_model

    if is_packed_file(path):
        pm = load_packed(path)
        mean, std = _normalisation_of(pm.config_json)
        return TrainedModel(pm.model, pm.float_params(), pm.buffers, path, pm.epoch, mean, std,
                            packed=pm, classes=_class_names_of(pm.config_json))
    run = load_run(path)
    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint yet (no epoch has finished)")
    spec, _, model = run_model(run)
    check_model_checkpoint(run.checkpoint, model, spec.loop.dtype, path)
    d = run.description
    mean = tuple(d["mean"]) if d and d.get("mean") else _normalisation_of(run.config_json)[0]
    std = tuple(d["std"]) if d and d.get("std") else _normalisation_of(run.config_json)[1]
    classes = tuple(d["classes"]) if d and d.get("classes") else _class_names_of(run.config_json)
    return TrainedModel(model, run.checkpoint.params, run.checkpoint.buffers, path,
                        run.checkpoint.epoch, mean, std, classes=classes)


def _class_names_of(config_json: str) -> tuple[str, ...] | None:
    """Class names of the run's dataset by name (older run files did not store them)."""
    from minibnn.data import CLASS_NAMES
    from minibnn.run.spec import read_stored_config

    return CLASS_NAMES.get(read_stored_config(config_json)[0].data.name)


def _normalisation_of(config_json: str) -> tuple[tuple[float, ...] | None,
                                                  tuple[float, ...] | None]:
    """The dataset's fixed standardisation constants (``data.NORMALISATION``) by name."""
    from minibnn.data import NORMALISATION, canonical_name
    from minibnn.run.spec import read_stored_config

    name = canonical_name(read_stored_config(config_json)[0].data.name)
    if name not in NORMALISATION:
        return None, None
    mean, std = NORMALISATION[name]
    return tuple(mean), tuple(std)


def export_onnx(source: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Write the trained model in ``source`` (run or packed file) to ``out`` atomically."""
    from minibnn.run.files import atomic_bytes, check_output
    from minibnn.run.lock import one_writer
    from minibnn.nn.packed import binary_layers
    from minibnn.deploy.onnx_export import build_onnx

    check_output(out, overwrite, (source,))
    trained = load(source)
    proto = build_onnx(trained.model, trained.stored_params, trained.buffers)
    with one_writer(out, "output"):
        atomic_bytes(out, proto.SerializeToString())
    scaled = any(getattr(m, "scale", False) for m in binary_layers(trained.model))
    return {"out": out, "nodes": len(proto.graph.node), "bytes": os.path.getsize(out),
            "model": trained.model.name, "scaled": scaled}
