"""The channels-last (NHWC) twins of the CNN steps, and ``ChannelsLast``, a run of them.

A ``Sequential`` built with ``layout="nhwc"`` (the model builders' default) replaces every
maximal run of steps that have a twin here in which a sign step feeds a binary convolution
with one ``ChannelsLast`` step (``nn.containers.group_channels_last``, which also twins a
``Residual`` whose body and shortcut are such steps: ``ResidualNHWC``). That is the VGG-style
CNN's front, and the whole of birealnet from the stem convolution to the global average pool.
Inside a group:

  * activations are NHWC (``kernels.channels_last``): no transposes between steps, a
    convolution's receptive field is kH*kW contiguous runs of C values, and a per-channel op
    (BatchNorm, PReLU, the residual add) works on (rows, C) with C contiguous;
  * a sign step (``BatchNormSignNHWC``, ``BiasSignNHWC``) emits ``Packed`` signs (1 bit per
    activation, ``pack_signs`` along C); the binary convolution after it is the exact
    XNOR-popcount convolution of those bits with the packed signs of its weights (``Counts``:
    int32, times the mean|w| scale if the layer has one) and keeps only the bits for its
    backward pass (32x less than float32);
  * the BatchNorm after a binary convolution (``BatchNormNHWC``, or the one inside a
    BatchNorm+sign) reads the int32 counts: its statistics are float64 sums of integers, exact;
  * every activation, float array, ``Packed`` or ``Counts``, has the ``dtype`` of the model
    (``as_float`` makes it that float array).

The twins: ``ConvNHWC`` (Conv2d, BinaryConv2d), ``BatchNormNHWC`` (an affine BatchNorm),
``BatchNormSignNHWC``, ``BiasSignNHWC``, ``MaxPoolNHWC``, ``AvgPoolNHWC`` (kernel = stride, no
padding), ``PReLUNHWC``, ``GlobalAvgPoolNHWC`` (N, H, W, C) -> (N, C), and ``ResidualNHWC``.
Each has the ``forward``/``backward`` of the module it twins, on NHWC arrays.

Parameters, buffers, gradients and STEs are those of the layers a group replaces, under their
names, in PyTorch's NCHW/OIHW conventions: only the arrays flowing *inside* the group are NHWC.
The group converts its NCHW input once on entry and its output back to NCHW float on exit (an
(N, C) output, after a global average pool, is the same in both layouts); ``steps`` keeps the
NCHW steps (the oracle ``tests/test_channels_last_model.py`` runs).

The convolution, max-pool, sign, BatchNorm and PReLU twins call kernel ops
(``kernels.conv2d_nhwc_forward`` ..., declared by their reference bodies in
``kernels/channels_last.py``): Numba bodies for NumPy arrays, the reference bodies under
``use_backend("numpy")`` and for CuPy arrays. The average pools and the residual add are
plain array ops (NumPy or CuPy alike).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, Sequence, Union

import numpy as np

from minibnn import kernels
from minibnn.backend import get_array_module
from minibnn.kernels.channels_last import (batchnorm_normalise_add_rows,
                                           batchnorm_normalise_rows, bias_sign_pack_backward,
                                           prelu_rows_backward, prelu_rows_forward)
from minibnn.errors import MinibnnError
from minibnn.nn import functional as F
from minibnn.nn.functional.batchnorm import update_running_statistics
from minibnn.nn.modules import (SIGN_STE_DEFAULTS, BatchNorm, BatchNormSign, BiasSign,
                                BinaryConv2d, Conv2d, Module, Params, PReLU, Stateless,
                                backward_steps, forward_steps, sign_ste)

Array = Any


class Packed(NamedTuple):
    """+-1 activations as packed bits: ``bits`` (N, H, W, ceil(channels/64)) uint64, standing
    for a float array of ``dtype``."""

    bits: Array
    channels: int
    dtype: Any


class Counts(NamedTuple):
    """A binary convolution's exact XNOR-popcount counts: ``values`` (N, H, W, C) int32,
    standing for a float array of ``dtype``."""

    values: Array
    dtype: Any


#: an activation inside a group: NHWC floats, packed signs or int32 counts
Activation = Union[Array, Packed, Counts]


class Twin(Protocol):
    """What a group runs for each of its steps: the step's forward/backward on NHWC arrays."""

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Activation, Params, Any]: ...

    def backward(self, dy: Array, cache: Any) -> tuple[Array | None, Params]: ...


def as_float(x: Activation, dtype: Any) -> Array:
    """An NHWC activation as a ``dtype`` array: packed signs unpacked, int32 counts converted."""
    if isinstance(x, Packed):
        return kernels.unpack_signs(x.bits, x.channels, dtype)
    if isinstance(x, Counts):
        return x.values.astype(dtype)
    return x if x.dtype == dtype else x.astype(dtype)


def weight_matrix(w: Array) -> Array:
    """OIHW weight -> the (kH*kW*C, O) tap-major matrix of ``kernels.channels_last``."""
    xp = get_array_module(w)
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def weight_from_matrix(wmat: Array, shape: tuple[int, ...]) -> Array:
    """Inverse of ``weight_matrix`` for an OIHW ``shape`` (used for the weight gradient)."""
    o, c, kh, kw = shape
    xp = get_array_module(wmat)
    return xp.ascontiguousarray(wmat.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))


def channels_last(x: Array) -> Array:
    """NCHW -> NHWC (a contiguous copy); an (N, C) array is the same in both layouts."""
    if x.ndim != 4:
        return x
    return get_array_module(x).ascontiguousarray(x.transpose(0, 2, 3, 1))


def channels_first(x: Array) -> Array:
    """NHWC -> NCHW (a contiguous copy); an (N, C) array is the same in both layouts."""
    if x.ndim != 4:
        return x
    return get_array_module(x).ascontiguousarray(x.transpose(0, 3, 1, 2))


class ConvNHWC:
    """``Conv2d`` or ``BinaryConv2d`` on NHWC input; packed signs into a binary one run XNOR."""

    def __init__(self, layer: Conv2d | BinaryConv2d, need_dx: bool):
        self.layer, self.need_dx = layer, need_dx
        self.binary = isinstance(layer, BinaryConv2d)
        self.k = int(layer.shape[2])

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array | Counts, Params, Any]:
        layer, k = self.layer, self.k
        s, p = layer.stride, layer.padding
        if self.binary:
            w, wcache = layer.effective_weight(params)            # a * sign(w), or b
        else:
            w, wcache = params[layer.key("w")], None
        wmat = weight_matrix(w)
        if self.binary and isinstance(x, Packed):
            # exact: counts[n, oh, ow, o] = sum over taps and channels of sign(x) * sign(w)
            wbits, wsum = kernels.pack_conv_weights(w)
            counts = kernels.binary_conv2d(x.bits, wbits, wsum, x.channels, k, k, s, p,
                                           layout="nhwc")
            if wcache is not None and wcache.scale is not None:
                y = counts.astype(w.dtype) * wcache.scale.reshape(-1)   # W_eff = a * sign(w)
            else:
                y = Counts(counts, w.dtype)
        else:
            y = kernels.conv2d_nhwc_forward(as_float(x, w.dtype), wmat, k, k, s, p)
            if not self.binary and layer.bias:
                y = y + params[layer.key("b")]
        return y, {}, (x, wmat, wcache)

    def backward(self, dy: Array, cache: Any) -> tuple[Array | None, Params]:
        x, wmat, wcache = cache
        layer, k = self.layer, self.k
        source = x.bits if isinstance(x, Packed) else as_float(x, wmat.dtype)
        dx, dwmat = kernels.conv2d_nhwc_backward(dy, source, wmat, k, k, layer.stride,
                                 layer.padding, self.need_dx)
        dw = weight_from_matrix(dwmat, layer.shape)
        if self.binary:
            return dx, {layer.key("w"): layer.weight_grad(dw, wcache)}
        grads = {layer.key("w"): dw}
        if layer.bias:
            grads[layer.key("b")] = dy.sum(axis=(0, 1, 2))
        return dx, grads


class BatchNormNHWC:
    """An affine ``BatchNorm`` (no sign after it) on NHWC rows (M = N*H*W, C): float output.

    Train mode takes the statistics the channels-last BatchNorm+sign takes (the op
    ``batch_statistics_rows``, which ``batchnorm_sign_pack_train`` uses too: float64 sums, exact
    for a binary convolution's int32 counts), and ``y = (z - mean) * inv_std * gamma + beta``
    in gamma's dtype (``batchnorm_forward``'s order; the op ``batchnorm_normalise_rows``).
    ``F.batchnorm_forward`` on the rows would sum float32 down the M rows one by one (relative
    error of var ~1e-4 at M = 131072, where the NCHW layer's pairwise sums give ~4e-7).

    The backward pass is BatchNorm+sign's with the identity STE: ste' = 1, so d = ds and
    ``batchnorm_sign_pack_backward`` is exactly the BatchNorm backward over the rows (sums in
    float64). ``BatchNormSignNHWC`` below is this step with the sign's STE and a packed output.
    """

    def __init__(self, bn: BatchNorm, ste: str = SIGN_STE_DEFAULTS[0],
                 ste_beta: float = SIGN_STE_DEFAULTS[1]):
        self.bn, self.ste, self.ste_beta = bn, ste, ste_beta

    def _inputs(self, params: Params, buffers: Params, x: Activation
                ) -> tuple[Array, Array, Array, Array, Array, tuple[int, ...]]:
        """gamma, beta, running mean and var, x as (M, C) rows (int32 counts stay int32),
        and x's NHWC shape."""
        bn = self.bn
        gamma, beta = params[bn.key("gamma")], params[bn.key("beta")]
        z = x.values if isinstance(x, Counts) else as_float(x, gamma.dtype)
        n, h, w, c = (int(v) for v in z.shape)
        return (gamma, beta, buffers[bn.key("running_mean")], buffers[bn.key("running_var")],
                z.reshape(n * h * w, c), (n, h, w, c))

    def _buffers(self, rm: Array, rv: Array) -> Params:
        return {self.bn.key("running_mean"): rm, self.bn.key("running_var"): rv}

    def _statistics(self, params: Params, buffers: Params, x: Activation, train: bool
                    ) -> tuple[Params, Any]:
        """The buffers to store and the cache: x's rows and the statistics that normalise
        them (the batch's in train mode, the running ones in eval mode)."""
        bn = self.bn
        gamma, beta, rm, rv, rows, shape = self._inputs(params, buffers, x)
        xp = get_array_module(rows)
        if train:
            # the statistics of the fused BatchNorm+sign: the same op, its float64 sums
            mean, var = kernels.batch_statistics_rows(rows, gamma.dtype)
            inv_std = 1.0 / xp.sqrt(var + bn.eps)
            rm, rv = update_running_statistics(rm, rv, mean, var, rows.shape[0], bn.momentum)
        else:
            mean, inv_std = rm, 1.0 / xp.sqrt(rv + bn.eps)
        return self._buffers(rm, rv), (rows, mean, inv_std, gamma, beta, train, shape)

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array, Params, Any]:
        new_buffers, cache = self._statistics(params, buffers, x, train)
        rows, mean, inv_std, gamma, beta, _, shape = cache
        y = batchnorm_normalise_rows(rows, mean, inv_std, gamma, beta)
        return y.reshape(shape), new_buffers, cache

    def forward_add(self, params: Params, buffers: Params, x: Activation, train: bool,
                    s: Array) -> tuple[Array, Params, Any]:
        """``forward`` with ``s`` (NHWC, gamma's dtype) added to its output: a residual block's
        BatchNorm and add in one pass (``batchnorm_normalise_add_rows``: the same floats)."""
        new_buffers, cache = self._statistics(params, buffers, x, train)
        rows, mean, inv_std, gamma, beta, _, shape = cache
        y = batchnorm_normalise_add_rows(rows, mean, inv_std, gamma, beta,
                                         s.reshape(rows.shape))
        return y.reshape(shape), new_buffers, cache

    def backward(self, ds: Array, cache: Any) -> tuple[Array, Params]:
        rows, mean, inv_std, gamma, beta, train, shape = cache
        ds_rows = ds.reshape(rows.shape)
        if train:
            dz, dgamma, dbeta = kernels.batchnorm_sign_pack_backward(ds_rows, rows, mean,
                                             inv_std, gamma, beta, self.ste, self.ste_beta)
        else:
            # eval mode: mean and inv_std are constants, so dz = gamma * inv_std * d with
            # d = ds * ste'(y), and dgamma = sum d * xhat, dbeta = sum d (as batchnorm_backward)
            xhat = (rows.astype(gamma.dtype) - mean) * inv_std
            d = ds_rows * F.ste_grad(xhat * gamma + beta, self.ste, self.ste_beta)
            dz, dgamma, dbeta = gamma * inv_std * d, (d * xhat).sum(axis=0), d.sum(axis=0)
        grads = {self.bn.key("gamma"): dgamma, self.bn.key("beta"): dbeta}
        return dz.reshape(shape), grads


class BatchNormSignNHWC(BatchNormNHWC):
    """``BatchNormSign`` on NHWC rows: statistics over (N, H, W), output packed signs."""

    def __init__(self, step: BatchNormSign):
        super().__init__(step.bn, *sign_ste(step.sign))

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Packed, Params, Any]:
        bn = self.bn
        gamma, beta, rm, rv, rows, shape = self._inputs(params, buffers, x)
        if train:
            bits, mean, var, inv_std = kernels.batchnorm_sign_pack_train(rows, gamma, beta,
                                                    bn.eps)
            rm, rv = update_running_statistics(rm, rv, mean, var, rows.shape[0], bn.momentum)
        else:
            bits = kernels.batchnorm_sign_pack_eval(rows, rm, rv, gamma, beta, bn.eps)
            mean, inv_std = rm, 1.0 / get_array_module(rv).sqrt(rv + bn.eps)
        n, h, w, c = shape
        out = Packed(bits.reshape(n, h, w, -1), c, gamma.dtype)
        return out, self._buffers(rm, rv), (rows, mean, inv_std, gamma, beta, train, shape)


class BiasSignNHWC:
    """``BiasSign`` on NHWC x: ``y = x + b`` per channel (the last axis), output packed signs.

    The forward is ``bias_sign_pack`` on the N*H*W rows: ``bias_forward``'s add and
    ``pack_signs``'s ``y >= 0`` (sign(0) = +1) in one pass, so the bits are the two layers'.
    Backward, ``bias_sign_pack_backward`` from the x it keeps (y = x + b recomputed):
        d = ds * ste'(y)   (the Sign's STE, ``F.ste_grad``),   dx = d,
        db = sum of d over the N*H*W rows (in float64, as the channels-last BatchNorm's sums).
    """

    def __init__(self, step: BiasSign):
        self.key = step.bias.key("b")
        self.ste, self.ste_beta = sign_ste(step.sign)

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Packed, Params, Any]:
        b = params[self.key]
        x = as_float(x, b.dtype)
        n, h, w, c = (int(v) for v in x.shape)
        bits = kernels.bias_sign_pack(x.reshape(n * h * w, c), b)
        return Packed(bits.reshape(n, h, w, -1), c, b.dtype), {}, (x, b)

    def backward(self, ds: Array, cache: Any) -> tuple[Array, Params]:
        x, b = cache
        c = int(x.shape[3])
        d, db = bias_sign_pack_backward(ds.reshape(-1, c), x.reshape(-1, c), b, self.ste,
                                        self.ste_beta)
        return d.reshape(x.shape), {self.key: db}


class PReLUNHWC:
    """``PReLU`` on NHWC x, one slope ``a[c]`` per channel (the last axis), float output:
        y = x if x > 0 else a * x,      dx = dy if x > 0 else a * dy,
        da = sum over the N*H*W rows of dy * min(x, 0)   (in float64),
    the ops ``prelu_rows_forward`` / ``prelu_rows_backward`` on the N*H*W rows.

    y and dx are ``prelu_forward``/``prelu_backward``'s values, computed without ``where``
    (whose per-element branch on the sign of x runs ~4x slower than plain arithmetic):
        y  = max(x, 0) + a * min(x, 0)      (x + a*0 = x where x > 0, 0 + a*x elsewhere),
        dx = a * q + p,   p = dy * (x > 0),  q = dy - p   (a*0 + dy = dy, or a*dy + 0),
    and dy * min(x, 0) = q * x: exact rewrites for finite values (only the sign of a zero
    may differ). Not with infinities, where a product 0 * inf the ``where`` form never takes
    gives NaN: an infinite dy gives dx = NaN (``where``: dy or a*dy, +-inf) and makes da NaN,
    x = +inf gives da = NaN (``where``: dy * 0 = 0), an infinite slope a gives y = NaN where
    x > 0. y for infinite x is the layer's (+inf, or a * -inf)."""

    def __init__(self, prelu: PReLU):
        self.key = prelu.key("a")

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array, Params, Any]:
        a = params[self.key]
        x = as_float(x, a.dtype)
        c = int(x.shape[-1])
        y = prelu_rows_forward(x.reshape(-1, c), a)
        return y.reshape(x.shape), {}, (x, a)

    def backward(self, dy: Array, cache: Any) -> tuple[Array, Params]:
        x, a = cache
        c = int(x.shape[-1])
        dx, da = prelu_rows_backward(dy.reshape(-1, c), x.reshape(-1, c), a)
        return dx.reshape(x.shape), {self.key: da}


class MaxPoolNHWC:
    """``MaxPool2d`` (no padding) on NHWC int32 counts (pooled as counts) or floats."""

    def __init__(self, step: Stateless):
        self.kernel = int(step.kwargs["kernel"])
        self.stride = int(step.kwargs.get("stride") or self.kernel)

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array | Counts, Params, Any]:
        values = x.values if isinstance(x, Counts) else as_float(x, x.dtype)
        y, argmax = kernels.maxpool2d_nhwc_forward(values, self.kernel, self.stride)
        if isinstance(x, Counts):
            y = Counts(y, x.dtype)
        return y, {}, (argmax, tuple(int(v) for v in values.shape))

    def backward(self, dy: Array, cache: Any) -> tuple[Array, Params]:
        argmax, x_shape = cache
        return kernels.maxpool2d_nhwc_backward(dy, argmax, x_shape, self.kernel,
                            self.stride), {}


class AvgPoolNHWC:
    """``AvgPool2d`` with stride = kernel = k and no padding on NHWC x: each output pixel is the
    mean of its k x k block (rows and columns past OH*k, OW*k are dropped: PyTorch's floor
    mode), the block members added one by one in row-major (i, j) order, then divided by k**2.
    For k = 2 that is the order in which ``avgpool2d_forward``'s row mean of the columns adds
    its four members, so the floats are the NCHW layer's; for larger k they agree to rounding.
    Backward: every member of a block gets dy / k**2 (the dropped rows and columns get 0)."""

    def __init__(self, step: Stateless):
        self.k = int(step.kwargs["kernel"])

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array, Params, Any]:
        x = as_float(x, x.dtype)
        k = self.k
        n, h, w, c = (int(v) for v in x.shape)
        oh, ow = h // k, w // k
        # member (i, j) of every block is the strided view x[:, i::k, j::k] (cut to OH x OW)
        taps = [x[:, i:oh * k:k, j:ow * k:k] for i in range(k) for j in range(k)]
        y = taps[0].copy()
        for tap in taps[1:]:
            y += tap
        y /= k * k
        return y, {}, (n, h, w, c)

    def backward(self, dy: Array, x_shape: tuple[int, int, int, int]) -> tuple[Array, Params]:
        xp = get_array_module(dy)
        k = self.k
        n, h, w, c = x_shape
        oh, ow = int(dy.shape[1]), int(dy.shape[2])
        blocks = xp.broadcast_to((dy / (k * k))[:, :, None, :, None, :], (n, oh, k, ow, k, c))
        dx = blocks.reshape(n, oh * k, ow * k, c)             # a copy: contiguous
        if (oh * k, ow * k) != (h, w):
            dx = xp.pad(dx, ((0, 0), (0, h - oh * k), (0, w - ow * k), (0, 0)))
        return dx, {}


class GlobalAvgPoolNHWC:
    """``GlobalAvgPool`` on NHWC x: the mean over (H, W), (N, H, W, C) -> (N, C), which is the
    NCHW layer's output as it is. Backward: ``dx[n, h, w, c] = dy[n, c] / (H * W)``."""

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array, Params, Any]:
        x = as_float(x, x.dtype)
        return x.mean(axis=(1, 2)), {}, tuple(int(v) for v in x.shape)

    def backward(self, dy: Array, x_shape: tuple[int, int, int, int]) -> tuple[Array, Params]:
        xp = get_array_module(dy)
        n, h, w, c = x_shape
        return xp.ascontiguousarray(xp.broadcast_to((dy / (h * w))[:, None, None, :],
                                                    x_shape)), {}


class ResidualNHWC:
    """``Residual`` on NHWC x: ``y = body(x) + shortcut(x)``, each branch a run of twins (the
    shortcut the identity when None), both on the same x. The add is in the model's dtype
    (packed signs or counts as floats); backward, both branches get dy (no twin writes into
    its dy) and ``dx = dx_body + dx_shortcut``.

    Two passes over the activations are saved, with the same floats: a body that ends with a
    ``BatchNormNHWC`` (Bi-Real's ``BN(conv(sign(x)))``) runs its shortcut first and that
    BatchNorm with the add (``BatchNormNHWC.forward_add``); backward, the shortcut's gradient
    is added into the body's dx in place (a twin's dx is a new array)."""

    def __init__(self, body: Sequence[Twin], shortcut: Sequence[Twin] | None):
        self.body = list(body)
        self.shortcut = None if shortcut is None else list(shortcut)
        #: the body's last step adds the shortcut (an exact BatchNormNHWC, not a subclass)
        self.fused_add = bool(self.body) and type(self.body[-1]) is BatchNormNHWC

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Array, Params, Any]:
        body = self.body[:-1] if self.fused_add else self.body
        y_body, new_buffers, body_caches = forward_steps(body, params, buffers, x, train)
        y_short, short_caches = x, None
        if self.shortcut is not None:
            y_short, updated, short_caches = forward_steps(self.shortcut, params, buffers, x,
                                                           train)
            new_buffers.update(updated)
        y_short = as_float(y_short, x.dtype)
        bn = self.body[-1]
        if self.fused_add and y_short.dtype == params[bn.bn.key("gamma")].dtype:
            y, updated, cache = bn.forward_add(params, buffers, y_body, train, y_short)
            new_buffers.update(updated)
            return y, new_buffers, (body_caches + [cache], short_caches)
        if self.fused_add:                             # a shortcut of another dtype: two steps
            y_body, updated, cache = bn.forward(params, buffers, y_body, train)
            new_buffers.update(updated)
            body_caches.append(cache)
        y = as_float(y_body, x.dtype) + y_short
        return y, new_buffers, (body_caches, short_caches)

    def backward(self, dy: Array, cache: Any) -> tuple[Array, Params]:
        body_caches, short_caches = cache
        dx, grads = backward_steps(self.body, dy, body_caches)
        d_short = dy
        if self.shortcut is not None:
            d_short, short_grads = backward_steps(self.shortcut, dy, short_caches)
            grads.update(short_grads)
        # the body's backward ends in a new array (its first step's dx, never dy itself: the
        # identity check needs no device read), so the shortcut's gradient is added in place
        if dx is not dy and dx.dtype == np.result_type(dx.dtype, d_short.dtype):
            dx += d_short
            return dx, grads
        return dx + d_short, grads


def is_maxpool(step: Module) -> bool:
    return (isinstance(step, Stateless) and step.forward_fn is F.maxpool2d_forward
            and not step.kwargs.get("padding") and int(step.kwargs["kernel"]) ** 2 <= 255)


def is_block_avgpool(step: Module) -> bool:
    """An ``AvgPool2d`` with stride = kernel and no padding (the one ``AvgPoolNHWC`` runs)."""
    return (isinstance(step, Stateless) and step.forward_fn is F.avgpool2d_forward
            and not step.kwargs.get("padding")
            and step.kwargs.get("stride") in (None, step.kwargs["kernel"]))


def is_global_avgpool(step: Module) -> bool:
    return isinstance(step, Stateless) and step.forward_fn is F.global_avgpool_forward


def emits_signs(step: Module) -> bool:
    """True for the steps whose channels-last twin emits ``Packed`` signs."""
    return isinstance(step, (BatchNormSign, BiasSign))


def is_affine_batchnorm(step: Module) -> bool:
    """A ``BatchNorm`` with gamma and beta (``BatchNormNHWC`` reads both; a non-affine one has
    no channels-last twin)."""
    return isinstance(step, BatchNorm) and step.affine


#: step kind -> its channels-last twin: (the test that a step is of that kind, the twin made
#: from the step and ``need_dx``), tried in order. The one list ``has_twin`` and ``nhwc_twin``
#: read (a ``Residual`` is ``nn.containers``' to twin: it holds other steps).
TWINS: tuple[tuple[Callable[[Module], bool], Callable[[Any, bool], Twin]], ...] = (
    (lambda s: isinstance(s, (Conv2d, BinaryConv2d)),
     lambda s, need_dx: ConvNHWC(s, need_dx=need_dx)),
    (lambda s: isinstance(s, BatchNormSign), lambda s, _: BatchNormSignNHWC(s)),
    (lambda s: isinstance(s, BiasSign), lambda s, _: BiasSignNHWC(s)),
    (is_affine_batchnorm, lambda s, _: BatchNormNHWC(s)),
    (lambda s: isinstance(s, PReLU), lambda s, _: PReLUNHWC(s)),
    (is_maxpool, lambda s, _: MaxPoolNHWC(s)),
    (is_block_avgpool, lambda s, _: AvgPoolNHWC(s)),
    (is_global_avgpool, lambda s, _: GlobalAvgPoolNHWC()),
)


def has_twin(step: Module) -> bool:
    """True for the steps ``nhwc_twin`` makes a twin of (a kind in ``TWINS``)."""
    return any(kind(step) for kind, _ in TWINS)


def nhwc_twin(step: Module, need_dx: bool) -> Twin:
    """The NHWC twin of ``step`` (``TWINS``); ``need_dx=False``: a convolution skips its input
    gradient (a model's first step). A step of no kind in ``TWINS`` is a ``MinibnnError``."""
    for kind, make in TWINS:
        if kind(step):
            return make(step, need_dx)
    what = (f"{step.forward_fn.__name__}{step.kwargs}" if isinstance(step, Stateless)
            else f"{type(step).__name__} {step.name!r}")
    raise MinibnnError(f"no channels-last twin for the step {what} (supported: convolutions, "
                       f"affine BatchNorms, BatchNorm+sign, bias+sign, PReLU, max-pools with "
                       f"kernel^2 <= 255, unpadded block average pools, the global average "
                       f"pool)")


class ChannelsLast(Module):
    """A run of NCHW steps executed channels-last; same parameters, buffers and gradients.

    ``twins[i]`` runs ``steps[i]`` on NHWC arrays (``nhwc_twin`` for a step with a
    twin of its own; ``nn.containers.group_channels_last`` builds the groups, Residuals
    included). ``input_grad=False`` (the group starts a model, whose backward ignores dx):
    ``backward`` returns None for dx, and a first convolution's twin should skip computing it.
    """

    def __init__(self, steps: Sequence[Module], twins: Sequence[Twin], input_grad: bool = True):
        super().__init__("")
        self.steps, self.twins = list(steps), list(twins)
        self.input_grad = input_grad

    def forward(self, params, buffers, x, train):
        h, new_buffers, caches = forward_steps(self.twins, params, buffers, channels_last(x),
                                               train)
        return channels_first(as_float(h, x.dtype)), new_buffers, caches

    def backward(self, dy, cache):
        dx, grads = backward_steps(self.twins, channels_last(dy), cache)
        return (channels_first(dx) if self.input_grad else None), grads
