"""The sign layer: ``sign_forward`` / ``sign_backward`` around *the* sign and STE table.

``sign`` (``sign(0) = +1``) and the STE table (``"identity"``, ``"clipped"``, ``"approx"``,
``"swish"``) are defined once, in ``minibnn/ops/sign.py``; this layer keeps the input for the
backward pass, ``dx = dy * ste_grad(x, ste, beta)``. ``ste_grad`` is re-exported here, so that
the weight STE of binary layers uses the same definitions.
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.nn.functional._checks import Array, require_float, require_grad
from minibnn.ops.sign import STE_NAMES, check_ste, sign, ste_grad

__all__ = ["STE_NAMES", "SignCache", "check_ste", "sign_backward", "sign_forward", "ste_grad"]


class SignCache(NamedTuple):
    x: Array
    ste: str
    beta: float


def sign_forward(x: Array, ste: str = "identity", beta: float = 5.0) -> tuple[Array, SignCache]:
    """``y = where(x >= 0, 1, -1)`` in x's dtype, so ``sign(0) == +1`` (larq's convention)."""
    fn = "sign_forward"
    require_float(fn, "x", x)
    beta = check_ste(fn, ste, beta)
    return sign(x), SignCache(x, ste, beta)


def sign_backward(dy: Array, cache: SignCache) -> Array:
    """``dx = dy * ste_grad(x, ste, beta)`` (the "identity" STE passes dy through)."""
    x, ste, beta = cache
    require_grad("sign_backward", dy, x.shape, x.dtype)
    if ste == "identity":
        return dy.copy()
    return dy * ste_grad(x, ste, beta)
