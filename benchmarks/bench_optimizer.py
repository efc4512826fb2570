"""Fused in-place optimiser steps: achieved memory bandwidth as a fraction of a plain copy.

For each fused Numba step (the ``"numba"`` bodies of ``cema_update``, ``bop_update``,
``sgd_update``, ``adam_update`` in ``minibnn.kernels``) over P parameters (10M by default):

    bandwidth = bytes moved / time,   bytes = (arrays read + arrays written) * P * itemsize,

compared with ``np.copyto(dst, src)`` over P elements in the same run (1 read + 1 write), so
``fraction = bandwidth / copy bandwidth`` (target >= 50 %). Counted traffic per element:

    cema  reads b, m, v, g; writes m, v            6 arrays
    bop   reads b, m, g;    writes m               4 arrays
    sgd   reads w, m, g;    writes w, m            5 arrays  (momentum, weight decay)
    adam  reads w, m, v, g; writes w, m, v         7 arrays

The binary weights b are written only where they flip; those writes are not counted (so the
figure is a lower bound). For reference the table also gives the speed-up over the NumPy twin
(the ``"numpy"`` reference bodies: one temporary per operation) and over PyTorch's optimiser
on the same tensors (``torch.optim.SGD`` / ``Adam`` with ``foreach=False``, and
``fused=True`` for Adam where this torch build supports it on the CPU).

    python benchmarks/bench_optimizer.py [--smoke] [--params P] [--dtype float32|float64]
                                         [--repeats R] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import numpy as np

from _bench import (blas_line, machine_info, print_table, ratio, set_threads, time_interleaved,
                    try_import_torch, write_json)


def _steps(backend: str, p: int, dtype: np.dtype, rng: np.random.Generator
           ) -> dict[str, tuple[int, Callable[[], Any]]]:
    """name -> (arrays moved per element, one in-place step) for one kernel backend."""
    from minibnn import kernels

    def op(name: str) -> Callable[..., Any]:
        return kernels.get(f"{name}_update", backend)

    def arr() -> np.ndarray:
        return (rng.standard_normal(p) * 1e-3).astype(dtype)

    b = np.where(rng.standard_normal(p) >= 0, 1.0, -1.0).astype(dtype)
    m1, v1, g = arr(), np.zeros(p, dtype), arr()
    b2, m2 = b.copy(), arr()
    w3, m3 = arr(), arr()
    w4, m4, v4 = arr(), arr(), np.abs(arr())
    return {
        "cema": (6, lambda: op("cema")(b, m1, v1, g, 1e-3, 1e-2)),
        "bop": (4, lambda: op("bop")(b2, m2, g, 1e-2, 1e-8)),
        "sgd": (5, lambda: op("sgd")(w3, m3, g, 1e-3, 0.9, 5e-4)),
        "adam": (7, lambda: op("adam")(w4, m4, v4, g, 1e-3, 10)),
    }


def _torch_steps(torch: Any, p: int, dtype: np.dtype) -> dict[str, Callable[[], Any]]:
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    out = {}
    for name, make in (("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9,
                                                           weight_decay=5e-4, foreach=False)),
                       ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False))):
        w = torch.nn.Parameter(torch.randn(p, dtype=tdt) * 1e-3)
        w.grad = torch.randn(p, dtype=tdt) * 1e-3
        opt = make([w])
        opt.step()
        out[name] = opt.step
    try:
        w = torch.nn.Parameter(torch.randn(p, dtype=tdt) * 1e-3)
        w.grad = torch.randn(p, dtype=tdt) * 1e-3
        fused = torch.optim.Adam([w], lr=1e-3, fused=True)
        fused.step()
        out["adam (fused)"] = fused.step
    except Exception:
        pass
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="100k parameters, one round (for CI)")
    p.add_argument("--params", type=int, default=10_000_000)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch = try_import_torch()
    threads = set_threads(torch)
    print(blas_line())
    n = 100_000 if args.smoke else args.params
    repeats = 1 if args.smoke else args.repeats
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    fused = _steps("numba", n, dtype, rng)
    numpy_twin = _steps("numpy", n, dtype, rng)
    torch_steps = _torch_steps(torch, n, dtype) if torch is not None else {}
    src, dst = rng.standard_normal(n).astype(dtype), np.empty(n, dtype)
    fns: dict[str, Callable[[], Any]] = {"copy": lambda: np.copyto(dst, src)}
    fns.update({f"fused {k}": f for k, (_, f) in fused.items()})
    fns.update({f"numpy {k}": f for k, (_, f) in numpy_twin.items()})
    fns.update({f"torch {k}": f for k, f in torch_steps.items()})
    t = time_interleaved(fns, repeats)
    item = dtype.itemsize
    copy_bw = 2 * n * item / t["copy"]
    rows, records = [], {}
    for k, (arrays, _) in fused.items():
        bw = arrays * n * item / t[f"fused {k}"]
        frac = bw / copy_bw
        peer = t.get(f"torch {k}")
        rows.append([k, arrays, f"{100 * frac:.0f}%", ">=50%", "yes" if frac >= 0.5 else "NO",
                     t[f"numpy {k}"] / t[f"fused {k}"], ratio(peer, t[f"fused {k}"])])
        records[k] = {"arrays": arrays, "fraction_of_copy": frac, "seconds": t[f"fused {k}"],
                      "numpy_seconds": t[f"numpy {k}"], "torch_seconds": peer}
    if "torch adam (fused)" in t:
        rows.append(["adam vs torch fused", 7, "", "", "", "",
                     t["torch adam (fused)"] / t["fused adam"]])
    print(f"{n} parameters, {dtype.name}, {threads} threads, best of {repeats} interleaved rounds")
    print_table("fused optimiser step: bandwidth as a fraction of np.copyto (same run)",
                ["step", "arrays", "of copy", "target", "met", "vs numpy twin", "vs torch"], rows)
    write_json(args.json, {"benchmark": "optimizer", "machine": machine_info(torch),
                           "params": n, "dtype": dtype.name, "repeats": repeats,
                           "copy_seconds": t["copy"], "steps": records,
                           "torch_seconds": {k: v for k, v in t.items() if k.startswith("torch")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
