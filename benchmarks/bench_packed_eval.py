"""Bit-packed inference vs the float eval path: binary_cnn and birealnet on CIFAR-10-shaped input.

What ``minibnn eval RUN.h5 --packed --check`` times, per model: the float model's eval forward
(``Model.forward(..., train=False)``: channels-last groups, XNOR counts of weights signed and
packed on every call, BatchNorm+sign in float) against the packed model's
(``PackedModel.forward``: weights packed once, BatchNorm+sign folded into integer thresholds,
a binary conv with its max-pool and thresholds one pass from packed signs to packed signs), on
the same images in the same batches as ``evaluate_packed``.

Models: binary_cnn at widths 16, 32, 64, 128 and birealnet at widths 16 and 32, input
3x32x32, float32, **random weights** (``Model.init``, seed 0) and random BatchNorm running
statistics: the timing does not depend on trained values, and a random state folds into
thresholds like a trained one. Before timing, the packed logits are checked to be
bit-identical to the float logits on every image (``identical``).

Best of R interleaved rounds (one pass over the images each, float then packed, after a
warm-up); ``packed/float`` = packed time / float time (< 1: packed is faster) and images per
second of each. Absolute times go to the JSON only.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_packed_eval.py \
        [--images N] [--batch B] [--repeats R] [--only binary_cnn-16,...] [--smoke] \
        [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import numpy as np

from _bench import (REPO, blas_line, machine_info, print_table, set_threads, time_interleaved,
                    write_json)

#: (model, width) pairs timed by default, and the tiny ones of --smoke
CASES = [("binary_cnn", 16), ("binary_cnn", 32), ("binary_cnn", 64), ("binary_cnn", 128),
         ("birealnet", 16), ("birealnet", 32)]
SMOKE_CASES = [("binary_cnn", 4), ("birealnet", 4)]
INPUT_SHAPE = (3, 32, 32)


def random_state(name: str, width: int, rng: np.random.Generator
                 ) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model with random float32 weights and random BatchNorm running statistics."""
    from minibnn.nn.models import build_model

    model = build_model(name, input_shape=INPUT_SHAPE, num_classes=10, width=width)
    params, buffers = model.init(rng, np.float32)
    for key, value in buffers.items():
        buffers[key] = (rng.uniform(0.5, 2.0, value.shape) if key.endswith("running_var")
                        else rng.normal(0.0, 1.0, value.shape)).astype(np.float32)
    return model, params, buffers


def bench_case(name: str, width: int, images: int, batch: int, repeats: int,
               rng: np.random.Generator) -> dict[str, Any]:
    from minibnn.nn.packed import pack_model

    model, params, buffers = random_state(name, width, rng)
    packed = pack_model(model, params, buffers)
    x = rng.standard_normal((images,) + INPUT_SHAPE, dtype=np.float32)
    batches = [x[s:s + batch] for s in range(0, images, batch)]

    def float_eval() -> list[np.ndarray]:
        return [model.forward(params, buffers, xb, train=False)[0] for xb in batches]

    def packed_eval() -> list[np.ndarray]:
        return [packed.forward(xb) for xb in batches]

    identical = all(np.array_equal(a, b) for a, b in zip(float_eval(), packed_eval()))
    t = time_interleaved({"float": float_eval, "packed": packed_eval}, repeats)
    return {"model": name, "width": width, "images": images, "batch": batch,
            "identical": identical, "seconds": t, "packed_over_float": t["packed"] / t["float"],
            "images_per_second": {k: images / v for k, v in t.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500, help="images per model (default 500)")
    p.add_argument("--batch", type=int, default=500, help="images per forward call")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per model")
    p.add_argument("--only", default="", help="comma-separated MODEL-WIDTH keys to run, e.g. "
                   "binary_cnn-16,birealnet-32")
    p.add_argument("--smoke", action="store_true", help="tiny models, 8 images, one round")
    p.add_argument("--json", default=None,
                   help="write the results here (default for a full run: "
                        "benchmarks/results/packed-eval-<threads>t.json)")
    args = p.parse_args(argv)
    threads = set_threads(None)
    print(blas_line())
    cases = SMOKE_CASES if args.smoke else CASES
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {f"{name}-{width}" for name, width in cases}
        if unknown:
            p.error(f"--only: unknown keys {', '.join(sorted(unknown))}; expected some of "
                    f"{', '.join(f'{name}-{width}' for name, width in cases)}")
        cases = [c for c in cases if f"{c[0]}-{c[1]}" in keep]
    images, batch = (8, 4) if args.smoke else (args.images, args.batch)
    repeats = 1 if args.smoke else args.repeats
    print(f"threads: {threads} (Numba and minibnn's GEMM blocks); {images} random 3x32x32 "
          f"images per model in batches of {batch}; random weights (timing only); best of "
          f"{repeats} interleaved rounds")
    rng = np.random.default_rng(0)
    records = [bench_case(name, width, images, batch, repeats, rng) for name, width in cases]
    rows = [[f"{r['model']} w{r['width']}", r["images_per_second"]["float"],
             r["images_per_second"]["packed"], r["packed_over_float"],
             "yes" if r["identical"] else "NO"] for r in records]
    print_table("packed vs float eval forward (images/s; packed/float < 1: packed is faster)",
                ["model", "float img/s", "packed img/s", "packed/float", "identical"], rows)
    out = args.json
    if out is None and not args.smoke and not args.only:   # only a full run replaces it
        out = str(REPO / "benchmarks" / "results" / f"packed-eval-{threads}t.json")
    write_json(out, {"benchmark": "packed_eval", "machine": machine_info(), "images": images,
                     "batch": batch, "repeats": repeats, "weights": "random (timing only)",
                     "results": records})
    return 0 if all(r["identical"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
