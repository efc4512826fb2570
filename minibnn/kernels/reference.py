"""Reference bodies of every kernel op: readable array code, the oracle of the compiled bodies.

Each ``@op`` function declares an op by its reference body (``kernels.registry.op``: calling
it runs the body the registry picks; ``.reference`` is this body). The bodies are written
against ``xp`` (``numpy`` or ``cupy``, from the arguments), so they also run on CuPy arrays:
that is what an op runs on the GPU where it has no CUDA body. The
Numba bodies (``kernels.cpu``) and CUDA bodies (``kernels.gpu``) have the same names and
signatures, and the tests compare them with these (exactly where the arithmetic allows it, see
each docstring). Shapes follow PyTorch: activations NCHW, conv weights OIHW.

Groups:
  * convolution helpers: ``im2col`` / ``col2im`` (the column layout of the conv layers),
  * pooling: ``maxpool2d_forward`` / ``maxpool2d_backward`` (argmax within each window),
  * fused BatchNorm + sign: ``batchnorm_sign_eval`` / ``batchnorm_sign_train`` and the
    latter's backward pass, ``batchnorm_sign_backward_train``,
  * fused in-place optimiser steps: ``cema_update``, ``bop_update``, ``sgd_update``,
    ``adam_update`` (same operation order as the filter chains of ``minibnn.optim``),
  * bit-packed binary inference: ``pack_signs``, ``unpack_signs``, ``xnor_gemm``,
    ``pack_conv_input``, ``pack_conv_weights``, ``binary_conv2d``, ``threshold_pack``
    (BatchNorm + sign folded into integer thresholds, see ``kernels.threshold``) and
    ``binary_conv2d_threshold_pack`` (a binary conv layer, max-pool and folded BatchNorm +
    sign in one step, packed signs in and out) and ``binary_conv2d_lookup`` (a binary conv
    layer and a tabulated per-channel function of its counts, such as a BatchNorm).

The bit-packed composites (``pack_conv_input``, ``pack_conv_weights``, ``binary_conv2d``,
``binary_conv2d_threshold_pack``, ``binary_conv2d_lookup``) call their inner ops
(``pack_signs``, ``xnor_gemm``, ``binary_conv2d``, ``threshold_pack``), each of which picks its
own body, so on CuPy arrays the CUDA body of an inner op does the work; under
``use_backend("numpy")`` everything is reference.

Sign convention everywhere: ``sign(x) = +1 if x >= 0 else -1`` (so sign(0) = +1), and a packed
bit is 1 for +1 and 0 for -1.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.backend import get_array_module
from minibnn.errors import ShapeError
from minibnn.kernels._common import (
    WORD_BITS, as_scalars, channel_vector, channel_view, check_binary_conv,
    check_binary_conv_fold, check_binary_conv_table, check_directions, check_inplace,
    check_momentum_buffer, check_packed_pair, check_packed_signs, check_step, check_thresholds,
    check_tie, col2im_shape, conv_output_size, maxpool_backward_shape, require_array,
    require_float, require_ndim, words_for)
from minibnn.kernels.registry import array_kind, op
from minibnn.ops.sign import check_ste, ste_grad

Array = Any      # a NumPy or CuPy array

# --------------------------------------------------------------------------- convolution
# Column layout shared by im2col and col2im (and the pooling layers): cols has shape
# (N*OH*OW, C*kH*kW); row (n*OH + oh)*OW + ow is the receptive field of output pixel (oh, ow)
# of sample n, and column (c*kH + i)*kW + j holds xpad[n, c, oh*stride + i, ow*stride + j].
# The column order is w.reshape(O, -1)'s, so a convolution is cols @ w.reshape(O, -1).T.
# OH = (H + 2*padding - kH) // stride + 1 (likewise OW); the padding is zeros.


def pad_spatial(x: Array, padding: int, value: float = 0.0) -> Array:
    """Pad the two spatial axes of an NCHW array by ``padding`` on each side with ``value``."""
    if padding == 0:
        return x
    p = padding
    return get_array_module(x).pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="constant",
                                   constant_values=value)


@op
def im2col(x: Array, kh: int, kw: int, stride: int = 1, padding: int = 0) -> Array:
    """Unfold x (N, C, H, W) into cols (N*OH*OW, C*kH*kW); layout above.

    A strided view of the padded input with shape (N, OH, OW, C, kH, kW) is reshaped, which
    makes the one copy.
    """
    require_float("im2col", "x", x)
    require_ndim("im2col", "x", x, (4,), "4-D (N, C, H, W)")
    n, c, h, w = (int(s) for s in x.shape)
    oh, ow = conv_output_size("im2col", h, w, kh, kw, stride, padding)
    xpad = pad_spatial(x, padding)
    s_n, s_c, s_h, s_w = xpad.strides
    view = get_array_module(x).lib.stride_tricks.as_strided(
        xpad, shape=(n, oh, ow, c, kh, kw),
        strides=(s_n, s_h * stride, s_w * stride, s_c, s_h, s_w))
    return view.reshape(n * oh * ow, c * kh * kw)


@op
def col2im(cols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int,
           stride: int = 1, padding: int = 0) -> Array:
    """Adjoint of ``im2col``: add every entry of cols back onto the input pixel it came from.

    Returns dx of shape ``x_shape``; entries that fell on the padding are dropped. One strided
    (N, C, OH, OW) add per kernel offset, so overlapping windows accumulate without ``add.at``.
    """
    require_float("col2im", "cols", cols)
    n, c, h, w, oh, ow = col2im_shape(cols, x_shape, kh, kw, stride, padding)
    xp = get_array_module(cols)
    p = padding
    out = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=cols.dtype)
    blocks = cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    h_span, w_span = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + h_span:stride, j:j + w_span:stride] += blocks[:, :, i, j]
    if p == 0:
        return out
    return xp.ascontiguousarray(out[:, :, p:p + h, p:p + w])


# --------------------------------------------------------------------------- pooling


@op
def maxpool2d_forward(x: Array, kernel: int, stride: int | None = None,
                      padding: int = 0) -> tuple[Array, Array]:
    """Max over kernel x kernel windows: returns y (N, C, OH, OW) and argmax (N*C*OH*OW,) int64.

    ``argmax[r] = i*kernel + j`` is the row-major position of the first maximum inside window r
    (windows ordered n, c, oh, ow). Padding is -inf, so a padded position never wins over a
    finite value. The windows are the rows of ``im2col`` of x viewed as (N*C, 1, H, W).
    """
    require_float("maxpool2d_forward", "x", x)
    require_ndim("maxpool2d_forward", "x", x, (4,), "4-D (N, C, H, W)")
    stride = kernel if stride is None else stride
    n, c, h, w = (int(s) for s in x.shape)
    oh, ow = conv_output_size("maxpool2d_forward", h, w, kernel, kernel, stride, padding)
    xp = get_array_module(x)
    p = padding
    xpad = pad_spatial(x, p, value=-np.inf)
    cols = im2col(xp.ascontiguousarray(xpad).reshape(n * c, 1, h + 2 * p, w + 2 * p),
                  kernel, kernel, stride, 0)
    argmax = xp.argmax(cols, axis=1)
    y = xp.take_along_axis(cols, argmax[:, None], axis=1).reshape(n, c, oh, ow)
    return y, argmax.astype(np.int64)


@op
def maxpool2d_backward(dy: Array, argmax: Array, x_shape: tuple[int, int, int, int],
                       kernel: int, stride: int | None = None, padding: int = 0) -> Array:
    """Route dy[n, c, oh, ow] to the arg-max of its window; overlapping windows add."""
    require_float("maxpool2d_backward", "dy", dy)
    require_array("maxpool2d_backward", "argmax", argmax)
    n, c, h, w, stride = maxpool_backward_shape(dy, argmax, x_shape, kernel, stride, padding)
    xp = get_array_module(dy)
    dcols = xp.zeros((argmax.shape[0], kernel * kernel), dtype=dy.dtype)
    dcols[xp.arange(argmax.shape[0]), argmax] = dy.reshape(-1)
    return col2im(dcols, (n * c, 1, h, w), kernel, kernel, stride, padding).reshape(n, c, h, w)


# --------------------------------------------------------------------------- BatchNorm + sign
# The operation order is batchnorm_forward's (minibnn.nn.functional.batchnorm):
#     inv_std = 1 / sqrt(var + eps);  xhat = (x - mean) * inv_std;  y = xhat * gamma + beta
# so sign(y) equals sign_forward(batchnorm_forward(...)) bit for bit.


def _sign(y: Array) -> Array:
    xp = get_array_module(y)
    one = xp.ones((), dtype=y.dtype)
    return xp.where(y >= 0, one, -one)


def batch_statistics(x: Array) -> tuple[Array, Array]:
    """Per-channel (axis 1) mean and biased variance (divides by m = N*H*W) of x (N, C, ...).

    Reduced over x as a C-contiguous (N, C, H*W) array. The reference body of
    ``batchnorm_sign_train`` and the layer ``batchnorm_forward`` call this one function, so
    their statistics (and hence everything after them) agree bit for bit on one array module;
    the compiled bodies call it too, or (Numba, (N, C) arrays with C >= 2) add in its order.
    """
    x3 = get_array_module(x).ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1))
    return x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))


@op
def batchnorm_sign_eval(x: Array, mean: Array, var: Array, gamma: Array | None = None,
                        beta: Array | None = None, eps: float = 1e-5) -> Array:
    """``sign(gamma * (x - mean) / sqrt(var + eps) + beta)`` per channel (axis 1), in x's dtype.

    x is (N, C) or (N, C, H, W); None means gamma = 1, beta = 0 (and mean = 0, var = 1).
    """
    fn = "batchnorm_sign_eval"
    require_float(fn, "x", x)
    x3 = channel_view(fn, x)
    mean = channel_vector(fn, "mean", mean, x, 0.0)
    var = channel_vector(fn, "var", var, x, 1.0)
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0)
    beta = channel_vector(fn, "beta", beta, x, 0.0)
    inv_std = 1.0 / get_array_module(x).sqrt(var + eps)
    y = ((x3 - mean[:, None]) * inv_std[:, None]) * gamma[:, None] + beta[:, None]
    return _sign(y).reshape(x.shape)


@op
def batchnorm_sign_train(x: Array, gamma: Array | None = None, beta: Array | None = None,
                         eps: float = 1e-5) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Train-mode BatchNorm (batch statistics) followed by sign, in one call.

    Returns ``(s, y, xhat, mean, var, inv_std)``: s = sign(y) and y = xhat * gamma + beta have
    x's shape (y is what the sign STE needs, xhat and inv_std what ``batchnorm_backward``
    needs); mean, var (biased, ``batch_statistics``) and inv_std = 1/sqrt(var + eps) are (C,).
    Every body computes the statistics with this same array code, so all agree bit for bit
    with ``batchnorm_forward`` + ``sign_forward`` on the same array module.
    """
    fn = "batchnorm_sign_train"
    require_float(fn, "x", x)
    x3 = channel_view(fn, x)
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0)
    beta = channel_vector(fn, "beta", beta, x, 0.0)
    mean, var = batch_statistics(x)
    inv_std = 1.0 / get_array_module(x).sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * inv_std[:, None]
    y = xhat * gamma[:, None] + beta[:, None]
    return (_sign(y).reshape(x.shape), y.reshape(x.shape), xhat.reshape(x.shape), mean, var,
            inv_std)


@op
def batchnorm_sign_backward_train(ds: Array, y: Array, xhat: Array, inv_std: Array,
                                  gamma: Array, ste: str = "identity", ste_beta: float = 5.0
                                  ) -> tuple[Array, Array, Array]:
    """The backward pass of ``batchnorm_sign_train``: ``(dx, dgamma, dbeta)``.

    ``ds`` is dL/ds for s = sign(y); y, xhat (x's shape) and inv_std (C,) are what the forward
    returned. The expressions are ``sign_backward``'s and then train-mode
    ``batchnorm_backward``'s (minibnn.nn.functional), term for term in their order:
        d = ds * ste_grad(y)        (the identity STE: d = ds)
        dbeta = sum(d),  dgamma = sum(d * xhat),  g = d * gamma
        dx = (g - mean(g) - xhat * mean(g * xhat)) * inv_std
    with sums and means per channel over every other axis, so every body agrees with the two
    layers' backward passes bit for bit on one array module.
    """
    fn = "batchnorm_sign_backward_train"
    for name, a in (("ds", ds), ("y", y), ("xhat", xhat)):
        require_float(fn, name, a)
        if a.shape != xhat.shape or a.dtype != xhat.dtype:
            raise ShapeError(f"{fn}: {name} must be {xhat.dtype} {xhat.shape}, got "
                             f"{a.dtype} {a.shape}")
    channel_view(fn, xhat)
    inv_std = channel_vector(fn, "inv_std", inv_std, xhat, 1.0)
    gamma = channel_vector(fn, "gamma", gamma, xhat, 1.0)
    axes = (0,) + tuple(range(2, xhat.ndim))
    bshape = (1, xhat.shape[1]) + (1,) * (xhat.ndim - 2)
    ste_beta = check_ste(fn, ste, ste_beta)
    d = ds.copy() if ste == "identity" else ds * ste_grad(y, ste, ste_beta)
    dbeta = d.sum(axis=axes)
    dgamma = (d * xhat).sum(axis=axes)
    g = d * gamma.reshape(bshape)
    g_mean = g.mean(axis=axes).reshape(bshape)
    gx_mean = (g * xhat).mean(axis=axes).reshape(bshape)
    dx = (g - g_mean - xhat * gx_mean) * inv_std.reshape(bshape)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- optimiser steps
# All four update their buffers IN PLACE (arrays of one shape and float dtype, C-contiguous; the
# gradient g is only read and may have any layout) and follow the operation order of the
# minibnn.optim chains, so a fused step is bit-identical to the chain in float32 and float64.


def _flip(b: Array, stat: Array, thr: np.generic, tie_positive: bool) -> Array:
    """``b = -b`` where ``stat * b > thr``; tie "positive": ``b = +1`` where ``stat * b == thr``.

    (larq's Bop: ``b = sign(-sign(b*stat - thr) * b)`` with sign(0) = +1 outside.) Returns how
    many entries of b changed, as a 0-d int64 array on b's device: every body of cema_update and
    bop_update returns that, so no body reads the device (``int(n)`` does, when wanted).
    """
    score = stat * b
    flip = score > thr
    if tie_positive:
        flip |= (score == thr) & (b < 0)
    b[flip] = -b[flip]
    xp = get_array_module(b)
    return xp.asarray(xp.count_nonzero(flip), dtype=xp.int64)


@op
def cema_update(b: Array, m: Array, v: Array, g: Array, alpha: float, gamma: float,
                threshold: float = 0.0, tie: str = "keep") -> Array:
    """One CEMA step on binary weights b (±1), in place; returns the number of flips (0-d).

        m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold

    Where ``v b == threshold`` exactly, tie "keep" keeps b and tie "positive" sets b = +1.
    """
    dt = check_inplace("cema_update", "any", g, b=b, m=m, v=v)
    tie_positive = check_tie("cema_update", tie)
    c_m, c_g, c_v, c_a, thr = as_scalars(dt, 1.0 - gamma, gamma, 1.0 - alpha, alpha, threshold)
    m[...] = c_m * m + c_g * g
    v[...] = c_v * v + c_a * m
    return _flip(b, v, thr, tie_positive)


@op
def bop_update(b: Array, m: Array, g: Array, gamma: float, threshold: float,
               tie: str = "keep") -> Array:
    """One Bop step (Helwegen et al. 2019) in place; returns the number of flips (0-d).

        m = (1 - gamma) m + gamma g;  b = -b where m b > threshold

    Where ``m b == threshold`` exactly, tie "keep" keeps b and tie "positive" sets b = +1.
    """
    dt = check_inplace("bop_update", "any", g, b=b, m=m)
    tie_positive = check_tie("bop_update", tie)
    c_m, c_g, thr = as_scalars(dt, 1.0 - gamma, gamma, threshold)
    m[...] = c_m * m + c_g * g
    return _flip(b, m, thr, tie_positive)


@op
def sgd_update(w: Array, m: Array | None, g: Array, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, dampening: float = 0.0, decoupled: bool = False,
               first_step: bool = False) -> None:
    """One SGD step on latent weights w, in place (PyTorch's SGD; ``m`` may be None if mu = 0).

    coupled (PyTorch):  d = g + lam w;  m = mu m + (1 - dampening) d;  w = w + (-lr) m
    decoupled:          m = mu m + (1 - dampening) g;  w = w + (-lr) (m + lam w)
                        (= (1 - lr lam) w - lr m in exact arithmetic)
    ``first_step=True`` sets m = d undamped, PyTorch's first momentum buffer. A zero
    weight_decay or momentum skips its term entirely, as the optim chain does.
    """
    fn = "sgd_update"
    check_momentum_buffer(fn, momentum, m)
    dt = check_inplace(fn, "any", g, w=w, m=m if momentum != 0.0 else None)
    lam, mu, c_d, neg_lr = as_scalars(dt, weight_decay, momentum, 1.0 - dampening, -lr)
    d = g + lam * w if (weight_decay != 0.0 and not decoupled) else g
    if momentum != 0.0:
        m[...] = d if first_step else mu * m + c_d * d
        d = m
    if decoupled and weight_decay != 0.0:
        d = d + lam * w
    w += neg_lr * d


@op
def adam_update(w: Array, m: Array, v: Array, g: Array, lr: float, step: int, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled: bool = False) -> None:
    """One Adam step (PyTorch's Adam; AdamW with ``decoupled=True``), in place. ``step`` t >= 1.

        x = g + lam w (coupled only);  m = b1 m + (1 - b1) x;  v = b2 v + (1 - b2) x^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        w = w + (-lr) u            or, decoupled,  w = w + (-lr) (u + lam w)
    """
    fn = "adam_update"
    dt = check_inplace(fn, "any", g, w=w, m=m, v=v)
    check_step(fn, step)
    lam, c_b1, c_1b1, c_b2, c_1b2, bc1, bc2, c_eps, neg_lr = as_scalars(
        dt, weight_decay, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1 ** step, 1.0 - b2 ** step, eps, -lr)
    x = g + lam * w if (weight_decay != 0.0 and not decoupled) else g
    m[...] = c_b1 * m + c_1b1 * x
    v[...] = c_b2 * v + c_1b2 * (x * x)
    u = (m / bc1) / (get_array_module(w).sqrt(v / bc2) + c_eps)
    if decoupled and weight_decay != 0.0:
        u = u + lam * w
    w += neg_lr * u


# --------------------------------------------------------------------------- bit packing
# Layout: the last axis of length K is cut into W = ceil(K/64) uint64 words; element k lives in
# word k // 64 at bit k % 64 (least significant bit first). Bit 1 means +1 (x >= 0), bit 0 -1.
# The W*64 - K pad bits of the last word are 0 in every packed array, so in a XOR of two packed
# rows they are 0 and never counted: no mask is needed. A row of 64 bits is 8 little-endian
# bytes, which is how (un)packbits with bitorder "little" lays them out.


def pack_bits(bits: Array) -> Array:
    """Pack bool (..., K) along the last axis: (..., ceil(K/64)) uint64, layout above."""
    xp = get_array_module(bits)
    k = int(bits.shape[-1])
    nw = words_for(k)
    shape = tuple(bits.shape[:-1]) + (nw,)
    padded = xp.zeros(tuple(bits.shape[:-1]) + (nw * WORD_BITS,), dtype=xp.bool_)
    padded[..., :k] = bits
    if padded.size == 0:
        return xp.zeros(shape, dtype=xp.uint64)
    return xp.packbits(padded.reshape(-1), bitorder="little").view(xp.uint64).reshape(shape)


@op
def pack_signs(x: Array) -> Array:
    """Pack sign(x) along the last axis: (..., K) float -> (..., ceil(K/64)) uint64."""
    require_float("pack_signs", "x", x)
    if x.ndim < 1:
        raise ShapeError("pack_signs: x must have at least one axis, got a 0-d array")
    return pack_bits(x >= 0)


@op
def unpack_signs(p: Array, k: int, dtype: type | np.dtype = np.float32) -> Array:
    """Inverse of ``pack_signs``: (..., W) uint64 -> (..., k) array of ±1 in ``dtype``."""
    check_packed_signs("unpack_signs", p, k)
    xp = get_array_module(p)
    shape = tuple(p.shape[:-1]) + (int(k),)
    if p.size == 0:
        return xp.empty(shape, dtype=dtype)
    rows = xp.ascontiguousarray(p).reshape(-1, p.shape[-1])
    bits = xp.unpackbits(rows.view(xp.uint8).reshape(-1), bitorder="little")
    bits = bits.reshape(rows.shape[0], -1)[:, :k]
    one = xp.ones((), dtype=dtype)
    return xp.where(bits == 1, one, -one).reshape(shape)


@op
def xnor_gemm(a: Array, b: Array, k: int) -> Array:
    """``C = A @ B.T`` for ±1 matrices A (M, k), B (N, k) given packed: (M, W), (N, W) -> int32.

    Per entry, with agreements = k - popcount(a XOR b):
    ``C[i, j] = agreements - disagreements = k - 2 * popcount(a_i XOR b_j)`` (exact).
    W may exceed ceil(k/64) (``binary_conv2d`` pads every tap to whole words): k counts the
    bits that are not padding, and pad bits, wherever they sit, are 0 in both and cancel.
    """
    check_packed_pair("xnor_gemm", a, b, k)
    xp = get_array_module(a, b)
    out = xp.empty((a.shape[0], b.shape[0]), dtype=xp.int32)
    rows = max(1, (1 << 22) // max(1, b.shape[0] * b.shape[1]))   # bound the temporary
    for i0 in range(0, a.shape[0], rows):
        x = a[i0:i0 + rows, None, :] ^ b[None, :, :]
        out[i0:i0 + rows] = k - 2 * xp.bitwise_count(x).sum(axis=-1, dtype=xp.int64)
    return out


@op
def pack_conv_input(x: Array) -> Array:
    """Pack sign(x) of NCHW activations along channels: (N, C, H, W) -> (N, H, W, ceil(C/64))."""
    require_float("pack_conv_input", "x", x)
    require_ndim("pack_conv_input", "x", x, (4,), "4-D (N, C, H, W)")
    return pack_signs(get_array_module(x).ascontiguousarray(x.transpose(0, 2, 3, 1)))


@op
def pack_conv_weights(w: Array) -> tuple[Array, Array]:
    """Pack sign(w) of OIHW weights for ``binary_conv2d``; done once ahead of inference.

    Returns ``wbits`` (O, kH*kW*Wc) uint64, tap-major (tap t = i*kW + j owns words
    ``t*Wc .. t*Wc + Wc - 1``, channels packed inside), with Wc = ceil(C/64), and
    ``wsum`` (O, kH*kW) int32 = ``sum_c sign(w[o, c, i, j])``, the padding correction.
    """
    require_float("pack_conv_weights", "w", w)
    require_ndim("pack_conv_weights", "w", w, (4,), "4-D (O, C, kH, kW)")
    xp = get_array_module(w)
    o, c, kh, kw = (int(s) for s in w.shape)
    wt = xp.ascontiguousarray(w.transpose(0, 2, 3, 1))          # (O, kH, kW, C)
    wbits = pack_signs(wt).reshape(o, kh * kw * words_for(c))
    wsum = xp.where(wt >= 0, 1, -1).sum(axis=-1, dtype=xp.int64).reshape(o, kh * kw)
    return wbits, wsum.astype(xp.int32)


def patches_nhwc(x: Array, kh: int, kw: int, stride: int, padding: int) -> Array:
    """Read-only view (N, OH, OW, kH, kW, C) of the receptive fields of NHWC x, padded with
    zeros (for packed signs a zero word means -1 in every channel: ``binary_conv2d`` corrects
    for it)."""
    xp = get_array_module(x)
    n, h, w, c = (int(s) for s in x.shape)
    oh, ow = conv_output_size("patches_nhwc", h, w, kh, kw, stride, padding)
    p = padding
    xpad = xp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else xp.ascontiguousarray(x)
    s_n, s_h, s_w, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, oh, ow, kh, kw, c),
        strides=(s_n, s_h * stride, s_w * stride, s_h, s_w, s_c))


@op
def binary_conv2d(xbits: Array, wbits: Array, wsum: Array, c: int, kh: int, kw: int,
                  stride: int = 1, padding: int = 0, layout: str = "nchw") -> Array:
    """Binary convolution on packed operands -> int32 y (N, O, OH, OW), zero padding, exact.

    ``layout="nhwc"`` returns the same counts as (N, OH, OW, O) (the channels-last CNN).

    Equal to ``conv2d_forward(sign(x), sign(w), stride=stride, padding=padding)``: zero padding
    is not a ±1 value, so padded taps are packed as all-zero words (= -1 in every channel) and
    corrected afterwards. Such a tap contributes ``sum_c (-1) w[o, c, i, j] = -wsum[o, t]`` to
    the XNOR count instead of 0, so

        y[n, o, oh, ow] = (kH kW C - 2 popcount(cols XOR wbits)) + sum_{t padded} wsum[o, t].

    (Channel pad bits are 0 in both operands and cancel in the XOR.)
    """
    oh, ow = check_binary_conv("binary_conv2d", xbits, wbits, wsum, c, kh, kw, stride, padding,
                               layout=layout)
    xp = get_array_module(xbits)
    n, h, w, nw = (int(s) for s in xbits.shape)
    o = int(wbits.shape[0])
    p = padding
    cols = patches_nhwc(xbits, kh, kw, stride, padding)
    acc = xnor_gemm(xp.ascontiguousarray(cols.reshape(n * oh * ow, kh * kw * nw)),
               xp.ascontiguousarray(wbits), kh * kw * c)
    # which taps of each output pixel fall on the zero padding: an (OH*OW, kH*kW) mask
    hi = xp.arange(oh)[:, None] * stride + xp.arange(kh)[None, :] - p      # (OH, kH) input row
    wi = xp.arange(ow)[:, None] * stride + xp.arange(kw)[None, :] - p      # (OW, kW) input col
    outside = ((hi < 0) | (hi >= h))[:, None, :, None] | ((wi < 0) | (wi >= w))[None, :, None, :]
    corr = outside.reshape(oh * ow, kh * kw).astype(xp.int32) @ wsum.T     # (OH*OW, O)
    y = (acc.reshape(n, oh * ow, o) + corr[None]).reshape(n, oh, ow, o)
    return y if layout == "nhwc" else xp.ascontiguousarray(y.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- thresholded packing
# A binary layer's exact int32 count y, followed by BatchNorm + sign at inference, is one
# integer comparison per channel (``kernels.threshold.fold_sign_table`` finds t and d):
#     s = +1  iff  y >= t_c  (d_c = +1)     or     y <= t_c  (d_c = -1)


def compare_thresholds(y: Array, threshold: Array, direction: Array) -> Array:
    """Bool signs (True = +1) of y (N, C, ...): ``y >= t`` where d > 0, else ``y <= t``."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    t, d = threshold.reshape(shape), direction.reshape(shape)
    return get_array_module(y).where(d > 0, y >= t, y <= t)


@op
def threshold_pack(y: Array, threshold: Array, direction: Array) -> Array:
    """Thresholded signs of int32 counts, packed along channels (the next layer's input).

    (N, C) -> (N, ceil(C/64)); (N, C, H, W) -> (N, H, W, ceil(C/64)); uint64, bit 1 = +1:
    the layout of ``pack_signs`` / ``pack_conv_input``. Directions must be +-1.
    """
    fn = "threshold_pack"
    check_thresholds(fn, y, threshold, direction, array_kind(y))
    check_directions(fn, direction)
    s = compare_thresholds(y, threshold, direction)
    return pack_bits(get_array_module(y).moveaxis(s, 1, -1))


def maxpool_counts(y: Array, kernel: int, stride: int, padding: int) -> Array:
    """Max-pool of int32 counts (N, H, W, C): the float path's max-pool of the same integers.

    Padding is the int32 minimum, which never wins (as -inf in the float path).
    """
    xp = get_array_module(y)
    n, h, w, c = (int(s) for s in y.shape)
    p = padding
    oh, ow = conv_output_size("maxpool_counts", h, w, kernel, kernel, stride, p)
    if p:
        y = xp.pad(y, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=np.iinfo(np.int32).min)
    out = None
    for i in range(kernel):
        for j in range(kernel):
            tap = y[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out = tap.copy() if out is None else xp.maximum(out, tap, out=out)
    return out


@op
def binary_conv2d_threshold_pack(xbits: Array, wbits: Array, wsum: Array, c: int, kh: int,
                                 kw: int, stride: int, padding: int, threshold: Array,
                                 direction: Array, pool_kernel: int = 1, pool_stride: int = 1,
                                 pool_padding: int = 0) -> Array:
    """A binary conv layer, then [max-pool ->] folded BatchNorm + sign, on packed signs.

    Packed NHWC in, packed NHWC out: xbits (N, H, W, ceil(C/64)) -> the next binary layer's
    input (N, PH, PW, ceil(O/64)) uint64, bit 1 = +1. In three steps:

        y = binary_conv2d(xbits, ..., layout="nhwc")           exact int32 counts (N, OH, OW, O)
        y = max-pool of y (pool_kernel, pool_stride, pool_padding; pool_kernel 1: none)
        s = +1  iff  y >= threshold (direction +1)  or  y <= threshold (direction -1)

    and s packed along channels (``threshold_pack``). Directions must be +-1.
    """
    fn = "binary_conv2d_threshold_pack"
    check_binary_conv_fold(fn, xbits, wbits, wsum, c, kh, kw, stride, padding, threshold,
                           direction, pool_kernel, pool_stride, pool_padding)
    y = binary_conv2d(xbits, wbits, wsum, c, kh, kw, stride, padding, layout="nhwc")
    if (pool_kernel, pool_stride, pool_padding) != (1, 1, 0):
        y = maxpool_counts(y, pool_kernel, pool_stride, pool_padding)
    return threshold_pack(get_array_module(y).moveaxis(y, -1, 1), threshold, direction)


@op
def binary_conv2d_lookup(xbits: Array, wbits: Array, wsum: Array, c: int, kh: int, kw: int,
                         stride: int, padding: int, table: Array) -> Array:
    """A binary conv layer, then a per-channel function of its exact count read from a table.

    Packed NHWC in, float NHWC out: with y = binary_conv2d(xbits, ..., layout="nhwc") (int32
    counts in [-K, K], K = kH*kW*C),

        out[n, oh, ow, o] = table[y[n, oh, ow, o] + K, o]          table (2K+1, O) float

    A table of what the modules after the layer compute for every integer count (a BatchNorm
    in eval mode, tabulated with those modules) gives their output bit for bit.
    """
    check_binary_conv_table("binary_conv2d_lookup", xbits, wbits, wsum, c, kh, kw, stride,
                            padding, table, array_kind(xbits))
    y = binary_conv2d(xbits, wbits, wsum, c, kh, kw, stride, padding, layout="nhwc")
    return table[y + kh * kw * c, get_array_module(y).arange(table.shape[1])]
