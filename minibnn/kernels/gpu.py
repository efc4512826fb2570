"""CUDA bodies of the kernel ops (``@register(op, "cuda")``), for CuPy arrays.

Every public function here has the name and signature of its reference body in
``kernels/reference.py`` (the oracle and the documentation of the arithmetic). Only real CUDA
kernels live here (``cupy.ElementwiseKernel`` / ``cupy.RawKernel``): the ops that are plain
array code (im2col / col2im, pooling, the packed binary convolution and its packing helpers,
thresholded packing) run their reference body on CuPy arrays, which calls the CUDA
``pack_signs`` and ``xnor_gemm`` below for its inner step. The arrays are CuPy arrays on the
current device; nothing is copied to or from the host and no function synchronises the device
(launches are asynchronous on the current stream).

What is what:
  * fused in-place optimiser steps (``cema_update``, ``bop_update``, ``sgd_update``,
    ``adam_update``): one ``cupy.ElementwiseKernel`` launch per parameter group, reading and
    writing every buffer once;
  * fused BatchNorm + sign (``batchnorm_sign_eval``, ``batchnorm_sign_train``): one
    ``ElementwiseKernel`` launch (train mode takes the batch statistics from the reference's
    CuPy reductions, ``reference.batch_statistics``);
  * bit packing (``pack_signs``, a ``RawKernel`` with warp ballots; ``unpack_signs``) and the
    XNOR-popcount GEMM (``xnor_gemm``, a shared-memory tiled ``RawKernel`` using ``__popcll``).

Arithmetic. Kernels are compiled with ``--fmad=false``: NVRTC would otherwise contract
``a * b + c`` into one fused multiply-add (a single rounding), which NumPy never does. With
contraction off, IEEE division and square root (NVRTC's defaults) and the operation order of
the reference, the elementwise kernels compute the same float32/float64 values as NumPy.
The tests still compare within the stated tolerances (rtol 1e-6 in float32).

Differences from the other bodies:
  * ``cema_update`` and ``bop_update`` return the flip count as a 0-d ``uint64`` CuPy array
    instead of a Python int, so the call itself never waits for the device; ``int(n)`` reads
    it, which synchronises. (The optimisers' fused steps do not use the count: the trainer
    counts flips by comparing signs before and after the step, which works for every
    optimiser.)
  * CuPy arrays have no read-only flag, so "writeable" is not checked. The gradient may be a
    strided view: an ElementwiseKernel reads any layout.

Importing this module never imports CuPy. Each public function asks for CuPy on first use and
raises ``minibnn.errors.DeviceError`` (one line) when CuPy is missing or sees no CUDA device.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from minibnn.errors import DeviceError, ShapeError
from minibnn.kernels._common import (
    as_scalars, channel_vector, channel_view, check_inplace, check_momentum_buffer,
    check_packed_pair, check_packed_signs, check_step, check_tie, require_float, words_for)
from minibnn.kernels import reference as ref
from minibnn.kernels.reference import batch_statistics
from minibnn.kernels.registry import register

Array = Any      # a cupy.ndarray (CuPy is imported lazily, so no annotation can name it)

#: NVRTC options of every kernel here: no FMA contraction (see the module docstring).
_NVRTC_OPTIONS = ("--fmad=false",)

#: Threads per block of the elementwise optimiser kernels. Larger blocks mean fewer blocks,
#: hence fewer global atomics for the flip counters (one per block).
_OPT_BLOCK = 512

_CUPY: Any = None       # the cupy module, once a device has been seen


def _cp(fn: str) -> Any:
    """The ``cupy`` module, or a one-line DeviceError when there is no usable CUDA GPU."""
    global _CUPY
    if _CUPY is None:
        from minibnn.backend import gpu_available

        if not gpu_available():
            raise DeviceError(f"{fn} needs a CUDA GPU, but none is available "
                              f"(CuPy is not installed or sees no device)")
        import cupy

        _CUPY = cupy
    return _CUPY


class _Elementwise(NamedTuple):
    """The source of one ``cupy.ElementwiseKernel``: parameters, loop body, optional prologue
    (``loop_prep``, before the grid-stride loop) and epilogue (``after_loop``, after it)."""

    name: str
    in_params: str
    out_params: str
    body: str
    loop_prep: str = ""
    after_loop: str = ""


@lru_cache(maxsize=None)
def _elementwise(spec: _Elementwise) -> Any:
    """The compiled-on-first-call ElementwiseKernel of ``spec`` (one object per spec)."""
    return _cp(spec.name).ElementwiseKernel(
        spec.in_params, spec.out_params, spec.body, spec.name, options=_NVRTC_OPTIONS,
        loop_prep=spec.loop_prep, after_loop=spec.after_loop)


# --------------------------------------------------------------------------- BatchNorm + sign
# One thread per element; c = (i / L) % C is the channel of flat index i of an (N, C, L) array
# (L = length, C = channels in the kernel).
#     xhat = (x - mean[c]) * inv_std[c];  y = xhat * gamma[c] + beta[c];  s = y >= 0 ? +1 : -1
# (the operation order of batchnorm_forward, so s = sign_forward(batchnorm_forward(x)) exactly).

_BN_PARAMS = ("T x, raw T mean, raw T inv_std, raw T bn_gamma, raw T bn_beta, "
              "int64 length, int64 channels")
_BN_BODY = """
    const long long c = ((long long)i / length) % channels;
    const T xh = (x - mean[c]) * inv_std[c];     // xhat = (x - mean) * inv_std
    const T yv = xh * bn_gamma[c] + bn_beta[c];  // y = xhat * gamma + beta
    s = (yv >= (T)0) ? (T)1 : (T)-1;             // sign, sign(0) = +1
"""
_BN_SIGN_EVAL = _Elementwise("minibnn_bn_sign_eval", _BN_PARAMS, "T s", _BN_BODY)
_BN_SIGN_TRAIN = _Elementwise("minibnn_bn_sign_train", _BN_PARAMS, "T s, T y, T xhat",
                              _BN_BODY + """
    y = yv;
    xhat = xh;
""")


@register(ref.batchnorm_sign_eval, "cuda")
def batchnorm_sign_eval(x: Array, mean: Array, var: Array, gamma: Array | None = None,
                        beta: Array | None = None, eps: float = 1e-5) -> Array:
    """``sign(gamma * (x - mean) / sqrt(var + eps) + beta)`` per channel (axis 1), one launch.

    x is (N, C) or (N, C, H, W); see ``reference.batchnorm_sign_eval`` for the operation order.
    """
    fn = "batchnorm_sign_eval"
    cp = _cp(fn)
    require_float(fn, "x", x, "cupy")
    x3 = cp.ascontiguousarray(channel_view(fn, x))
    c = x3.shape[1]
    mean = channel_vector(fn, "mean", mean, x, 0.0, "cupy")
    var = channel_vector(fn, "var", var, x, 1.0, "cupy")
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "cupy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "cupy")
    inv_std = 1.0 / cp.sqrt(var + eps)             # (C,), computed as the reference does
    s = cp.empty_like(x3)
    _elementwise(_BN_SIGN_EVAL)(x3, mean, inv_std, gamma, beta, np.int64(x3.shape[2]),
                                np.int64(c), s)
    return s.reshape(x.shape)


@register(ref.batchnorm_sign_train, "cuda")
def batchnorm_sign_train(x: Array, gamma: Array | None = None, beta: Array | None = None,
                         eps: float = 1e-5) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Batch-statistics BatchNorm + sign: ``(s, y, xhat, mean, var, inv_std)`` as the reference.

    mean and the biased var are the reference's CuPy reductions (``batch_statistics``: the same
    bits as the reference body on CuPy arrays, NumPy's to rounding); normalise, affine and sign
    are one fused launch.
    """
    fn = "batchnorm_sign_train"
    cp = _cp(fn)
    require_float(fn, "x", x, "cupy")
    x3 = cp.ascontiguousarray(channel_view(fn, x))
    c = x3.shape[1]
    gamma = channel_vector(fn, "gamma", gamma, x, 1.0, "cupy")
    beta = channel_vector(fn, "beta", beta, x, 0.0, "cupy")
    mean, var = batch_statistics(x)               # biased var: divides by N*L
    inv_std = 1.0 / cp.sqrt(var + eps)
    s, y, xhat = cp.empty_like(x3), cp.empty_like(x3), cp.empty_like(x3)
    _elementwise(_BN_SIGN_TRAIN)(x3, mean, inv_std, gamma, beta, np.int64(x3.shape[2]),
                                 np.int64(c), s, y, xhat)
    return s.reshape(x.shape), y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


# --------------------------------------------------------------------------- optimiser steps
# One ElementwiseKernel launch per parameter group: every buffer is read once and written once,
# in place (buffers are passed as the kernel's output arguments). Scalars are cast to the array
# dtype on the host (as_scalars), exactly as the reference twins do.
#
# Flip counting (CEMA, Bop): each thread counts its own flips while it walks its grid-stride
# loop, the threads of a block add their counts in shared memory, and one thread per block adds
# the block's total to a global uint64 counter with atomicAdd. CuPy launches whole blocks and
# every thread of a block leaves the loop, so the __syncthreads() calls are reached by all.

_FLIP_COUNT_PREP = """
    __shared__ unsigned long long block_flips;
    if (threadIdx.x == 0) block_flips = 0;
    __syncthreads();
    unsigned long long my_flips = 0;
"""
_FLIP_COUNT_AFTER = """
    if (my_flips != 0) atomicAdd(&block_flips, my_flips);
    __syncthreads();
    if (threadIdx.x == 0 && block_flips != 0) atomicAdd(&flips[0], block_flips);
"""


# m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold
# (tie "positive": also b = +1 where v b == threshold exactly)
_CEMA = _Elementwise(
    "minibnn_cema_update",
    "T g, T c_m, T c_g, T c_v, T c_a, T thr, int32 tie_positive",
    "T b, T m, T v, raw uint64 flips",
    """
    const T mi = c_m * m + c_g * g;              // m = (1 - gamma) m + gamma g
    const T vi = c_v * v + c_a * mi;             // v = (1 - alpha) v + alpha m
    m = mi;
    v = vi;
    const T bi = b;
    const T score = vi * bi;
    if (score > thr || (tie_positive && score == thr && bi < (T)0)) {   // tie: b = +1
        b = -bi;                                 // flip
        my_flips += 1;
    }
""", _FLIP_COUNT_PREP, _FLIP_COUNT_AFTER)

# m = (1 - gamma) m + gamma g;  b = -b where m b > threshold
# (tie "positive": also b = +1 where m b == threshold exactly)
_BOP = _Elementwise(
    "minibnn_bop_update",
    "T g, T c_m, T c_g, T thr, int32 tie_positive",
    "T b, T m, raw uint64 flips",
    """
    const T mi = c_m * m + c_g * g;              // m = (1 - gamma) m + gamma g
    m = mi;
    const T bi = b;
    const T score = mi * bi;
    if (score > thr || (tie_positive && score == thr && bi < (T)0)) {   // tie: b = +1
        b = -bi;                                 // flip
        my_flips += 1;
    }
""", _FLIP_COUNT_PREP, _FLIP_COUNT_AFTER)

# coupled:   d = g + lam w;  m = mu m + (1 - dampening) d  (first step: m = d);  w += -lr m
# decoupled: m = mu m + (1 - dampening) g  (first step: m = g);  w += -lr (m + lam w)
_SGD_MOMENTUM = _Elementwise(
    "minibnn_sgd_momentum_update",
    "T g, T lam, T mu, T c_d, T neg_lr, int32 coupled_decay, int32 decoupled_decay, int32 first",
    "T w, T m",
    """
    const T wi = w;
    T d = g;
    if (coupled_decay) d = d + lam * wi;         // d = g + lam w
    const T mi = first ? d : mu * m + c_d * d;   // PyTorch: the first buffer is d, undamped
    m = mi;
    d = mi;
    if (decoupled_decay) d = d + lam * wi;       // step on m + lam w
    w = wi + neg_lr * d;                         // w = w + (-lr) d
""")

# no momentum:  w += -lr (g + lam w)   (coupled and decoupled decay coincide here)
_SGD_PLAIN = _Elementwise(
    "minibnn_sgd_update",
    "T g, T lam, T neg_lr, int32 coupled_decay, int32 decoupled_decay",
    "T w",
    """
    const T wi = w;
    T d = g;
    if (coupled_decay) d = d + lam * wi;         // d = g + lam w
    if (decoupled_decay) d = d + lam * wi;
    w = wi + neg_lr * d;                         // w = w + (-lr) d
""")

# x = g + lam w (coupled);  m = b1 m + (1 - b1) x;  v = b2 v + (1 - b2) x^2
# u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  w += -lr u   (decoupled: -lr (u + lam w))
_ADAM = _Elementwise(
    "minibnn_adam_update",
    "T g, T lam, T c_b1, T c_1b1, T c_b2, T c_1b2, T bc1, T bc2, T c_eps, T neg_lr, "
    "int32 coupled_decay, int32 decoupled_decay",
    "T w, T m, T v",
    """
    const T wi = w;
    T x = g;
    if (coupled_decay) x = x + lam * wi;         // x = g + lam w
    const T mi = c_b1 * m + c_1b1 * x;           // m = b1 m + (1 - b1) x
    const T vi = c_b2 * v + c_1b2 * (x * x);     // v = b2 v + (1 - b2) x^2
    m = mi;
    v = vi;
    T u = (mi / bc1) / (sqrt(vi / bc2) + c_eps); // bias-corrected Adam direction
    if (decoupled_decay) u = u + lam * wi;       // AdamW
    w = wi + neg_lr * u;                         // w = w + (-lr) u
""")


@register(ref.cema_update, "cuda")
def cema_update(b: Array, m: Array, v: Array, g: Array, alpha: float, gamma: float,
                threshold: float = 0.0, tie: str = "keep") -> Array:
    """One CEMA step on binary weights b (±1), in place, in one launch.

        m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold

    Returns the number of flips as a 0-d uint64 CuPy array (see ``reference.cema_update``).
    """
    fn = "cema_update"
    cp = _cp(fn)
    dt = check_inplace(fn, "cupy", g, b=b, m=m, v=v)
    tie_positive = check_tie(fn, tie)
    c_m, c_g, c_v, c_a, thr = as_scalars(dt, 1.0 - gamma, gamma, 1.0 - alpha, alpha, threshold)
    flips = cp.zeros(1, dtype=cp.uint64)
    _elementwise(_CEMA)(g, c_m, c_g, c_v, c_a, thr, np.int32(tie_positive), b, m, v, flips,
                        block_size=_OPT_BLOCK)
    return flips[0]


@register(ref.bop_update, "cuda")
def bop_update(b: Array, m: Array, g: Array, gamma: float, threshold: float,
               tie: str = "keep") -> Array:
    """One Bop step in place, one launch; returns the flip count as a 0-d uint64 CuPy array.

        m = (1 - gamma) m + gamma g;  b = -b where m b > threshold   (see ``reference.bop_update``)
    """
    fn = "bop_update"
    cp = _cp(fn)
    dt = check_inplace(fn, "cupy", g, b=b, m=m)
    tie_positive = check_tie(fn, tie)
    c_m, c_g, thr = as_scalars(dt, 1.0 - gamma, gamma, threshold)
    flips = cp.zeros(1, dtype=cp.uint64)
    _elementwise(_BOP)(g, c_m, c_g, thr, np.int32(tie_positive), b, m, flips,
                       block_size=_OPT_BLOCK)
    return flips[0]


@register(ref.sgd_update, "cuda")
def sgd_update(w: Array, m: Array | None, g: Array, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, dampening: float = 0.0, decoupled: bool = False,
               first_step: bool = False) -> None:
    """One SGD step on latent weights w, in place, one launch (PyTorch's SGD semantics).

    coupled:    d = g + lam w;  m = mu m + (1 - dampening) d;  w = w + (-lr) m
    decoupled:  m = mu m + (1 - dampening) g;  w = w + (-lr) (m + lam w)
    ``first_step=True`` sets m = d undamped; see ``reference.sgd_update``.
    """
    fn = "sgd_update"
    _cp(fn)
    check_momentum_buffer(fn, momentum, m)
    dt = check_inplace(fn, "cupy", g, w=w, m=m if momentum != 0.0 else None)
    lam, mu, c_d, neg_lr = as_scalars(dt, weight_decay, momentum, 1.0 - dampening, -lr)
    decay = weight_decay != 0.0
    coupled, dec = np.int32(decay and not decoupled), np.int32(decay and decoupled)
    if momentum != 0.0:
        first = np.int32(bool(first_step))
        _elementwise(_SGD_MOMENTUM)(g, lam, mu, c_d, neg_lr, coupled, dec, first, w, m,
                                    block_size=_OPT_BLOCK)
    else:
        _elementwise(_SGD_PLAIN)(g, lam, neg_lr, coupled, dec, w, block_size=_OPT_BLOCK)


@register(ref.adam_update, "cuda")
def adam_update(w: Array, m: Array, v: Array, g: Array, lr: float, step: int, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled: bool = False) -> None:
    """One Adam / AdamW step (PyTorch's), in place, one launch. ``step`` t >= 1.

    The bias corrections ``1 - b1^t`` and ``1 - b2^t`` are computed on the host in float64 and
    passed as scalars; see ``reference.adam_update`` for the formulas.
    """
    fn = "adam_update"
    _cp(fn)
    dt = check_inplace(fn, "cupy", g, w=w, m=m, v=v)
    check_step(fn, step)
    sc = as_scalars(dt, weight_decay, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1 ** step,
                    1.0 - b2 ** step, eps, -lr)
    decay = weight_decay != 0.0
    _elementwise(_ADAM)(g, *sc, np.int32(decay and not decoupled), np.int32(decay and decoupled),
                        w, m, v, block_size=_OPT_BLOCK)


# --------------------------------------------------------------------------- bit packing
# Layout (as reference.py): the last axis of length K is cut into W = ceil(K/64) uint64 words;
# element k lives in word k // 64 at bit k % 64 (least significant bit first). Bit 1 means +1
# (x >= 0, so sign(0) = +1), bit 0 means -1, and the W*64 - K pad bits of the last word are 0.

_PACK_SOURCE = r"""
// One warp per output word: lane j tests elements k0 + j and k0 + 32 + j of its row, and
// __ballot_sync puts lane j's answer in bit j, so word = hi_bits << 32 | lo_bits holds
// element k0 + t at bit t (LSB first). Elements past K give 0 (the pad bits).
extern "C" __global__ void minibnn_pack_signs_{NAME}(
        const {T}* __restrict__ x,                 // (rows, k), C-contiguous
        unsigned long long* __restrict__ out,      // (rows, nw)
        const long long rows, const long long k, const long long nw)
{
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= rows * nw) return;                 // uniform across the warp
    const long long r = warp / nw;
    const long long q = warp - r * nw;
    const {T}* row = x + r * k;
    const long long k0 = q * 64 + lane;
    const bool lo = (k0 < k) && (row[k0] >= ({T})0);
    const bool hi = (k0 + 32 < k) && (row[k0 + 32] >= ({T})0);
    const unsigned int lo_bits = __ballot_sync(0xffffffffu, lo);
    const unsigned int hi_bits = __ballot_sync(0xffffffffu, hi);
    if (lane == 0) out[warp] = ((unsigned long long)hi_bits << 32) | (unsigned long long)lo_bits;
}
"""

_PACK_BLOCK = 256   # threads per block (8 warps, 8 words)


@lru_cache(maxsize=None)
def _pack_kernel(dtype_name: str) -> Any:
    ctype = {"float32": "float", "float64": "double"}[dtype_name]
    source = _PACK_SOURCE.replace("{T}", ctype).replace("{NAME}", dtype_name)
    return _cp("pack_signs").RawKernel(source, f"minibnn_pack_signs_{dtype_name}",
                                       options=_NVRTC_OPTIONS)


@register(ref.pack_signs, "cuda")
def pack_signs(x: Array) -> Array:
    """Pack sign(x) along the last axis: (..., K) float -> (..., ceil(K/64)) uint64."""
    cp = _cp("pack_signs")
    require_float("pack_signs", "x", x, "cupy")
    if x.ndim < 1:
        raise ShapeError("pack_signs: x must have at least one axis, got a 0-d array")
    k = int(x.shape[-1])
    nw = words_for(k)
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    out = cp.empty(x.shape[:-1] + (nw,), dtype=cp.uint64)
    total_words = rows * nw
    if total_words == 0:
        return out
    xc = cp.ascontiguousarray(x)
    blocks = -(-total_words * 32 // _PACK_BLOCK)
    _pack_kernel(np.dtype(x.dtype).name)(
        (blocks,), (_PACK_BLOCK,), (xc, out, np.int64(rows), np.int64(k), np.int64(nw)))
    return out


# y[r, j] = bit (j % 64) of word p[r, j // 64] ? +1 : -1, over the flat index i = r*k + j
_UNPACK = _Elementwise(
    "minibnn_unpack_signs",
    "raw uint64 p, int64 k, int64 nw",
    "T y",
    """
    const long long r = (long long)i / k;
    const long long j = (long long)i - r * k;
    const unsigned long long word = p[r * nw + (j >> 6)];
    y = ((word >> (j & 63)) & 1ull) ? (T)1 : (T)-1;
""")


@register(ref.unpack_signs, "cuda")
def unpack_signs(p: Array, k: int, dtype: type | np.dtype = np.float32) -> Array:
    """Inverse of ``pack_signs``: (..., W) uint64 -> (..., k) array of ±1 in ``dtype``."""
    cp = _cp("unpack_signs")
    check_packed_signs("unpack_signs", p, k, "cupy")
    out = cp.empty(p.shape[:-1] + (int(k),), dtype=np.dtype(dtype))
    if out.size == 0:
        return out
    flat = cp.ascontiguousarray(p).reshape(-1)
    _elementwise(_UNPACK)(flat, np.int64(k), np.int64(p.shape[-1]), out)
    return out


# --------------------------------------------------------------------------- XNOR-popcount GEMM
# C[i, j] = sum_k a_ik b_jk for ±1 rows, from packed rows:
#     C[i, j] = (#agree) - (#disagree) = K - 2 popcount(a_i XOR b_j)     (exact, int32)
# Pad bits are 0 in both operands, so they XOR to 0 and are never counted: no mask is needed.
#
# Tiling (a plain shared-memory GEMM): a block of 16 x 16 threads computes a 64 x 64 tile of C,
# each thread a 4 x 4 micro-tile (rows ty + 16 i, columns tx + 16 j). The K dimension is walked
# 8 words (512 bits) at a time: the block copies the 64 x 8 words of A and of B into shared
# memory (zeros outside the matrices, which XOR to 0 and add nothing), then every thread does
# 4 x 4 x 8 XOR + __popcll. Shared rows are padded to 9 words so that the 16 different B rows
# a warp reads fall in 16 different bank pairs.

_XNOR_SOURCE = r"""
#define TILE 64      // rows of A (and of B) per block
#define KW 8         // uint64 words of K per shared-memory step
#define KW_PAD 9     // padded shared row length (bank-conflict-free reads)

extern "C" __global__ void __launch_bounds__(256) minibnn_xnor_gemm(
        const unsigned long long* __restrict__ a,   // (M, W) packed rows of A
        const unsigned long long* __restrict__ b,   // (N, W) packed rows of B
        int* __restrict__ c,                        // (M, N) output
        const long long M, const long long N, const long long W, const int k)
{
    __shared__ unsigned long long as[TILE][KW_PAD];
    __shared__ unsigned long long bs[TILE][KW_PAD];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * 16 + tx;
    const long long row0 = (long long)blockIdx.x * TILE;   // rows of C (and A)
    const long long col0 = (long long)blockIdx.y * TILE;   // columns of C (rows of B)
    int acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            acc[i][j] = 0;

    for (long long w0 = 0; w0 < W; w0 += KW) {
        // 256 threads copy 64 x 8 words of each operand; consecutive threads read
        // consecutive words of one row (coalesced).
        for (int l = tid; l < TILE * KW; l += 256) {
            const int r = l / KW, q = l % KW;
            const long long wq = w0 + q;
            const long long ga = row0 + r, gb = col0 + r;
            as[r][q] = (ga < M && wq < W) ? a[ga * W + wq] : 0ull;
            bs[r][q] = (gb < N && wq < W) ? b[gb * W + wq] : 0ull;
        }
        __syncthreads();
        for (int q = 0; q < KW; ++q) {
            unsigned long long av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = as[ty + 16 * i][q];
            for (int j = 0; j < 4; ++j) bv[j] = bs[tx + 16 * j][q];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j)
                    acc[i][j] += __popcll(av[i] ^ bv[j]);   // disagreements
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        const long long gi = row0 + ty + 16 * i;
        if (gi >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const long long gj = col0 + tx + 16 * j;
            if (gj < N) c[gi * N + gj] = k - 2 * acc[i][j];   // K - 2 popcount(a XOR b)
        }
    }
}
"""

_XNOR_TILE = 64


@lru_cache(maxsize=None)
def _xnor_kernel() -> Any:
    return _cp("xnor_gemm").RawKernel(_XNOR_SOURCE, "minibnn_xnor_gemm", options=_NVRTC_OPTIONS)


@register(ref.xnor_gemm, "cuda")
def xnor_gemm(a: Array, b: Array, k: int) -> Array:
    """``C = A @ B.T`` for ±1 matrices A (M, k), B (N, k) given packed: (M, W), (N, W) -> int32.

    ``C[i, j] = k - 2 * popcount(a_i XOR b_j)``, exact, one launch (see ``reference.xnor_gemm``;
    W may exceed ceil(k/64) when every tap of a convolution is padded to whole words).
    """
    cp = _cp("xnor_gemm")
    check_packed_pair("xnor_gemm", a, b, k, "cupy")
    if k >= 2 ** 31:
        raise ShapeError(f"xnor_gemm: k must be below 2**31 (int32 output), got {k}")
    m, n, nw = int(a.shape[0]), int(b.shape[0]), int(a.shape[1])
    out = cp.empty((m, n), dtype=cp.int32)
    if m == 0 or n == 0:
        return out
    if nw == 0:                                   # k = 0: the empty sum
        out.fill(0)
        return out
    grid = (-(-m // _XNOR_TILE), -(-n // _XNOR_TILE))
    _xnor_kernel()(grid, (16, 16), (cp.ascontiguousarray(a), cp.ascontiguousarray(b), out,
                                    np.int64(m), np.int64(n), np.int64(nw), np.int32(k)))
    return out
