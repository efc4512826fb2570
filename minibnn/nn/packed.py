"""Bit-packed binary inference: packed layers, the module-tree rewrite, the packed model.

A trained model's binary layers (``BinaryDense`` / ``BinaryConv2d``) only ever use
``W_eff = a * sign(w)`` (``a`` = per-output-channel mean|w| with ``scale``, else 1), and in
every model a ``Sign`` module sits right in front of them, so at inference they compute

    y = a * (sign(x) . sign(w))        sign(x) . sign(w) = K - 2 popcount(xbits XOR wbits)

which ``kernels.bitpack`` evaluates exactly, 64 weights per uint64 word.  Where a binary
layer is followed by ``[MaxPool2d ->] BatchNorm -> Sign``, that tail is folded at pack time into
per-channel integer thresholds on the exact count (``minibnn.nn.fold``); when the next module
is another binary layer, the thresholded signs go to it still packed: no float BatchNorm, no
float activations in between.

``pack_model`` rebuilds the module tree with each ``Sign -> binary layer [-> fold -> binary
layer ...]`` run replaced by one ``PackedBinary`` module; every other module (real first/last
layers, unfolded BatchNorm, pooling, PReLU, residual additions) keeps its own forward, in eval
mode.  Thresholds are exact for inputs in the model dtype, which ``PackedModel.forward`` requires.
Packed inference runs on NumPy (host) arrays only.

Exactness.  Without ``scale`` the float path sums K products of +-1 values, integers below
2**24, so its dense/conv output is the exact integer the XNOR kernel returns: the packed logits
are bit-identical in float32 and float64.  With ``scale`` the float path sums K products
``x_k * (a * s_k)`` in BLAS order (one rounding per addition) while the packed path computes
``a * z`` (one rounding; the thresholds fold ``a * z``), so logits may differ in the last bits;
predictions are equal unless a BatchNorm output lands within those bits of 0
(``evaluate_packed(check=True)`` counts them).

The packed file format is ``minibnn.deploy.packed_file``; packing a run file, exporting and
evaluating it is ``minibnn.deploy.inference``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minibnn import kernels
from minibnn.backend import check_finite_input
from minibnn.errors import DeviceError, DTypeError, MinibnnError, ShapeError
from minibnn.kernels.bitpack import (PackedConv2d, PackedDense, count, pack_conv2d, pack_dense,
                                     pack_input)
from minibnn.kernels.threshold import Threshold, threshold_signs
from minibnn.nn.fold import Fold, fold_after, fold_batchnorm_sign, fold_sites, walk
from minibnn.nn.models import Model
from minibnn.nn.containers import Residual, Sequential
from minibnn.nn.modules import BinaryConv2d, BinaryDense, Module, _BinaryWeights, is_sign

Params = dict[str, np.ndarray]


@dataclass
class PackedLayer:
    """One binary weight, packed: the on-disk bits, the kernel's layout, the folded tail."""

    name: str                       # parameter name, e.g. "fc2.w"
    kind: str                       # "dense" | "conv2d"
    shape: tuple[int, ...]          # weight shape: (O, I) or (O, C, kH, kW)
    stride: int
    padding: int
    bits: np.ndarray                # (O, ceil(K/64)) uint64: row o packs sign(w.reshape(O, K)[o])
    scale: np.ndarray | None        # (O,) mean|w| in the model dtype, or None
    kernel: PackedDense | PackedConv2d
    fold: Threshold | None = None   # [max-pool ->] BatchNorm -> sign on the count, or None
    fold_bn: str = ""               # the folded BatchNorm's name ("" when no fold)
    pool: tuple[int, int, int] | None = None   # max-pool (kernel, stride, padding) in the fold

    @property
    def k(self) -> int:
        """Fan-in K: the count y of this layer lies in [-K, K]."""
        return int(np.prod(self.shape[1:]))


def binary_layers(model: Model) -> list[_BinaryWeights]:
    """The model's binary dense/conv modules, in forward order."""
    return [m for m in walk(model.net) if isinstance(m, _BinaryWeights)]


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
        return kernels.threshold_pack(y, fold.threshold, fold.direction)
    s = np.moveaxis(threshold_signs(y, fold), 1, -1)
    return kernels.pack_signs(np.where(s, np.float32(1), np.float32(-1)))


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
        signs = kernels.unpack_signs(bits, y.shape[1], x.dtype)
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
        if not (is_sign(mods[i]) and i + 1 < len(mods)
                and isinstance(mods[i + 1], _BinaryWeights)):
            out.append(_packed_tree(mods[i], layers))
            i += 1
            continue
        run, i = [], i + 1                      # mods[i] is a binary layer fed by a Sign
        while True:
            layer = layers[mods[i].key("w")]
            run.append(layer)
            site = fold_after(mods, i) if layer.fold is not None else None
            i += 1 + (site.span if site is not None else 0)
            if not (site is not None and i < len(mods) and isinstance(mods[i], _BinaryWeights)):
                break                           # else the folded Sign feeds mods[i]: stay packed
        out.append(PackedBinary(run))
    return Sequential(out, module.name)


def layer_geometry(module: _BinaryWeights) -> tuple[str, int, int]:
    """(kind, stride, padding) of a binary module: ``("dense", 1, 0)`` or its conv's."""
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
    kind, stride, padding = layer_geometry(module)
    w = np.asarray(params[name])
    _, wcache = module.effective_weight(params)
    scale = None
    if wcache is not None and wcache.scale is not None:
        scale = np.ascontiguousarray(wcache.scale.reshape(-1))
    # bit = (w >= 0) = (sign(w) == +1): for +-1 storage w is its own sign
    bits = kernels.pack_signs(np.ascontiguousarray(w).reshape(w.shape[0], -1))
    return PackedLayer(name, kind, tuple(int(s) for s in w.shape), stride, padding, bits, scale,
                       _kernel(kind, w, stride, padding))


def fold_layer(layer: PackedLayer, site: Fold, params: Params, buffers: Params, dtype: Any
               ) -> PackedLayer:
    """``layer`` with the BatchNorm + sign (and max-pool) after it folded into thresholds."""
    fold = fold_batchnorm_sign(site.bn, site.sign, params, buffers, layer.k, dtype, layer.scale)
    return dataclasses.replace(layer, fold=fold, fold_bn=site.bn.name, pool=site.pool_args)


def layer_from_bits(name: str, kind: str, shape: tuple[int, ...], stride: int, padding: int,
                    bits: np.ndarray, scale: np.ndarray | None, dtype: np.dtype
                    ) -> PackedLayer:
    """Rebuild a PackedLayer (with its kernel layout) from stored bits: uint64
    (O, ``words_for(K)``), as ``minibnn.deploy.packed_file`` checks them on reading."""
    k = int(np.prod(shape[1:]))
    sign_w = kernels.unpack_signs(bits, k, dtype).reshape(shape)
    return PackedLayer(name, kind, shape, stride, padding, bits, scale,
                       _kernel(kind, sign_w, stride, padding))


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
        """Logits (N, classes) of x (N, *input_shape) in the model dtype, BatchNorm in eval mode.

        x must be a finite NumPy array: the packed kernels and the integer max-pool run on the
        host, and NaN or infinite values are a one-line error (``backend.check_finite_input``).
        """
        if not isinstance(x, np.ndarray):
            kind = f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"
            raise DeviceError(f"{self.model.name}: packed inference runs on the CPU: x must be a "
                              f"NumPy array, got {kind} (copy it to the host first)")
        if tuple(x.shape[1:]) != self.model.input_shape:
            raise ShapeError(f"{self.model.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.model.input_shape))}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise DTypeError(f"{self.model.name}: the packed model is {self.dtype.name} (its "
                             f"thresholds fold {self.dtype.name} BatchNorm), got x {x.dtype}")
        check_finite_input(f"{self.model.name} (packed)", x)
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
            w = kernels.unpack_signs(layer.bits, layer.k, self.dtype)
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


__all__ = ["PackedBinary", "PackedLayer", "PackedModel", "binary_layers", "fold_layer",
           "layer_from_bits", "layer_geometry", "pack_layer", "pack_model"]
