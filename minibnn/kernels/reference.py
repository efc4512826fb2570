"""NumPy reference twins of the hot kernels: the oracle of ``kernels.cpu`` and its documentation.

Every public function here has a Numba twin of the same name and signature in ``cpu.py``; the
tests compare the two (exactly where the arithmetic allows it, see each docstring). Shapes follow
PyTorch: activations NCHW, conv weights OIHW, dense weights (out, in).

Groups:
  * convolution helpers: ``im2col`` / ``col2im`` (the layout of ``minibnn.nn.functional.conv``),
  * pooling: ``maxpool2d_forward`` / ``maxpool2d_backward`` (argmax within each window),
  * fused BatchNorm + sign: ``batchnorm_sign_eval`` / ``batchnorm_sign_train``,
  * fused in-place optimiser steps: ``cema_update``, ``bop_update``, ``sgd_update``,
    ``adam_update`` (same operation order as the filter chains of ``minibnn.optim``),
  * bit-packed binary inference: ``pack_signs``, ``unpack_signs``, ``xnor_gemm``,
    ``pack_conv_input``, ``pack_conv_weights``, ``binary_conv2d``.

Sign convention everywhere: ``sign(x) = +1 if x >= 0 else -1`` (so sign(0) = +1), and a packed
bit is 1 for +1 and 0 for -1.
"""
from __future__ import annotations

import numpy as np

from minibnn.errors import DTypeError, ShapeError
from minibnn.nn.functional import conv
from minibnn.kernels._common import (
    WORD_BITS, as_scalars, channel_vector, channel_view, check_inplace, check_tie,
    conv_output_size, maxpool_backward_shape, require_float, require_ndim, words_for)

# --------------------------------------------------------------------------- convolution


def im2col(x: np.ndarray, kh: int, kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Unfold x (N, C, H, W) into cols (N*OH*OW, C*kH*kW), zero padding.

    Row ``(n*OH + oh)*OW + ow`` is the receptive field of output pixel (oh, ow) of sample n;
    column ``(c*kH + i)*kW + j`` holds ``xpad[n, c, oh*stride + i, ow*stride + j]``. The column
    order is ``w.reshape(O, -1)``'s, so a convolution is ``cols @ w.reshape(O, -1).T``.
    The code is the layer's own (``minibnn.nn.functional.conv.im2col``, a strided view and one
    copy); this twin adds the kernel API's checks.
    """
    require_float("im2col", "x", x)
    require_ndim("im2col", "x", x, (4,), "4-D (N, C, H, W)")
    return conv.im2col(x, kh, kw, stride, padding)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int,
           stride: int = 1, padding: int = 0) -> np.ndarray:
    """Adjoint of ``im2col``: add every entry of cols back onto the input pixel it came from.

    Returns dx of shape ``x_shape``; entries that fell on the padding are dropped. The code is
    the layer's own (``minibnn.nn.functional.conv.col2im``: one strided add per kernel offset).
    """
    require_float("col2im", "cols", cols)
    return conv.col2im(cols, tuple(x_shape), kh, kw, stride, padding)


# --------------------------------------------------------------------------- pooling


def maxpool2d_forward(x: np.ndarray, kernel: int, stride: int | None = None,
                      padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Max over kernel x kernel windows: returns y (N, C, OH, OW) and argmax (N*C*OH*OW,) int64.

    ``argmax[r] = i*kernel + j`` is the row-major position of the first maximum inside window r
    (windows ordered n, c, oh, ow), as in ``minibnn.nn.functional.MaxPool2dCache``. Padding is
    -inf, so a padded position never wins over a finite value.
    """
    require_float("maxpool2d_forward", "x", x)
    require_ndim("maxpool2d_forward", "x", x, (4,), "4-D (N, C, H, W)")
    stride = kernel if stride is None else stride
    n, c, h, w = x.shape
    oh, ow = conv_output_size("maxpool2d_forward", h, w, kernel, kernel, stride, padding)
    p = padding
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf) if p else x
    cols = im2col(np.ascontiguousarray(xpad).reshape(n * c, 1, h + 2 * p, w + 2 * p),
                  kernel, kernel, stride, 0)
    argmax = np.argmax(cols, axis=1)
    y = np.take_along_axis(cols, argmax[:, None], axis=1).reshape(n, c, oh, ow)
    return y, argmax.astype(np.int64)


def maxpool2d_backward(dy: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, int, int, int],
                       kernel: int, stride: int | None = None, padding: int = 0) -> np.ndarray:
    """Route dy[n, c, oh, ow] to the arg-max of its window; overlapping windows add."""
    require_float("maxpool2d_backward", "dy", dy)
    n, c, h, w, stride = maxpool_backward_shape(dy, argmax, x_shape, kernel, stride, padding)
    dcols = np.zeros((argmax.shape[0], kernel * kernel), dtype=dy.dtype)
    dcols[np.arange(argmax.shape[0]), argmax] = dy.reshape(-1)
    return col2im(dcols, (n * c, 1, h, w), kernel, kernel, stride, padding).reshape(n, c, h, w)


# --------------------------------------------------------------------------- BatchNorm + sign


def batchnorm_sign_eval(x: np.ndarray, mean: np.ndarray, var: np.ndarray,
                        gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                        eps: float = 1e-5) -> np.ndarray:
    """``sign(gamma * (x - mean) / sqrt(var + eps) + beta)`` per channel (axis 1), in x's dtype.

    x is (N, C) or (N, C, H, W). The operation order is ``batchnorm_forward``'s
    (``inv_std = 1 / sqrt(var + eps)``, ``xhat = (x - mean) * inv_std``, ``y = xhat * gamma +
    beta``), so the signs equal ``sign_forward(batchnorm_forward(..., train=False))`` exactly.
    """
    fn = "batchnorm_sign_eval"
    require_float(fn, "x", x)
    x3 = channel_view(fn, x)
    c, dt = x3.shape[1], x.dtype
    mean = channel_vector(fn, "mean", mean, c, dt, 0.0)
    var = channel_vector(fn, "var", var, c, dt, 1.0)
    gamma = channel_vector(fn, "gamma", gamma, c, dt, 1.0)
    beta = channel_vector(fn, "beta", beta, c, dt, 0.0)
    inv_std = 1.0 / np.sqrt(var + eps)
    y = ((x3 - mean[:, None]) * inv_std[:, None]) * gamma[:, None] + beta[:, None]
    one = np.ones((), dtype=dt)
    return np.where(y >= 0, one, -one).reshape(x.shape)


def batchnorm_sign_train(x: np.ndarray, gamma: np.ndarray | None = None,
                         beta: np.ndarray | None = None, eps: float = 1e-5
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
    """Train-mode BatchNorm (batch statistics) followed by sign, in one call.

    Returns ``(s, y, xhat, mean, var, inv_std)``: s = sign(y) and y = xhat * gamma + beta have
    x's shape (y is what the sign STE needs, xhat and inv_std what ``batchnorm_backward``
    needs); mean, var (biased, divides by m = N*H*W) and inv_std = 1/sqrt(var + eps) are (C,).
    Statistics use NumPy's pairwise sums here and float64 accumulators in the Numba twin, so
    the twins agree to rounding, not bit for bit.
    """
    fn = "batchnorm_sign_train"
    require_float(fn, "x", x)
    x3 = channel_view(fn, x)
    c, dt = x3.shape[1], x.dtype
    gamma = channel_vector(fn, "gamma", gamma, c, dt, 1.0)
    beta = channel_vector(fn, "beta", beta, c, dt, 0.0)
    mean = x3.mean(axis=(0, 2))
    var = x3.var(axis=(0, 2))
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (x3 - mean[:, None]) * inv_std[:, None]
    y = xhat * gamma[:, None] + beta[:, None]
    one = np.ones((), dtype=dt)
    s = np.where(y >= 0, one, -one)
    return (s.reshape(x.shape), y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std)


# --------------------------------------------------------------------------- optimiser steps
# All four update their buffers IN PLACE (arrays of one shape and float dtype, C-contiguous) and
# follow the operation order of the minibnn.optim chains, so a fused step is bit-identical to
# the chain in float32 and float64.


def _flip(b: np.ndarray, stat: np.ndarray, thr: np.generic, tie_positive: bool) -> int:
    """``b = -b`` where ``stat * b > thr``; with tie "positive" also ``b = +1`` where stat == 0.

    Returns how many entries of b changed.
    """
    flip = stat * b > thr
    if tie_positive:
        flip |= (stat == 0) & (b < 0)
    b[flip] = -b[flip]
    return int(np.count_nonzero(flip))


def cema_update(b: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, alpha: float,
                gamma: float, threshold: float = 0.0, tie: str = "keep") -> int:
    """One CEMA step on binary weights b (±1), in place; returns the number of flips.

        m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold

    (ties v == 0 keep b, or set it to +1 with ``tie="positive"``).
    """
    dt = check_inplace("cema_update", b=b, m=m, v=v, g=g)
    tie_positive = check_tie("cema_update", tie)
    c_m, c_g, c_v, c_a, thr = as_scalars(dt, 1.0 - gamma, gamma, 1.0 - alpha, alpha, threshold)
    m[...] = c_m * m + c_g * g
    v[...] = c_v * v + c_a * m
    return _flip(b, v, thr, tie_positive)


def bop_update(b: np.ndarray, m: np.ndarray, g: np.ndarray, gamma: float, threshold: float,
               tie: str = "keep") -> int:
    """One Bop step (Helwegen et al. 2019) in place; returns the number of flips.

        m = (1 - gamma) m + gamma g;  b = -b where m b > threshold
    """
    dt = check_inplace("bop_update", b=b, m=m, g=g)
    tie_positive = check_tie("bop_update", tie)
    c_m, c_g, thr = as_scalars(dt, 1.0 - gamma, gamma, threshold)
    m[...] = c_m * m + c_g * g
    return _flip(b, m, thr, tie_positive)


def sgd_update(w: np.ndarray, m: np.ndarray | None, g: np.ndarray, lr: float,
               momentum: float = 0.0, weight_decay: float = 0.0, dampening: float = 0.0,
               decoupled: bool = False, first_step: bool = False) -> None:
    """One SGD step on latent weights w, in place (PyTorch's SGD; ``m`` may be None if mu = 0).

    coupled (PyTorch):  d = g + lam w;  m = mu m + (1 - dampening) d;  w = w + (-lr) m
    decoupled:          m = mu m + (1 - dampening) g;  w = w + (-lr) (m + lam w)
                        (= (1 - lr lam) w - lr m in exact arithmetic)
    ``first_step=True`` sets m = d undamped, PyTorch's first momentum buffer. A zero
    weight_decay or momentum skips its term entirely, as the optim chain does.
    """
    fn = "sgd_update"
    if momentum != 0.0 and m is None:
        raise ShapeError(f"{fn}: momentum {momentum} needs a buffer m, got None")
    dt = check_inplace(fn, w=w, m=m if momentum != 0.0 else None, g=g)
    lam, mu, c_d, neg_lr = as_scalars(dt, weight_decay, momentum, 1.0 - dampening, -lr)
    d = g + lam * w if (weight_decay != 0.0 and not decoupled) else g
    if momentum != 0.0:
        m[...] = d if first_step else mu * m + c_d * d
        d = m
    if decoupled and weight_decay != 0.0:
        d = d + lam * w
    w += neg_lr * d


def adam_update(w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr: float,
                step: int, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled: bool = False) -> None:
    """One Adam step (PyTorch's Adam; AdamW with ``decoupled=True``), in place. ``step`` t >= 1.

        x = g + lam w (coupled only);  m = b1 m + (1 - b1) x;  v = b2 v + (1 - b2) x^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        w = w + (-lr) u            or, decoupled,  w = w + (-lr) (u + lam w)
    """
    fn = "adam_update"
    dt = check_inplace(fn, w=w, m=m, v=v, g=g)
    if int(step) != step or step < 1:
        raise ShapeError(f"{fn}: step must be an integer >= 1, got {step!r}")
    lam, c_b1, c_1b1, c_b2, c_1b2, bc1, bc2, c_eps, neg_lr = as_scalars(
        dt, weight_decay, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1 ** step, 1.0 - b2 ** step, eps, -lr)
    x = g + lam * w if (weight_decay != 0.0 and not decoupled) else g
    m[...] = c_b1 * m + c_1b1 * x
    v[...] = c_b2 * v + c_1b2 * (x * x)
    u = (m / bc1) / (np.sqrt(v / bc2) + c_eps)
    if decoupled and weight_decay != 0.0:
        u = u + lam * w
    w += neg_lr * u


# --------------------------------------------------------------------------- bit packing
# Layout: the last axis of length K is cut into W = ceil(K/64) uint64 words; element k lives in
# word k // 64 at bit k % 64 (least significant bit first). Bit 1 means +1 (x >= 0), bit 0 -1.
# The W*64 - K pad bits of the last word are 0 in every packed array, so in a XOR of two packed
# rows they are 0 and never counted: no mask is needed.


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack sign(x) along the last axis: (..., K) float -> (..., ceil(K/64)) uint64."""
    require_float("pack_signs", "x", x)
    k = x.shape[-1]
    nw = words_for(k)
    bits = np.zeros(x.shape[:-1] + (nw * WORD_BITS,), dtype=np.bool_)
    bits[..., :k] = x >= 0
    packed = np.packbits(bits.reshape(-1, nw, WORD_BITS), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(x.shape[:-1] + (nw,))


def unpack_signs(p: np.ndarray, k: int, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """Inverse of ``pack_signs``: (..., W) uint64 -> (..., k) array of ±1 in ``dtype``."""
    if p.dtype != np.uint64:
        raise DTypeError(f"unpack_signs: p must be uint64, got {p.dtype}")
    if p.ndim < 1 or p.shape[-1] != words_for(k):
        raise ShapeError(f"unpack_signs: p must have a last axis of ceil({k}/64) = "
                         f"{words_for(k)} words, got shape {tuple(p.shape)}")
    flat = np.ascontiguousarray(p.astype("<u8")).reshape(-1, p.shape[-1]).view(np.uint8)
    bits = np.unpackbits(flat, axis=-1, bitorder="little")[:, :k]
    one = np.ones((), dtype=dtype)
    return np.where(bits == 1, one, -one).reshape(p.shape[:-1] + (k,))


def _check_packed_pair(fn: str, a: np.ndarray, b: np.ndarray, k: int) -> None:
    for name, arr in (("a", a), ("b", b)):
        if arr.dtype != np.uint64 or arr.ndim != 2:
            raise DTypeError(f"{fn}: {name} must be a 2-D uint64 array, got {arr.dtype} "
                             f"{tuple(arr.shape)}")
    if a.shape[1] != b.shape[1] or a.shape[1] != words_for(k):
        raise ShapeError(f"{fn}: a and b must both have ceil(k/64) = {words_for(k)} words per "
                         f"row, got {tuple(a.shape)} and {tuple(b.shape)}")


def xnor_gemm(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """``C = A @ B.T`` for ±1 matrices A (M, k), B (N, k) given packed: (M, W), (N, W) -> int32.

    Per entry, with agreements = k - popcount(a XOR b):
    ``C[i, j] = agreements - disagreements = k - 2 * popcount(a_i XOR b_j)`` (exact).
    """
    _check_packed_pair("xnor_gemm", a, b, k)
    return _xnor_counts(a, b, k)


def _xnor_counts(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """``k - 2 popcount(a_i XOR b_j)`` for every row pair; k counts the bits that are not
    padding (pad bits, wherever they sit, are 0 in both operands and cancel)."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    rows = max(1, (1 << 22) // max(1, b.shape[0] * b.shape[1]))   # bound the temporary
    for i0 in range(0, a.shape[0], rows):
        x = a[i0:i0 + rows, None, :] ^ b[None, :, :]
        out[i0:i0 + rows] = k - 2 * np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return out


def pack_conv_input(x: np.ndarray) -> np.ndarray:
    """Pack sign(x) of NCHW activations along channels: (N, C, H, W) -> (N, H, W, ceil(C/64))."""
    require_float("pack_conv_input", "x", x)
    require_ndim("pack_conv_input", "x", x, (4,), "4-D (N, C, H, W)")
    return pack_signs(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def pack_conv_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack sign(w) of OIHW weights for ``binary_conv2d``; done once ahead of inference.

    Returns ``wbits`` (O, kH*kW*Wc) uint64, tap-major (tap t = i*kW + j owns words
    ``t*Wc .. t*Wc + Wc - 1``, channels packed inside), with Wc = ceil(C/64), and
    ``wsum`` (O, kH*kW) int32 = ``sum_c sign(w[o, c, i, j])``, the padding correction.
    """
    require_float("pack_conv_weights", "w", w)
    require_ndim("pack_conv_weights", "w", w, (4,), "4-D (O, C, kH, kW)")
    o, c, kh, kw = w.shape
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))          # (O, kH, kW, C)
    wbits = pack_signs(wt).reshape(o, kh * kw * words_for(c))
    wsum = np.where(wt >= 0, 1, -1).sum(axis=-1, dtype=np.int64).reshape(o, kh * kw)
    return wbits, wsum.astype(np.int32)


def _check_binary_conv(fn: str, xbits: np.ndarray, wbits: np.ndarray, wsum: np.ndarray, c: int,
                       kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    if xbits.dtype != np.uint64 or xbits.ndim != 4 or xbits.shape[3] != words_for(c):
        raise ShapeError(f"{fn}: xbits must be uint64 (N, H, W, ceil(C/64) = {words_for(c)}), "
                         f"got {xbits.dtype} {tuple(xbits.shape)}")
    if (wbits.dtype != np.uint64 or wbits.ndim != 2
            or wbits.shape[1] != kh * kw * words_for(c)):
        raise ShapeError(f"{fn}: wbits must be uint64 (O, kH*kW*ceil(C/64) = "
                         f"{kh * kw * words_for(c)}), got {wbits.dtype} {tuple(wbits.shape)}")
    if wsum.dtype != np.int32 or wsum.shape != (wbits.shape[0], kh * kw):
        raise ShapeError(f"{fn}: wsum must be int32 {(wbits.shape[0], kh * kw)}, "
                         f"got {wsum.dtype} {tuple(wsum.shape)}")
    return conv_output_size(fn, xbits.shape[1], xbits.shape[2], kh, kw, stride, padding)


def binary_conv2d(xbits: np.ndarray, wbits: np.ndarray, wsum: np.ndarray, c: int, kh: int,
                  kw: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Binary convolution on packed operands -> int32 y (N, O, OH, OW), zero padding, exact.

    Equal to ``conv2d_forward(sign(x), sign(w), stride=stride, padding=padding)``: zero padding
    is not a ±1 value, so padded taps are packed as all-zero words (= -1 in every channel) and
    corrected afterwards. Such a tap contributes ``sum_c (-1) w[o, c, i, j] = -wsum[o, t]`` to
    the XNOR count instead of 0, so

        y[n, o, oh, ow] = (kH kW C - 2 popcount(cols XOR wbits)) + sum_{t padded} wsum[o, t].

    (Channel pad bits are 0 in both operands and cancel in the XOR.)
    """
    oh, ow = _check_binary_conv("binary_conv2d", xbits, wbits, wsum, c, kh, kw, stride, padding)
    n, h, w, nw = xbits.shape
    o = wbits.shape[0]
    p = padding
    xpad = np.pad(xbits, ((0, 0), (p, p), (p, p), (0, 0))) if p else xbits
    s_n, s_h, s_w, s_q = xpad.strides
    cols = np.lib.stride_tricks.as_strided(
        xpad, shape=(n, oh, ow, kh, kw, nw),
        strides=(s_n, s_h * stride, s_w * stride, s_h, s_w, s_q), writeable=False)
    acc = _xnor_counts(cols.reshape(n * oh * ow, kh * kw * nw), wbits, kh * kw * c)
    hi = np.arange(oh)[:, None] * stride + np.arange(kh)[None, :] - p      # (OH, kH) input row
    wi = np.arange(ow)[:, None] * stride + np.arange(kw)[None, :] - p      # (OW, kW) input col
    outside = ((hi < 0) | (hi >= h))[:, None, :, None] | ((wi < 0) | (wi >= w))[None, :, None, :]
    corr = outside.reshape(oh * ow, kh * kw).astype(np.int32) @ wsum.T     # (OH*OW, O)
    y = acc.reshape(n, oh * ow, o) + corr[None]
    return np.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))
