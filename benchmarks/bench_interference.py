"""Does a minibnn step slow down the PyTorch step timed after it? (bench_train's fairness check)

``bench_train.py`` interleaves the candidates (one step of each per round). If one candidate
leaves threads spinning after it returns (OpenBLAS's idle workers spin for a while after a
threaded GEMM), the candidate timed next runs on fewer free cores, and its time, hence the
ratio, is off. This script times the PyTorch step of each model

  * alone: rounds of the PyTorch step only;
  * interleaved: rounds of (minibnn step, PyTorch step), as bench_train.py does;

and prints ``interference = interleaved / alone`` (1.00: none). Run it on two commits to see
whether a change in bench_train's ratio comes from minibnn or from its effect on the peer.

    python benchmarks/bench_interference.py [--smoke] [--repeats R] [--json F]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from _bench import (blas_line, machine_info, print_table, set_threads, time_interleaved,
                    try_import_torch, write_json)

import bench_train


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models, batch 16, one round")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch = try_import_torch()
    if torch is None:
        print("torch is not installed: nothing to measure")
        return 0
    threads = set_threads(torch)
    print(blas_line())
    rows, records = [], {}
    models = bench_train.SMOKE_MODELS if args.smoke else bench_train.MODELS
    batch, repeats = (16, 1) if args.smoke else (128, args.repeats)
    for key, (name, shape, over) in models.items():
        step, model, params = bench_train.minibnn_step(name, shape, batch, over)
        peer = bench_train.torch_step(torch, model, params, batch)
        alone = time_interleaved({"torch": peer}, repeats)["torch"]
        both = time_interleaved({"minibnn": step, "torch": peer}, repeats)
        rows.append([key, 1e3 * both["minibnn"], 1e3 * alone, 1e3 * both["torch"],
                     both["torch"] / alone])
        records[key] = {"minibnn_s": both["minibnn"], "torch_alone_s": alone,
                        "torch_interleaved_s": both["torch"]}
    print(f"batch {batch}, float32, {threads} threads, best of {repeats} rounds")
    print_table("PyTorch step alone and interleaved with minibnn steps",
                ["model", "minibnn ms", "torch alone ms", "torch interleaved ms",
                 "interference"], rows)
    write_json(args.json, {"benchmark": "interference", "machine": machine_info(torch),
                           "repeats": repeats, "models": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
