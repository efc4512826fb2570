"""BatchNorm + sign after a binary layer, folded into per-channel integer thresholds.

A binary layer's output at inference is an exact integer count y in [-K, K] (K = fan-in, see
``minibnn.nn.packed``).  When the modules after it are ``[MaxPool2d ->] BatchNorm -> Sign``
(binary_mlp: bdense -> BN -> sign; binary_cnn: bconv -> (maxpool) -> BN -> sign), their output
is a per-channel function of that integer, so it can be tabulated once at pack time:
``fold_batchnorm_sign`` evaluates the model's own BatchNorm and Sign modules (eval mode) at every
integer y and ``kernels.threshold.fold_sign_table`` reads the thresholds off the table

    s_c = +1  iff  y >= t_c   (direction +1)      or      y <= t_c   (direction -1)

so the thresholded signs are the float path's signs bit for bit, rounding included (BNN
deployment's standard step).  A max-pool in between runs on the int32 counts before the
thresholds: the max of the same exact integers, exact in either threshold direction.

``fold_sites`` finds every such tail in a model's module tree; ``walk`` is the depth-first tree
walk it and the packer share.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from minibnn.kernels.threshold import Threshold, fold_sign_table
from minibnn.nn import functional as F
from minibnn.nn.models import Model
from minibnn.nn.containers import Concat, Residual, Sequential
from minibnn.nn.modules import BatchNorm, Module, Stateless, _BinaryWeights, is_sign

#: elements of one block of the sign table built by ``fold_batchnorm_sign`` (bounds memory)
TABLE_BLOCK = 1 << 22

Params = dict[str, np.ndarray]


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
        """The max-pool's (kernel, stride, padding); stride defaults to the kernel size."""
        if self.pool is None:
            return None
        kw = self.pool.kwargs
        kernel = int(kw["kernel"])
        stride = kernel if kw.get("stride") is None else int(kw["stride"])
        return kernel, stride, int(kw.get("padding", 0))


def is_maxpool(module: Module) -> bool:
    """True for a ``MaxPool2d`` module (a ``Stateless`` running ``maxpool2d_forward``)."""
    return isinstance(module, Stateless) and module.forward_fn is F.maxpool2d_forward


def fold_after(layers: Sequence[Module], i: int) -> Fold | None:
    """The fold following the binary layer ``layers[i]``, if the modules after it form one."""
    rest = list(layers[i + 1:i + 4])
    pool = rest.pop(0) if rest and is_maxpool(rest[0]) else None
    if len(rest) >= 2 and isinstance(rest[0], BatchNorm) and is_sign(rest[1]):
        return Fold(pool, rest[0], rest[1])
    return None


def walk(module: Module) -> Iterator[Module]:
    """Every module of a Sequential/Residual/Concat tree, depth first."""
    yield module
    if isinstance(module, Sequential):
        for layer in module.layers:
            yield from walk(layer)
    elif isinstance(module, Concat):
        for branch in module.branches:
            yield from walk(branch)
    elif isinstance(module, Residual):
        yield from walk(module.body)
        if module.shortcut is not None:
            yield from walk(module.shortcut)


def fold_sites(model: Model) -> dict[str, Fold]:
    """Binary weight name -> the ``[MaxPool2d ->] BatchNorm -> Sign`` that follows it."""
    sites = {}
    for module in walk(model.net):
        if isinstance(module, Sequential):
            for i, layer in enumerate(module.layers):
                fold = fold_after(module.layers, i) if isinstance(layer, _BinaryWeights) else None
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


__all__ = ["Fold", "TABLE_BLOCK", "fold_after", "fold_batchnorm_sign", "fold_sites",
           "is_maxpool", "walk"]
