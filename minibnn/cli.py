"""The ``minibnn`` command: train, evaluate, explain hyperparameters, verify the theory.

    minibnn train                      # binary MLP on MNIST with CEMA (+ Adam), defaults only
    minibnn train --optimizer sgd --lr 0.1 --momentum 0.9    # latent weights, for comparison
    minibnn train --resume runs/binary_mlp-mnist-cema.h5
    minibnn eval runs/binary_mlp-mnist-cema.h5
    minibnn export runs/binary_mlp-mnist-cema.h5 --packed   # bits -> runs/...-cema.packed.h5
    minibnn eval runs/binary_mlp-mnist-cema.h5 --packed --check  # XNOR inference vs float
    minibnn explain --lr 0.1 --momentum 0.9 --weight-decay 5e-4

Every user error is printed as one line ``minibnn: error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

from minibnn import __version__
from minibnn.backend import device_module
from minibnn.config import (BACKEND_NAMES, DATASET_NAMES, DTYPE_NAMES, MODEL_NAMES,
                            OPTIMIZER_NAMES, SCHEDULE_NAMES, STE_NAMES, TrainConfig)
from minibnn.errors import MinibnnError
from minibnn.io import check_writable

DEFAULTS = TrainConfig()

DESCRIPTION = """\
minibnn trains binary neural networks (weights and activations in {-1, +1}) with explicit,
readable NumPy code.  Binary weights are trained either by the paper's filter optimiser CEMA
(two exponential moving averages of the gradient; a weight flips when the filtered gradient
agrees with its sign) or by a classic optimiser on latent real weights (--optimizer sgd|adam).
Everything else (first/last layer, BatchNorm) is trained with Adam.
"""


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (defaults: binary MLP, MNIST, CEMA + Adam)",
                       description="Train a binary network.  With no flags: binary MLP on MNIST, "
                       "CEMA for binary weights, Adam for real ones.  Writes a run file "
                       "(config, per-epoch metrics, checkpoint) after every epoch.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    g = p.add_argument_group("what to train")
    g.add_argument("--model", default=d.model, choices=MODEL_NAMES)
    g.add_argument("--dataset", default=d.dataset, choices=DATASET_NAMES)
    g.add_argument("--data-dir", default=None, help="folder with dataset files you already have")
    g.add_argument("--hidden", type=_int_list, default=d.hidden,
                   help="binary_mlp widths, comma-separated (first one real-valued layer)")
    g.add_argument("--width", type=int, default=d.width, help="base width of binary_cnn/birealnet")
    g.add_argument("--act-ste", default=d.act_ste, choices=STE_NAMES,
                   help="straight-through estimator of the activation sign")
    g.add_argument("--weight-ste", default=d.weight_ste, choices=STE_NAMES,
                   help="STE of sign(w) for latent weights")
    g.add_argument("--scale", action="store_true",
                   help="XNOR-style per-channel mean|w| weight scale (latent optimisers only)")
    g.add_argument("--init-scale", type=float, default=d.init_scale,
                   help="multiplier on the latent weights' initial range")
    g = p.add_argument_group("binary-weight optimiser")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZER_NAMES,
                   help="cema/bop/bop2nd act on +-1 weights; sgd/adam on latent real weights")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help="CEMA: rate of the second EMA (decayed by --schedule)")
    g.add_argument("--gamma", type=float, default=d.gamma,
                   help="CEMA/Bop: rate of the first (momentum) EMA")
    g.add_argument("--threshold", type=float, default=d.threshold, help="Bop flip threshold")
    g.add_argument("--sigma", type=float, default=d.sigma, help="Bop2nd second-moment rate")
    g.add_argument("--lr", type=float, default=d.lr, help="latent optimiser learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="latent SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="latent weight decay")
    g.add_argument("--decoupled", action="store_true",
                   help="decoupled weight decay (SGDW/AdamW) instead of coupled L2")
    g = p.add_argument_group("real-valued parameters (Adam)")
    g.add_argument("--real-lr", type=float, default=d.real_lr)
    g.add_argument("--real-weight-decay", type=float, default=d.real_weight_decay)
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULE_NAMES,
                   help="decay of alpha / lr / real-lr, stepped once per epoch")
    g = p.add_argument_group("loop")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--shift", type=int, default=d.shift,
                   help="augment: translate training images by up to N pixels (0 = off)")
    g.add_argument("--train-subset", type=int, default=None,
                   help="use only the first N training images")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--dtype", default=d.dtype, choices=DTYPE_NAMES)
    g.add_argument("--device", default=d.device, choices=("cpu", "gpu"))
    g.add_argument("--backend", default=d.backend, choices=BACKEND_NAMES,
                   help="CPU kernels: numba (fused, fast) or numpy (the readable reference)")
    g = p.add_argument_group("run file")
    g.add_argument("--out", default=None,
                   help="run file to write (default runs/<model>-<dataset>-<optimizer>.h5)")
    g.add_argument("--resume", metavar="RUN.h5", default=None,
                   help="continue the run stored in RUN.h5 (its config is used)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing run file instead of refusing")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop after N epochs in this invocation (resume later)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = set(_config_fields())
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**values).validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from minibnn.train import fit

    if args.resume:
        changed = [f"--{name.replace('_', '-')}" for name in _config_fields()
                   if getattr(args, name) != getattr(DEFAULTS, name)]
        changed += [flag for flag, given in (("--out", args.out), ("--overwrite", args.overwrite))
                    if given]
        if changed:
            raise MinibnnError(f"--resume continues the stored run with its own config; "
                               f"drop {', '.join(changed)}")
        fit(None, args.resume, resume=True, progress=not args.no_progress,
            stop_after=args.stop_after)
        return 0
    config = _config_from_args(args)
    device_module(config.device)          # fail now, before loading data, when there is no GPU
    out = args.out or f"runs/{config.model}-{config.dataset}-{config.optimizer}.h5"
    check_writable(out)
    if os.path.exists(out) and not args.overwrite:
        raise MinibnnError(f"{out} exists: continue it with --resume {out}, or pass --overwrite")
    storage = "+-1 weights" if config.binary_storage == "binary" else "latent real weights"
    print(f"training {config.model} on {config.dataset}: {config.optimizer} on {storage}, "
          f"Adam on real parameters -> {out}")
    metrics = fit(config, out, progress=not args.no_progress, stop_after=args.stop_after)
    if metrics.get("test_acc"):
        print(f"final test accuracy {metrics['test_acc'][-1]:.4f}; run file {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from minibnn.packed import is_packed_file
    from minibnn.train import evaluate_run

    if args.packed or is_packed_file(args.run):
        return _eval_packed(args)
    if args.check:
        raise MinibnnError("--check compares packed with float inference: add --packed")
    result = evaluate_run(args.run, device=args.device)
    print(f"{args.run}: epoch {result['epoch']}  test loss {result['test_loss']:.4f}  "
          f"test accuracy {result['test_acc']:.4f}")
    return 0


def _eval_packed(args: argparse.Namespace) -> int:
    from minibnn.packed import evaluate_packed

    if args.device != "cpu":
        raise MinibnnError("packed (XNOR-popcount) inference runs on the CPU; drop --device gpu")
    result = evaluate_packed(args.run, check=args.check)
    layers = result["binary_layers"]
    line = (f"{args.run}: epoch {result['epoch']}  test loss {result['test_loss']:.4f}  "
            f"test accuracy {result['test_acc']:.4f}  packed ({layers} binary "
            f"layer{'s' if layers != 1 else ''}, {result['seconds']:.2f}s)")
    if args.check:
        line += (f"  predictions differing from float: {result['differ']} of {result['n']}"
                 f"  max |logit diff| {result['max_logit_diff']:.3g}"
                 f"  float {result['float_seconds']:.2f}s")
    print(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from minibnn.packed import export_packed

    if not args.packed:
        raise MinibnnError("only bit-packed export exists: use minibnn export RUN.h5 --packed")
    s = export_packed(args.run, args.out)
    plural = "s" if s["binary_layers"] != 1 else ""
    print(f"wrote {s['out']}: {s['binary_weights']} binary weights in {s['binary_layers']} "
          f"layer{plural}, float32 {s['float32_bytes']} B -> packed {s['packed_bytes']} B "
          f"({s['weight_ratio']:.1f}x smaller); file {s['run_file_bytes']} B -> "
          f"{s['packed_file_bytes']} B")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minibnn", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minibnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    p = sub.add_parser("eval", help="report test accuracy of a run file's checkpoint")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--packed", action="store_true",
                   help="bit-packed XNOR-popcount inference (automatic for a .packed.h5 file)")
    p.add_argument("--check", action="store_true",
                   help="with --packed: also run the float path and count differing predictions")
    p = sub.add_parser("export", help="write a run's checkpoint for inference "
                       "(--packed: binary weights as bits, ~32x smaller)")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--packed", action="store_true",
                   help="store binary weights as packed uint64 bits (the only export format)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="packed file to write (default RUN.packed.h5)")
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules live beside the engine (theory explanation, verification)."""
    try:
        from minibnn import explain
    except ImportError:
        return
    p = sub.add_parser("explain", help="map latent hyperparameters (lr, momentum, weight "
                       "decay) to the equivalent filter (alpha, gamma)")
    explain.configure_parser(p)
    p.set_defaults(handler=explain.run)
    if hasattr(explain, "configure_verify_parser"):
        p = sub.add_parser("verify", help="run the equivalence suite (THEORY.md P1-P10)")
        explain.configure_verify_parser(p)
        p.set_defaults(handler=explain.run_verify)


HANDLERS = {"train": _cmd_train, "eval": _cmd_eval, "export": _cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = getattr(args, "handler", None) or HANDLERS[args.command]
    try:
        return int(handler(args) or 0)
    except MinibnnError as exc:
        print(f"minibnn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minibnn: interrupted (the last finished epoch is in the run file)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
