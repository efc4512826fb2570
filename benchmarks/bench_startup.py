"""Cold and warm start: the price of Numba's first compilation, and what its cache saves.

Each row runs a command in a fresh Python process, twice against the same Numba cache
directory (``NUMBA_CACHE_DIR``, a new empty temporary folder per row): the first run is the
cold start (every ``@njit(cache=True)`` function it calls is compiled and written to the
cache), the second the warm start (the compiled code is loaded from the cache).

    import        python -c "import minibnn"                     (baseline: no compilation)
    kernels       every Numba body (kernels.get(op, "numba")) called once on tiny inputs
    cli train     python -m minibnn.commands.cli train on 256 synthetic images, one epoch, tiny MLP

Start-up times are wall-clock seconds of the whole process (they have no peer to divide by);
``cold / warm`` is the ratio the cache buys. Rows whose command is missing (e.g. no CLI yet)
are skipped with a message.

    python benchmarks/bench_startup.py [--smoke] [--repeats R] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from _bench import REPO, machine_info, print_table, write_json

KERNELS_SCRIPT = """
import numpy as np
from minibnn import kernels
k = lambda op: kernels.get(op, "numba")
x = np.ones((2, 3, 5, 5), np.float32)
cols = k("im2col")(x, 3, 3, 1, 1)
k("col2im")(cols, x.shape, 3, 3, 1, 1)
y, arg = k("maxpool2d_forward")(x, 2)
k("maxpool2d_backward")(y, arg, x.shape, 2)
c = np.ones(3, np.float32)
k("batchnorm_sign_eval")(x, c, c, c, c)
k("batchnorm_sign_train")(x, c, c)
v = np.ones(10, np.float32)
k("cema_update")(v.copy(), v.copy(), v.copy(), v, 0.1, 0.1)
k("bop_update")(v.copy(), v.copy(), v, 0.1, 0.0)
k("sgd_update")(v.copy(), v.copy(), v, 0.1, 0.9, 1e-4)
k("adam_update")(v.copy(), v.copy(), v.copy(), v, 0.1, 1)
p = k("pack_signs")(x.reshape(2, -1))
k("unpack_signs")(p, 75)
k("xnor_gemm")(p, p, 75)
wb, ws = kernels.pack_conv_weights(np.ones((4, 3, 3, 3), np.float32))
k("binary_conv2d")(k("pack_conv_input")(x), wb, ws, 3, 3, 3, 1, 1)
"""


def _cli_available() -> bool:
    try:
        import minibnn.commands.cli  # noqa: F401
    except Exception:
        return False
    return True


def _run(cmd: list[str], cache: str, cwd: str) -> float:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=path)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the import row only (for CI)")
    p.add_argument("--repeats", type=int, default=3, help="warm runs (best is reported)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    py = sys.executable
    rows_spec: dict[str, list[str]] = {"import": [py, "-c", "import minibnn"]}
    if not args.smoke:
        rows_spec["kernels"] = [py, "-c", KERNELS_SCRIPT]
        if _cli_available():
            rows_spec["cli train"] = [
                py, "-m", "minibnn", "train", "--dataset", "synthetic", "--epochs", "1",
                "--train-subset", "256", "--hidden", "64,64", "--batch-size", "64",
                "--no-progress", "--out", "run.h5"]
        else:
            print("minibnn.commands.cli is missing: the 'cli train' row is skipped")
    rows, records = [], {}
    for name, cmd in rows_spec.items():
        with tempfile.TemporaryDirectory(prefix="minibnn-startup-") as tmp:
            cache = os.path.join(tmp, "numba-cache")
            cold = _run(cmd, cache, tmp)
            warm = min(_run(cmd, cache, tmp) for _ in range(1 if args.smoke else args.repeats))
        rows.append([name, cold, warm, cold / warm])
        records[name] = {"cold_seconds": cold, "warm_seconds": warm, "command": cmd}
    print_table("start-up: fresh process, empty vs filled Numba cache (seconds)",
                ["command", "cold s", "warm s", "cold / warm"], rows)
    write_json(args.json, {"benchmark": "startup", "machine": machine_info(),
                           "rows": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
