"""Bit-packed binary inference from a training run: pack, save, load, evaluate.

A trained model's binary layers (``BinaryDense`` / ``BinaryConv2d``) only ever use
``W_eff = a * sign(w)`` (``a`` = per-output-channel mean|w| with ``scale``, else 1), and in
every model a ``Sign`` module sits right in front of them, so at inference they compute

    y = a * (sign(x) . sign(w))        sign(x) . sign(w) = K - 2 popcount(xbits XOR wbits)

which ``kernels.bitpack`` evaluates exactly, 64 weights per uint64 word.  ``pack_model``
rebuilds the model's module tree with each such ``Sign -> binary layer`` pair replaced by one
``PackedBinary`` module (packing x takes its sign: bit = x >= 0, so sign(0) = +1 as in
``sign_forward``); every other module (real first/last layers, BatchNorm, pooling, PReLU,
residual additions) keeps its own forward, run in eval mode.

Exactness.  Without ``scale`` the float path sums K products of +-1 values, integers below
2**24, so its dense/conv output is the exact integer the XNOR kernel returns: the packed logits
are bit-identical in float32 and float64.  With ``scale`` the float path sums K products
``x_k * (a * s_k)`` in BLAS order (one rounding per addition) while the packed path computes
``a * z`` (one rounding), so logits may differ in the last bits; predictions are equal unless a
BatchNorm output lands within those bits of 0 (``evaluate_packed(check=True)`` counts them).

Packed file (HDF5, written atomically like run files)::

    /                 attrs: format="minibnn-packed", version, config (the run's JSON), source
                             (run path), epoch, model, dtype, input_shape, num_classes
    /real/<name>      real-valued parameters (first/last layer, BatchNorm, ...), model dtype
    /buffers/<name>   BatchNorm running statistics
    /packed/<name>    one group per binary weight ("fc2.w"), attrs shape, kind (dense|conv2d),
                      stride, padding; datasets
        bits          uint64 (O, ceil(K/64)), K = prod(shape[1:]): row o packs
                      sign(w.reshape(O, K)[o]), element k at bit k % 64 of word k // 64,
                      bit 1 = +1, pad bits 0 (the kernels' dense layout, for conv too)
        scale         (O,) mean|w| per output channel, only when the layer uses a scale

Conv weights are repacked into the kernel's tap-major layout at load time, so the file stays
~32x smaller than float32 whatever the channel count.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from minibnn.config import TrainConfig
from minibnn.errors import DataFileError, MinibnnError, ShapeError
from minibnn.kernels import DEFAULT_CPU_BACKEND, get_kernels
from minibnn.kernels.bitpack import (PackedConv2d, PackedDense, binary_conv2d, binary_dense,
                                     pack_conv2d, pack_dense)
from minibnn.nn import functional as F
from minibnn.nn.models import Model
from minibnn.nn.modules import (BinaryConv2d, BinaryDense, Module, Residual, Sequential,
                                Stateless, _BinaryWeights)

FORMAT = "minibnn-packed"
VERSION = 1
RUN_FORMAT = "minibnn-run"

Params = dict[str, np.ndarray]


@dataclass
class PackedLayer:
    """One binary weight, packed: the on-disk bits and the kernel's layout built from them."""

    name: str                       # parameter name, e.g. "fc2.w"
    kind: str                       # "dense" | "conv2d"
    shape: tuple[int, ...]          # weight shape: (O, I) or (O, C, kH, kW)
    stride: int
    padding: int
    bits: np.ndarray                # (O, ceil(K/64)) uint64, see the module docstring
    scale: np.ndarray | None        # (O,) mean|w| in the model dtype, or None
    kernel: PackedDense | PackedConv2d


class PackedBinary(Module):
    """A ``Sign -> BinaryDense/BinaryConv2d`` pair at inference: y = a * (sign(x) . sign(w)).

    Inference only: ``backward`` raises.  ``x`` may be any float array (it is signed while it
    is packed); the result has x's dtype.
    """

    def __init__(self, layer: PackedLayer, backend: str = DEFAULT_CPU_BACKEND):
        super().__init__(layer.name.rsplit(".", 1)[0])
        self.layer, self.backend = layer, backend

    def forward(self, params, buffers, x, train):
        layer = self.layer
        if layer.kind == "dense":
            z = binary_dense(x, layer.kernel, self.backend)          # (N, O) int32, exact
            bshape: tuple[int, ...] = (1, -1)
        else:
            z = binary_conv2d(x, layer.kernel, self.backend)         # (N, O, OH, OW) int32
            bshape = (1, -1, 1, 1)
        y = z.astype(x.dtype)            # exact: |z| <= K < 2**24
        if layer.scale is not None:
            y *= layer.scale.astype(x.dtype).reshape(bshape)         # y = a_o * z
        return y, {}, None

    def backward(self, dy, cache):
        raise MinibnnError(f"{self.layer.name}: packed layers are inference-only")


def _is_sign(module: Module) -> bool:
    return isinstance(module, Stateless) and module.forward_fn is F.sign_forward


def _walk(module: Module) -> Iterator[Module]:
    """Every module of a Sequential/Residual tree, depth first."""
    yield module
    if isinstance(module, Sequential):
        for layer in module.layers:
            yield from _walk(layer)
    elif isinstance(module, Residual):
        yield from _walk(module.body)
        if module.shortcut is not None:
            yield from _walk(module.shortcut)


def binary_layers(model: Model) -> list[_BinaryWeights]:
    """The model's binary dense/conv modules, in forward order."""
    return [m for m in _walk(model.net) if isinstance(m, _BinaryWeights)]


def _packed_tree(module: Module, layers: dict[str, PackedLayer], backend: str) -> Module:
    """Copy of the module tree with each ``Sign -> binary layer`` pair replaced by PackedBinary."""
    if isinstance(module, Residual):
        short = module.shortcut
        return Residual(_packed_tree(module.body, layers, backend),
                        None if short is None else _packed_tree(short, layers, backend),
                        module.name)
    if isinstance(module, _BinaryWeights):
        raise MinibnnError(f"binary layer {module.key('w')!r} is not directly preceded by a Sign; "
                           "packed inference needs +-1 inputs")
    if not isinstance(module, Sequential):
        return module
    out: list[Module] = []
    for layer in module.layers:
        if isinstance(layer, _BinaryWeights):
            if not out or not _is_sign(out[-1]):
                raise MinibnnError(f"binary layer {layer.key('w')!r} is not directly preceded "
                                   "by a Sign; packed inference needs +-1 inputs")
            out[-1] = PackedBinary(layers[layer.key("w")], backend)   # packing signs x
        else:
            out.append(_packed_tree(layer, layers, backend))
    return Sequential(out, module.name)


def _layer_geometry(module: _BinaryWeights) -> tuple[str, int, int]:
    if isinstance(module, BinaryConv2d):
        return "conv2d", int(module.stride), int(module.padding)
    if isinstance(module, BinaryDense):
        return "dense", 1, 0
    raise MinibnnError(f"{module.key('w')}: no packed kernel for {type(module).__name__}")


def _kernel(kind: str, sign_w: np.ndarray, stride: int, padding: int, backend: str
            ) -> PackedDense | PackedConv2d:
    if kind == "dense":
        return pack_dense(sign_w, backend)
    return pack_conv2d(sign_w, stride, padding, backend)


def pack_layer(module: _BinaryWeights, params: Params, backend: str = DEFAULT_CPU_BACKEND
               ) -> PackedLayer:
    """Pack one binary layer from its trained parameters (latent or +-1 storage).

    Uses the module's own ``effective_weight``, so ``a`` is bit-for-bit the float path's.
    """
    name = module.key("w")
    kind, stride, padding = _layer_geometry(module)
    w = np.asarray(params[name])
    _, wcache = module.effective_weight(params)
    scale = None
    if wcache is not None and wcache.scale is not None:
        scale = np.ascontiguousarray(wcache.scale.reshape(-1))
    # bit = (w >= 0) = (sign(w) == +1): for +-1 storage w is its own sign
    bits = get_kernels(backend).pack_signs(np.ascontiguousarray(w).reshape(w.shape[0], -1))
    return PackedLayer(name, kind, tuple(int(s) for s in w.shape), stride, padding, bits, scale,
                       _kernel(kind, w, stride, padding, backend))


def _words(k: int) -> int:
    return -(-k // 64)


def _layer_from_bits(name: str, kind: str, shape: tuple[int, ...], stride: int, padding: int,
                     bits: np.ndarray, scale: np.ndarray | None, dtype: np.dtype,
                     backend: str) -> PackedLayer:
    """Rebuild a PackedLayer (with its kernel layout) from stored bits."""
    k = int(np.prod(shape[1:]))
    if bits.dtype != np.uint64 or bits.shape != (shape[0], _words(k)):
        raise DataFileError(f"packed/{name}: bits must be uint64 {(shape[0], _words(k))}, got "
                            f"{bits.dtype} {tuple(bits.shape)}")
    if scale is not None and scale.shape != (shape[0],):
        raise DataFileError(f"packed/{name}: scale must have shape ({shape[0]},), got "
                            f"{tuple(scale.shape)}")
    sign_w = get_kernels(backend).unpack_signs(bits, k, dtype).reshape(shape)
    return PackedLayer(name, kind, shape, stride, padding, bits, scale,
                       _kernel(kind, sign_w, stride, padding, backend))


@dataclass
class PackedModel:
    """A model ready for bit-packed inference: ``logits = pm.forward(x)``."""

    model: Model                    # the float model (structure, input shape, binary names)
    params: Params                  # real-valued parameters only
    buffers: Params
    layers: dict[str, PackedLayer]
    config_json: str
    epoch: int
    source: str
    backend: str = DEFAULT_CPU_BACKEND
    source_params: Params | None = None   # the checkpoint's full params, when packed from one
    net: Sequential = field(init=False)

    def __post_init__(self) -> None:
        self.net = _packed_tree(self.model.net, self.layers, self.backend)

    @property
    def dtype(self) -> np.dtype:
        """The model dtype (that of its real parameters)."""
        return next(iter(self.params.values())).dtype

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of x (N, *input_shape), BatchNorm in eval mode."""
        if tuple(x.shape[1:]) != self.model.input_shape:
            raise ShapeError(f"{self.model.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.model.input_shape))}), got "
                             f"{tuple(x.shape)}")
        logits, _, _ = self.net.forward(self.params, self.buffers, x, False)
        return logits

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).argmax(axis=1)

    def float_params(self) -> Params:
        """Parameters for the float model's forward: the checkpoint's when known, else rebuilt.

        Rebuilt binary weights are sign(w) (times ``a`` with scale; the float path then
        recomputes ``a`` = mean|a sign(w)|, equal to the stored ``a`` up to rounding).
        """
        if self.source_params is not None:
            return self.source_params
        params = dict(self.params)
        for name, layer in self.layers.items():
            k = int(np.prod(layer.shape[1:]))
            w = get_kernels(self.backend).unpack_signs(layer.bits, k, self.dtype)
            if layer.scale is not None:
                w = w * layer.scale.reshape(-1, 1)
            params[name] = w.reshape(layer.shape)
        return params

    def sizes(self) -> dict[str, float]:
        """Binary weights: count, float32 bytes (4 per weight) and packed bytes, their ratio."""
        count = sum(int(np.prod(layer.shape)) for layer in self.layers.values())
        packed = sum(int(layer.bits.nbytes) for layer in self.layers.values())
        scales = sum(int(layer.scale.nbytes) for layer in self.layers.values()
                     if layer.scale is not None)
        return {"binary_layers": len(self.layers), "binary_weights": count,
                "float32_bytes": 4 * count, "packed_bytes": packed, "scale_bytes": scales,
                "weight_ratio": 4 * count / packed if packed else float("nan")}


def pack_model(model: Model, params: Params, buffers: Params, *, config_json: str = "{}",
               epoch: int = 0, source: str = "", backend: str = DEFAULT_CPU_BACKEND
               ) -> PackedModel:
    """Pack a model's binary layers from (float) params; keep everything else as it is."""
    binary = set(model.binary_names)
    layers = {m.key("w"): pack_layer(m, params, backend) for m in binary_layers(model)}
    real = {k: np.asarray(v) for k, v in params.items() if k not in binary}
    return PackedModel(model, real, {k: np.asarray(v) for k, v in buffers.items()}, layers,
                       config_json, epoch, source, backend, dict(params))


def _model_for(config: TrainConfig, input_shape: tuple[int, ...] | None,
               num_classes: int | None) -> Model:
    from minibnn.train import load_data, model_from_config

    if input_shape is None or num_classes is None:
        ds = load_data(config)
        input_shape, num_classes = tuple(ds.x_train.shape[1:]), int(ds.num_classes)
    return model_from_config(config, tuple(input_shape), int(num_classes))


def pack_run(path: str, *, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None, backend: str = DEFAULT_CPU_BACKEND) -> PackedModel:
    """Pack the checkpoint of a run file in memory.

    The model is rebuilt from the run's config; its input shape and class count come from the
    dataset unless given.
    """
    from minibnn.io import load_run

    return _pack_loaded_run(load_run(path), path, input_shape, num_classes, backend)


def _pack_loaded_run(run: Any, path: str, input_shape: tuple[int, ...] | None,
                     num_classes: int | None, backend: str) -> PackedModel:
    from minibnn.train import check_checkpoint

    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint to pack")
    config = TrainConfig.from_json(run.config_json)
    model = _model_for(config, input_shape, num_classes)
    expected, expected_buffers = model.init(np.random.default_rng(0), np.dtype(config.dtype))
    check_checkpoint(run.checkpoint, expected, path, expected_buffers)
    return pack_model(model, run.checkpoint.params, run.checkpoint.buffers,
                      config_json=run.config_json, epoch=run.checkpoint.epoch,
                      source=os.path.abspath(path), backend=backend)


def save_packed(path: str, pm: PackedModel) -> None:
    """Write a packed model to ``path`` atomically (``minibnn.io.atomic_h5``)."""
    from minibnn.io import atomic_h5

    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["config"] = pm.config_json
        f.attrs["source"] = pm.source
        f.attrs["epoch"] = pm.epoch
        f.attrs["model"] = pm.model.name
        f.attrs["dtype"] = pm.dtype.name
        f.attrs["input_shape"] = np.asarray(pm.model.input_shape, dtype=np.int64)
        f.attrs["num_classes"] = pm.model.num_classes
        for group, arrays in (("real", pm.params), ("buffers", pm.buffers)):
            g = f.create_group(group)
            for name, value in arrays.items():
                g.create_dataset(name, data=np.asarray(value))
        packed = f.create_group("packed")
        for name, layer in pm.layers.items():
            g = packed.create_group(name)
            g.attrs["shape"] = np.asarray(layer.shape, dtype=np.int64)
            g.attrs["kind"] = layer.kind
            g.attrs["stride"] = layer.stride
            g.attrs["padding"] = layer.padding
            g.create_dataset("bits", data=layer.bits)
            if layer.scale is not None:
                g.create_dataset("scale", data=layer.scale)


def file_format(path: str) -> str | None:
    """The ``format`` tag of an HDF5 file ("minibnn-packed", "minibnn-run", ...), else None."""
    try:
        import h5py

        if not os.path.isfile(path) or not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            tag = f.attrs.get("format")
    except (OSError, ValueError):
        return None
    return tag.decode() if isinstance(tag, bytes) else (None if tag is None else str(tag))


def is_packed_file(path: str) -> bool:
    """True when ``path`` is an HDF5 file tagged format="minibnn-packed"."""
    return file_format(path) == FORMAT


def _read_group(group: Any) -> Params:
    return {name: np.asarray(item[()]) for name, item in group.items()}


def load_packed(path: str, backend: str = DEFAULT_CPU_BACKEND) -> PackedModel:
    """Read a packed file; a missing, foreign or corrupt file is a one-line ``DataFileError``."""
    import h5py

    if not os.path.exists(path):
        raise DataFileError(f"packed file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            tag = f.attrs.get("format")
            if tag == RUN_FORMAT:
                raise DataFileError(f"{path} is a run file, not a packed file (use "
                                    f"`minibnn eval {path} --packed`, or export it first)")
            if tag != FORMAT:
                raise DataFileError(f"{path} is not a minibnn packed file (no "
                                    f"format={FORMAT!r} tag)")
            version = int(f.attrs.get("version", -1))
            if version != VERSION:
                raise DataFileError(f"{path}: packed file version {version} is not supported "
                                    f"(expected {VERSION})")
            config_json = str(f.attrs["config"])
            epoch, source = int(f.attrs["epoch"]), str(f.attrs["source"])
            input_shape = tuple(int(s) for s in f.attrs["input_shape"])
            num_classes = int(f.attrs["num_classes"])
            real, buffers = _read_group(f["real"]), _read_group(f["buffers"])
            stored = {}
            for name, g in f["packed"].items():
                stored[name] = (str(g.attrs["kind"]), tuple(int(s) for s in g.attrs["shape"]),
                                int(g.attrs["stride"]), int(g.attrs["padding"]),
                                np.asarray(g["bits"][()]),
                                np.asarray(g["scale"][()]) if "scale" in g else None)
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"{path} is corrupt or unreadable: {reason}") from None
    try:
        config = TrainConfig.from_json(config_json)
        model = _model_for(config, input_shape, num_classes)
    except (MinibnnError, ValueError) as exc:
        raise DataFileError(f"{path}: stored config does not build a model: "
                            f"{str(exc).splitlines()[0]}") from None
    dtype = np.dtype(config.dtype)
    expected_params, expected_buffers = model.init(np.random.default_rng(0), dtype)
    binary = {m.key("w"): m for m in binary_layers(model)}
    _check_arrays(path, "real", real, {k: v for k, v in expected_params.items()
                                       if k not in binary})
    _check_arrays(path, "buffers", buffers, expected_buffers)
    if set(stored) != set(binary):
        raise DataFileError(f"{path}: packed layers {sorted(stored)} do not match the model's "
                            f"binary weights {sorted(binary)}")
    layers = {}
    for name, (kind, shape, stride, padding, bits, scale) in stored.items():
        module = binary[name]
        want = (_layer_geometry(module), module.shape, module.scale)
        if ((kind, stride, padding), shape, scale is not None) != want:
            raise DataFileError(f"{path}: packed/{name} (kind {kind}, shape {shape}, stride "
                                f"{stride}, padding {padding}, scale {scale is not None}) does "
                                "not match the model in its config")
        layers[name] = _layer_from_bits(name, kind, shape, stride, padding, bits,
                                        None if scale is None else scale.astype(dtype), dtype,
                                        backend)
    return PackedModel(model, real, buffers, layers, config_json, epoch, source, backend)


def _check_arrays(path: str, group: str, got: Params, expected: Params) -> None:
    if set(got) != set(expected):
        raise DataFileError(f"{path}: {group}/ holds {sorted(got)}, the model expects "
                            f"{sorted(expected)}")
    for name, value in expected.items():
        if got[name].shape != value.shape:
            raise DataFileError(f"{path}: {group}/{name} has shape {got[name].shape}, the "
                                f"model expects {value.shape}")


def default_packed_path(run_path: str) -> str:
    """``runs/x.h5`` -> ``runs/x.packed.h5``."""
    stem = run_path[:-3] if run_path.endswith(".h5") else run_path
    return f"{stem}.packed.h5"


def export_packed(run_path: str, out_path: str | None = None, *,
                  backend: str = DEFAULT_CPU_BACKEND) -> dict[str, Any]:
    """Pack a run file's checkpoint into ``out_path`` (default ``RUN.packed.h5``).

    Returns the sizes: binary weights as float32 bytes vs packed bytes (``weight_ratio``, ~32
    when the fan-in K is a multiple of 64) and both file sizes.
    """
    if is_packed_file(run_path):
        raise MinibnnError(f"{run_path} is already a packed file")
    out = out_path or default_packed_path(run_path)
    if os.path.abspath(out) == os.path.abspath(run_path):
        raise MinibnnError(f"--out {out} would overwrite the run file")
    pm = pack_run(run_path, backend=backend)
    save_packed(out, pm)
    sizes: dict[str, Any] = pm.sizes()
    sizes.update(out=out, run_file_bytes=os.path.getsize(run_path),
                 packed_file_bytes=os.path.getsize(out))
    return sizes


def evaluate_packed(source: str | PackedModel, *, batch_size: int = 1000, check: bool = False,
                    backend: str = DEFAULT_CPU_BACKEND) -> dict[str, Any]:
    """Test loss and accuracy with the packed forward pass on the run's dataset.

    ``source``: a packed file, a run file (packed in memory from its checkpoint), or a
    PackedModel.  With ``check`` the float path runs too and the result holds ``differ`` (test
    predictions that disagree, 0 expected) and ``max_logit_diff`` (0.0 without scale).
    """
    from minibnn.io import load_run
    from minibnn.train import load_data

    if isinstance(source, PackedModel) or is_packed_file(source):
        pm = source if isinstance(source, PackedModel) else load_packed(source, backend)
        ds = load_data(TrainConfig.from_json(pm.config_json))
    else:
        run = load_run(source)
        ds = load_data(TrainConfig.from_json(run.config_json))
        pm = _pack_loaded_run(run, source, tuple(ds.x_train.shape[1:]), int(ds.num_classes),
                              backend)
    x, y = ds.x_test, ds.y_test
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


__all__ = ["FORMAT", "VERSION", "PackedBinary", "PackedLayer", "PackedModel", "binary_layers",
           "default_packed_path", "evaluate_packed", "export_packed", "file_format",
           "is_packed_file", "load_packed", "pack_layer", "pack_model", "pack_run",
           "save_packed"]
