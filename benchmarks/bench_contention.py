"""Contention: how much two trainings at once slow each other down, minibnn vs PyTorch.

A shared machine often runs two jobs at once (two sweep workers, a training beside a test run).
For each model and each framework this script runs S training steps (``bench_train.py``'s step:
the same network and update in both frameworks, batch 128, float32, default threads = the
cores) in a fresh process alone, then in two processes started together, and reports

    slowdown = (mean wall time of the two concurrent processes) / (wall time alone)

(1.0: no interference; 2.0: the two jobs simply share the cores, which is the best possible
when one job alone already uses every core). The processes build the model and take two
warm-up steps before a common start time, so compilation and loading are not counted.
Alone and concurrent runs alternate over ``--rounds`` rounds; the best (lowest) time of each
is used, as the other benchmarks do on this noisy machine.

    python benchmarks/bench_contention.py [--steps S] [--rounds R] [--only KEYS] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from _bench import (blas_line, machine_info, print_table, try_import_torch,
                    write_json)

#: name -> (model, input shape, overrides) of bench_train.py
MODELS = {
    "binary_mlp/MNIST": ("binary_mlp", (1, 28, 28), {}),
    "binary_cnn/CIFAR-10": ("binary_cnn", (3, 32, 32), {}),
}
SMOKE_MODELS = {
    "binary_mlp/MNIST": ("binary_mlp", (1, 28, 28), {"hidden": [64, 64]}),
}


def _child(framework: str, key: str, steps: int, start_at: float, smoke: bool) -> None:
    """Build one step, warm up, wait for ``start_at``, run ``steps`` steps; print the time."""
    import bench_train

    name, shape, over = (SMOKE_MODELS if smoke else MODELS)[key]
    batch = 16 if smoke else 128
    step, model, params = bench_train.minibnn_step(name, shape, batch, over)
    if framework == "torch":
        torch = try_import_torch()
        if torch is None:
            raise SystemExit("torch is not installed")
        step = bench_train.torch_step(torch, model, params, batch)
    for _ in range(2):
        step()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def _run(framework: str, key: str, steps: int, copies: int, smoke: bool) -> list[float]:
    """Wall times of ``copies`` child processes started together."""
    start_at = time.time() + (8.0 if smoke else 20.0)     # after imports, build and warm-up
    cmd = [sys.executable, __file__, "--child", framework, key, str(steps), str(start_at)]
    if smoke:
        cmd.append("--smoke")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    times = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{framework} {key} child failed (exit {p.returncode})")
        times.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    late = [t for t in times if t <= 0]
    if late:
        raise SystemExit("a child started late; raise the start delay")
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default=None, metavar="KEYS")
    p.add_argument("--smoke", action="store_true", help="a tiny MLP, few steps (for CI)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        framework, key, steps, start_at = args.child
        _child(framework, key, int(steps), float(start_at), args.smoke)
        return 0
    torch = try_import_torch()
    print(blas_line())
    table = SMOKE_MODELS if args.smoke else MODELS
    keys = list(table) if args.only is None else args.only.split(",")
    unknown = [k for k in keys if k not in table]
    if unknown:
        p.error(f"unknown model key(s) {unknown}; choose from {list(table)}")
    steps, rounds = (3, 1) if args.smoke else (args.steps, args.rounds)
    frameworks = ["minibnn"] + (["torch"] if torch is not None else [])
    rows, records = [], {}
    for key in keys:
        for fw in frameworks:
            alone, together = float("inf"), float("inf")
            runs: list[dict[str, Any]] = []
            for _ in range(rounds):
                a = _run(fw, key, steps, 1, args.smoke)
                c = _run(fw, key, steps, 2, args.smoke)
                runs.append({"alone": a, "concurrent": c})
                alone, together = min(alone, a[0]), min(together, sum(c) / len(c))
            rows.append([key, fw, alone, together, together / alone])
            records[f"{key} {fw}"] = {"best_alone_s": alone, "best_concurrent_mean_s": together,
                                      "slowdown": together / alone, "rounds": runs}
    print(f"\n{steps} steps per process, batch {16 if args.smoke else 128}, float32, "
          f"default threads ({os.cpu_count()} cores), best of {rounds} rounds; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    print_table("two concurrent trainings vs one alone",
                ["model", "framework", "alone s", "concurrent s", "slowdown"], rows)
    write_json(args.json, {"benchmark": "contention", "machine": machine_info(torch),
                           "steps": steps, "rounds": rounds, "results": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
