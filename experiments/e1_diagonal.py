"""E1c: one diagonal of E1a's grid is one run, and CEMA is that run again.

Along ``lr * wd = const`` with the initial scale matched, ``(lr, wd, w0) -> (c lr, wd / c, c w0)``
scales every latent weight by ``c`` (docs/theory.md P5), so with power-of-two ``c`` in float64 the binary
weights, losses and accuracies are bit-identical.  CEMA at the mapped ``alpha = lr wd``,
``gamma = 1 - momentum``, started from the matched state (``theory.matched_initial_state``) of the
same initial weights, trains the same binary network step for step (P9).  This script trains the
three latent runs with ``minibnn.run.train.fit`` and the CEMA run with the trainer's own
``train_epoch`` (fit cannot start CEMA from a matched state), then compares them.

    python experiments/e1_diagonal.py --out experiments/out/e1_diagonal [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from minibnn import theory
from minibnn.run.files import load_run
from minibnn.run.spec import spec_from_options
from minibnn.run.train import (TrainState, evaluate, fit, load_data, model_from_spec,
                               optimizer_from_spec, train_epoch)

LR, WD, MOMENTUM, INIT_SCALE = 0.25, 2.0 ** -6, 0.75, 1.0       # alpha = 2^-8, gamma = 0.25
SCALES = (0.25, 1.0, 4.0)
BASE = dict(dataset="mnist", model="binary_mlp", hidden=[256, 256], dtype="float64", seed=0,
            shift=0)


def latent_options(c: float, epochs: int) -> dict:
    return dict(BASE, optimizer="sgd", lr=c * LR, weight_decay=WD / c, momentum=MOMENTUM,
                decoupled=True, init_scale=c * INIT_SCALE, epochs=epochs)


def cema_run(epochs: int) -> dict[str, list[float]]:
    """CEMA from the matched state of the c = 1 latent run's initial weights."""
    latent = spec_from_options(latent_options(1.0, epochs))
    cema = spec_from_options(dict(BASE, optimizer="cema", alpha=LR * WD, gamma=1.0 - MOMENTUM,
                                  epochs=epochs))
    ds = load_data(cema)
    shape, classes = tuple(ds.x_train.shape[1:]), ds.num_classes
    latent_model = model_from_spec(latent, shape, classes)
    model = model_from_spec(cema, shape, classes)
    steps = -(-len(ds.x_train) // cema.loop.batch_size)
    opt = optimizer_from_spec(cema, model, steps)
    rng = np.random.default_rng(cema.loop.seed)            # as fit: init first, then the loop
    w0, buffers = latent_model.init(rng, np.float64)
    binary = set(model.binary_names)
    params = {k: (np.where(v >= 0, 1.0, -1.0) if k in binary else v.copy()) for k, v in w0.items()}
    state = TrainState(params, buffers, opt.init(params), rng)
    for k in binary:
        m0, v0 = theory.matched_initial_state(w0[k], LR, MOMENTUM, WD, True)
        state.opt_state["binary"]["m"]["s"][k][...] = m0
        state.opt_state["binary"]["v"]["s"][k][...] = v0
    metrics: dict[str, list[float]] = {"train_loss": [], "test_acc": []}
    for _ in range(epochs):
        m = train_epoch(model, opt, state, ds.x_train, ds.y_train, cema)
        state.epoch += 1
        metrics["train_loss"].append(m["train_loss"])
        metrics["test_acc"].append(evaluate(model, state.params, state.buffers, ds.x_test,
                                            ds.y_test)[1])
        print(f"  epoch {state.epoch}/{epochs}  train loss {m['train_loss']:.4f}  "
              f"test acc {metrics['test_acc'][-1]:.4f}", flush=True)
    metrics["binary"] = {k: state.params[k] for k in binary}            # type: ignore
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/out/e1_diagonal")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="mnist", help="synthetic: a quick check")
    args = parser.parse_args()
    BASE["dataset"] = args.dataset
    os.makedirs(args.out, exist_ok=True)
    runs, seconds = {}, {}
    for c in SCALES:
        path = os.path.join(args.out, f"latent-c{c:g}.h5")
        if os.path.exists(path):
            os.remove(path)
        start = time.perf_counter()
        print(f"latent SGD, scale c = {c:g} ({args.epochs} epochs) -> {path}", flush=True)
        fit(spec_from_options(latent_options(c, args.epochs)), path, progress=False,
            log=lambda line: print("  " + line, flush=True))
        seconds[f"latent c={c:g}"] = time.perf_counter() - start
        runs[c] = load_run(path)
    start = time.perf_counter()
    print(f"CEMA from the matched state of the c = 1 run ({args.epochs} epochs)", flush=True)
    cema = cema_run(args.epochs)
    seconds["cema matched"] = time.perf_counter() - start
    ref = runs[1.0]
    binary = sorted(cema["binary"])
    result = {"epochs": args.epochs, "alpha": LR * WD, "gamma": 1.0 - MOMENTUM,
              "points": [{"lr": c * LR, "weight_decay": WD / c, "init_scale": c * INIT_SCALE}
                         for c in SCALES], "seconds": seconds, "latent": {}, "cema": {}}
    for c, run in runs.items():
        same_signs = all(np.array_equal(np.sign(run.checkpoint.params[k]) >= 0,
                                        np.sign(ref.checkpoint.params[k]) >= 0) for k in binary)
        scaled = all(np.array_equal(run.checkpoint.params[k], c * ref.checkpoint.params[k])
                     for k in binary)
        result["latent"][f"c={c:g}"] = {
            "train_loss": run.metrics["train_loss"], "test_acc": run.metrics["test_acc"],
            "binary_weights_equal": bool(same_signs), "latent_weights_exactly_c_times": bool(scaled),
            "losses_equal": run.metrics["train_loss"] == ref.metrics["train_loss"]}
    cema_signs = all(np.array_equal(cema["binary"][k] > 0, ref.checkpoint.params[k] >= 0)
                     for k in binary)
    result["cema"] = {"train_loss": cema["train_loss"], "test_acc": cema["test_acc"],
                      "binary_weights_equal": bool(cema_signs),
                      "losses_equal": cema["train_loss"] == ref.metrics["train_loss"]}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k in ("latent", "cema")}, indent=1))


if __name__ == "__main__":
    main()
