"""The training loop: mini-batches, the update, per-epoch metrics and checkpoints.

One step, written out (``train_step``)::

    logits, buffers, cache = model.forward(params, buffers, x, train=True)
    loss, dlogits          = softmax_cross_entropy(logits, y, label_smoothing)
    grads                  = model.backward(dlogits, cache)      # frees the cache as it goes
    optimizer.step_in_place(grads, opt_state, params)            # params, opt_state in place

Binary weights go to the binary optimiser (CEMA by default, stored as +-1) and every other
parameter to Adam, as in the paper's code.  ``optimizer.step_in_place`` runs each optimiser's fused
one-pass kernel where one is compiled for the arrays at hand, else its filter chain (same
bits); which kernels run is chosen by ``kernels.use_backend(local.backend)`` around the run.

One code path for NumPy and CuPy: data, parameters and optimiser state move to the device once;
per step nothing is read back to the host (loss, correct predictions and flips accumulate as
device scalars, read once per epoch; the progress bar reads the loss every ``LOSS_EVERY``
steps).  All randomness (init, shuffling, shifts) comes from one ``numpy.random.Generator``
seeded from the spec; its state is checkpointed, so a resumed run is bit-identical to an
uninterrupted one.  Per epoch we log train loss/accuracy, test loss/accuracy, the mean per-step
flip ratio of every binary layer, the rates the optimisers used and the seconds taken; every
``local.log_every``-th step, the step's batch loss/accuracy, flip ratios and rates
(``minibnn.run.step_log``: kept on the device, read at the epoch's end, stored for finished
epochs only).  With ``local.tensorboard`` the same go to TensorBoard event files through one
hook called after each epoch's write (``minibnn.run.tensorboard``).  Each training session adds
its provenance record (``minibnn.run.provenance``) to the run file's description.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from minibnn import kernels, optim
from minibnn._version import __version__
from minibnn.data.augment import draw_flips, draw_offsets, flip_images, shift_images
from minibnn.data.base import images_on, take_rows
from minibnn.backend import (device_module, first_nonfinite, get_array_module, resolve_dtype,
                             to_device, to_numpy)
from minibnn.run.spec import model_from_spec, run_model  # noqa: F401  (re-exported here too)
from minibnn.run.spec import (LOCAL_FIELDS, Adam, Bop, Bop2nd, Bop2ndCorrected, Cema, Local,
                              RunSpec, Sgd, config_json, read_stored_config)
from minibnn.errors import DataFileError, MinibnnError
from minibnn.run.files import (Checkpoint, RunFile, check_arrays, check_writable, load_run,
                               save_run)
from minibnn.kernels.threads import get_threads, using_threads
from minibnn.run.lock import one_writer
from minibnn.run.resources import check_free_space
from minibnn.run.stop_signals import raise_if_stopped
from minibnn.run.provenance import collect
from minibnn.run.step_log import StepLog, append_rows
from minibnn.run import recipe, tensorboard
from minibnn.run.recipe import LossFn
from minibnn.nn.functional import softmax_cross_entropy
from minibnn.nn.models import Model
from minibnn.optim.base import Transform

Params = dict[str, Any]
#: the progress bar shows the loss of every LOSS_EVERY-th step (each read is a host sync)
LOSS_EVERY = 50


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """One epoch's mini-batches, as slices of the shuffled order (the same split every epoch).

    Consecutive blocks of ``batch_size``; a last block of one sample joins the previous one,
    since BatchNorm cannot normalise a batch of one (1001 samples, batch 100: 9 x 100 + 101).
    ``len(batch_slices(n, b))`` is the number of steps per epoch the schedules are told.
    """
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def _schedule(spec: RunSpec, init: float, steps_per_epoch: int, name: str
              ) -> optim.schedules.Schedule:
    """Schedule ``name`` over the run, advanced once per epoch (the paper's ``1 - e/E`` for
    linear)."""
    epochs = spec.loop.epochs
    return optim.schedules.by_name(name, init, epochs * steps_per_epoch,
                                   per_epoch_steps=steps_per_epoch,
                                   step_size=max(1, epochs // 3) * steps_per_epoch)


class RateLog:
    """A schedule that remembers the values it returned: the rates an optimiser really used
    (``used``: the distinct values since the last ``take``; ``last``: the latest, the value
    of the last step)."""

    def __init__(self, schedule: optim.schedules.Schedule):
        self.schedule = schedule
        self.used: list[float] = []
        self.last = float("nan")

    def __call__(self, count: int) -> float:
        value = self.schedule(count)
        if not self.used or self.used[-1] != value:
            self.used.append(value)
        self.last = value
        return value

    def take(self) -> list[float]:
        """The distinct values returned since the last ``take``, in order; then forget them."""
        used, self.used = self.used, []
        return used


def optimizer_rates(spec: RunSpec, steps_per_epoch: int) -> dict[str, Any]:
    """The optimisers' rates by metric name: numbers, or schedules where a schedule acts.

    cema: ``alpha`` (scheduled); bop, bop2nd: ``gamma``, ``threshold``; sgd, adam: ``lr``
    (scheduled); and always the real-parameter Adam's ``real_lr`` (scheduled).
    """
    b = spec.binary_optimizer
    if isinstance(b, Cema):
        rates = {"alpha": _schedule(spec, b.alpha, steps_per_epoch, b.schedule)}
    elif isinstance(b, (Bop, Bop2nd)):
        rates = {"gamma": b.gamma, "threshold": b.threshold}
    else:
        rates = {"lr": _schedule(spec, b.lr, steps_per_epoch, b.schedule)}
    real = spec.real_optimizer
    rates["real_lr"] = _schedule(spec, real.lr, steps_per_epoch, real.schedule)
    return rates


def optimizer_from_spec(spec: RunSpec, model: Model, steps_per_epoch: int,
                        rates: Mapping[str, Any] | None = None) -> Transform:
    """Binary weights -> the spec's binary optimiser; real parameters -> Adam.

    ``rates`` (default ``optimizer_rates(spec, steps_per_epoch)``) lets the trainer pass
    logged schedules; every other hyperparameter comes from the spec.
    """
    r = dict(rates if rates is not None else optimizer_rates(spec, steps_per_epoch))
    b = spec.binary_optimizer
    if isinstance(b, Cema):
        binary = optim.cema(alpha=r["alpha"], gamma=b.gamma)
    elif isinstance(b, Bop2nd):
        binary = optim.bop2nd(threshold=r["threshold"], gamma=r["gamma"], sigma=b.sigma,
                              bias_correction=isinstance(b, Bop2ndCorrected))
    elif isinstance(b, Bop):
        binary = optim.bop(threshold=r["threshold"], gamma=r["gamma"])
    elif isinstance(b, Sgd):
        binary = optim.sgd(lr=r["lr"], momentum=b.momentum, weight_decay=b.weight_decay,
                           decoupled=b.decoupled)
    elif isinstance(b, Adam):
        binary = optim.adam(lr=r["lr"], weight_decay=b.weight_decay, decoupled=b.decoupled)
    else:
        raise MinibnnError(f"unknown binary optimizer {b!r}")
    real = optim.adam(lr=r["real_lr"], weight_decay=spec.real_optimizer.weight_decay)
    return optim.partition({"binary": binary, "real": real}, model.param_label)


def load_data(spec: RunSpec, data_dir: str | None = None, test_only: bool = False) -> Any:
    """The spec's dataset, in its dtype (training subset applied); ``data_dir``: where this
    machine keeps the files; ``test_only``: only the test split (evaluation). The images stay
    uint8 and are standardised per batch (``data.StandardisedImages``)."""
    from minibnn.data import load_dataset

    ds = load_dataset(spec.data.name, data_dir=data_dir, dtype=spec.loop.dtype,
                      test_only=test_only, lazy=True)
    if spec.data.train_subset is not None:
        n = spec.data.train_subset
        ds = dataclasses.replace(ds, x_train=take_rows(ds.x_train, slice(0, n)),
                                 y_train=ds.y_train[:n])
    return ds


@dataclass
class TrainState:
    """Everything that changes during training."""

    params: Params
    buffers: Params
    opt_state: Params
    rng: np.random.Generator
    epoch: int = 0
    step: int = 0
    #: the first optimiser step (1-based, counted over the run) whose loss was not finite, as
    #: found by the last ``train_epoch``; None while every loss is finite
    diverged_at: int | None = None


def train_step(model: Model, optimizer: Transform, state: TrainState, x: Any, y: Any,
               label_smoothing: float = 0.0, loss_fn: LossFn | None = None
               ) -> tuple[Any, Any, dict[str, Any]]:
    """One update in place on ``state``; returns (loss, correct predictions, flips per layer).

    The loss is the cross-entropy with ``label_smoothing``, or ``loss_fn(logits, x, y)``
    (``run.recipe``: distillation). The counts are 0-d arrays on the data's device
    (``float``/``int`` reads them; on the GPU each read waits for the device, so the loop reads
    them once per epoch).
    """
    logits, new_buffers, cache = model.forward(state.params, state.buffers, x, train=True)
    if loss_fn is None:
        loss, dlogits = softmax_cross_entropy(logits, y, label_smoothing=label_smoothing)
    else:
        loss, dlogits = loss_fn(logits, x, y)
    grads = model.backward(dlogits, cache)      # frees each layer's cache as it goes
    before = {name: sign_bits(state.params[name]) for name in model.binary_names}
    optimizer.step_in_place(grads, state.opt_state, state.params)   # params change in place
    flips = {name: sign_changes(before[name], state.params[name]) for name in before}
    state.step += 1
    state.buffers.update(new_buffers)
    correct = (logits.argmax(axis=1) == y).sum()
    return loss, correct, flips


def sign_bits(w: Any) -> Any:
    """``w >= 0`` of every weight, one bit each (``kernels.pack_signs`` of w as one row per
    output unit, so the rows pack in parallel): what a step's flip count compares after the
    weights changed in place."""
    return kernels.pack_signs(w.reshape(w.shape[0], -1) if w.ndim > 1 else w)


def sign_changes(before: Any, w: Any) -> Any:
    """How many weights of ``w`` changed sign since ``before = sign_bits(w)`` (0-d int64 on
    ``w``'s device): the popcount of the XOR of the two bit strings."""
    xp = get_array_module(w)
    return xp.bitwise_count(sign_bits(w) ^ before).sum(dtype=xp.int64)


def evaluate(model: Model, params: Params, buffers: Params, x: Any, y: Any,
             batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode (BatchNorm uses running statistics)."""
    xp = get_array_module(x)
    total_loss, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits, _, _ = model.forward(params, buffers, xb, train=False)
        loss, _ = softmax_cross_entropy(logits, yb)
        total_loss = total_loss + loss * len(xb)
        correct = correct + (logits.argmax(axis=1) == yb).sum()
    return float(total_loss) / len(x), int(correct) / len(x)


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal (in a log file
    the per-epoch lines stand alone, without progress frames)."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="batch")


def check_same_data(path: str, description: dict[str, Any] | None, ds: Any) -> None:
    """The data loaded for the run stored at ``path`` (to evaluate or resume it) must be what
    it was trained on, as far as its ``description`` (``describe_data``) tells: the same class
    names in the same order (an image folder given by ``--data-dir`` could hold others, which
    would relabel every image), the same input shape, the same data set's name."""
    name = (description or {}).get("dataset")
    if name is not None and name != ds.name:
        raise MinibnnError(f"{path} was trained on {name}, its spec now names {ds.name} (the "
                           "file was edited?)")
    stored = (description or {}).get("classes")
    if stored is not None and list(stored) != list(ds.classes):
        raise MinibnnError(f"{path} was trained on {len(stored)} classes {list(stored)[:6]}, "
                           f"the data loaded now has {len(ds.classes)}: "
                           f"{list(ds.classes)[:6]} (another --data-dir?)")
    shape = (description or {}).get("input_shape")
    if shape is not None and list(shape) != [int(v) for v in ds.x_test.shape[1:]]:
        raise MinibnnError(f"{path} was trained on inputs {tuple(shape)}, the data loaded now "
                           f"has {tuple(ds.x_test.shape[1:])} (another --data-dir?)")


def describe_data(ds: Any, provenance: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """What a run file stores about its data so it describes itself (``RunFile.description``);
    ``provenance``: one record per training session (``session_provenance``), oldest first."""
    return {"input_shape": [int(v) for v in ds.x_train.shape[1:]],
            "num_classes": int(ds.num_classes), "dataset": ds.name,
            "mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std],
            "classes": list(ds.classes), "minibnn_version": __version__,
            "provenance": list(provenance)}


def session_provenance(ds: Any, local: Local, previous: RunFile | None, from_epoch: int
                       ) -> list[dict[str, Any]]:
    """The stored sessions' provenance records (``previous``'s, none for a new run) followed
    by this session's: ``provenance.collect`` plus ``from_epoch``, the first epoch (1-based)
    it trains."""
    before = (previous.description or {}).get("provenance", []) if previous else []
    return list(before) + [dict(collect(ds, local), from_epoch=from_epoch)]


def train_epoch(model: Model, optimizer: Transform, state: TrainState, x: Any, y: Any,
                spec: RunSpec, progress: bool = False, steps: StepLog | None = None,
                rates: Mapping[str, Any] | None = None, loss_fn: LossFn | None = None
                ) -> dict[str, float]:
    """One pass over the shuffled training set; returns the epoch's training metrics.

    ``steps`` records the rows of the steps it is due at (kept on the device: no read here),
    with the ``rates`` (``optimizer_rates``'s, RateLogs where scheduled) used at each.
    """
    xp = get_array_module(x)
    n = len(x)
    batches = batch_slices(n, spec.loop.batch_size)
    # one host -> device copy per epoch: the order, and each image's shift (drawn in this order)
    order = xp.asarray(state.rng.permutation(n))
    shift = spec.data.shift
    offsets = xp.asarray(draw_offsets(n, shift, state.rng)) if shift else None
    mirror = xp.asarray(draw_flips(n, state.rng)) if spec.data.flip else None
    loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
    flips = {name: xp.zeros((), xp.int64) for name in model.binary_names}
    bar = _progress(batches, progress, f"epoch {state.epoch + 1}/{spec.loop.epochs}")
    # the first batch whose loss is not finite, kept on the device (no per-step read)
    first_bad = xp.full((), -1, dtype=xp.int64)
    for i, batch in enumerate(bar):
        idx = order[batch]
        xb = x[idx]
        if offsets is not None:
            xb = shift_images(xb, offsets[:, batch], shift, spec.data.fill)
        if mirror is not None:
            xb = flip_images(xb, mirror[batch])
        loss, right, step_flips = train_step(model, optimizer, state, xb, y[idx],
                                             spec.loop.label_smoothing, loss_fn)
        first_bad = xp.where((first_bad < 0) & ~xp.isfinite(loss), i, first_bad)
        loss_sum = loss_sum + loss * (batch.stop - batch.start)
        correct = correct + right
        for name, count in step_flips.items():
            flips[name] = flips[name] + count
        if steps is not None and steps.due(state.step):
            steps.record(state.step, loss, right, batch.stop - batch.start, step_flips,
                         {name: state.params[name].size for name in step_flips},
                         _rates_now(rates or {}))
        raise_if_stopped()
        if bar is not batches and i % LOSS_EVERY == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    metrics = {"train_loss": float(loss_sum) / n, "train_acc": int(correct) / n}
    bad = int(first_bad)
    state.diverged_at = state.step - len(batches) + bad + 1 if bad >= 0 else None
    for name, count in flips.items():
        # mean per-step flip ratio: flipped weights / (weights * steps), as the paper logs it
        metrics[f"flip_ratio:{name}"] = int(count) / (state.params[name].size * len(batches))
    return metrics


#: the state buffer a filter optimiser's flip reads, as (stage, slot) of its binary group:
#: CEMA's second EMA v, Bop's EMA m, Bop2nd's first moment m (the flip reads m / sqrt(v),
#: of m's sign); latent optimisers (sgd, adam) have none: their latent weights are the state
FILTER_STATE = {"cema": ("v", "s"), "bop": ("m", "s"), "bop2nd": ("rms", "m"),
                "bop2nd_corrected": ("rms", "m")}


def filter_states(spec: RunSpec, model: Model, state: TrainState) -> dict[str, Any]:
    """Per binary layer, the filter state its flips follow (``FILTER_STATE``, or the latent
    weights), on the training device."""
    where = FILTER_STATE.get(spec.binary_optimizer.name)
    if where is None:
        return {name: state.params[name] for name in model.binary_names}
    stage, slot = where
    return {name: state.opt_state["binary"][stage][slot][name] for name in model.binary_names}


def _checkpoint(state: TrainState, binary: Sequence[str] = ()) -> Checkpoint:
    """The state as a checkpoint; ``binary``: the +-1 weights (stored as int8)."""
    return Checkpoint(params={k: to_numpy(v) for k, v in state.params.items()},
                      buffers={k: to_numpy(v) for k, v in state.buffers.items()},
                      opt_state=_tree_to_numpy(state.opt_state),
                      rng_state=state.rng.bit_generator.state, epoch=state.epoch,
                      step=state.step, binary=tuple(binary))


def _tree_to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_to_numpy(v) for k, v in tree.items()}
    return to_numpy(tree)


def _tree_to_device(tree: Any, device: str) -> Any:
    """Every leaf of ``tree`` (NumPy or CuPy) on ``device``, except step counters."""
    if isinstance(tree, dict):
        return {k: _tree_to_device(v, device) for k, v in tree.items()}
    if _is_counter(tree):
        return to_numpy(tree)      # step counters stay host scalars (schedules read them)
    return to_device(tree, device)


def _is_counter(leaf: Any) -> bool:
    """An integer scalar: a Python int or a 0-d integer array of either array module."""
    if isinstance(leaf, (int, np.integer)) and not isinstance(leaf, bool):
        return True
    return getattr(leaf, "ndim", None) == 0 and leaf.dtype.kind in "iu"


def check_checkpoint(ck: Checkpoint, params: Params, path: str, buffers: Params | None = None,
                     opt_state: Params | None = None, optimizer: str = "") -> None:
    """The stored arrays must be exactly the ones the rebuilt model (and optimiser) declare.

    Each mismatch is a one-line error naming the first entry that differs (its path in the
    tree, e.g. ``binary/m/s/fc2.w``).
    """
    model = "the model in its spec"
    check_arrays(ck.params, params, path, "checkpoint", "parameter", model)
    if buffers is not None:
        check_arrays(ck.buffers, buffers, path, "checkpoint", "buffer", model)
    if opt_state is not None:
        owner = f"optimizer {optimizer!r}" if optimizer else "the optimiser"
        check_arrays(_flatten(ck.opt_state), _flatten(opt_state), path, "checkpoint",
                     "optimiser state", owner)


def check_model_checkpoint(ck: Checkpoint, model: Model, dtype: Any, path: str) -> None:
    """``check_checkpoint`` of the stored parameters and buffers against the ones ``model``
    declares in ``dtype`` (what every reader of a trained run checks before using it)."""
    params, buffers = model.init(np.random.default_rng(0), resolve_dtype(dtype))
    check_checkpoint(ck, params, path, buffers)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def fit(spec: RunSpec | None, out_path: str, resume: bool = False, progress: bool = True,
        stop_after: int | None = None, log: Callable[[str], None] = print,
        local: Local | Mapping[str, Any] | None = None, extend_to: int | None = None
        ) -> dict[str, list[float]]:
    """Train ``spec``, writing ``out_path`` after every epoch; return the metrics.

    ``local``: where and how this machine computes the run (``Local``: device, backend,
    data_dir, threads, log_every, tensorboard), or a mapping of the settings to change.
    ``resume=True`` continues the run stored in ``out_path`` with its stored spec (``spec``
    must then be None) and its stored machine-local settings, updated by ``local``.
    ``stop_after`` ends this invocation after that many epochs (the run stays resumable).
    ``extend_to`` (with ``resume``) changes the run's epochs, finished or not: from the current
    step on the schedules are those of an ``extend_to``-epoch run (linear decay: the rate goes
    back up to ``init * (1 - e / extend_to)``), and the run file records it
    (``RunFile.replans``).

    One process at a time writes ``out_path`` (``lock.one_writer``: a second one, or a resume of
    a file being trained, is a one-line error naming the holder's pid).  Ctrl-C raises
    ``KeyboardInterrupt`` whose message says which epoch the run file keeps.
    """
    if resume and not os.path.exists(out_path):
        raise DataFileError(f"run file not found: {out_path}")
    if resume and os.path.islink(out_path):
        # the link's target is the run file: lock and replace that one (replacing the link
        # would leave the target behind, unchanged, and two names would not lock each other);
        # a new run written to a link's name replaces the link, as any file of that name
        out_path = os.path.realpath(out_path)
    check_writable(out_path)             # makes the folder the lock file goes in
    with one_writer(out_path):
        return _fit_locked(spec, out_path, resume, progress, stop_after, log, local, extend_to)


def _fit_locked(spec: RunSpec | None, out_path: str, resume: bool, progress: bool,
                stop_after: int | None, log: Callable[[str], None],
                local: Local | Mapping[str, Any] | None, extend_to: int | None
                ) -> dict[str, list[float]]:
    """``fit`` holding the run file's writer lock."""
    previous: RunFile | None = None
    stored_local = Local()
    if resume:
        if spec is not None:
            raise MinibnnError("fit(resume=True) continues the stored spec: pass spec=None")
        previous = load_run(out_path)
        spec, stored_local = read_stored_config(previous.config_json)
        # the thread count is this machine's, never inherited: the bits do not depend on it
        stored_local = dataclasses.replace(stored_local, threads=None)
        if previous.checkpoint is None:
            raise MinibnnError(f"{out_path} has no checkpoint to resume from")
        if extend_to is not None:
            done = previous.checkpoint.epoch
            if extend_to <= done:
                raise MinibnnError(f"--extend --epochs {extend_to}: the run has already "
                                   f"finished {done} epochs; give more than that")
            previous.replans.append({"at_epoch": done, "epochs_before": spec.loop.epochs,
                                     "epochs_after": extend_to})
            spec = spec.replace(epochs=extend_to)
            log(f"{out_path}: re-planning the schedule from epoch {done + 1} over "
                f"{extend_to} epochs (was {previous.replans[-1]['epochs_before']})")
    elif extend_to is not None:
        raise MinibnnError("--extend re-plans a stored run: it needs --resume")
    if spec is None:
        raise MinibnnError("fit needs a spec unless it resumes a run file")
    read = [("--teacher", spec.loop.teacher)] + ([] if resume else
                                                [("--init-from", spec.loop.init_from)])
    for role, source in read:                # a resume does not read its --init-from run again
        if source is not None and os.path.exists(source) and os.path.exists(out_path) \
                and os.path.samefile(source, out_path):
            raise MinibnnError(f"{out_path} is this run's {role} run itself: training would "
                               "overwrite what it reads; give the run another file (--out)")
    if not isinstance(local, Local):
        changes = dict(local or {})
        unknown = sorted(set(changes) - set(LOCAL_FIELDS))
        if unknown:
            raise MinibnnError(f"only machine-local settings ({', '.join(LOCAL_FIELDS)}) can "
                               f"change on resume, not {', '.join(unknown)}")
        local = dataclasses.replace(stored_local, **changes)
    if stop_after is not None and stop_after < 1:
        raise MinibnnError(f"--stop-after must be >= 1, got {stop_after}")
    device_module(local.device)          # one-line error now when there is no GPU
    tensorboard.check_available(local.tensorboard)
    with kernels.use_backend(local.backend), using_threads(local.threads):
        return _fit(spec, local, out_path, previous, progress, stop_after, log)


def _fit(spec: RunSpec, local: Local, out_path: str, previous: RunFile | None, progress: bool,
         stop_after: int | None, log: Callable[[str], None]) -> dict[str, list[float]]:
    dtype = resolve_dtype(spec.loop.dtype)
    device, epochs = local.device, spec.loop.epochs
    ds = load_data(spec, local.data_dir)
    if previous is not None:
        check_same_data(out_path, previous.description, ds)
    subset = spec.data.train_subset
    if previous is None and subset is not None and len(ds.y_train) < subset:
        raise MinibnnError(f"--train-subset {subset:,} is more than the {len(ds.y_train):,} "
                           f"training images of {spec.data.name}")
    val = None
    if spec.data.val_split:
        from minibnn.data.split import validation_split

        keep, held = validation_split(ds.y_train, spec.data.val_split, spec.loop.seed)
        val = (images_on(take_rows(ds.x_train, held), device),
               to_device(ds.y_train[held], device))
        ds = dataclasses.replace(ds, x_train=take_rows(ds.x_train, keep),
                                 y_train=ds.y_train[keep])
    x_train, y_train = images_on(ds.x_train, device), to_device(ds.y_train, device)
    x_test, y_test = images_on(ds.x_test, device), to_device(ds.y_test, device)
    check_shift(spec, tuple(ds.x_train.shape[1:]))
    model = model_from_spec(spec, tuple(ds.x_train.shape[1:]), ds.num_classes)
    steps_per_epoch = len(batch_slices(len(ds.x_train), spec.loop.batch_size))
    rates = {k: RateLog(v) if callable(v) else v
             for k, v in optimizer_rates(spec, steps_per_epoch).items()}
    optimizer = optimizer_from_spec(spec, model, steps_per_epoch, rates)

    loss_fn, recipe_records = None, {}
    if spec.loop.teacher is not None:
        loss_fn, recipe_records["teacher"] = recipe.distillation_loss(
            spec.loop.teacher, spec.loop.distill, model.input_shape, model.num_classes,
            spec.data.name, device, dtype, (ds.mean, ds.std))
        if previous is not None:
            recipe.check_same_teacher((previous.description or {}).get("provenance", []),
                                      recipe_records["teacher"])

    rng = np.random.default_rng(spec.loop.seed)
    params, buffers = model.init(rng, dtype)
    initial_state: dict[str, Any] = {}
    if spec.loop.init_from is not None and previous is None:
        start_params, start_buffers, initial_state, recipe_records["init_from"] = \
            recipe.init_from(spec, model, params, buffers)
    else:
        start_params, start_buffers = params, buffers
    state = TrainState(_tree_to_device(start_params, device),
                       _tree_to_device(start_buffers, device), {}, rng)
    state.opt_state = optimizer.init(state.params)
    recipe.set_initial_state(state.opt_state, initial_state, device)
    epochs_on_disk = previous.checkpoint.epoch if previous and previous.checkpoint else 0
    check_free_space(out_path, _space_needed(_run_file_bytes(state), out_path,
                                             writes=epochs - epochs_on_disk))
    metrics: dict[str, list[float]] = {}
    step_rows: dict[str, np.ndarray] = {}
    if previous is None:
        storage = ("+-1 weights" if spec.binary_storage == "binary" else "latent real weights"
                   ) if model.binary_names else "no binary weights (--weights real)"
        log(f"training {spec.model.name} on {spec.data.name}: {spec.binary_optimizer.name} on "
            f"{storage}, Adam on real parameters; layout {spec.model.layout}, "
            f"{get_threads()} thread{'s' if get_threads() > 1 else ''} -> {out_path}")
    if previous is not None:
        ck = previous.checkpoint
        check_checkpoint(ck, params, out_path, buffers, optimizer.init(params),
                         spec.binary_optimizer.name)
        state.params = _tree_to_device(ck.params, device)
        state.buffers = _tree_to_device(ck.buffers, device)
        state.opt_state = _tree_to_device(ck.opt_state, device)
        try:
            state.rng.bit_generator.state = ck.rng_state
        except (TypeError, ValueError, KeyError):
            raise MinibnnError(f"{out_path}: checkpoint RNG state is corrupt") from None
        state.epoch, state.step = ck.epoch, ck.step
        metrics, step_rows = previous.metrics, previous.step_metrics
        if state.epoch >= epochs:
            log(f"{out_path} already finished its {epochs} epochs; nothing to resume")
        else:
            log(f"resuming {out_path} at epoch {state.epoch + 1}/{epochs}")

    stored = config_json(spec, local)
    sessions = session_provenance(ds, local, previous, state.epoch + 1)
    sessions[-1].update(recipe_records)      # the teacher and the start this session used
    # the epoch the run file holds; "pending"/"inode" close the window between a write and
    # this note (os.replace gives the file a new inode: see _interrupt_says_what_is_kept)
    saved: dict[str, Any] = {"epoch": state.epoch, "pending": None, "inode": _inode(out_path)}
    done_now = 0
    steps = StepLog(local.log_every)
    # overflow in a diverging run is reported by check_divergence, not as NumPy warnings
    interrupted = _interrupt_says_what_is_kept(out_path, saved)
    board = tensorboard.open_board(local.tensorboard, resumed_at=state.step if previous else None)
    with np.errstate(over="ignore", invalid="ignore"), interrupted, board:
        while state.epoch < epochs and (stop_after is None or done_now < stop_after):
            start = time.perf_counter()
            for rate in rates.values():
                if isinstance(rate, RateLog):
                    rate.take()            # forget values asked for outside the steps (checks)
            epoch_metrics = train_epoch(model, optimizer, state, x_train, y_train, spec,
                                        progress, steps, rates, loss_fn)
            new_rows = steps.take()
            check_divergence(state, epoch_metrics, out_path, ds.num_classes)
            epoch_metrics.update(_rates_used(rates))
            last = state.epoch + 1 == epochs
            held_out = ""
            if val is not None:
                val_loss, val_acc = evaluate(model, state.params, state.buffers, *val)
                epoch_metrics.update(val_loss=val_loss, val_acc=val_acc)
                held_out = f"  val acc {val_acc:.4f}"
            if val is None or spec.loop.test_every_epoch or last:
                test_loss, test_acc = evaluate(model, state.params, state.buffers, x_test,
                                               y_test)
                held_out += f"  test acc {test_acc:.4f}"
            else:                                  # with a validation split: test at the end only
                test_loss = test_acc = float("nan")
            epoch_metrics.update(test_loss=test_loss, test_acc=test_acc,
                                 seconds=time.perf_counter() - start)
            state.epoch += 1
            done_now += 1
            for name, value in epoch_metrics.items():
                metrics.setdefault(name, []).append(float(value))
            pm1 = model.binary_names if spec.binary_storage == "binary" else ()
            saved["pending"] = state.epoch
            step_rows = append_rows(step_rows, new_rows)
            save_run(out_path, RunFile(stored, metrics, _checkpoint(state, pm1),
                                       describe_data(ds, sessions),
                                       previous.replans if previous is not None else [],
                                       step_rows))
            saved.update(epoch=state.epoch, pending=None, inode=_inode(out_path))
            board.epoch_end(state.step, new_rows, epoch_metrics,
                            lambda: filter_states(spec, model, state))
            mean_flip = np.mean([v for k, v in epoch_metrics.items()
                                 if k.startswith("flip_ratio:")] or [0.0])
            log(f"epoch {state.epoch:3d}/{epochs}  train loss {epoch_metrics['train_loss']:.4f}"
                f"  train acc {epoch_metrics['train_acc']:.4f}{held_out}"
                f"  flip ratio {mean_flip:.2e}  {epoch_metrics['seconds']:.1f}s")
    return metrics


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


@contextmanager
def _interrupt_says_what_is_kept(out_path: str, saved: Mapping[str, Any]) -> Iterator[None]:
    """Ctrl-C in the block re-raises ``KeyboardInterrupt`` with what the run file keeps:
    ``saved["epoch"]``, or the epoch being written (``saved["pending"]``) if the interrupt came
    after its write replaced the file (a new inode) but before the loop noted it."""
    try:
        yield
    except KeyboardInterrupt:
        kept = saved["epoch"]
        if saved["pending"] is not None and _inode(out_path) not in (None, saved["inode"]):
            kept = saved["pending"]
        raise KeyboardInterrupt(f"{out_path} keeps epoch {kept}; continue with --resume "
                                f"{out_path}" if kept else
                                f"no epoch had finished: nothing was written to {out_path}"
                                ) from None


#: an epoch's mean training loss above this many times ln(classes) (the loss of a uniform
#: guess) counts as diverged although finite: logits of that size mean the real weights blew up
DIVERGED_LOSS_FACTOR = 1000.0


def check_divergence(state: TrainState, epoch_metrics: Mapping[str, float], out_path: str,
                     num_classes: int) -> None:
    """A non-finite training loss, parameter, BatchNorm statistic or optimiser buffer, or a
    loss beyond ``DIVERGED_LOSS_FACTOR`` * ln(classes), ends the run with a one-line error
    naming the step and the first non-finite array; the run file keeps the last good epoch
    (nothing of this epoch is written)."""
    train_loss = epoch_metrics["train_loss"]
    bad = first_nonfinite({"params": state.params, "buffers": state.buffers,
                           "opt_state": state.opt_state})
    ceiling = DIVERGED_LOSS_FACTOR * math.log(num_classes)
    if math.isfinite(train_loss) and train_loss <= ceiling and bad is None:
        return
    kept = (f"{out_path} keeps epoch {state.epoch}" if state.epoch
            else f"nothing was written to {out_path}")
    if state.diverged_at is not None:
        what = f"at step {state.diverged_at} (epoch {state.epoch + 1}) the loss is not finite"
    elif not math.isfinite(train_loss) or bad is not None:
        what = f"in epoch {state.epoch + 1} the train loss is {train_loss:g}"
    else:
        what = (f"in epoch {state.epoch + 1} the train loss is {train_loss:g}, over "
                f"{DIVERGED_LOSS_FACTOR:g} x ln({num_classes}) = {ceiling:g}")
    raise MinibnnError(f"training diverged: {what}"
                       + (f"; first non-finite array: {bad}" if bad else "")
                       + f" (lower the learning rates); {kept}")


def check_shift(spec: RunSpec, input_shape: tuple[int, ...]) -> None:
    """``--shift`` must be smaller than the images (a larger shift moves every image out of
    its own frame)."""
    shift, (height, width) = spec.data.shift, input_shape[-2:]
    if shift >= min(height, width):
        raise MinibnnError(f"--shift {shift} is not smaller than the {height}x{width} images "
                           f"of {spec.data.name}; use at most {min(height, width) - 1}")


def _run_file_bytes(state: TrainState) -> int:
    """About how many bytes a run file of ``state`` takes: its arrays plus 1 MiB for the
    metrics, attributes and HDF5's own structures."""
    arrays = _flatten({"params": state.params, "buffers": state.buffers,
                       "opt_state": state.opt_state})
    return sum(int(getattr(v, "nbytes", 8)) for v in arrays.values()) + 2 ** 20


def _space_needed(size: int, out_path: str, writes: int) -> int:
    """Free bytes the run's writes need: each epoch writes the file beside the one it replaces
    (``files.atomic_path``), so from the second write on, two copies exist for a moment. A
    file already at ``out_path`` (a resume) is the one replaced: its bytes are already taken.
    So a run that passed this check at its start has room for every later epoch too, unless
    something else (another run, a sweep's other workers) fills the disk meanwhile."""
    existing = os.path.getsize(out_path) if os.path.isfile(out_path) else 0
    peak = 2 * size if writes > 1 or existing else size
    return max(size, peak - existing)


def _rates_used(rates: Mapping[str, Any]) -> dict[str, float]:
    """Each rate as the optimiser used it this epoch (its value at the epoch's first step).

    A per-epoch schedule gives one value per epoch; a rate never asked for is NaN.
    """
    used = {}
    for name, rate in rates.items():
        if isinstance(rate, RateLog):
            values = rate.take()
            used[name] = float(values[0]) if values else float("nan")
        else:
            used[name] = float(rate)
    return used


def _rates_now(rates: Mapping[str, Any]) -> dict[str, float]:
    """Each rate as the optimiser used it at the last step (a RateLog's ``last``)."""
    return {name: float(rate.last if isinstance(rate, RateLog) else rate)
            for name, rate in rates.items()}


def eval_backend(stored: Local, device: str, backend: str | None) -> str:
    """The kernels an evaluation on ``device`` uses: ``backend`` when given, else the run's own
    setting, or ``"auto"`` when the run was trained on the other device (its compiled backend
    belongs there)."""
    if backend is not None:
        return backend
    return stored.backend if stored.device == device else "auto"


def evaluate_run(path: str, device: str = "cpu", backend: str | None = None,
                 data_dir: str | None = None) -> dict[str, float]:
    """Test loss and accuracy of the checkpoint in a run file.

    Runs inside ``kernels.use_backend(eval_backend(stored, device, backend))``; ``data_dir``
    replaces the stored (machine-local) data folder.
    """
    run = load_run(path)
    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint to evaluate")
    spec, stored, model = run_model(run)
    local = Local(device=device, backend=eval_backend(stored, device, backend),
                  data_dir=data_dir or stored.data_dir)
    device_module(device)
    with kernels.use_backend(local.backend):
        ds = load_data(spec, local.data_dir, test_only=True)
        check_same_data(path, run.description, ds)
        check_model_checkpoint(run.checkpoint, model, spec.loop.dtype, path)
        loss, acc = evaluate(model, _tree_to_device(run.checkpoint.params, device),
                             _tree_to_device(run.checkpoint.buffers, device),
                             images_on(ds.x_test, device), to_device(ds.y_test, device))
    return {"test_loss": loss, "test_acc": acc, "epoch": run.checkpoint.epoch}
