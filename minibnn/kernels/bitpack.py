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

The kernels come from ``kernels.get_kernels(backend)``: "numba" (default) or "numpy".
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minibnn.errors import ShapeError
from minibnn.kernels import DEFAULT_CPU_BACKEND, get_kernels
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


def pack_dense(w: np.ndarray, backend: str = DEFAULT_CPU_BACKEND) -> PackedDense:
    """Pack sign(w) of dense weights (O, I) once, ahead of inference."""
    require_float("pack_dense", "w", w)
    require_ndim("pack_dense", "w", w, (2,), "2-D (out, in)")
    return PackedDense(get_kernels(backend).pack_signs(w), int(w.shape[1]))


def binary_dense(x: np.ndarray, packed: PackedDense,
                 backend: str = DEFAULT_CPU_BACKEND) -> np.ndarray:
    """``sign(x) @ sign(w).T`` as int32 (N, O) for x (N, I) float; packs x, then XNOR GEMM."""
    require_float("binary_dense", "x", x)
    require_ndim("binary_dense", "x", x, (2,), "2-D (N, in)")
    if x.shape[1] != packed.in_features:
        raise ShapeError(f"binary_dense: x has {x.shape[1]} features, the layer "
                         f"{packed.in_features}")
    k = get_kernels(backend)
    return k.xnor_gemm(k.pack_signs(x), packed.wbits, packed.in_features)


def pack_conv2d(w: np.ndarray, stride: int = 1, padding: int = 0,
                backend: str = DEFAULT_CPU_BACKEND) -> PackedConv2d:
    """Pack sign(w) of conv weights (O, C, kH, kW) once, with the layer's stride and padding."""
    wbits, wsum = get_kernels(backend).pack_conv_weights(w)
    _, c, kh, kw = w.shape
    return PackedConv2d(wbits, wsum, int(c), int(kh), int(kw), int(stride), int(padding))


def binary_conv2d(x: np.ndarray, packed: PackedConv2d,
                  backend: str = DEFAULT_CPU_BACKEND) -> np.ndarray:
    """``conv2d(sign(x), sign(w))`` with zero padding as int32 (N, O, OH, OW), exactly.

    x is NCHW float; it is packed along channels (``pack_conv_input``) on every call.
    """
    require_float("binary_conv2d", "x", x)
    require_ndim("binary_conv2d", "x", x, (4,), "4-D (N, C, H, W)")
    if x.shape[1] != packed.in_channels:
        raise ShapeError(f"binary_conv2d: x has {x.shape[1]} channels, the layer "
                         f"{packed.in_channels}")
    k = get_kernels(backend)
    return k.binary_conv2d(k.pack_conv_input(x), packed.wbits, packed.wsum, packed.in_channels,
                           packed.kh, packed.kw, packed.stride, packed.padding)


__all__ = ["PackedConv2d", "PackedDense", "binary_conv2d", "binary_dense", "pack_conv2d",
           "pack_dense"]
