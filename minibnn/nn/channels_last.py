"""The channels-last (NHWC) twin of a run of CNN steps, with the binary activations kept packed.

A ``Sequential`` built with ``layout="nhwc"`` (the model builders' default) replaces every
maximal run of convolutions, affine BatchNorms, fused sign steps (BatchNorm+sign, bias+sign)
and max-pools in which a sign step feeds a binary convolution with one ``ChannelsLast`` step
(``group_channels_last``): the VGG-style CNN's front, and the body of every Bi-Real block
(``sign(x + b) -> bconv -> BatchNorm``; its residual add stays outside, NCHW). Inside it:

  * activations are NHWC (``kernels.channels_last``): no transposes between layers, and a
    convolution's receptive field is kH*kW contiguous runs of C values;
  * a sign step (``BatchNormSignNHWC``, ``BiasSignNHWC``) emits ``Packed`` signs (1 bit per
    activation, ``pack_signs`` along C); the binary convolution after it is the exact
    XNOR-popcount convolution of those bits with the packed signs of its weights (int32
    counts, times the mean|w| scale if the layer has one) and keeps only the bits for its
    backward pass (32x less than float32);
  * the BatchNorm after a binary convolution (``BatchNormNHWC``, or the one inside a
    BatchNorm+sign) reads the int32 counts: its statistics are float64 sums of integers, exact.

Parameters, buffers, gradients and STEs are those of the layers it replaces, under their names,
in PyTorch's NCHW/OIHW conventions: only the arrays flowing *inside* the group are NHWC. The
group converts its NCHW input once on entry and its output back to NCHW float on exit
(``steps`` keeps the NCHW steps: the oracle ``tests/test_channels_last_model.py`` runs).

Every array op is a kernel op (``kernels.conv2d_nhwc_forward`` ..., declared by its reference
body in ``kernels/channels_last.py``): Numba bodies for NumPy arrays, the reference bodies under
``use_backend("numpy")`` and for CuPy arrays.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from minibnn import kernels
from minibnn.backend import get_array_module
from minibnn.nn import functional as F
from minibnn.nn.functional.batchnorm import update_running_statistics
from minibnn.kernels.channels_last import batch_statistics_rows
from minibnn.nn.modules import (BatchNorm, BatchNormSign, BiasSign, BinaryConv2d, Conv2d, Module,
                                Params, Stateless)

Array = Any


class Packed(NamedTuple):
    """+-1 activations as packed bits: ``bits`` (N, H, W, ceil(channels/64)) uint64, standing
    for a float array of ``dtype``."""

    bits: Array
    channels: int
    dtype: Any


def as_float(x: Array | Packed, dtype: Any) -> Array:
    """An NHWC activation as a ``dtype`` array: packed signs unpacked, int32 counts converted."""
    if isinstance(x, Packed):
        return kernels.unpack_signs(x.bits, x.channels, dtype)
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


class ConvNHWC:
    """``Conv2d`` or ``BinaryConv2d`` on NHWC input; packed signs into a binary one run XNOR."""

    def __init__(self, layer: Conv2d | BinaryConv2d, need_dx: bool):
        self.layer, self.need_dx = layer, need_dx
        self.binary = isinstance(layer, BinaryConv2d)
        self.k = int(layer.shape[2])

    def forward(self, params: Params, buffers: Params, x: Array | Packed, train: bool
                ) -> tuple[Array, Params, Any]:
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
            y = kernels.binary_conv2d(x.bits, wbits, wsum, x.channels, k, k, s, p,
                             layout="nhwc")
            if wcache is not None and wcache.scale is not None:
                y = y.astype(w.dtype) * wcache.scale.reshape(-1)   # W_eff = a * sign(w)
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

    Train mode takes the statistics the channels-last BatchNorm+sign takes
    (``batch_statistics_rows``: float64 sums, exact for a binary convolution's int32 counts), and
    ``y = (z - mean) * inv_std * gamma + beta`` in gamma's dtype (``batchnorm_forward``'s order).
    ``F.batchnorm_forward`` on the rows would sum float32 down the M rows one by one (relative
    error of var ~1e-4 at M = 131072, where the NCHW layer's pairwise sums give ~4e-7).

    The backward pass is BatchNorm+sign's with the identity STE: ste' = 1, so d = ds and
    ``batchnorm_sign_pack_backward`` is exactly the BatchNorm backward over the rows (sums in
    float64). ``BatchNormSignNHWC`` below is this step with the sign's STE and a packed output.
    """

    def __init__(self, bn: BatchNorm, ste: str = "identity", ste_beta: float = 5.0):
        self.bn, self.ste, self.ste_beta = bn, ste, ste_beta

    def _inputs(self, params: Params, buffers: Params, x: Array | Packed
                ) -> tuple[Array, Array, Array, Array, Array, tuple[int, ...]]:
        """gamma, beta, running mean and var, x as (M, C) rows (int32 counts stay int32),
        and x's NHWC shape."""
        bn = self.bn
        gamma, beta = params[bn.key("gamma")], params[bn.key("beta")]
        z = as_float(x, gamma.dtype) if isinstance(x, Packed) else x
        n, h, w, c = (int(v) for v in z.shape)
        return (gamma, beta, buffers[bn.key("running_mean")], buffers[bn.key("running_var")],
                z.reshape(n * h * w, c), (n, h, w, c))

    def _buffers(self, rm: Array, rv: Array) -> Params:
        return {self.bn.key("running_mean"): rm, self.bn.key("running_var"): rv}

    def forward(self, params: Params, buffers: Params, x: Array | Packed, train: bool
                ) -> tuple[Array, Params, Any]:
        bn = self.bn
        gamma, beta, rm, rv, rows, shape = self._inputs(params, buffers, x)
        if train:
            mean, var = batch_statistics_rows(rows, gamma.dtype)
            rm, rv = update_running_statistics(rm, rv, mean, var, rows.shape[0], bn.momentum)
        else:
            mean, var = rm, rv
        inv_std = 1.0 / get_array_module(var).sqrt(var + bn.eps)
        y = (as_float(rows, gamma.dtype) - mean) * inv_std * gamma + beta
        return (y.reshape(shape), self._buffers(rm, rv),
                (rows, mean, inv_std, gamma, beta, train, shape))

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
        super().__init__(step.bn, step.sign.kwargs.get("ste", "identity"),
                         step.sign.kwargs.get("beta", 5.0))

    def forward(self, params: Params, buffers: Params, x: Array | Packed, train: bool
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

    The forward is ``bias_forward``'s add and ``pack_signs``'s ``y >= 0`` (sign(0) = +1), so the
    bits are the two layers'. Backward, from the y it keeps (nothing for the identity STE):
        d = ds * ste'(y)   (the Sign's STE, ``F.ste_grad``),   dx = d,
        db = sum of d over the N*H*W rows (in float64, as the channels-last BatchNorm's sums).
    """

    def __init__(self, step: BiasSign):
        self.key = step.bias.key("b")
        self.ste = step.sign.kwargs.get("ste", "identity")
        self.ste_beta = step.sign.kwargs.get("beta", 5.0)

    def forward(self, params: Params, buffers: Params, x: Array | Packed, train: bool
                ) -> tuple[Packed, Params, Any]:
        b = params[self.key]
        y = as_float(x, b.dtype) + b
        bits = kernels.pack_signs(y)                       # (N, H, W, ceil(C/64))
        return Packed(bits, int(y.shape[3]), b.dtype), {}, (None if self.ste == "identity" else y)

    def backward(self, ds: Array, y: Any) -> tuple[Array, Params]:
        d = ds if y is None else ds * F.ste_grad(y, self.ste, self.ste_beta)
        db = d.sum(axis=(0, 1, 2), dtype=get_array_module(d).float64).astype(d.dtype)
        return d, {self.key: db}


class MaxPoolNHWC:
    """``MaxPool2d`` (no padding) on NHWC int32 counts or floats."""

    def __init__(self, step: Stateless):
        self.kernel = int(step.kwargs["kernel"])
        self.stride = int(step.kwargs.get("stride") or self.kernel)

    def forward(self, params: Params, buffers: Params, x: Array | Packed, train: bool
                ) -> tuple[Array, Params, Any]:
        if isinstance(x, Packed):
            x = as_float(x, x.dtype)
        y, argmax = kernels.maxpool2d_nhwc_forward(x, self.kernel, self.stride)
        return y, {}, (argmax, tuple(int(v) for v in x.shape))

    def backward(self, dy: Array, cache: Any) -> tuple[Array, Params]:
        argmax, x_shape = cache
        return kernels.maxpool2d_nhwc_backward(dy, argmax, x_shape, self.kernel,
                            self.stride), {}


def is_maxpool(step: Module) -> bool:
    return (isinstance(step, Stateless) and step.forward_fn is F.maxpool2d_forward
            and not step.kwargs.get("padding") and int(step.kwargs["kernel"]) ** 2 <= 255)


def emits_signs(step: Module) -> bool:
    """True for the steps whose channels-last twin emits ``Packed`` signs."""
    return isinstance(step, (BatchNormSign, BiasSign))


def _supported(step: Module) -> bool:
    return (isinstance(step, (Conv2d, BinaryConv2d, BatchNormSign, BiasSign)) or is_maxpool(step)
            or (isinstance(step, BatchNorm) and step.affine))


class ChannelsLast(Module):
    """A run of NCHW steps executed channels-last; same parameters, buffers and gradients.

    ``input_grad=False`` (the group starts a model, whose backward ignores dx): ``backward``
    returns None for dx, and a first convolution skips computing it.
    """

    def __init__(self, steps: Sequence[Module], input_grad: bool = True):
        super().__init__("")
        self.steps = list(steps)
        self.input_grad = input_grad
        self._twins = [self._twin(step, i == 0 and not input_grad)
                       for i, step in enumerate(self.steps)]

    @staticmethod
    def _twin(step: Module, first_without_dx: bool) -> Any:
        if isinstance(step, (Conv2d, BinaryConv2d)):
            return ConvNHWC(step, need_dx=not first_without_dx)
        if isinstance(step, BatchNormSign):
            return BatchNormSignNHWC(step)
        if isinstance(step, BiasSign):
            return BiasSignNHWC(step)
        if isinstance(step, BatchNorm):
            return BatchNormNHWC(step)
        return MaxPoolNHWC(step)

    def forward(self, params, buffers, x, train):
        xp = get_array_module(x)
        h = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))          # NCHW -> NHWC, once
        caches, new_buffers = [], {}
        for twin in self._twins:
            h, updated, cache = twin.forward(params, buffers, h, train)
            new_buffers.update(updated)
            caches.append(cache)
        y = xp.ascontiguousarray(as_float(h, x.dtype).transpose(0, 3, 1, 2))   # NHWC -> NCHW
        return y, new_buffers, caches

    def backward(self, dy, cache):
        xp = get_array_module(dy)
        d = xp.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        grads: Params = {}
        for twin, twin_cache in zip(reversed(self._twins), reversed(cache)):
            d, g = twin.backward(d, twin_cache)
            grads.update(g)
        if not self.input_grad:
            return None, grads
        return xp.ascontiguousarray(d.transpose(0, 3, 1, 2)), grads


def group_channels_last(steps: Sequence[Module], input_grad: bool = True) -> list[Module]:
    """``steps`` with each maximal run of supported steps in which a step that emits signs
    (BatchNorm+sign, bias+sign) feeds a binary convolution replaced by one ``ChannelsLast``
    group (other runs stay as they are)."""
    out: list[Module] = []
    i = 0
    while i < len(steps):
        j = i
        while j < len(steps) and _supported(steps[j]):
            j += 1
        run = list(steps[i:j])
        feeds_binary = any(emits_signs(a) and isinstance(b, BinaryConv2d)
                           for a, b in zip(run, run[1:]))
        if feeds_binary:
            out.append(ChannelsLast(run, input_grad=input_grad or i > 0))
        else:
            out.extend(run)
        if j == i:
            out.append(steps[i])
            j += 1
        i = j
    return out
