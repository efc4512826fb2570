"""Resident memory and epoch time of a training run: how much the data set costs in memory.

Runs `minibnn train` in a fresh process from each checkout given (default: this one), so two
versions can be compared in one run, and prints each run's peak resident memory (``ru_maxrss``),
wall time, epoch time and final test accuracy. With ``--runs`` > 1 the checkouts alternate.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_data_memory.py \\
        --checkout /path/to/old --checkout . -- --dataset cifar10 --data-dir D --model binary_cnn \\
        --width 16 --epochs 1 --val-split 5000 --shift 4 --fill zero --flip --threads 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _bench import blas_line, print_table, write_json  # (puts the checkout on sys.path)

_CHILD = """
import os, resource, sys, time
# this checkout's minibnn, not the current folder's ("python -c" puts the folder first)
sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p not in ("", os.getcwd())]
import minibnn
from minibnn.commands.cli import main
start = time.time()
rc = main(sys.argv[2:])
print("RESULT", rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time() - start,
      os.path.dirname(os.path.dirname(minibnn.__file__)))
sys.exit(rc)
"""


def measure(checkout: str, train_args: list[str], out: str) -> dict[str, object]:
    """One training run of ``checkout``'s minibnn (from the current folder, so relative paths
    in the options hold): peak RSS (MiB), seconds, epoch line."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(checkout), "train",
                           *train_args, "--out", out, "--overwrite", "--no-progress"],
                          capture_output=True, text=True)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not result:
        raise SystemExit(f"bench_data_memory: the run in {checkout} failed:\n{proc.stderr}")
    _, rc, rss_kib, seconds, imported = result[0].split()
    if os.path.realpath(imported) != os.path.realpath(checkout):
        raise SystemExit(f"bench_data_memory: asked for {checkout}, ran {imported}")
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    accuracy = [line for line in proc.stdout.splitlines() if line.startswith("final test")]
    return {"checkout": checkout, "max_rss_mib": int(rss_kib) / 1024, "seconds": float(seconds),
            "last_epoch": epochs[-1] if epochs else "", "final": accuracy[-1] if accuracy else ""}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", action="append", help="a minibnn checkout (repeatable)")
    ap.add_argument("--runs", type=int, default=1, help="rounds (checkouts alternate)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny synthetic run (checks the script)")
    args = ap.parse_args(argv[:split])
    train_args = argv[split + 1:] or (
        ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "200"] if args.smoke
        else ["--epochs", "1", "--threads", "1"])
    checkouts = args.checkout or ["."]
    print(blas_line())
    print(f"load average {os.getloadavg()[0]:.2f}; train {' '.join(train_args)}")
    records = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.runs):
            for i, checkout in enumerate(checkouts):
                records.append(measure(checkout, train_args, os.path.join(d, f"{r}-{i}.h5")))
    print_table("peak resident memory and time per run",
                ["checkout", "max RSS MiB", "seconds", "last epoch line"],
                [[r["checkout"], r["max_rss_mib"], r["seconds"], r["last_epoch"]]
                 for r in records])
    write_json(args.json, {"benchmark": "data_memory", "train_args": train_args,
                           "runs": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
