"""Numba kernels vs their NumPy reference twins, fused BatchNorm + sign, the convolution choice.

Each row of the first table times one op's Numba body (``kernels.get(op, "numba")``) against
its reference body (``kernels.get(op, "numpy")``) on the same inputs (speed-up = NumPy time /
Numba time), on the shapes of a CIFAR-size binary CNN layer. The second table times what the
layers run for a BatchNorm followed by a Sign: the two functional layers one after the other
against ``batchnorm_sign_forward`` (one fused kernel call, the same bits), in train and eval
mode. The last table decides how the float convolution is
computed: NumPy im2col + GEMM, Numba im2col + the same GEMM, or a direct Numba convolution
(written here, in its best loop order: shifted-window multiply-adds with the innermost loop
along a row), against ``torch.nn.functional.conv2d`` for scale.

    python benchmarks/bench_kernels.py [--smoke] [--repeats R] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
from numba import njit, prange

from _bench import (blas_line, machine_info, print_table, ratio, set_threads, time_interleaved,
                    try_import_torch, write_json)


# Not cached on disk: this script runs both as __main__ and imported by the smoke test, and a
# Numba cache entry records the module it was compiled in, so a shared entry breaks the other.
@njit(parallel=True)
def direct_conv2d(x, w, padding):  # type: ignore[no-untyped-def]
    """``y[n, o] = sum_{c,i,j} w[o, c, i, j] * xpad[n, c, i:i+OH, j:j+OW]`` (stride 1)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for job in prange(n * o):
        ni = job // o
        oc = job - ni * o
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    wv = w[oc, ci, i, j]
                    x_lo = max(0, padding - j)
                    x_hi = min(ow, wd + padding - j)
                    for yo in range(oh):
                        hi = yo + i - padding
                        if hi < 0 or hi >= h:
                            continue
                        for xo in range(x_lo, x_hi):
                            y[ni, oc, yo, xo] += wv * x[ni, ci, hi, xo + j - padding]
    return y


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one round (for CI)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from minibnn import kernels
    from minibnn.nn import functional as F

    def ref(op: str):  # type: ignore[no-untyped-def]
        return kernels.get(op, "numpy")

    def nb(op: str):  # type: ignore[no-untyped-def]
        return kernels.get(op, "numba")

    torch = try_import_torch()
    threads = set_threads(torch)
    print(blas_line())
    repeats = 1 if args.smoke else args.repeats
    n, c, o, h, w = (2, 4, 4, 6, 6) if args.smoke else (32, 64, 64, 32, 32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, 3, 3), dtype=np.float32) * 0.1
    cols = ref("im2col")(x, 3, 3, 1, 1)
    y_pool, arg = ref("maxpool2d_forward")(x, 2, 2)
    dy_pool = rng.standard_normal(y_pool.shape, dtype=np.float32)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    cases = {
        "im2col 3x3 pad 1": lambda k: k("im2col")(x, 3, 3, 1, 1),
        "col2im 3x3 pad 1": lambda k: k("col2im")(cols, x.shape, 3, 3, 1, 1),
        "maxpool2d_forward 2x2": lambda k: k("maxpool2d_forward")(x, 2, 2),
        "maxpool2d_backward 2x2": lambda k: k("maxpool2d_backward")(dy_pool, arg, x.shape, 2, 2),
        "batchnorm_sign_eval": lambda k: k("batchnorm_sign_eval")(x, mean, var, gamma, beta),
        "batchnorm_sign_train": lambda k: k("batchnorm_sign_train")(x, gamma, beta),
        "pack_signs": lambda k: k("pack_signs")(x),
    }
    rows, records = [], {}
    for name, run in cases.items():
        t = time_interleaved({"numpy": lambda: run(ref), "numba": lambda: run(nb)}, repeats,
                             min_time=0.1)
        rows.append([name, t["numpy"] / t["numba"]])
        records[name] = t
    print(f"x {x.shape} float32, {threads} threads, best of {repeats} interleaved rounds")
    print_table("Numba kernel vs NumPy reference twin (speed-up)", ["kernel", "speed-up"], rows)

    bn_rows, bn_records = [], {}
    for mode, train in (("train", True), ("eval", False)):
        def layers() -> None:
            y, _ = F.batchnorm_forward(x, gamma, beta, mean, var, train=train)
            F.sign_forward(y, "approx")
        t = time_interleaved({"layers": layers, "fused": lambda: F.batchnorm_sign_forward(
            x, gamma, beta, mean, var, train=train, ste="approx")}, repeats, min_time=0.1)
        bn_rows.append([mode, t["layers"] / t["fused"]])
        bn_records[mode] = t
    print_table("BatchNorm + sign: fused vs the two layers (speed-up, auto backend)",
                ["mode", "speed-up"], bn_rows)

    w2 = wt.reshape(o, -1).T
    conv = {"numpy im2col + GEMM": lambda: ref("im2col")(x, 3, 3, 1, 1) @ w2,
            "numba im2col + GEMM": lambda: nb("im2col")(x, 3, 3, 1, 1) @ w2,
            "numba direct": lambda: direct_conv2d(x, wt, 1)}
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(wt)
        conv["torch conv2d"] = lambda: torch.nn.functional.conv2d(tx, tw, padding=1)
    y_ref = (ref("im2col")(x, 3, 3, 1, 1) @ w2).reshape(n, h, w, o).transpose(0, 3, 1, 2)
    if not np.allclose(direct_conv2d(x, wt, 1), y_ref, rtol=1e-4, atol=1e-4):
        raise AssertionError("direct_conv2d disagrees with im2col + GEMM")
    tc = time_interleaved(conv, repeats, min_time=0.1)
    base = tc["numpy im2col + GEMM"]
    crows = [[k, base / v, ratio(tc.get("torch conv2d"), v)] for k, v in tc.items()]
    print_table(f"float conv 3x3 pad 1, {n}x{c}x{h}x{w} -> {o} (speed-up over NumPy im2col+GEMM)",
                ["algorithm", "vs numpy path", "vs torch"], crows)
    write_json(args.json, {"benchmark": "kernels", "machine": machine_info(torch),
                           "repeats": repeats, "shape": [n, c, o, h, w], "kernels": records,
                           "batchnorm_sign": bn_records, "conv": tc})
    return 0


if __name__ == "__main__":
    sys.exit(main())
