"""Binarisation ``sign`` and *the* table of its straight-through estimators (STEs).

Forward: ``sign(x) = +1 where x >= 0 else -1``, in x's dtype. ``sign(0) := +1``, larq's
convention (``numpy.sign(0) == 0`` would leave a third value in a binary network).

The true derivative of sign is zero almost everywhere, so the backward pass is *defined*, not
derived: ``dx = dy * ste_grad(x, ste)`` with one of

    "identity"  1                                   (plain STE, Hinton's lecture / BinaryConnect)
    "clipped"   1 if |x| <= 1 else 0                (derivative of hardtanh, Hubara et al. 2016)
    "approx"    max(0, 2 - 2|x|)                    (Bi-Real Net's piecewise polynomial)
    "swish"     derivative of SignSwish (BNN+, Darabi et al. 2018), see ``_swish_grad``

This is the one definition: the activation sign (``nn.functional.sign``), the weight STE of the
binary layers, the fused BatchNorm+sign backward passes (``kernels.channels_last``,
``kernels.reference.batchnorm_sign_backward_train``) all call ``ste_grad``; the Numba bodies of
those backward passes use ``kernels.cpu_channels_last._ste`` (indexed by
``STE_NAMES.index(ste)``), the same table for one float32 value, tested against this one.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from minibnn.backend import get_array_module, require_float
from minibnn.errors import MinibnnError

Array = Any

#: The STE names, in the order of their integer codes (the compiled bodies take the code).
STE_NAMES: tuple[str, ...] = ("identity", "clipped", "approx", "swish")


def check_ste(fn: str, ste: str, beta: float) -> float:
    """``ste`` must be one of STE_NAMES and ``beta`` a finite number > 0; returns beta."""
    if not isinstance(ste, str) or ste not in STE_NAMES:
        raise MinibnnError(f"{fn}: ste must be one of {STE_NAMES}, got {ste!r}")
    if not (isinstance(beta, numbers.Real) and not isinstance(beta, bool)
            and math.isfinite(beta) and beta > 0):
        raise MinibnnError(f"{fn}: beta must be a number in (0.0, inf), got {beta!r}")
    return float(beta)


def sign(x: Array) -> Array:
    """``where(x >= 0, 1, -1)`` in x's dtype, so ``sign(0) == +1``."""
    xp = get_array_module(x)
    one = xp.ones((), dtype=x.dtype)
    return xp.where(x >= 0, one, -one)


def _swish_grad(x: Array, beta: float) -> Array:
    """Derivative of SignSwish ``2*sigmoid(b*x)*(1 + b*x*(1 - sigmoid(b*x))) - 1``.

    BNN+ writes it as ``b*(2 - b*x*tanh(b*x/2)) / (1 + cosh(b*x))``. Since
    ``1 + cosh(t) = 2*cosh(t/2)^2`` and ``sech(t/2)^2 = 4*e^-|t| / (1 + e^-|t|)^2``, the same
    value is ``2*b*e^-|t| * (2 - t*tanh(t/2)) / (1 + e^-|t|)^2`` with ``t = b*x``, which never
    overflows (cosh does for |t| > ~710).
    """
    xp = get_array_module(x)
    t = beta * x
    e = xp.exp(-xp.abs(t))
    return (2.0 * beta) * e * (2.0 - t * xp.tanh(0.5 * t)) / (1.0 + e) ** 2


def ste_grad(x: Array, ste: str, beta: float = 5.0) -> Array:
    """The STE derivative factor d sign(x)/dx as defined by ``ste`` (same shape/dtype as x).

    ``beta`` is only used by "swish" (its sharpness; BNN+ uses 5).
    """
    fn = "ste_grad"
    require_float(fn, "x", x)
    beta = check_ste(fn, ste, beta)
    xp = get_array_module(x)
    if ste == "identity":
        return xp.ones_like(x)
    if ste == "clipped":
        return (xp.abs(x) <= 1).astype(x.dtype)
    if ste == "approx":
        return xp.maximum(2.0 - 2.0 * xp.abs(x), 0.0).astype(x.dtype, copy=False)
    return _swish_grad(x, beta).astype(x.dtype, copy=False)
