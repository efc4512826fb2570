"""Every CUDA kernel minibnn can launch, as source text: one list, ``KERNELS``.

The launchers (``kernels/gpu.py``, ``kernels/gpu_channels_last.py``) compile these strings with
``cupy.RawKernel``; the build check (``kernels/cuda_build.py``, run in CI by
``tests/test_cuda_build.py``) compiles the very same strings with NVRTC, without a GPU. So what
CI compiles is exactly what a GPU would run. (The optimiser steps used to be
``cupy.ElementwiseKernel``s, whose final source CuPy assembles internally; they are written out
here as plain kernels instead, so that nothing a GPU runs is hidden from the build check.)

A kernel is a template: ``{NAME}`` is its entry function, and each type parameter (``{T}``,
``{Z}``) is replaced by a C type, once per ``variants`` entry (``instance``). Importing this
module needs neither CuPy nor a GPU.

Conventions shared by every kernel:
  * arrays are C-contiguous and indexed flat with 64-bit indices (``long long``);
  * elementwise kernels walk a grid-stride loop (``for i = thread; i < total; i += threads``),
    so any size runs with any grid (``gpu.launch`` caps the grid);
  * no atomics on floats anywhere: every float sum is taken in a fixed order, so a kernel gives
    the same bits on every run (the only atomics count flips, in integers);
  * compiled with ``--fmad=false`` (``NVRTC_OPTIONS``): NVRTC would otherwise contract
    ``a * b + c`` into a fused multiply-add, one rounding, which NumPy never does. With
    contraction off, IEEE division and square root and the operation order of the reference
    bodies, the arithmetic kernels compute NumPy's float32/float64 values (``exp`` and ``tanh``
    of the swish STE aside: CUDA's are within a few ulp).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

#: NVRTC options of every kernel (no FMA contraction: see the module docstring)
NVRTC_OPTIONS = ("--fmad=false",)

#: the C type of each NumPy dtype a kernel is instantiated for
CTYPES = {"float32": "float", "float64": "double", "int32": "int"}
FLOATS = (("float",), ("double",))


@dataclass(frozen=True)
class CudaKernel:
    """One kernel template: entry base ``name``, ``source`` with ``{NAME}`` and the type
    parameters ``params`` (e.g. ``("T",)``), and the C types of each instance (``variants``)."""

    name: str
    source: str
    params: tuple[str, ...] = ()
    variants: tuple[tuple[str, ...], ...] = ((),)

    def entry(self, *types: str) -> str:
        """The entry function of the instance for C ``types`` (``minibnn_x_float``)."""
        return "_".join((self.name,) + types)

    def instance(self, *types: str) -> tuple[str, str]:
        """``(entry, source)`` of the instance for C ``types``, which must be a variant."""
        if types not in self.variants:
            raise KeyError(f"{self.name} has no instance for {types}; it has {self.variants}")
        source = self.source.replace("{NAME}", self.entry(*types))
        for param, ctype in zip(self.params, types):
            source = source.replace("{" + param + "}", ctype)
        return self.entry(*types), source


# A grid-stride loop over `total` items (every thread starts at its global index).
_LOOP = ("for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;"
         " i += (long long)gridDim.x * blockDim.x)")

# --------------------------------------------------------------------------- optimiser steps
# In place on C-contiguous buffers of one dtype; scalars arrive cast to that dtype. Each is the
# operation order of its reference body (kernels/reference.py) and of the optim chains.
#
# Flip counting (CEMA, Bop): each thread counts its flips along its loop, a block adds its
# threads' counts in shared memory, one thread per block adds the block's total to the global
# counter. Every thread of a block leaves the loop, so every thread reaches __syncthreads().
_FLIPS_BEGIN = """
    __shared__ unsigned long long block_flips;
    if (threadIdx.x == 0) block_flips = 0;
    __syncthreads();
    unsigned long long my_flips = 0;
"""
_FLIPS_END = """
    if (my_flips != 0) atomicAdd(&block_flips, my_flips);
    __syncthreads();
    if (threadIdx.x == 0 && block_flips != 0) atomicAdd(flips, block_flips);
"""

# b = -b where stat b > thr; tie "positive": also b = +1 where stat b == thr exactly (the
# reference's _flip); true when b changed
_FLIP = r"""
template <typename T>
__device__ __forceinline__ bool flip_sign(T* b, const T stat, const T thr, const int tie_positive)
{
    const T bi = *b;
    const T score = stat * bi;
    if (score > thr || (tie_positive && score == thr && bi < (T)0)) {
        *b = -bi;
        return true;
    }
    return false;
}
"""

CEMA = CudaKernel("minibnn_cema_update", _FLIP + r"""
// m = (1 - gamma) m + gamma g;  v = (1 - alpha) v + alpha m;  b = -b where v b > threshold
// (tie "positive": also b = +1 where v b == threshold exactly)
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ g, {T}* __restrict__ b, {T}* __restrict__ m,
        {T}* __restrict__ v, unsigned long long* __restrict__ flips, const long long total,
        const {T} c_m, const {T} c_g, const {T} c_v, const {T} c_a, const {T} thr,
        const int tie_positive)
{""" + _FLIPS_BEGIN + "    " + _LOOP + r""" {
        const {T} mi = c_m * m[i] + c_g * g[i];     // m = (1 - gamma) m + gamma g
        const {T} vi = c_v * v[i] + c_a * mi;       // v = (1 - alpha) v + alpha m
        m[i] = mi;
        v[i] = vi;
        if (flip_sign(&b[i], vi, thr, tie_positive)) my_flips += 1;
    }""" + _FLIPS_END + "}\n", ("T",), FLOATS)

BOP = CudaKernel("minibnn_bop_update", _FLIP + r"""
// m = (1 - gamma) m + gamma g;  b = -b where m b > threshold
// (tie "positive": also b = +1 where m b == threshold exactly)
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ g, {T}* __restrict__ b, {T}* __restrict__ m,
        unsigned long long* __restrict__ flips, const long long total,
        const {T} c_m, const {T} c_g, const {T} thr, const int tie_positive)
{""" + _FLIPS_BEGIN + "    " + _LOOP + r""" {
        const {T} mi = c_m * m[i] + c_g * g[i];     // m = (1 - gamma) m + gamma g
        m[i] = mi;
        if (flip_sign(&b[i], mi, thr, tie_positive)) my_flips += 1;
    }""" + _FLIPS_END + "}\n", ("T",), FLOATS)

SGD = CudaKernel("minibnn_sgd_update", r"""
// coupled decay:   d = g + lam w;  m = mu m + (1 - dampening) d  (first step: m = d);  w += -lr m
// decoupled decay: m = mu m + (1 - dampening) g  (first step: m = g);  w += -lr (m + lam w)
// no momentum (has_momentum == 0; m is never touched): w += -lr (g + lam w)
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ g, {T}* __restrict__ w, {T}* __restrict__ m,
        const long long total, const {T} lam, const {T} mu, const {T} c_d, const {T} neg_lr,
        const int coupled_decay, const int decoupled_decay, const int has_momentum,
        const int first)
{
    """ + _LOOP + r""" {
        const {T} wi = w[i];
        {T} d = g[i];
        if (coupled_decay) d = d + lam * wi;        // d = g + lam w
        if (has_momentum) {
            const {T} mi = first ? d : mu * m[i] + c_d * d;   // PyTorch: first buffer is d
            m[i] = mi;
            d = mi;
        }
        if (decoupled_decay) d = d + lam * wi;      // step on m + lam w
        w[i] = wi + neg_lr * d;                     // w = w + (-lr) d
    }
}
""", ("T",), FLOATS)

ADAM = CudaKernel("minibnn_adam_update", r"""
// x = g + lam w (coupled);  m = b1 m + (1 - b1) x;  v = b2 v + (1 - b2) x^2
// u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  w += -lr u  (decoupled: -lr (u + lam w))
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ g, {T}* __restrict__ w, {T}* __restrict__ m,
        {T}* __restrict__ v, const long long total, const {T} lam, const {T} c_b1,
        const {T} c_1b1, const {T} c_b2, const {T} c_1b2, const {T} bc1, const {T} bc2,
        const {T} c_eps, const {T} neg_lr, const int coupled_decay, const int decoupled_decay)
{
    """ + _LOOP + r""" {
        const {T} wi = w[i];
        {T} x = g[i];
        if (coupled_decay) x = x + lam * wi;        // x = g + lam w
        const {T} mi = c_b1 * m[i] + c_1b1 * x;     // m = b1 m + (1 - b1) x
        const {T} vi = c_b2 * v[i] + c_1b2 * (x * x);   // v = b2 v + (1 - b2) x^2
        m[i] = mi;
        v[i] = vi;
        {T} u = (mi / bc1) / (sqrt(vi / bc2) + c_eps);  // bias-corrected Adam direction
        if (decoupled_decay) u = u + lam * wi;      // AdamW
        w[i] = wi + neg_lr * u;                     // w = w + (-lr) u
    }
}
""", ("T",), FLOATS)

# --------------------------------------------------------------------------- BatchNorm + sign
BN_SIGN = CudaKernel("minibnn_batchnorm_sign", r"""
// x is (N, C, L) flat; c = (i / L) % C is the channel of element i.
//     xhat = (x - mean[c]) * inv_std[c];  y = xhat * gamma[c] + beta[c];  s = y >= 0 ? +1 : -1
// (batchnorm_forward's order, so s = sign_forward(batchnorm_forward(x)) exactly). Train mode
// (train != 0) also writes y and xhat; eval mode never touches y_out and xhat_out.
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ x, const {T}* __restrict__ mean,
        const {T}* __restrict__ inv_std, const {T}* __restrict__ gamma,
        const {T}* __restrict__ beta, {T}* __restrict__ s, {T}* __restrict__ y_out,
        {T}* __restrict__ xhat_out, const long long total, const long long length,
        const long long channels, const int train)
{
    """ + _LOOP + r""" {
        const long long c = (i / length) % channels;
        const {T} xh = (x[i] - mean[c]) * inv_std[c];     // xhat = (x - mean) * inv_std
        const {T} yv = xh * gamma[c] + beta[c];           // y = xhat * gamma + beta
        s[i] = (yv >= ({T})0) ? ({T})1 : ({T})-1;         // sign, sign(0) = +1
        if (train) {
            y_out[i] = yv;
            xhat_out[i] = xh;
        }
    }
}
""", ("T",), FLOATS)

# --------------------------------------------------------------------------- bit packing
# Layout (reference.pack_signs): the last axis of length K is cut into W = ceil(K/64) uint64
# words; element k lives in word k // 64 at bit k % 64 (least significant bit first). Bit 1
# means +1 (x >= 0), bit 0 means -1, and the W*64 - K pad bits of the last word are 0.
PACK_SIGNS = CudaKernel("minibnn_pack_signs", r"""
// One warp per output word: lane j tests elements k0 + j and k0 + 32 + j of its row, and
// __ballot_sync puts lane j's answer in bit j, so word = hi_bits << 32 | lo_bits holds
// element k0 + t at bit t (LSB first). Elements past K give 0 (the pad bits).
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ x,                 // (rows, k)
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
""", ("T",), FLOATS)

UNPACK_SIGNS = CudaKernel("minibnn_unpack_signs", r"""
// y[r, j] = bit (j % 64) of word p[r, j / 64] ? +1 : -1, over the flat index i = r k + j
extern "C" __global__ void {NAME}(
        const unsigned long long* __restrict__ p, {T}* __restrict__ y, const long long total,
        const long long k, const long long nw)
{
    """ + _LOOP + r""" {
        const long long r = i / k;
        const long long j = i - r * k;
        const unsigned long long word = p[r * nw + (j >> 6)];
        y[i] = ((word >> (j & 63)) & 1ull) ? ({T})1 : ({T})-1;
    }
}
""", ("T",), FLOATS)

# --------------------------------------------------------------------------- XNOR-popcount GEMM
XNOR_GEMM = CudaKernel("minibnn_xnor_gemm", r"""
// C[i, j] = sum_k a_ik b_jk for +-1 rows, from packed rows:
//     C[i, j] = (#agree) - (#disagree) = K - 2 popcount(a_i XOR b_j)     (exact, int32)
// Pad bits are 0 in both operands, so they XOR to 0 and are never counted.
//
// A block of 16 x 16 threads computes one 64 x 64 tile of C, each thread a 4 x 4 micro-tile
// (rows ty + 16 i, columns tx + 16 j). The tiles are numbered along grid axis x only
// (tile = blockIdx.x: row tile tile / col_tiles, column tile tile % col_tiles), whose limit
// is 2^31 - 1 blocks, so M and N are bounded only by memory. K is walked 8 words (512 bits)
// at a time: the block copies 64 x 8 words of A and of B into shared memory (zeros outside
// the matrices, which XOR to 0), then every thread does 4 x 4 x 8 XOR + __popcll. Shared rows
// are padded to 9 words so that the 16 B rows a warp reads fall in 16 different bank pairs.
#define TILE 64
#define KW 8
#define KW_PAD 9

extern "C" __global__ void __launch_bounds__(256) {NAME}(
        const unsigned long long* __restrict__ a,   // (M, W) packed rows of A
        const unsigned long long* __restrict__ b,   // (N, W) packed rows of B
        int* __restrict__ c,                        // (M, N) output
        const long long M, const long long N, const long long W, const int k,
        const long long col_tiles)
{
    __shared__ unsigned long long as[TILE][KW_PAD];
    __shared__ unsigned long long bs[TILE][KW_PAD];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * 16 + tx;
    const long long tile = blockIdx.x;
    const long long row0 = (tile / col_tiles) * TILE;   // rows of C (and of A)
    const long long col0 = (tile % col_tiles) * TILE;   // columns of C (rows of B)
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
""")

def _unflatten_nhwc(channel: str, channels: str, x: str, width: str, y: str, height: str) -> str:
    """C code naming the coordinates of flat index ``i`` of an NHWC array (N, height, width,
    channels): sample ``ni``, row ``y``, column ``x``, channel ``channel`` (C is fastest)."""
    return f"""        const int {channel} = (int)(i % {channels});
        long long t = i / {channels};
        const int {x} = (int)(t % {width});
        t /= {width};
        const int {y} = (int)(t % {height});
        const long long ni = t / {height};
"""


# --------------------------------------------------------------------------- binary convolution
BINARY_CONV_NHWC = CudaKernel("minibnn_binary_conv2d_nhwc", r"""
// y[n, oh, ow, o] = sum over the taps (i, j) inside the image of (C - 2 popcount(x XOR w)):
// x (N, H, W, nw) packed pixels, w (O, kH*kW*nw) packed taps (tap-major, nw words each).
// A tap on the zero padding contributes 0 (the true convolution with zero padding), which is
// what reference.binary_conv2d's wsum correction gives; the integer result is the same.
// One thread per output; o varies fastest, so the threads of a warp read one pixel's words.
extern "C" __global__ void {NAME}(
        const unsigned long long* __restrict__ x, const unsigned long long* __restrict__ w,
        int* __restrict__ y, const long long total, const int h, const int wd, const int nw,
        const int c, const int o, const int kh, const int kw, const int stride, const int pad,
        const int oh, const int ow)
{
    """ + _LOOP + r""" {
""" + _unflatten_nhwc("oc", "o", "xo", "ow", "yo", "oh") + r"""        int acc = 0;
        for (int ti = 0; ti < kh; ++ti) {
            const int hi = yo * stride + ti - pad;
            if (hi < 0 || hi >= h) continue;
            for (int tj = 0; tj < kw; ++tj) {
                const int wi = xo * stride + tj - pad;
                if (wi < 0 || wi >= wd) continue;
                const unsigned long long* xr = x + ((ni * h + hi) * wd + wi) * nw;
                const unsigned long long* wr = w + ((long long)oc * kh * kw + ti * kw + tj) * nw;
                int disagree = 0;
                for (int q = 0; q < nw; ++q) disagree += __popcll(xr[q] ^ wr[q]);
                acc += c - 2 * disagree;
            }
        }
        y[i] = acc;
    }
}
""")

# --------------------------------------------------------------------------- channels-last ops
# NHWC arrays; columns (N*OH*OW, kH*kW*C) in tap-major order: row (n*OH + oh)*OW + ow, column
# (i*kW + j)*C + c (kernels/channels_last.py). Every output element is computed by one thread
# and written once: sums are gathered in a fixed order, never scattered with atomics.
_DECODE_COLUMN = r"""
        const long long kk = (long long)kh * kw * c;
        const long long k = i % kk, r = i / kk;
        const int ci = (int)(k % c), tap = (int)(k / c);
        const int ti = tap / kw, tj = tap % kw;
        const int xo = (int)(r % ow);
        const int yo = (int)((r / ow) % oh);
        const long long ni = r / ((long long)ow * oh);
        const int hi = yo * stride + ti - pad, wi = xo * stride + tj - pad;
        const bool inside = hi >= 0 && hi < h && wi >= 0 && wi < w;
        const long long pixel = (ni * h + hi) * w + wi;"""

IM2COL_NHWC = CudaKernel("minibnn_im2col_nhwc", r"""
// cols[r, (i*kW + j)*C + c] = x[n, oh*s + i - p, ow*s + j - p, c], 0 outside the image
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ x, {T}* __restrict__ cols, const long long total,
        const int h, const int w, const int c, const int kh, const int kw, const int stride,
        const int pad, const int oh, const int ow)
{
    """ + _LOOP + " {" + _DECODE_COLUMN + r"""
        cols[i] = inside ? x[pixel * c + ci] : ({T})0;
    }
}
""", ("T",), FLOATS)

IM2COL_NHWC_BITS = CudaKernel("minibnn_im2col_nhwc_bits", r"""
// The same columns from packed signs x (N, H, W, nw): +-1 from bit c % 64 of word c / 64,
// 0 outside the image (zero padding of the unpacked input, as the reference unpacks first).
extern "C" __global__ void {NAME}(
        const unsigned long long* __restrict__ x, {T}* __restrict__ cols,
        const long long total, const int h, const int w, const int c, const int nw,
        const int kh, const int kw, const int stride, const int pad, const int oh, const int ow)
{
    """ + _LOOP + " {" + _DECODE_COLUMN + r"""
        const unsigned long long word = inside ? x[pixel * nw + (ci >> 6)] : 0ull;
        cols[i] = !inside ? ({T})0 : (((word >> (ci & 63)) & 1ull) ? ({T})1 : ({T})-1);
    }
}
""", ("T",), FLOATS)

COL2IM_NHWC = CudaKernel("minibnn_col2im_nhwc", r"""
// Adjoint of im2col, gathered: dx[n, hh, ww, c] = sum over the taps (i, j) whose output pixel
// (oh, ow) = ((hh + p - i) / s, (ww + p - j) / s) exists of dcols[row(n, oh, ow), (i*kW+j)*C+c],
// added in (i, j) order from 0: the order of reference.col2im_nhwc, so the same bits.
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ dcols, {T}* __restrict__ dx, const long long total,
        const int h, const int w, const int c, const int kh, const int kw, const int stride,
        const int pad, const int oh, const int ow)
{
    """ + _LOOP + r""" {
""" + _unflatten_nhwc("ci", "c", "ww", "w", "hh", "h") + r"""        const long long kk = (long long)kh * kw * c;
        {T} acc = ({T})0;
        for (int ti = 0; ti < kh; ++ti) {
            const int yy = hh + pad - ti;
            if (yy < 0 || yy % stride != 0 || yy / stride >= oh) continue;
            for (int tj = 0; tj < kw; ++tj) {
                const int xx = ww + pad - tj;
                if (xx < 0 || xx % stride != 0 || xx / stride >= ow) continue;
                const long long row = (ni * oh + yy / stride) * ow + xx / stride;
                acc += dcols[row * kk + (long long)(ti * kw + tj) * c + ci];
            }
        }
        dx[i] = acc;
    }
}
""", ("T",), FLOATS)

MAXPOOL_NHWC_FORWARD = CudaKernel("minibnn_maxpool2d_nhwc_forward", r"""
// y[n, oh, ow, c] = max of the k x k window, argmax = i*k + j of its first maximum in
// row-major order (NumPy's argmax: a NaN counts as the maximum).
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ x, {T}* __restrict__ y, unsigned char* __restrict__ arg,
        const long long total, const int h, const int w, const int c, const int k,
        const int stride, const int oh, const int ow)
{
    """ + _LOOP + r""" {
""" + _unflatten_nhwc("ci", "c", "xo", "ow", "yo", "oh") + r"""        const long long y0 = (long long)yo * stride, x0 = (long long)xo * stride;
        const {T}* base = x + ((ni * h + y0) * w + x0) * c + ci;     // the window's corner
        {T} best = base[0];
        int best_at = 0;
        for (int ti = 0; ti < k; ++ti)
            for (int tj = 0; tj < k; ++tj) {
                const {T} v = base[((long long)ti * w + tj) * c];
                if (best == best && (v > best || v != v)) {   // first max; NaN wins
                    best = v;
                    best_at = ti * k + tj;
                }
            }
        y[i] = best;
        arg[i] = (unsigned char)best_at;
    }
}
""", ("T",), (("int",), ("float",), ("double",)))

MAXPOOL_NHWC_BACKWARD = CudaKernel("minibnn_maxpool2d_nhwc_backward", r"""
// dx[n, hh, ww, c] = sum of dy over the windows whose argmax is this pixel, gathered in
// (i, j) order from 0 (the order of the reference's loop over taps).
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ dy, const unsigned char* __restrict__ arg, {T}* __restrict__ dx,
        const long long total, const int h, const int w, const int c, const int k,
        const int stride, const int oh, const int ow)
{
    """ + _LOOP + r""" {
""" + _unflatten_nhwc("ci", "c", "ww", "w", "hh", "h") + r"""        {T} acc = ({T})0;
        for (int ti = 0; ti < k; ++ti) {
            const int yy = hh - ti;
            if (yy < 0 || yy % stride != 0 || yy / stride >= oh) continue;
            for (int tj = 0; tj < k; ++tj) {
                const int xx = ww - tj;
                if (xx < 0 || xx % stride != 0 || xx / stride >= ow) continue;
                const long long o = ((ni * oh + yy / stride) * ow + xx / stride) * c + ci;
                if (arg[o] == ti * k + tj) acc += dy[o];
            }
        }
        dx[i] = acc;
    }
}
""", ("T",), FLOATS)

# BatchNorm over the rows z (M, C) of a channels-last layer (kernels/channels_last.py): z is
# int32 counts or float ({Z}), the statistics and affine are in {T}.
_BN_ROW = r"""
// y = ((T)z - mean[c]) * inv_std[c] * gamma[c] + beta[c], in the reference's order
__device__ __forceinline__ {T} bn_row_y(const {Z}* z, const {T}* mean, const {T}* inv_std,
                                        const {T}* gamma, const {T}* beta, long long at, int c)
{
    return (({T})z[at] - mean[c]) * inv_std[c] * gamma[c] + beta[c];
}
"""

BN_SIGN_PACK = CudaKernel("minibnn_batchnorm_sign_pack", _BN_ROW + r"""
// bits (M, ceil(C/64)) = pack_signs(y): one warp per word, as minibnn_pack_signs.
extern "C" __global__ void {NAME}(
        const {Z}* __restrict__ z, const {T}* __restrict__ mean, const {T}* __restrict__ inv_std,
        const {T}* __restrict__ gamma, const {T}* __restrict__ beta,
        unsigned long long* __restrict__ bits, const long long rows, const int c, const int nw)
{
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= rows * nw) return;                 // uniform across the warp
    const long long r = warp / nw;
    const int q = (int)(warp - r * nw);
    const int c0 = q * 64 + lane;
    const bool lo = c0 < c && bn_row_y(z, mean, inv_std, gamma, beta, r * c + c0, c0) >= ({T})0;
    const bool hi = c0 + 32 < c
                    && bn_row_y(z, mean, inv_std, gamma, beta, r * c + c0 + 32, c0 + 32) >= ({T})0;
    const unsigned int lo_bits = __ballot_sync(0xffffffffu, lo);
    const unsigned int hi_bits = __ballot_sync(0xffffffffu, hi);
    if (lane == 0) bits[warp] = ((unsigned long long)hi_bits << 32) | (unsigned long long)lo_bits;
}
""", ("Z", "T"), (("int", "float"), ("float", "float"), ("int", "double"),
                  ("double", "double")))

# The STE table of ops/sign.py, one value at a time (code = STE_NAMES.index(ste)):
#   identity 1;  clipped |y| <= 1;  approx max(0, 2 - 2|y|);  swish, with t = beta y and
#   e = exp(-|t|):  2 beta e (2 - t tanh(t/2)) / (1 + e)^2
_STE = r"""
__device__ __forceinline__ {T} ste_grad(const {T} y, const int code, const {T} beta)
{
    if (code == 0) return ({T})1;
    if (code == 1) return fabs(y) <= ({T})1 ? ({T})1 : ({T})0;
    if (code == 2) {                           // max(2 - 2|y|, 0), NaN kept (np.maximum's rule)
        const {T} a = ({T})2 - ({T})2 * fabs(y);
        return (a > ({T})0 || a != a) ? a : ({T})0;
    }
    const {T} t = beta * y;
    const {T} e = exp(-fabs(t));
    const {T} den = ({T})1 + e;
    return (({T})2 * beta) * e * (({T})2 - t * tanh(({T})0.5 * t)) / (den * den);
}
"""

BN_SIGN_PACK_GRAD = CudaKernel("minibnn_batchnorm_sign_pack_grad", _STE + r"""
// d = ds * ste'(y) and d * xhat per element, with xhat = ((T)z - mean) * inv_std and
// y = xhat * gamma + beta (the sums over rows are then taken by CuPy, in float64)
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ ds, const {Z}* __restrict__ z, const {T}* __restrict__ mean,
        const {T}* __restrict__ inv_std, const {T}* __restrict__ gamma,
        const {T}* __restrict__ beta, {T}* __restrict__ d_out, {T}* __restrict__ dxhat_out,
        const long long total, const int c, const int code, const {T} ste_beta)
{
    """ + _LOOP + r""" {
        const int ci = (int)(i % c);
        const {T} xh = (({T})z[i] - mean[ci]) * inv_std[ci];
        const {T} d = ds[i] * ste_grad(xh * gamma[ci] + beta[ci], code, ste_beta);
        d_out[i] = d;
        dxhat_out[i] = d * xh;
    }
}
""", ("Z", "T"), BN_SIGN_PACK.variants)

BN_SIGN_PACK_DZ = CudaKernel("minibnn_batchnorm_sign_pack_dz", r"""
// dz = gamma * inv_std * (d - mean(d) - xhat * mean(d * xhat))   (batchnorm_backward)
extern "C" __global__ void {NAME}(
        const {T}* __restrict__ d, const {Z}* __restrict__ z, const {T}* __restrict__ mean,
        const {T}* __restrict__ inv_std, const {T}* __restrict__ gamma,
        const {T}* __restrict__ mean_d, const {T}* __restrict__ mean_dxhat,
        {T}* __restrict__ dz, const long long total, const int c)
{
    """ + _LOOP + r""" {
        const int ci = (int)(i % c);
        const {T} xh = (({T})z[i] - mean[ci]) * inv_std[ci];
        dz[i] = gamma[ci] * inv_std[ci] * (d[i] - mean_d[ci] - xh * mean_dxhat[ci]);
    }
}
""", ("Z", "T"), BN_SIGN_PACK.variants)

#: every kernel minibnn can launch (the build check compiles each instance of each)
KERNELS: tuple[CudaKernel, ...] = (
    CEMA, BOP, SGD, ADAM, BN_SIGN, PACK_SIGNS, UNPACK_SIGNS, XNOR_GEMM, BINARY_CONV_NHWC,
    IM2COL_NHWC, IM2COL_NHWC_BITS, COL2IM_NHWC, MAXPOOL_NHWC_FORWARD, MAXPOOL_NHWC_BACKWARD,
    BN_SIGN_PACK, BN_SIGN_PACK_GRAD, BN_SIGN_PACK_DZ)


def all_instances() -> Iterator[tuple[str, str]]:
    """``(entry, source)`` of every instance of every kernel in ``KERNELS``."""
    for kernel in KERNELS:
        for types in kernel.variants:
            yield kernel.instance(*types)
