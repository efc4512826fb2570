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
import os
import signal
import sys
from typing import Any, Sequence

from minibnn import kernels
from minibnn._version import __version__
from minibnn.backend import device_module
from minibnn.data import DATASET_NAMES, check_data_dir
from minibnn.nn.containers import LAYOUTS
from minibnn.nn.models import PRECISIONS
from minibnn.errors import MinibnnError, closed_pipe_exit
from minibnn.run.files import check_output, check_writable, load_run
from minibnn.run.resources import format_bytes, physical_memory
from minibnn.run.stop_signals import raise_if_stopped, stop_on_signals
from minibnn.nn.functional import STE_NAMES
from minibnn.optim.schedules import SCHEDULE_NAMES
from minibnn.run.spec import (BACKEND_NAMES, DATA_RECIPES, DEVICE_NAMES, DTYPE_NAMES,
                              LOCAL_FIELDS, MODEL_NAMES, MODEL_VARIANTS, OPTION_SECTIONS,
                              OPTIMIZER_NAMES, OPTIMIZER_VARIANTS, Local, RunSpec, int_list,
                              read_stored_config, spec_from_options, variant_options)

#: the spec every default builds, and the default machine-local settings (help texts)
DEFAULTS = spec_from_options({}).options()
LOCAL_DEFAULTS = Local()

DESCRIPTION = """\
minibnn trains binary neural networks (weights and activations in {-1, +1}) with explicit,
readable NumPy code.  Binary weights are trained either by the paper's filter optimiser CEMA
(two exponential moving averages of the gradient; a weight flips when the filtered gradient
agrees with its sign) or by a classic optimiser on latent real weights (--optimizer sgd|adam).
Everything else (first/last layer, BatchNorm) is trained with Adam.
"""


def _int_list(text: str) -> list[int]:
    """``--hidden 64,64``: the spec's parser (``run.spec.int_list``), in argparse's error form."""
    try:
        return list(int_list("hidden", text))
    except MinibnnError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)``, except for options whose help already lists per-choice defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _show(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _choice_defaults(section: str) -> dict[str, dict[str, object]]:
    """choice -> its options with their defaults (the builders' and constructors' own)."""
    variants = MODEL_VARIANTS if section == "model" else OPTIMIZER_VARIANTS
    found = {}
    for name, variant in variants.items():
        spec = spec_from_options({"model" if section == "model" else "optimizer": name})
        record = getattr(spec, section)
        found[name] = {f: getattr(record, f) for f in variant_options(variant)}
    return found


def _defaults_help(text: str, field: str, options_of: dict[str, dict[str, object]]) -> str:
    """``text`` plus the default of ``field`` for every choice that takes it (one source).

    ``options_of``: choice -> its options with defaults, e.g. ``{"cema": {"gamma": 0.1}}``.
    """
    by_value: dict[str, list[str]] = {}
    for choice, options in options_of.items():
        if field in options:
            by_value.setdefault(_show(options[field]), []).append(choice)
    if len(by_value) == 1 and len(next(iter(by_value.values()))) == len(options_of):
        return f"{text} (default: {next(iter(by_value))})"
    listed = ", ".join(f"{'/'.join(choices)} {value}" for value, choices in by_value.items())
    return f"{text} (default{'s' if len(by_value) > 1 else ''}: {listed}; only those)"


def _add_model_arguments(g: Any, models: dict[str, dict[str, Any]],
                         only: Sequence[str] | None = None) -> None:
    """The model options, shared by ``train`` and ``summary`` (``only``: these fields)."""
    def model_help(text: str, field: str) -> str:
        return _defaults_help(text, field, models)

    options: dict[str, dict[str, Any]] = {
        "hidden": dict(type=_int_list, help=model_help(
            "widths, comma-separated; the first layer is real-valued", "hidden")),
        "width": dict(type=int, help=model_help("base width", "width")),
        "act_ste": dict(choices=STE_NAMES, help=model_help(
            "straight-through estimator of the activation sign", "act_ste")),
        "weight_ste": dict(choices=STE_NAMES, help=model_help(
            "STE of sign(w) for latent weights", "weight_ste")),
        "scale": dict(action="store_true", help="XNOR-style per-channel mean|w| weight scale "
                      "(latent optimisers only)"),
        "init_scale": dict(type=float, help=model_help(
            "multiplier on the latent weights' initial range", "init_scale")),
        "layout": dict(choices=LAYOUTS, help=model_help(
            "nhwc = the fast engine (channels-last groups with packed activations, fused "
            "BatchNorm+sign); nchw = the layers as written in nn/functional, one call each "
            "(with --backend numpy: the code the README teaches)", "layout")),
        "weights": dict(choices=PRECISIONS, help=model_help(
            "the binary layers' weights: binary, or real (two-step training's first step; "
            "the same parameter names, so a later run can --init-from it)", "weights")),
        "activations": dict(choices=PRECISIONS, help=model_help(
            "the binary layers' inputs: sign (binary) or ReLU (real: a real-valued teacher "
            "for --teacher)", "activations")),
    }
    for field, kwargs in options.items():
        if only is None or field in only:
            g.add_argument("--" + field.replace("_", "-"), default=None, **kwargs)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (defaults: binary MLP, MNIST, CEMA + Adam)",
                       description="Train a binary network.  With no flags: binary MLP on MNIST, "
                       "CEMA for binary weights, Adam for real ones.  Writes a run file "
                       "(spec, per-epoch metrics, checkpoint) after every epoch.  Model and "
                       "optimiser options default to the chosen model's and optimiser's own "
                       "defaults, listed per choice; an option the choice does not take is "
                       "an error.",
                       formatter_class=_HelpFormatter, allow_abbrev=False)
    d = DEFAULTS
    models = _choice_defaults("model")
    opts = _choice_defaults("binary_optimizer")

    def model_help(text: str, field: str) -> str:
        return _defaults_help(text, field, models)

    def opt_help(text: str, field: str) -> str:
        return _defaults_help(text, field, opts)

    g = p.add_argument_group("what to train")
    g.add_argument("--model", default=d["model"], choices=MODEL_NAMES, help="the network")
    g.add_argument("--dataset", default=d["dataset"], choices=DATASET_NAMES,
                   help="the data set (cached as uint8 after the first load)")
    g.add_argument("--data-dir", default=None, help="folder with dataset files you already have "
                   "(machine-local: --resume may change it)")
    _add_model_arguments(g, models)
    g = p.add_argument_group("binary-weight optimiser")
    g.add_argument("--optimizer", default=d["optimizer"], choices=OPTIMIZER_NAMES,
                   help="cema/bop/bop2nd/bop2nd_corrected act on +-1 weights; sgd/adam on "
                   "latent real weights")
    g.add_argument("--alpha", type=float, default=None,
                   help=opt_help("rate of the second EMA, decayed by --schedule", "alpha"))
    g.add_argument("--gamma", type=float, default=None,
                   help=opt_help("rate of the first (momentum) EMA", "gamma"))
    g.add_argument("--threshold", type=float, default=None,
                   help=opt_help("flip threshold", "threshold"))
    g.add_argument("--sigma", type=float, default=None,
                   help=opt_help("second-moment rate", "sigma"))
    g.add_argument("--lr", type=float, default=None,
                   help=opt_help("learning rate, decayed by --schedule", "lr"))
    g.add_argument("--momentum", type=float, default=None, help=opt_help("momentum", "momentum"))
    g.add_argument("--weight-decay", type=float, default=None,
                   help=opt_help("weight decay", "weight_decay"))
    g.add_argument("--decoupled", action="store_true", default=None,
                   help="decoupled weight decay (SGDW/AdamW) instead of coupled L2 (sgd, adam)")
    g.add_argument("--schedule", default=None, choices=SCHEDULE_NAMES,
                   help=opt_help("decay of alpha (cema) / lr (sgd, adam) of the binary "
                                 "weights, stepped once per epoch", "schedule"))
    g = p.add_argument_group("real-valued parameters (Adam)")
    g.add_argument("--real-lr", type=float, default=d["real_lr"],
                   help="Adam's learning rate, decayed by --real-schedule")
    g.add_argument("--real-weight-decay", type=float, default=d["real_weight_decay"],
                   help="Adam's weight decay")
    g.add_argument("--real-schedule", default=None, choices=SCHEDULE_NAMES,
                   help="decay of --real-lr (default: the same as --schedule; linear with "
                   "bop, bop2nd)")
    g = p.add_argument_group("loop")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per step")
    g.add_argument("--label-smoothing", type=float, default=d["label_smoothing"],
                   help="mix the one-hot targets with the uniform distribution")
    g.add_argument("--teacher", metavar="RUN.h5", default=None,
                   help="distil from this trained run: the loss is T^2 KL(softmax(teacher/T) "
                   "|| softmax(student/T)) on each batch, in place of the cross-entropy "
                   "(ReActNet's; e.g. a --weights real --activations real run)")
    g.add_argument("--distill", type=float, default=d["distill"], metavar="T",
                   help="the distillation temperature T, with --teacher")
    g.add_argument("--init-from", metavar="RUN.h5", default=None,
                   help="start from this run's checkpoint (two-step training: step 2 from a "
                   "--weights real step 1): latent optimisers take its weights as latent "
                   "weights, filter optimisers their signs")
    g.add_argument("--init-weight-decay", type=float, default=d["init_weight_decay"],
                   metavar="LAMBDA", help="cema with --init-from: start the filter in the "
                   "state v0 = -LAMBDA * gamma * w1 of decoupled SGD with this weight decay "
                   "(docs/theory.md P2), so w1's magnitudes set how long each sign holds; "
                   "0 carries the signs only")
    cifar = DATA_RECIPES["cifar10"]
    g.add_argument("--fill", default=None, choices=("min", "zero"),
                   help="--shift's border: the batch minimum (the background of MNIST-like "
                   "images) or zero padding of the standardised image (default: "
                   f"{d['fill']}; {cifar['fill']} for cifar10, whose default augmentation is "
                   "the standard --shift 4 --fill zero --flip)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="augment: mirror each training image left-right with probability 1/2 "
                   f"(default: {'on' if d['flip'] else 'off'}; "
                   f"{'on' if cifar['flip'] else 'off'} for cifar10)")
    g.add_argument("--shift", type=int, default=None,
                   help="augment: translate training images by up to N pixels, 0 = off "
                   f"(default: {d['shift']}; {cifar['shift']} for cifar10)")
    g.add_argument("--train-subset", type=int, default=None,
                   help="use only the first N training images")
    g.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds init, shuffling, shifts and the validation split")
    g.add_argument("--val-split", type=int, default=d["val_split"], metavar="N",
                   help="hold out N training images (stratified by class, seeded) as a "
                   "validation set, logged every epoch; the test set is then evaluated after "
                   "the last epoch only")
    g.add_argument("--test-every-epoch", action="store_true",
                   help="with --val-split: evaluate the test set every epoch too")
    g.add_argument("--dtype", default=d["dtype"], choices=DTYPE_NAMES,
                   help="float width of parameters and activations")
    g.add_argument("--device", default=None, choices=DEVICE_NAMES,
                   help=f"where to train (default: {LOCAL_DEFAULTS.device}; machine-local: "
                   "--resume may change it)")
    g.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                   help=f"kernels (default: {LOCAL_DEFAULTS.backend}): auto = Numba on the CPU, "
                   "CUDA on the GPU; numpy = the readable reference everywhere (same bits); numba / "
                   "cuda insist on that one (machine-local: --resume may change it)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the kernels and GEMMs (default: this machine's cores; "
                   "machine-local). The run's bits are the same for every N")
    g = p.add_argument_group("run file")
    g.add_argument("--out", default=None,
                   help="run file to write (default runs/<model>-<dataset>-<optimizer>.h5)")
    g.add_argument("--resume", metavar="RUN.h5", default=None,
                   help="continue the run stored in RUN.h5 (its spec is used; only the "
                   "machine-local options may be given)")
    g.add_argument("--extend", action="store_true",
                   help="with --resume and --epochs N: train the stored run to N epochs, "
                   "finished or not, re-planning its schedules over N (recorded in the file)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing run file instead of refusing")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop after N epochs in this invocation (resume later)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("logging (machine-local: --resume may change them)")
    g.add_argument("--log-every", default=None, metavar="N",
                   help="store the loss, accuracy, flip ratios and rates of every N-th "
                   "optimiser step in the run file (/step_metrics), 0 = none (default: "
                   f"{LOCAL_DEFAULTS.log_every}); the run's bits are the same for every N")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files into DIR: the step metrics, the "
                   "per-epoch metrics and a histogram per epoch of each binary layer's filter "
                   "state (needs pip install 'minibnn[tensorboard]'); a resume appends, "
                   "--tensorboard '' turns it off")
    TRAIN_OPTIONS.update({opt: action.dest for action in p._actions
                          for opt in action.option_strings if opt.startswith("--")})


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The spec of the options given on the command line (``args.given``); every other option
    takes its default, and an option that does not apply to the chosen model or optimiser is
    an error, whatever its value."""
    return spec_from_options({name: getattr(args, name) for name in sorted(args.given)
                              if name in OPTION_SECTIONS})


def local_options(args: argparse.Namespace) -> dict[str, Any]:
    """The machine-local options given on the command line; ``--log-every`` is read as an
    integer here, and a text that is none stays text for ``Local`` to refuse in one line
    (argparse's ``type=int`` would print its usage instead)."""
    given = {name: getattr(args, name) for name in LOCAL_FIELDS
             if getattr(args, name, None) is not None}
    if "log_every" in given:
        try:
            given["log_every"] = int(given["log_every"])
        except ValueError:
            pass
    return given


def local_from_args(args: argparse.Namespace) -> Local:
    return Local(**local_options(args))


#: option string -> destination of every ``minibnn train`` option (filled by its parser)
TRAIN_OPTIONS: dict[str, str] = {}


def given_options(options: dict[str, str], argv: Sequence[str]) -> set[str]:
    """Destinations of the options that appear in ``argv`` (``--x v`` or ``--x=v``); the train
    parser takes no abbreviations, so each token names its option exactly."""
    return {options[tok.split("=", 1)[0]] for tok in argv
            if tok.startswith("--") and tok.split("=", 1)[0] in options}


def _cmd_train(args: argparse.Namespace) -> int:
    from minibnn.run.train import fit


    given = getattr(args, "given", set())
    if args.resume == "":
        raise MinibnnError("--resume is empty; give the run file to continue (RUN.h5)")
    if args.extend and not args.resume:
        raise MinibnnError("--extend re-plans a stored run: use it with --resume RUN.h5 "
                           "--epochs N")
    if args.resume:
        # every option given on the command line counts, whatever its value: a flag equal
        # to its default is not silently dropped
        allowed = set(LOCAL_FIELDS) | {"resume", "no_progress", "stop_after", "extend"}
        if args.extend:
            allowed.add("epochs")
        changed = sorted(f"--{name.replace('_', '-')}" for name in given - allowed)
        if changed:
            hint = (" (to train it longer or shorter: --resume RUN --epochs N --extend)"
                    if "--epochs" in changed else "")
            raise MinibnnError(f"--resume continues the stored run with its own spec; "
                               f"drop {', '.join(changed)} (only the machine-local "
                               f"{', '.join('--' + f.replace('_', '-') for f in LOCAL_FIELDS)} "
                               f"may change){hint}")
        if args.extend and "epochs" not in given:
            raise MinibnnError("--extend needs the new total: --epochs N")
        check_data_dir(args.data_dir)
        local = local_options(args)
        metrics = fit(None, args.resume, resume=True, progress=not args.no_progress,
                      stop_after=args.stop_after, local=local,
                      extend_to=args.epochs if args.extend else None)
        stored, _ = read_stored_config(load_run(args.resume).config_json)   # after --extend
        _report_end(metrics, stored.loop.epochs, args.resume)
        return 0
    spec, local = spec_from_args(args), local_from_args(args)
    check_data_dir(args.data_dir, spec.data.name)
    device_module(local.device)          # fail now, before loading data, when there is no GPU
    if args.out == "":
        raise MinibnnError("--out is empty; give a file name (without --out the run goes "
                           f"to {spec.default_out()})")
    out = args.out or spec.default_out()
    check_writable(out)
    if os.path.exists(out) and not args.overwrite:
        raise MinibnnError(f"{out} exists: continue it with --resume {out}, or pass --overwrite")
    metrics = fit(spec, out, progress=not args.no_progress, stop_after=args.stop_after,
                  local=local)
    _report_end(metrics, spec.loop.epochs, out)
    return 0


def _report_end(metrics: dict[str, list[float]], epochs: int, out: str) -> None:
    """The last line of a training: the final test accuracy, or where to continue."""
    done = len(metrics.get("train_loss", []))
    if done < epochs:
        print(f"stopped after epoch {done} of {epochs}; continue with --resume {out}")
        return
    final = metrics.get("test_acc", [float("nan")])[-1]
    if final == final:                         # not NaN: the test set was evaluated last
        print(f"final test accuracy {final:.4f}; run file {out}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from minibnn.deploy.packed_file import is_packed_file
    from minibnn.run.train import evaluate_run

    check_data_dir(args.data_dir)
    if args.packed or is_packed_file(args.run):
        return _eval_packed(args)
    if args.check:
        raise MinibnnError("--check compares packed with float inference: add --packed")
    result = evaluate_run(args.run, device=args.device, backend=args.backend,
                          data_dir=args.data_dir)
    print(f"{args.run}: epoch {result['epoch']}  test loss {result['test_loss']:.4f}  "
          f"test accuracy {result['test_acc']:.4f}")
    return 0


def _eval_packed(args: argparse.Namespace) -> int:
    from minibnn.deploy.inference import evaluate_packed

    if args.device != "cpu":
        raise MinibnnError("packed (XNOR-popcount) inference runs on the CPU; drop --device gpu")
    result = evaluate_packed(args.run, check=args.check, backend=args.backend,
                             data_dir=args.data_dir)
    layers = result["binary_layers"]
    line = (f"{args.run}: epoch {result['epoch']}  test loss {result['test_loss']:.4f}  "
            f"test accuracy {result['test_acc']:.4f}  packed ({layers} binary "
            f"layer{'s' if layers != 1 else ''}, {result['folded_layers']} with BatchNorm "
            f"folded into thresholds, {result['seconds']:.2f}s)")
    if args.check:
        line += (f"  predictions differing from float: {result['differ']} of {result['n']}"
                 f"  max |logit diff| {result['max_logit_diff']:.3g}"
                 f"  float {result['float_seconds']:.2f}s")
    print(line)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        return _export(args)
    except KeyboardInterrupt:
        out = args.out or "the packed file"
        raise KeyboardInterrupt(f"{out} was not written (exports replace their file only when "
                                f"complete): run the export again") from None


def _export(args: argparse.Namespace) -> int:
    from minibnn.deploy.inference import default_packed_path, export_packed

    if args.out == "":
        raise MinibnnError("--out is empty; give the file to write")
    if args.packed and args.format != "packed":
        raise MinibnnError(f"--packed means --format packed; drop one of --packed and "
                           f"--format {args.format}")
    if args.format in ("onnx", "torch"):
        what, suffix = {"onnx": ("an ONNX", "onnx"), "torch": ("a PyTorch", "pt")}[args.format]
        if args.out is None:
            raise MinibnnError(f"--format {args.format} needs --out FILE.{suffix}")
        if args.backend is not None:
            raise MinibnnError(f"--backend picks the kernels that pack bits; {what} export "
                               "packs nothing: drop it")
    if args.format == "onnx":
        from minibnn.deploy.trained import export_onnx

        s = export_onnx(args.run, args.out, overwrite=args.overwrite)
        weights = ("float32 +-1 times each channel's scale" if s["scaled"]
                   else "float32 +-1")
        print(f"wrote {s['out']}: ONNX opset 17 graph of {s['model']}, {s['nodes']} nodes, "
              f"{s['bytes']} B (binary weights as {weights})")
        return 0
    if args.format == "torch":
        from minibnn.deploy.torch_export import export_torch

        print(export_torch(args.run, args.out, overwrite=args.overwrite))
        return 0
    out = args.out or default_packed_path(args.run)
    check_output(out, args.overwrite, (args.run,))
    with kernels.use_backend(args.backend or "auto"):
        s = export_packed(args.run, out)
    plural = "s" if s["binary_layers"] != 1 else ""
    print(f"wrote {s['out']}: {s['binary_weights']} binary weights in {s['binary_layers']} "
          f"layer{plural}, float32 {s['float32_bytes']} B -> packed {s['packed_bytes']} B "
          f"({s['weight_ratio']:.1f}x smaller); file {s['run_file_bytes']} B -> "
          f"{s['packed_file_bytes']} B")
    return 0


SUMMARY_MODEL_FLAGS = ("model", "hidden", "width", "act_ste", "weight_ste", "init_scale")


def _cmd_summary(args: argparse.Namespace) -> int:
    from minibnn.data import image_shape
    from minibnn.run.files import load_run
    from minibnn.deploy.packed_file import is_packed_file
    from minibnn.commands.summary import format_summary
    from minibnn.run.train import check_model_checkpoint, model_from_spec, run_model

    given = [f"--{k.replace('_', '-')}" for k in SUMMARY_MODEL_FLAGS + ("dataset", "dtype")
             if getattr(args, k) is not None]
    if args.run is not None and given:
        raise MinibnnError(f"summary takes RUN.h5 or model options, not both: drop "
                           f"{', '.join(given)} (the run file's spec is used)")
    params = buffers = description = None
    if args.run is not None and is_packed_file(args.run):
        from minibnn.deploy.trained import load

        print(load(args.run).summary())
        return 0
    if args.run is not None:
        run = load_run(args.run)
        spec, _, model = run_model(run)
        description = run.description
        if run.checkpoint is not None:
            # the stored arrays must be the model's (as eval checks them), not a KeyError later
            check_model_checkpoint(run.checkpoint, model, spec.loop.dtype, args.run)
            params, buffers = run.checkpoint.params, run.checkpoint.buffers
    else:
        values = {k: getattr(args, k) for k in SUMMARY_MODEL_FLAGS + ("dataset", "dtype")
                  if getattr(args, k) is not None}
        spec = spec_from_options(values)
        model = model_from_spec(spec, *image_shape(spec.data.name))
    print(format_summary(model, spec.loop.dtype, params, buffers, description=description))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from minibnn.commands.show import show
    from minibnn.commands.sweep_report import is_sweep_dir, show_sweep

    sweeps = [p for p in args.runs if is_sweep_dir(p)]
    if sweeps:
        if len(args.runs) > 1:
            raise MinibnnError(f"show takes one sweep folder or run files, not both: "
                               f"{sweeps[0]} is a sweep folder")
        print(show_sweep(sweeps[0], args.plot, args.metric, args.x, args.y, best=args.best,
                         vmin=args.vmin, vmax=args.vmax))
        return 0
    for path in args.runs:
        if os.path.isdir(path):
            hint = (f"it has a sweep.toml but no summary.csv yet: run the sweep (minibnn sweep "
                    f"{os.path.join(path, 'sweep.toml')} --out {path})"
                    if os.path.isfile(os.path.join(path, "sweep.toml"))
                    else "give run files (RUN.h5) or a sweep folder (with summary.csv)")
            raise MinibnnError(f"{path} is a folder, not a run file; {hint}")
    given = [f"--{k}" for k in ("metric", "x", "y", "best", "vmin", "vmax")
             if getattr(args, k) is not None]
    if given:
        raise MinibnnError(f"{', '.join(given)} apply to a sweep folder (minibnn show DIR)")
    print(show(args.runs, args.plot))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _add_show_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="per-epoch metrics of one or more run files, side by side "
                       "(--plot: PNG curves); or a sweep folder's table and heatmap")
    p.add_argument("runs", metavar="RUN.h5|DIR", nargs="+")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw loss, accuracy, flip ratio per binary layer and rates; for a "
                   "sweep folder, a heatmap (two grid axes) or line (one) of --metric")
    g = p.add_argument_group("sweep folder")
    g.add_argument("--metric", default=None,
                   help="val_acc (default when the runs have a validation split), test_acc, "
                   "seconds or epochs")
    g.add_argument("--x", default=None, help="grid axis across (default: the first that varies)")
    g.add_argument("--y", default=None, help="grid axis up (default: the next that varies)")
    g.add_argument("--best", default=None, choices=("max", "min"),
                   help="which end of --metric is best (default: max for accuracies, min for "
                   "losses, seconds and epochs)")
    g.add_argument("--vmin", type=float, default=None,
                   help="the heatmap's colour-scale bottom (default: the lowest value shown)")
    g.add_argument("--vmax", type=float, default=None,
                   help="the heatmap's colour-scale top (default: the highest value shown)")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from minibnn.commands.sweep import run_cli

    return run_cli(args.spec, args.out, args.workers, args.scheduler, args.data_dir,
                   not args.no_progress, args.replace_spec)


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train every point of a grid or random search of runs "
                       "(local processes or a Dask cluster); resumable",
                       description="Run the points of SPEC.toml over its [base] options "
                       "(minibnn train's long option names): the Cartesian product of its "
                       "[grid], or the trials its [random] table draws from its seed, into "
                       "DIR: one run "
                       "file per point in DIR/runs, DIR/summary.csv with one row per point. "
                       "Running it again trains only what is unfinished. Exit status 1 when "
                       "a point failed.", formatter_class=_HelpFormatter)
    p.add_argument("spec", metavar="SPEC.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the sweep's files")
    p.add_argument("--workers", type=int, default=None,
                   help=f"local worker processes, one thread each (default: the "
                   f"number of cores, {os.cpu_count()} here)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run the points on this Dask distributed scheduler's workers (they "
                   "must see DIR at the same path); needs the dist extra")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder on the machines that train (overrides [base])")
    p.add_argument("--replace-spec", action="store_true",
                   help="DIR holds another sweep (other points, or a sweep.toml that is not a "
                   "sweep spec): make it this one (its run files stay; summary.csv and "
                   "sweep.toml are replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_summary_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer table of a model: shapes, parameters by bit "
                       "width, memory, binary and float MACs",
                       description="Summarise the model of RUN.h5, or the model the given "
                       "options build (the options of minibnn train; input shape from "
                       "--dataset, default mnist).", formatter_class=_HelpFormatter)
    p.add_argument("run", metavar="RUN.h5", nargs="?", default=None)
    g = p.add_argument_group("model (instead of RUN.h5)")
    g.add_argument("--model", default=None, choices=MODEL_NAMES,
                   help=f"(default: {DEFAULTS['model']})")
    g.add_argument("--dataset", default=None, choices=DATASET_NAMES,
                   help=f"input shape and classes of this dataset (default: {DEFAULTS['dataset']})")
    g.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help=f"float width (default: {DEFAULTS['dtype']})")
    _add_model_arguments(g, _choice_defaults("model"), only=SUMMARY_MODEL_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minibnn", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minibnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    p = sub.add_parser("eval", help="report test accuracy of a run file's checkpoint")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--device", default="cpu", choices=DEVICE_NAMES)
    p.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                   help="kernels (default: the run's own setting, or auto when the run was "
                   "trained on the other device; see minibnn train --help)")
    p.add_argument("--packed", action="store_true",
                   help="bit-packed XNOR-popcount inference (automatic for a .packed.h5 file)")
    p.add_argument("--check", action="store_true",
                   help="with --packed: also run the float path and count differing predictions")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset's files (default: the run's own setting)")
    p = sub.add_parser("export", help="write a run's checkpoint for inference: packed "
                       "(binary weights as bits, ~32x smaller) or ONNX")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--format", default="packed", choices=("packed", "onnx", "torch"),
                   help="packed: minibnn's HDF5 with binary weights as uint64 bits (~32x "
                   "smaller); onnx: a standard ONNX graph for onnxruntime (needs the onnx "
                   "extra); torch: a PyTorch checkpoint that minibnn.torch.build rebuilds as a "
                   "torch.nn.Module, with the optimiser state to train on (needs PyTorch)")
    p.add_argument("--packed", action="store_true", help="the same as --format packed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                   help="kernels that pack the weights, --format packed only (default: auto; "
                   "the file is the same for every backend)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="file to write (default for packed: RUN.packed.h5; onnx and torch need "
                   "it)")
    _add_summary_parser(sub)
    _add_show_parser(sub)
    _add_sweep_parser(sub)
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules live beside the engine (theory explanation, verification)."""
    try:
        from minibnn.commands import explain
    except ImportError:
        return
    p = sub.add_parser("explain", help="map latent hyperparameters (lr, momentum, weight "
                       "decay) to the equivalent filter (alpha, gamma), or explain the filter "
                       "a run file trained with")
    explain.configure_parser(p)
    p.set_defaults(handler=explain.run)
    if hasattr(explain, "configure_verify_parser"):
        p = sub.add_parser("verify", help="run the equivalence suite (docs/theory.md P1-P10)")
        explain.configure_verify_parser(p)
        p.set_defaults(handler=explain.run_verify)


HANDLERS = {"train": _cmd_train, "eval": _cmd_eval, "export": _cmd_export,
            "summary": _cmd_summary, "show": _cmd_show, "sweep": _cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "train":
        args.given = given_options(TRAIN_OPTIONS, argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = getattr(args, "handler", None) or HANDLERS[args.command]
    with stop_on_signals() as received:
        try:
            code = int(handler(args) or 0)
            sys.stdout.flush()          # a closed pipe shows here, inside the try
            raise_if_stopped()          # a stop signal whose own raise Python lost
            return code
        except BrokenPipeError:
            return closed_pipe_exit()
        except MinibnnError as exc:
            print(f"minibnn: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            # SIGTERM behaves like Ctrl-C (the run file says what it keeps), then exits 143
            where = f" ({exc})" if str(exc) else ""
            word, status = (("terminated", 143) if signal.SIGTERM in received
                            else ("interrupted", 130))
            print(f"minibnn: {word}{where}", file=sys.stderr)
            return status
        except MemoryError as exc:
            # the last resort behind the up-front checks; NumPy names the array it could not
            # allocate ("Unable to allocate 292. GiB for an array with shape ...")
            need = str(exc).splitlines()[0] if str(exc) else "an allocation failed"
            have = physical_memory()
            machine = f" (this machine has {format_bytes(have)})" if have else ""
            print(f"minibnn: error: out of memory: {need}{machine}; make the model or batch "
                  "smaller", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
