"""The float GEMMs of the MLP's training step: minibnn's thread-invariant ``matmul`` vs NumPy.

``minibnn.kernels.threads.matmul`` cuts the output into fixed blocks, each one-threaded BLAS,
spread over the thread pool: the same bits on any thread count. ``numpy.matmul`` lets OpenBLAS
thread one call its own way (bits that may depend on the thread count). Both on the same
operands, same layout (transposed views as the layers pass them), the same thread count as
Numba. Shapes: binary_mlp at batch 128 with hidden (1024, 1024) on MNIST (784 inputs), the four
products its step runs in float (fc2's forward runs on bits, fc1 computes no input gradient):

  * fc1 forward ``x W1^T`` (128 x 784 x 1024), fc1 weight gradient ``dy^T x`` (1024 x 128 x 784),
  * fc2 input gradient ``dy W2`` (128 x 1024 x 1024), fc2 weight gradient ``dy^T s``
    (1024 x 128 x 1024).

Best of R calls in a row; every minibnn product first, then every NumPy one, then a check
that the two agree. Not interleaved: once OpenBLAS has run threaded, its worker threads slow
minibnn's pool for a good while after (``bench_interference.py`` shows the same on a step),
and a training step never runs threaded BLAS. ``ratio = numpy time / minibnn time`` (< 1: the
fixed blocks cost that much speed).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_gemm.py \
        [--repeats R] [--smoke] [--json out.json]
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from _bench import blas_line, machine_info, print_table, set_threads, time_interleaved, write_json

#: name -> (M, K, N) of ``a (M, K) @ b (K, N)``, and whether ``a``/``b`` are transposed views
SHAPES = {"fc1 forward": (128, 784, 1024, False, True),
          "fc1 weight gradient": (1024, 128, 784, True, False),
          "fc2 input gradient": (128, 1024, 1024, False, False),
          "fc2 weight gradient": (1024, 128, 1024, True, False)}
SMOKE = {"small": (16, 24, 40, False, True), "blocked": (300, 16, 200, True, False)}


def operands(m: int, k: int, n: int, a_t: bool, b_t: bool, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """float32 a (M, K) and b (K, N), each a transposed view of a contiguous array where the
    layer passes one (``W.T``, ``dy.T``)."""
    a = rng.standard_normal((k, m) if a_t else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if b_t else (k, n)).astype(np.float32)
    return (a.T if a_t else a), (b.T if b_t else b)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one round (for CI)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    from minibnn.kernels.threads import matmul

    threads = set_threads(None)
    print(blas_line())
    print(f"float32, {threads} threads, best of {1 if args.smoke else args.repeats} calls in a "
          "row, minibnn's first\n")
    rng = np.random.default_rng(0)
    shapes = SMOKE if args.smoke else SHAPES
    ops = {name: operands(*shape, rng) for name, shape in shapes.items()}
    repeats = 1 if args.smoke else args.repeats
    t = {name: {} for name in shapes}
    for key, product in (("minibnn", matmul), ("numpy", np.matmul)):    # minibnn's first
        for name, (a, b) in ops.items():
            t[name][key] = time_interleaved({key: lambda: product(a, b)}, repeats)[key]
    rows: list[list[Any]] = []
    records: dict[str, Any] = {}
    total = {"minibnn": 0.0, "numpy": 0.0}
    for name, (m, k, n, _, _) in shapes.items():
        a, b = ops[name]
        np.testing.assert_allclose(matmul(a, b), a @ b, rtol=1e-4, atol=1e-3)
        for key in total:
            total[key] += t[name][key]
        rows.append([name, f"{m} x {k} x {n}", t[name]["minibnn"] * 1e3,
                     t[name]["numpy"] * 1e3, t[name]["numpy"] / t[name]["minibnn"]])
        records[name] = {"shape": [m, k, n], "seconds": t[name]}
    rows.append(["all", "", total["minibnn"] * 1e3, total["numpy"] * 1e3,
                 total["numpy"] / total["minibnn"]])
    print_table("MLP step GEMMs: minibnn fixed blocks vs numpy.matmul",
                ["product", "M x K x N", "minibnn ms", "numpy ms", "ratio"], rows)
    write_json(args.json, {"benchmark": "gemm", "machine": machine_info(), "threads": threads,
                           "repeats": args.repeats, "products": records, "total": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
