"""Bit-packed binary inference: dense and 3x3-style conv layers on ±1 values stored as bits.

A trained BNN's binary layer computes ``sign(x) . sign(w)``. Packing 64 signs into one uint64
word (bit 1 = +1, bit 0 = -1, element k at bit k % 64 of word k // 64, so sign(0) = +1) turns
64 multiply-adds into one XOR and one popcount:

    sum_k a_k b_k = (#agree) - (#disagree) = K - 2 popcount(a XOR b).

Weights are packed once (``pack_dense`` / ``pack_conv2d``); activations are packed per call.
The results are int32 and EXACT: equal to the float computation on ±1 values.

Padding, twice over:
  * pad bits: a row of K signs fills ceil(K/64) words; the unused high bits of the last word
    are 0 in both operands, so they XOR to 0 and the formula above uses the true K.
  * zero padding of a convolution: the float path pads x with 0, which is not a ±1 value.
    Padded taps are packed as all-zero words (-1 in every channel), which adds
    ``-sum_c sign(w[o, c, i, j])`` per padded tap; ``pack_conv2d`` keeps those per-tap sums
    (``wsum``) and the kernel adds them back. (Padding with +1 instead would be wrong.)

Every kernel is an op of ``kernels.reference`` (``ops.pack_signs`` ...: each picks its body,
Numba on NumPy arrays; ``kernels.use_backend("numpy")`` forces the reference).  A layer is used
either in one call on float x (``binary_dense`` / ``binary_conv2d``: pack x, then count) or,
in a run of binary layers whose activations stay packed, as ``pack_input`` once and ``count``
per layer (the thresholded signs of one layer, op ``threshold_pack`` with the thresholds of
``kernels.threshold``, are the next layer's packed input; op ``binary_conv2d_threshold_pack``
does count, max-pool and thresholds of a conv layer in one pass, ``binary_conv2d_lookup`` a
conv layer and a table of what follows it at each count).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minibnn.errors import ShapeError
from minibnn.kernels import reference as ops
from minibnn.kernels._common import require_float, require_ndim


class PackedDense(NamedTuple):
    """Packed weights of a binary dense layer: ``wbits`` (O, ceil(I/64)) uint64."""

    wbits: np.ndarray
    in_features: int


class PackedConv2d(NamedTuple):
    """Packed weights of a binary conv layer (see ``kernels.reference.pack_conv_weights``)."""

    wbits: np.ndarray        # (O, kH*kW*ceil(C/64)) uint64, tap-major, channels inside
    wsum: np.ndarray         # (O, kH*kW) int32, sum_c sign(w[o, c, i, j]): padding correction
    in_channels: int
    kh: int
    kw: int
    stride: int
    padding: int


def pack_dense(w: np.ndarray) -> PackedDense:
    """Pack sign(w) of dense weights (O, I) once, ahead of inference."""
    require_float("pack_dense", "w", w)
    require_ndim("pack_dense", "w", w, (2,), "2-D (out, in)")
    return PackedDense(ops.pack_signs(w), int(w.shape[1]))


def pack_conv2d(w: np.ndarray, stride: int = 1, padding: int = 0) -> PackedConv2d:
    """Pack sign(w) of conv weights (O, C, kH, kW) once, with the layer's stride and padding."""
    wbits, wsum = ops.pack_conv_weights(w)
    _, c, kh, kw = w.shape
    return PackedConv2d(wbits, wsum, int(c), int(kh), int(kw), int(stride), int(padding))


def pack_input(x: np.ndarray, packed: PackedDense | PackedConv2d) -> np.ndarray:
    """Pack sign(x) in the layout ``count`` takes: (N, I) -> (N, ceil(I/64)) for a dense
    layer, NCHW -> (N, H, W, ceil(C/64)) (channels packed) for a conv layer."""
    if isinstance(packed, PackedDense):
        require_float("binary_dense", "x", x)
        require_ndim("binary_dense", "x", x, (2,), "2-D (N, in)")
        if x.shape[1] != packed.in_features:
            raise ShapeError(f"binary_dense: x has {x.shape[1]} features, the layer "
                             f"{packed.in_features}")
        return ops.pack_signs(x)
    require_float("binary_conv2d", "x", x)
    require_ndim("binary_conv2d", "x", x, (4,), "4-D (N, C, H, W)")
    if x.shape[1] != packed.in_channels:
        raise ShapeError(f"binary_conv2d: x has {x.shape[1]} channels, the layer "
                         f"{packed.in_channels}")
    return ops.pack_conv_input(x)


def count(xbits: np.ndarray, packed: PackedDense | PackedConv2d, layout: str = "nchw"
          ) -> np.ndarray:
    """The exact int32 output of a binary layer on packed input (``pack_input``'s layout).

    Dense: ``sign(x) @ sign(w).T`` (N, O); conv: ``conv2d(sign(x), sign(w))`` with zero
    padding, (N, O, OH, OW), or (N, OH, OW, O) with ``layout="nhwc"``.
    """
    if isinstance(packed, PackedDense):
        return ops.xnor_gemm(xbits, packed.wbits, packed.in_features)
    return ops.binary_conv2d(xbits, packed.wbits, packed.wsum, packed.in_channels,
                             packed.kh, packed.kw, packed.stride, packed.padding, layout)


def binary_dense(x: np.ndarray, packed: PackedDense) -> np.ndarray:
    """``sign(x) @ sign(w).T`` as int32 (N, O) for x (N, I) float; packs x, then XNOR GEMM."""
    return count(pack_input(x, packed), packed)


def binary_conv2d(x: np.ndarray, packed: PackedConv2d) -> np.ndarray:
    """``conv2d(sign(x), sign(w))`` with zero padding as int32 (N, O, OH, OW), exactly.

    x is NCHW float; it is packed along channels (``pack_conv_input``) on every call.
    """
    return count(pack_input(x, packed), packed)


__all__ = ["PackedConv2d", "PackedDense", "binary_conv2d", "binary_dense", "count",
           "pack_conv2d", "pack_dense", "pack_input"]
