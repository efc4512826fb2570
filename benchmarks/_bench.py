"""Helpers shared by the benchmark scripts: interleaved timing, ratio tables, JSON output.

The machines are shared and noisy, so a benchmark never reports an absolute time as its
result: it times the candidates *interleaved* (one run of each per round, several rounds) in
one process and reports ratios of the best (minimum) times. Absolute times go to the JSON
file only, for the record.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

# One OpenMP wait policy for every library in the process (minibnn.kernels.cpu sets the same
# default): spinning workers made parallel regions cost milliseconds on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:          # run from a checkout without installing
    sys.path.insert(0, str(REPO))

# the machine facts a run file's provenance records too (one definition, in minibnn)
from minibnn.run.provenance import (BLAS_ENVIRONMENT, blas_environment,  # noqa: E402
                                    blas_info, cpu_features)


def try_import_torch() -> Any | None:
    """torch, or None when it is not installed (CI does not install it)."""
    try:
        import torch
    except Exception:
        return None
    return torch


def set_threads(torch: Any | None) -> int:
    """One thread count for every peer: Numba's (``NUMBA_NUM_THREADS``, default the cores) for
    minibnn (``minibnn.kernels.threads``: its GEMM blocks and Numba kernels) and PyTorch."""
    import numba

    from minibnn.kernels import threads

    n = numba.get_num_threads()
    threads.set_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return n


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     min_time: float = 0.0) -> dict[str, float]:
    """Best time in seconds of each callable; one call of each per round, ``repeats`` rounds.

    ``min_time`` > 0 keeps adding rounds until every candidate has run at least that long in
    total (short kernels get more samples).
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    best = {k: float("inf") for k in fns}
    total = {k: 0.0 for k in fns}
    rounds = 0
    while rounds < repeats or (min_time > 0 and min(total.values()) < min_time and rounds < 50 * repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
            total[k] += dt
        rounds += 1
    return best


def blas_line() -> str:
    """The machine line, then one naming the BLAS core type this run used and the environment
    that forces it."""
    libs = ", ".join(f"{b['internal_api']} {b['version']} core {b['architecture']}, "
                     f"{b['num_threads']} threads" for b in blas_info()) or "no BLAS found"
    return (f"{machine_line()}\nBLAS: {libs}; forced by the environment: "
            f"{blas_environment() or 'nothing'}")


def machine_line() -> str:
    """One line: the CPU's vector features, its cores and the load average now."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU vector features: {' '.join(cpu_features()) or 'unknown'}; "
            f"{os.cpu_count()} cores; load average {load}")


def machine_info(torch: Any | None = None) -> dict[str, Any]:
    import numba
    import numpy as np

    info = {"blas": blas_info(), "blas_environment": {
                k: os.environ.get(k) for k in BLAS_ENVIRONMENT},
            "python": platform.python_version(), "numpy": np.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "numba": numba.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "vector_features": cpu_features(), "load_average": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain-text table with right-aligned columns."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.rjust(w) for h, w in zip(cells[0], widths))
    print(line)
    print("-" * len(line))
    for r in cells[1:]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.2f}"
    return str(c)


def ratio(peer: float | None, ours: float) -> float | str:
    """peer time / our time (> 1 means we are faster); "n/a" when the peer did not run."""
    return "n/a" if peer is None else peer / ours


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        print(f"\nwrote {path}")
