"""BatchNorm directly followed by sign, fused: ``s = sign(batchnorm(x))`` in one kernel call.

Equal, bit for bit, to ``sign_forward(batchnorm_forward(x, ...)[0])`` and to the two backward
passes chained, because the kernel ops evaluate the layers' own expressions in their order:

  * train mode: ``kernels.batchnorm_sign_train`` takes the batch statistics from the
    same reductions as ``batchnorm_forward`` (``kernels.reference.batch_statistics``, or a
    Numba loop adding in their order) and makes
    s, y = xhat * gamma + beta and xhat in one pass (three separate passes and their
    temporaries otherwise); the caches are the two layers' own;
    its backward, ``kernels.batchnorm_sign_backward_train``, evaluates ``sign_backward``'s
    and ``batchnorm_backward``'s expressions in their order (one kernel pass for the sums
    and one for dx, instead of eleven array passes);
  * eval mode: ``kernels.batchnorm_sign_eval`` makes s alone in one pass over x. The
    cache keeps only the inputs; a backward after an eval forward (rare: training runs in
    train mode) first rebuilds the two layers' caches.

Affine BatchNorm only (gamma and beta given): ``minibnn.nn.containers.Sequential`` runs each
affine ``BatchNorm`` that is directly followed by a ``Sign`` through this pair.
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.nn.functional._checks import Array, require_grad
from minibnn.nn.functional.batchnorm import (
    BatchNormCache, batchnorm_backward, batchnorm_forward, check_batchnorm_args,
    update_running_statistics)
from minibnn.nn.functional.sign import SignCache, check_ste, sign_backward, sign_forward


class BatchNormSignInputs(NamedTuple):
    """What an eval-mode forward keeps to rebuild the layer caches if a backward follows."""

    x: Array
    gamma: Array
    beta: Array
    running_mean: Array
    running_var: Array
    eps: float
    ste: str
    ste_beta: float


class BatchNormSignCache(NamedTuple):
    bn: BatchNormCache | None          # None after an eval-mode forward (see ``inputs``)
    sign: SignCache | None
    inputs: BatchNormSignInputs | None
    running_mean: Array | None          # updated running statistics (unchanged in eval mode)
    running_var: Array | None


def batchnorm_sign_forward(x: Array, gamma: Array, beta: Array, running_mean: Array | None,
                           running_var: Array | None, train: bool = True,
                           momentum: float = 0.1, eps: float = 1e-5, ste: str = "identity",
                           ste_beta: float = 5.0) -> tuple[Array, BatchNormSignCache]:
    """``s = sign(gamma * (x - mean) / sqrt(var + eps) + beta)`` per channel, in x's dtype.

    Arguments as ``batchnorm_forward`` (gamma and beta required) and ``sign_forward``
    (``ste``, and ``ste_beta`` = its ``beta``).
    """
    fn = "batchnorm_sign_forward"
    if gamma is None or beta is None:
        raise MinibnnError(f"{fn}: needs gamma and beta (an affine BatchNorm), got "
                           f"{type(gamma).__name__} and {type(beta).__name__}")
    momentum, eps, m = check_batchnorm_args(fn, x, gamma, beta, running_mean, running_var,
                                            train, momentum, eps)
    ste_beta = check_ste(fn, ste, ste_beta)
    if not train:
        s = kernels.batchnorm_sign_eval(x, running_mean, running_var, gamma, beta, eps)
        inputs = BatchNormSignInputs(x, gamma, beta, running_mean, running_var, eps, ste,
                                     ste_beta)
        return s, BatchNormSignCache(None, None, inputs, running_mean, running_var)
    s, y, xhat, mean, var, inv_std = kernels.batchnorm_sign_train(x, gamma, beta, eps)
    new_mean, new_var = update_running_statistics(running_mean, running_var, mean, var, m,
                                                  momentum)
    bn = BatchNormCache(xhat, inv_std, gamma, True, True, new_mean, new_var)
    return s, BatchNormSignCache(bn, SignCache(y, ste, ste_beta), None, new_mean, new_var)


def batchnorm_sign_backward(ds: Array, cache: BatchNormSignCache
                            ) -> tuple[Array, Array, Array]:
    """Return ``dx, dgamma, dbeta``: ``sign_backward`` then ``batchnorm_backward``, bit for bit."""
    bn, sign, inputs = cache.bn, cache.sign, cache.inputs
    if inputs is not None:
        x, gamma, beta, running_mean, running_var, eps, ste, ste_beta = inputs
        y, bn = batchnorm_forward(x, gamma, beta, running_mean, running_var, train=False,
                                  eps=eps)
        sign = sign_forward(y, ste, ste_beta)[1]
    require_grad("batchnorm_sign_backward", ds, bn.xhat.shape, bn.xhat.dtype)
    if inputs is not None:                     # eval mode: the two layers' backward passes
        return batchnorm_backward(sign_backward(ds, sign), bn)
    return kernels.batchnorm_sign_backward_train(ds, sign.x, bn.xhat, bn.inv_std, bn.gamma,
                                                 sign.ste, sign.beta)
