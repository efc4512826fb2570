"""Wall time of one CIFAR-10-shaped training epoch of binary_cnn (the trainer's own loop).

Runs ``minibnn.run.train.train_epoch`` (shuffling, batching, the default optimisers: CEMA on the
+-1 weights, Adam on the real ones, flip counts) over random float32 images of CIFAR-10's
shape (3x32x32, 10 classes) at batch 128 and the CLI's default STE, after one warm-up step.
With ``--images N`` below 50,000 it times N images and scales to the 50,000 of a CIFAR-10
training epoch (printed as projected). Absolute times, for the README's epoch column: the
ratios against PyTorch come from ``bench_train.py``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_epoch.py \
        [--widths 32,128] [--images N] [--smoke] [--json out.json]
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from _bench import blas_line, machine_info, print_table, set_threads, write_json

CIFAR_TRAIN = 50_000


def epoch_seconds(width: int, images: int, batch: int) -> float:
    from minibnn.run.spec import spec_from_options
    from minibnn.run.train import (TrainState, model_from_spec, optimizer_from_spec, train_epoch,
                                   train_step)

    spec = spec_from_options({"model": "binary_cnn", "dataset": "synthetic", "width": width,
                              "batch_size": batch, "shift": 0, "epochs": 1})
    model = model_from_spec(spec, (3, 32, 32), 10)
    steps = -(-images // batch)
    optimizer = optimizer_from_spec(spec, model, steps_per_epoch=steps)
    rng = np.random.default_rng(0)
    params, buffers = model.init(rng, np.float32)
    state = TrainState(dict(params), dict(buffers), optimizer.init(params), rng)
    x = rng.standard_normal((images, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, images)
    train_step(model, optimizer, state, x[:batch], y[:batch])      # warm-up (compiles kernels)
    t0 = time.perf_counter()
    train_epoch(model, optimizer, state, x, y, spec)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="32,128")
    p.add_argument("--images", type=int, default=CIFAR_TRAIN)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="width 4, 64 images (for CI)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    widths = [4] if args.smoke else [int(v) for v in args.widths.split(",")]
    images = 64 if args.smoke else args.images
    threads = set_threads(None)
    print(blas_line())
    rows, records = [], {}
    for width in widths:
        s = epoch_seconds(width, images, args.batch)
        per_epoch = s * CIFAR_TRAIN / images
        records[f"width {width}"] = {"seconds": s, "images": images,
                                     "seconds_per_cifar_epoch": per_epoch}
        rows.append([f"binary_cnn width {width}", images, s, CIFAR_TRAIN / per_epoch,
                     per_epoch / 60, "measured" if images == CIFAR_TRAIN else "projected"])
    print_table(f"CIFAR-10-shaped epoch, batch {args.batch}, float32, {threads} threads",
                ["model", "images timed", "seconds", "img/s", "min / 50k epoch", ""], rows)
    write_json(args.json, {"benchmark": "epoch", "machine": machine_info(),
                           "batch": args.batch, "results": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
