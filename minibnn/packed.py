"""Bit-packed binary inference from a training run: pack, save, load, evaluate.

A trained model's binary layers (``BinaryDense`` / ``BinaryConv2d``) only ever use
``W_eff = a * sign(w)`` (``a`` = per-output-channel mean|w| with ``scale``, else 1), and in
every model a ``Sign`` module sits right in front of them, so at inference they compute

    y = a * (sign(x) . sign(w))        sign(x) . sign(w) = K - 2 popcount(xbits XOR wbits)

which ``kernels.bitpack`` evaluates exactly, 64 weights per uint64 word.  Where a binary
layer is followed by ``[MaxPool2d ->] BatchNorm -> Sign`` (binary_mlp: bdense -> BN -> sign;
binary_cnn: bconv -> (maxpool) -> BN -> sign), that tail is folded at pack time into per-channel
integer thresholds on the exact count (``kernels.threshold``; BNN deployment's standard step):
the signs are ``y >= t_c`` (or ``y <= t_c``), read off the float path's own BatchNorm + sign
evaluated at every integer y in [-K, K], so they are the float path's signs bit for bit.  The
max-pool runs on the int32 counts before the thresholds (max of the same exact integers), which
is exact in either threshold direction.  When the next module is another binary layer, the
thresholded signs go to it still packed: no float BatchNorm, no float activations in between.

``pack_model`` rebuilds the module tree with each ``Sign -> binary layer [-> fold -> binary
layer ...]`` run replaced by one ``PackedBinary`` module; every other module (real first/last
layers, unfolded BatchNorm, pooling, PReLU, residual additions) keeps its own forward, in eval
mode.  Thresholds are exact for inputs in the model dtype, which ``PackedModel.forward`` requires.

Exactness.  Without ``scale`` the float path sums K products of +-1 values, integers below
2**24, so its dense/conv output is the exact integer the XNOR kernel returns: the packed logits
are bit-identical in float32 and float64.  With ``scale`` the float path sums K products
``x_k * (a * s_k)`` in BLAS order (one rounding per addition) while the packed path computes
``a * z`` (one rounding; the thresholds fold ``a * z``), so logits may differ in the last bits;
predictions are equal unless a BatchNorm output lands within those bits of 0
(``evaluate_packed(check=True)`` counts them).

Packed file (HDF5, written atomically like run files), format version 2::

    /                 attrs: format="minibnn-packed", version, config (the run's JSON), source
                             (run path), epoch, model, dtype, input_shape, num_classes
    /real/<name>      real-valued parameters (first/last layer, BatchNorm, ...), model dtype
    /buffers/<name>   BatchNorm running statistics
    /packed/<name>    one group per binary weight ("fc2.w"), attrs shape, kind (dense|conv2d),
                      stride, padding, fold (the folded BatchNorm's name, "" when none); datasets
        bits          uint64 (O, ceil(K/64)), K = prod(shape[1:]): row o packs
                      sign(w.reshape(O, K)[o]), element k at bit k % 64 of word k // 64,
                      bit 1 = +1, pad bits 0 (the kernels' dense layout, for conv too)
        scale         (O,) mean|w| per output channel, only when the layer uses a scale
        threshold     (O,) int32 t_c, only with a fold
        direction     (O,) int8: +1 sign = y >= t_c, -1 sign = y <= t_c, 0 lookup row
        lookup        (L, 2K+1) uint8, only when some direction is 0: row j is the sign table
                      (1 = +1) of the j-th direction-0 channel at y = -K .. K

The folded BatchNorm's parameters stay in /real and /buffers (the float path of ``--check``).
Version 1 files (no thresholds) are refused in one line: re-export them.  Conv weights are
repacked into the kernel's tap-major layout at load time, so the file stays ~32x smaller than
float32 whatever the channel count.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from minibnn import kernels
from minibnn.config import TrainConfig
from minibnn.errors import DataFileError, DTypeError, MinibnnError, ShapeError
from minibnn.kernels.bitpack import (PackedConv2d, PackedDense, count, pack_conv2d, pack_dense,
                                     pack_input)
from minibnn.kernels.threshold import Threshold, fold_sign_table, threshold_signs
from minibnn.nn import functional as F
from minibnn.nn.models import Model
from minibnn.nn.modules import (BatchNorm, BinaryConv2d, BinaryDense, Module, Residual,
                                Sequential, Stateless, _BinaryWeights)

FORMAT = "minibnn-packed"
VERSION = 2
RUN_FORMAT = "minibnn-run"
#: elements of one block of the sign table built by ``fold_batchnorm_sign`` (bounds memory)
TABLE_BLOCK = 1 << 22

Params = dict[str, np.ndarray]


@dataclass
class PackedLayer:
    """One binary weight, packed: the on-disk bits, the kernel's layout, the folded tail."""

    name: str                       # parameter name, e.g. "fc2.w"
    kind: str                       # "dense" | "conv2d"
    shape: tuple[int, ...]          # weight shape: (O, I) or (O, C, kH, kW)
    stride: int
    padding: int
    bits: np.ndarray                # (O, ceil(K/64)) uint64, see the module docstring
    scale: np.ndarray | None        # (O,) mean|w| in the model dtype, or None
    kernel: PackedDense | PackedConv2d
    fold: Threshold | None = None   # [max-pool ->] BatchNorm -> sign on the count, or None
    fold_bn: str = ""               # the folded BatchNorm's name ("" when no fold)
    pool: tuple[int, int, int] | None = None   # max-pool (kernel, stride, padding) in the fold

    @property
    def k(self) -> int:
        """Fan-in K: the count y of this layer lies in [-K, K]."""
        return int(np.prod(self.shape[1:]))


class Fold(NamedTuple):
    """The modules after a binary layer that fold into thresholds: [MaxPool2d ->] BN -> Sign."""

    pool: Stateless | None
    bn: BatchNorm
    sign: Stateless

    @property
    def span(self) -> int:
        """How many modules after the binary layer the fold replaces."""
        return 3 if self.pool is not None else 2

    @property
    def pool_args(self) -> tuple[int, int, int] | None:
        if self.pool is None:
            return None
        kw = self.pool.kwargs
        kernel = int(kw["kernel"])
        stride = kernel if kw.get("stride") is None else int(kw["stride"])
        return kernel, stride, int(kw.get("padding", 0))


def _is_sign(module: Module) -> bool:
    return isinstance(module, Stateless) and module.forward_fn is F.sign_forward


def _is_maxpool(module: Module) -> bool:
    return isinstance(module, Stateless) and module.forward_fn is F.maxpool2d_forward


def _fold_after(layers: Sequence[Module], i: int) -> Fold | None:
    """The fold following the binary layer ``layers[i]``, if the modules after it form one."""
    rest = list(layers[i + 1:i + 4])
    pool = rest.pop(0) if rest and _is_maxpool(rest[0]) else None
    if len(rest) >= 2 and isinstance(rest[0], BatchNorm) and _is_sign(rest[1]):
        return Fold(pool, rest[0], rest[1])
    return None


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


def fold_sites(model: Model) -> dict[str, Fold]:
    """Binary weight name -> the ``[MaxPool2d ->] BatchNorm -> Sign`` that follows it."""
    sites = {}
    for module in _walk(model.net):
        if isinstance(module, Sequential):
            for i, layer in enumerate(module.layers):
                fold = _fold_after(module.layers, i) if isinstance(layer, _BinaryWeights) else None
                if fold is not None:
                    sites[layer.key("w")] = fold
    return sites


def fold_batchnorm_sign(bn: BatchNorm, sign: Stateless, params: Params, buffers: Params, k: int,
                        dtype: Any, scale: np.ndarray | None = None) -> Threshold:
    """Integer thresholds equal to ``sign(bn(y))`` (eval) for every integer y in [-k, k].

    The sign table is the float path itself: each y is the layer's float output (y, or
    ``a_c * y`` with a scale: the packed path's one rounding) in ``dtype``, run through the
    model's own ``bn`` and ``sign`` modules in eval mode; ``fold_sign_table`` reads the
    thresholds off it (a lookup row where a channel's signs are not a step).
    """
    dtype = np.dtype(dtype)
    c = bn.channels
    ys = np.arange(-k, k + 1)
    table = np.empty((2 * k + 1, c), dtype=np.bool_)
    rows = max(1, TABLE_BLOCK // max(1, c))
    for start in range(0, 2 * k + 1, rows):
        y = np.repeat(ys[start:start + rows, None].astype(dtype), c, axis=1)     # exact ints
        if scale is not None:
            y *= scale.astype(dtype)[None, :]
        z, _, _ = bn.forward(params, buffers, y, False)
        s, _, _ = sign.forward(params, buffers, z, False)
        table[start:start + rows] = s > 0
    return fold_sign_table(table, k)


def _maxpool_counts(y: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Max-pool of int32 counts (N, C, H, W): the float path's max-pool of the same integers.

    Padding is the int32 minimum, which never wins (as -inf in the float path).
    """
    n, c, h, w = y.shape
    p = padding
    if p:
        y = np.pad(y, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=np.iinfo(np.int32).min)
    oh, ow = (h + 2 * p - kernel) // stride + 1, (w + 2 * p - kernel) // stride + 1
    out = None
    for i in range(kernel):
        for j in range(kernel):
            tap = y[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


def _packed_signs(y: np.ndarray, fold: Threshold) -> np.ndarray:
    """Thresholded signs of counts y, packed along channels: the next binary layer's input."""
    if fold.lookup is None:
        return kernels.call("threshold_pack", y, fold.threshold, fold.direction)
    s = np.moveaxis(threshold_signs(y, fold), 1, -1)
    return kernels.call("pack_signs", np.where(s, np.float32(1), np.float32(-1)))


class PackedBinary(Module):
    """A run of binary layers at inference, its activations packed from input to output.

    ``sign(x)`` is packed once; then per layer: y = XNOR-popcount count (int32, exact) ->
    [int max-pool] -> folded BatchNorm + sign as thresholds -> packed signs, the next layer's
    input.  Output, in x's dtype: the last layer's thresholded signs (+-1) when it folds a
    BatchNorm + sign, else ``a * y`` (y without a scale) for the modules that follow.
    Inference only: ``backward`` raises.
    """

    def __init__(self, layers: Sequence[PackedLayer]):
        super().__init__(layers[0].name.rsplit(".", 1)[0])
        self.layers = list(layers)

    def forward(self, params, buffers, x, train):
        bits = pack_input(x, self.layers[0].kernel)
        for layer in self.layers:
            y = count(bits, layer.kernel)
            if layer.fold is None:
                return self._real_output(y, layer, x.dtype), {}, None
            if layer.pool is not None:
                y = _maxpool_counts(y, *layer.pool)
            bits = _packed_signs(y, layer.fold)
        # the last layer's signs as +-1 floats: (N, [H, W,] C) -> (N, C[, H, W])
        signs = kernels.call("unpack_signs", bits, y.shape[1], x.dtype)
        return np.ascontiguousarray(np.moveaxis(signs, -1, 1)), {}, None

    @staticmethod
    def _real_output(y: np.ndarray, layer: PackedLayer, dtype: np.dtype) -> np.ndarray:
        out = y.astype(dtype)            # exact: |y| <= K < 2**24
        if layer.scale is not None:
            bshape = (1, -1) + (1,) * (y.ndim - 2)
            out *= layer.scale.astype(dtype).reshape(bshape)        # y = a_o * z
        return out

    def backward(self, dy, cache):
        raise MinibnnError(f"{self.layers[0].name}: packed layers are inference-only")


def _not_after_sign(module: _BinaryWeights) -> MinibnnError:
    return MinibnnError(f"binary layer {module.key('w')!r} is not directly preceded by a Sign; "
                        "packed inference needs +-1 inputs")


def _packed_tree(module: Module, layers: dict[str, PackedLayer]) -> Module:
    """Copy of the module tree with each ``Sign -> binary layer [-> fold -> binary layer]*``
    run replaced by one PackedBinary (folded modules and the Signs they feed are dropped)."""
    if isinstance(module, Residual):
        short = module.shortcut
        return Residual(_packed_tree(module.body, layers),
                        None if short is None else _packed_tree(short, layers), module.name)
    if isinstance(module, _BinaryWeights):
        raise _not_after_sign(module)
    if not isinstance(module, Sequential):
        return module
    out: list[Module] = []
    mods, i = module.layers, 0
    while i < len(mods):
        if isinstance(mods[i], _BinaryWeights):
            raise _not_after_sign(mods[i])
        if not (_is_sign(mods[i]) and i + 1 < len(mods)
                and isinstance(mods[i + 1], _BinaryWeights)):
            out.append(_packed_tree(mods[i], layers))
            i += 1
            continue
        run, i = [], i + 1                      # mods[i] is a binary layer fed by a Sign
        while True:
            layer = layers[mods[i].key("w")]
            run.append(layer)
            site = _fold_after(mods, i) if layer.fold is not None else None
            i += 1 + (site.span if site is not None else 0)
            if not (site is not None and i < len(mods) and isinstance(mods[i], _BinaryWeights)):
                break                           # else the folded Sign feeds mods[i]: stay packed
        out.append(PackedBinary(run))
    return Sequential(out, module.name)


def _layer_geometry(module: _BinaryWeights) -> tuple[str, int, int]:
    if isinstance(module, BinaryConv2d):
        return "conv2d", int(module.stride), int(module.padding)
    if isinstance(module, BinaryDense):
        return "dense", 1, 0
    raise MinibnnError(f"{module.key('w')}: no packed kernel for {type(module).__name__}")


def _kernel(kind: str, sign_w: np.ndarray, stride: int, padding: int
            ) -> PackedDense | PackedConv2d:
    if kind == "dense":
        return pack_dense(sign_w)
    return pack_conv2d(sign_w, stride, padding)


def pack_layer(module: _BinaryWeights, params: Params) -> PackedLayer:
    """Pack one binary layer's weights from its trained parameters (latent or +-1 storage).

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
    bits = kernels.call("pack_signs", np.ascontiguousarray(w).reshape(w.shape[0], -1))
    return PackedLayer(name, kind, tuple(int(s) for s in w.shape), stride, padding, bits, scale,
                       _kernel(kind, w, stride, padding))


def fold_layer(layer: PackedLayer, site: Fold, params: Params, buffers: Params, dtype: Any
               ) -> PackedLayer:
    """``layer`` with the BatchNorm + sign (and max-pool) after it folded into thresholds."""
    fold = fold_batchnorm_sign(site.bn, site.sign, params, buffers, layer.k, dtype, layer.scale)
    return dataclasses.replace(layer, fold=fold, fold_bn=site.bn.name, pool=site.pool_args)


def _words(k: int) -> int:
    return -(-k // 64)


def _layer_from_bits(name: str, kind: str, shape: tuple[int, ...], stride: int, padding: int,
                     bits: np.ndarray, scale: np.ndarray | None, dtype: np.dtype
                     ) -> PackedLayer:
    """Rebuild a PackedLayer (with its kernel layout) from stored bits."""
    k = int(np.prod(shape[1:]))
    if bits.dtype != np.uint64 or bits.shape != (shape[0], _words(k)):
        raise DataFileError(f"packed/{name}: bits must be uint64 {(shape[0], _words(k))}, got "
                            f"{bits.dtype} {tuple(bits.shape)}")
    if scale is not None and scale.shape != (shape[0],):
        raise DataFileError(f"packed/{name}: scale must have shape ({shape[0]},), got "
                            f"{tuple(scale.shape)}")
    sign_w = kernels.call("unpack_signs", bits, k, dtype).reshape(shape)
    return PackedLayer(name, kind, shape, stride, padding, bits, scale,
                       _kernel(kind, sign_w, stride, padding))


def _stored_fold(path: str, name: str, layer: PackedLayer, stored: dict[str, Any]
                 ) -> Threshold:
    """The Threshold of a packed/<name> group, checked against the layer it folds."""
    o, k = layer.shape[0], layer.k
    t, d, lookup = stored["threshold"], stored["direction"], stored["lookup"]
    if t is None or d is None:
        raise DataFileError(f"{path}: packed/{name} folds {stored['fold']!r} but has no "
                            "threshold/direction")
    if t.dtype != np.int32 or t.shape != (o,) or d.dtype != np.int8 or d.shape != (o,):
        raise DataFileError(f"{path}: packed/{name}: threshold must be int32 ({o},) and "
                            f"direction int8 ({o},), got {t.dtype} {t.shape}, {d.dtype} "
                            f"{d.shape}")
    if not np.isin(d, (-1, 0, 1)).all():
        raise DataFileError(f"{path}: packed/{name}: directions must be -1, 0 or +1")
    n_lookup = int((d == 0).sum())
    want = (n_lookup, 2 * k + 1)
    if (lookup is None) != (n_lookup == 0) or (lookup is not None and (
            lookup.dtype != np.uint8 or lookup.shape != want)):
        got = "none" if lookup is None else f"{lookup.dtype} {lookup.shape}"
        raise DataFileError(f"{path}: packed/{name}: lookup must be uint8 {want} "
                            f"({n_lookup} direction-0 channels), got {got}")
    return Threshold(t, d, lookup, k)


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
    source_params: Params | None = None   # the checkpoint's full params, when packed from one
    net: Sequential = field(init=False)

    def __post_init__(self) -> None:
        self.net = _packed_tree(self.model.net, self.layers)

    @property
    def dtype(self) -> np.dtype:
        """The model dtype (that of its real parameters)."""
        return next(iter(self.params.values())).dtype

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of x (N, *input_shape) in the model dtype, BatchNorm in eval mode."""
        if tuple(x.shape[1:]) != self.model.input_shape:
            raise ShapeError(f"{self.model.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.model.input_shape))}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise DTypeError(f"{self.model.name}: the packed model is {self.dtype.name} (its "
                             f"thresholds fold {self.dtype.name} BatchNorm), got x {x.dtype}")
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
            w = kernels.call("unpack_signs", layer.bits, layer.k, self.dtype)
            if layer.scale is not None:
                w = w * layer.scale.reshape(-1, 1)
            params[name] = w.reshape(layer.shape)
        return params

    def sizes(self) -> dict[str, float]:
        """Binary weights: count, float32 bytes (4 per weight) and packed bytes, their ratio;
        bytes of the scales and of the folded thresholds (threshold, direction, lookup)."""
        layers = self.layers.values()
        count_w = sum(int(np.prod(layer.shape)) for layer in layers)
        packed = sum(int(layer.bits.nbytes) for layer in layers)
        scales = sum(int(layer.scale.nbytes) for layer in layers if layer.scale is not None)
        folds = [layer.fold for layer in layers if layer.fold is not None]
        thresholds = sum(int(f.threshold.nbytes + f.direction.nbytes)
                         + (0 if f.lookup is None else int(f.lookup.nbytes)) for f in folds)
        return {"binary_layers": len(self.layers), "binary_weights": count_w,
                "float32_bytes": 4 * count_w, "packed_bytes": packed, "scale_bytes": scales,
                "folded_layers": len(folds), "threshold_bytes": thresholds,
                "weight_ratio": 4 * count_w / packed if packed else float("nan")}


def pack_model(model: Model, params: Params, buffers: Params, *, config_json: str = "{}",
               epoch: int = 0, source: str = "") -> PackedModel:
    """Pack a model's binary layers from (float) params and fold each ``[MaxPool2d ->]
    BatchNorm -> Sign`` after one into thresholds; keep everything else as it is."""
    binary = set(model.binary_names)
    real = {k: np.asarray(v) for k, v in params.items() if k not in binary}
    bufs = {k: np.asarray(v) for k, v in buffers.items()}
    dtype = next(iter(real.values())).dtype
    sites = fold_sites(model)
    layers = {}
    for module in binary_layers(model):
        layer = pack_layer(module, params)
        if layer.name in sites:
            layer = fold_layer(layer, sites[layer.name], real, bufs, dtype)
        layers[layer.name] = layer
    return PackedModel(model, real, bufs, layers, config_json, epoch, source, dict(params))


def _model_for(config: TrainConfig, input_shape: tuple[int, ...] | None,
               num_classes: int | None) -> Model:
    from minibnn.train import load_data, model_from_config

    if input_shape is None or num_classes is None:
        ds = load_data(config)
        input_shape, num_classes = tuple(ds.x_train.shape[1:]), int(ds.num_classes)
    return model_from_config(config, tuple(input_shape), int(num_classes))


def pack_run(path: str, *, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> PackedModel:
    """Pack the checkpoint of a run file in memory.

    The model is rebuilt from the run's config; its input shape and class count come from the
    dataset unless given.
    """
    from minibnn.io import load_run

    return _pack_loaded_run(load_run(path), path, input_shape, num_classes)


def _pack_loaded_run(run: Any, path: str, input_shape: tuple[int, ...] | None,
                     num_classes: int | None) -> PackedModel:
    from minibnn.train import check_checkpoint

    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint to pack")
    config = TrainConfig.from_json(run.config_json)
    model = _model_for(config, input_shape, num_classes)
    expected, expected_buffers = model.init(np.random.default_rng(0), np.dtype(config.dtype))
    check_checkpoint(run.checkpoint, expected, path, expected_buffers)
    return pack_model(model, run.checkpoint.params, run.checkpoint.buffers,
                      config_json=run.config_json, epoch=run.checkpoint.epoch,
                      source=os.path.abspath(path))


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
            g.attrs["fold"] = layer.fold_bn
            g.create_dataset("bits", data=layer.bits)
            if layer.scale is not None:
                g.create_dataset("scale", data=layer.scale)
            if layer.fold is not None:
                g.create_dataset("threshold", data=layer.fold.threshold)
                g.create_dataset("direction", data=layer.fold.direction)
                if layer.fold.lookup is not None:
                    g.create_dataset("lookup", data=layer.fold.lookup)


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


def _read_layer_group(g: Any) -> dict[str, Any]:
    def optional(key: str) -> np.ndarray | None:
        return np.asarray(g[key][()]) if key in g else None

    return {"kind": str(g.attrs["kind"]), "shape": tuple(int(s) for s in g.attrs["shape"]),
            "stride": int(g.attrs["stride"]), "padding": int(g.attrs["padding"]),
            "fold": str(g.attrs["fold"]), "bits": np.asarray(g["bits"][()]),
            "scale": optional("scale"), "threshold": optional("threshold"),
            "direction": optional("direction"), "lookup": optional("lookup")}


def load_packed(path: str) -> PackedModel:
    """Read a packed file; a missing, foreign, old or corrupt file is a one-line
    ``DataFileError``."""
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
                raise DataFileError(f"{path}: packed file format version {version} is not "
                                    f"supported (this minibnn reads version {VERSION}); "
                                    "re-export it from its run file with `minibnn export "
                                    "RUN.h5 --packed`")
            config_json = str(f.attrs["config"])
            epoch, source = int(f.attrs["epoch"]), str(f.attrs["source"])
            input_shape = tuple(int(s) for s in f.attrs["input_shape"])
            num_classes = int(f.attrs["num_classes"])
            real, buffers = _read_group(f["real"]), _read_group(f["buffers"])
            stored = {name: _read_layer_group(g) for name, g in f["packed"].items()}
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
    sites = fold_sites(model)
    layers = {}
    for name, st in stored.items():
        module, site = binary[name], sites.get(name)
        want = (_layer_geometry(module), module.shape, module.scale,
                "" if site is None else site.bn.name)
        got = ((st["kind"], st["stride"], st["padding"]), st["shape"], st["scale"] is not None,
               st["fold"])
        if got != want:
            raise DataFileError(f"{path}: packed/{name} (kind {st['kind']}, shape {st['shape']}, "
                                f"stride {st['stride']}, padding {st['padding']}, scale "
                                f"{st['scale'] is not None}, fold {st['fold']!r}) does not "
                                "match the model in its config")
        scale = None if st["scale"] is None else st["scale"].astype(dtype)
        layer = _layer_from_bits(name, st["kind"], st["shape"], st["stride"], st["padding"],
                                 st["bits"], scale, dtype)
        if site is not None:
            layer = dataclasses.replace(layer, fold=_stored_fold(path, name, layer, st),
                                        fold_bn=site.bn.name, pool=site.pool_args)
        layers[name] = layer
    return PackedModel(model, real, buffers, layers, config_json, epoch, source)


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
    save_packed(out, pm)
    sizes: dict[str, Any] = pm.sizes()
    sizes.update(out=out, run_file_bytes=os.path.getsize(run_path),
                 packed_file_bytes=os.path.getsize(out))
    return sizes


def evaluate_packed(source: str | PackedModel, *, batch_size: int = 1000,
                    check: bool = False) -> dict[str, Any]:
    """Test loss and accuracy with the packed forward pass on the run's dataset.

    ``source``: a packed file, a run file (packed in memory from its checkpoint), or a
    PackedModel.  With ``check`` the float path runs too and the result holds ``differ`` (test
    predictions that disagree, 0 expected) and ``max_logit_diff`` (0.0 without scale).
    The kernels are chosen by ``kernels.use_backend`` around the call (the CLI's --backend).
    """
    from minibnn.io import load_run
    from minibnn.train import load_data

    if isinstance(source, PackedModel) or is_packed_file(source):
        pm = source if isinstance(source, PackedModel) else load_packed(source)
        ds = load_data(TrainConfig.from_json(pm.config_json))
    else:
        run = load_run(source)
        ds = load_data(TrainConfig.from_json(run.config_json))
        pm = _pack_loaded_run(run, source, tuple(ds.x_train.shape[1:]), int(ds.num_classes))
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


__all__ = ["FORMAT", "VERSION", "Fold", "PackedBinary", "PackedLayer", "PackedModel",
           "binary_layers", "default_packed_path", "evaluate_packed", "export_packed",
           "file_format", "fold_batchnorm_sign", "fold_layer", "fold_sites", "is_packed_file",
           "load_packed", "pack_layer", "pack_model", "pack_run", "save_packed"]
