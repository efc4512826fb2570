"""Shared helpers for the prototypes: env check, BLAS info, interleaved timing."""
import os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
assert "OPENBLAS_CORETYPE" not in os.environ, "run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "..", ".."))      # the repository root
sys.path.insert(0, os.path.join(_HERE, "..", ".."))            # benchmarks/ (_bench.py)
import numpy as np

def blas_info():
    import threadpoolctl
    for d in threadpoolctl.threadpool_info():
        if d["user_api"] == "blas":
            print(f"BLAS: {d['internal_api']} {d.get('version')} arch={d.get('architecture')} threads={d['num_threads']}")

def interleaved(fns, repeats, warmup=1):
    """best seconds of each callable; one call each per round."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
    return best

def shapes(width, batch=128, hw=32):
    ch = [width, width, 2*width, 2*width, 4*width, 4*width]
    out, c_in, h = [], 3, hw
    for i in range(6):
        out.append((f"conv{i+1}", batch, c_in, ch[i], h))
        c_in = ch[i]
        if i % 2 == 1:
            h //= 2
    return out
