"""Batch normalisation over every axis except the channel axis 1 ((N, C) or (N, C, H, W)).

Train mode (Ioffe & Szegedy 2015), per channel over the m = N*H*W values:
    mu = mean(x),  var = mean((x - mu)^2)  (biased),  xhat = (x - mu) / sqrt(var + eps),
    y = gamma * xhat + beta,
and the running statistics follow PyTorch:
    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)  (unbiased).
The functions are pure: the updated running statistics are returned in the cache
(``cache.running_mean``, ``cache.running_var``), never written into the arguments.
Eval mode normalises with the running statistics, which the cache carries unchanged.
The batch statistics are ``kernels.reference.batch_statistics``, the reductions the bodies of
the fused ``batchnorm_sign_train`` op use (or add in the order of), so the fused and the
separate layers agree bit for bit (``minibnn.nn.functional.batchnorm_sign``).
"""
from __future__ import annotations

from typing import NamedTuple

from minibnn.backend import get_array_module
from minibnn.errors import ShapeError
from minibnn.kernels.reference import batch_statistics
from minibnn.nn.functional._checks import (
    Array, channel_shape, non_channel_axes, require_channel_vector, require_float, require_grad,
    require_real, shape_str)


class BatchNormCache(NamedTuple):
    xhat: Array
    inv_std: Array            # 1 / sqrt(var + eps), shape (C,)
    gamma: Array | None
    has_beta: bool
    train: bool
    running_mean: Array | None
    running_var: Array | None


def check_batchnorm_args(fn: str, x: Array, gamma: Array | None, beta: Array | None,
                         running_mean: Array | None, running_var: Array | None, train: bool,
                         momentum: float, eps: float) -> tuple[float, float, int]:
    """Validate BatchNorm arguments; return momentum, eps and m (values per channel)."""
    require_float(fn, "x", x)
    if x.ndim < 2:
        raise ShapeError(f"{fn}: x must be at least 2-D (N, C) or (N, C, H, W), "
                         f"got shape {shape_str(x.shape)}")
    for name, p in (("gamma", gamma), ("beta", beta),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if p is not None:
            require_channel_vector(fn, name, p, x)
    if (running_mean is None) != (running_var is None):
        raise ShapeError(f"{fn}: running_mean and running_var must both be arrays or both None, "
                         f"got {type(running_mean).__name__} and {type(running_var).__name__}")
    momentum = require_real(fn, "momentum", momentum, 0.0, 1.0)
    eps = require_real(fn, "eps", eps, 0.0, float("inf"), lo_open=True, hi_open=True)
    c = int(x.shape[1])
    m = int(x.size) // c if c else 0
    if train and m < 2:
        raise ShapeError(f"{fn}: train mode needs more than 1 value per channel, "
                         f"got x of shape {shape_str(x.shape)}")
    if not train and running_mean is None:
        raise ShapeError(f"{fn}: eval mode (train=False) needs running_mean and running_var, "
                         f"got None")
    return momentum, eps, m


def update_running_statistics(running_mean: Array | None, running_var: Array | None,
                              mean: Array, var: Array, m: int, momentum: float
                              ) -> tuple[Array | None, Array | None]:
    """PyTorch's rule: an EMA of the batch mean and of the unbiased batch variance."""
    if running_mean is None:
        return None, None
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * var * (m / (m - 1))
    return new_mean, new_var


def batchnorm_forward(x: Array, gamma: Array | None, beta: Array | None,
                      running_mean: Array | None, running_var: Array | None, train: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5) -> tuple[Array, BatchNormCache]:
    """Normalise x per channel (axis 1); ``gamma``/``beta`` None means no affine part.

    In train mode ``running_mean``/``running_var`` may be None (no running statistics are
    tracked; the cache then holds None); eval mode needs them.
    """
    momentum, eps, m = check_batchnorm_args("batchnorm_forward", x, gamma, beta, running_mean,
                                            running_var, train, momentum, eps)
    xp = get_array_module(x)
    bshape = channel_shape(x.ndim, int(x.shape[1]))
    if train:
        mean, var = batch_statistics(x)            # biased var: divides by m
        new_mean, new_var = update_running_statistics(running_mean, running_var, mean, var, m,
                                                      momentum)
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean.reshape(bshape)) * inv_std.reshape(bshape)
    y = xhat
    if gamma is not None:
        y = y * gamma.reshape(bshape)
    if beta is not None:
        y = y + beta.reshape(bshape)
    return y, BatchNormCache(xhat, inv_std, gamma, beta is not None, bool(train),
                             new_mean, new_var)


def batchnorm_backward(dy: Array, cache: BatchNormCache
                       ) -> tuple[Array, Array | None, Array | None]:
    """Return ``dx, dgamma, dbeta`` (``dgamma``/``dbeta`` None where the forward had none).

    Train mode differentiates through the batch statistics too. With g = dL/dxhat = dy * gamma
    and means taken per channel over the m normalised values:
        dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)).
    Eval mode is affine in x: dx = dy * gamma * inv_std.
    """
    xhat, inv_std, gamma, has_beta, train, _, _ = cache
    require_grad("batchnorm_backward", dy, xhat.shape, xhat.dtype)
    axes = non_channel_axes(xhat.ndim)
    bshape = channel_shape(xhat.ndim, int(xhat.shape[1]))
    dbeta = dy.sum(axis=axes) if has_beta else None
    dgamma = (dy * xhat).sum(axis=axes) if gamma is not None else None
    g = dy if gamma is None else dy * gamma.reshape(bshape)
    if train:
        g_mean = g.mean(axis=axes).reshape(bshape)
        gx_mean = (g * xhat).mean(axis=axes).reshape(bshape)
        dx = (g - g_mean - xhat * gx_mean) * inv_std.reshape(bshape)
    else:
        dx = g * inv_std.reshape(bshape)
    return dx, dgamma, dbeta
