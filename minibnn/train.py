"""The training loop: mini-batches, the update, per-epoch metrics and checkpoints.

One step, written out (``train_step``)::

    logits, buffers, cache = model.forward(params, buffers, x, train=True)
    loss, dlogits          = softmax_cross_entropy(logits, y, label_smoothing)
    grads                  = model.backward(dlogits, cache)
    params, opt_state      = optimizer.update(grads, opt_state, params)

Binary weights go to the binary optimiser (CEMA by default, stored as +-1) and every other
parameter to Adam, as in the paper's code.  All randomness (init, shuffling) comes from one
``numpy.random.Generator`` seeded from the config; its state is checkpointed, so a resumed run
is bit-identical to an uninterrupted one.  Per epoch we log train loss/accuracy, test
loss/accuracy, the mean per-step flip ratio of every binary layer and the seconds taken.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from minibnn import optim
from minibnn.augment import random_shift
from minibnn.backend import (device_module, resolve_dtype, set_cpu_kernels, to_device,
                             to_numpy)
from minibnn.config import TrainConfig
from minibnn.errors import MinibnnError
from minibnn.io import Checkpoint, RunFile, check_writable, load_run, save_run
from minibnn.nn.functional import softmax_cross_entropy
from minibnn.nn.models import Model, build_model
from minibnn.optim import fused
from minibnn.optim.base import Transform

Params = dict[str, Any]


def model_from_config(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
                      ) -> Model:
    """Build the configured model for a dataset's input shape and class count."""
    common = dict(input_shape=input_shape, num_classes=num_classes,
                  binary_storage=config.binary_storage, scale=config.scale,
                  weight_ste=config.weight_ste, act_ste=config.act_ste,
                  init_scale=config.init_scale)
    if config.model == "binary_mlp":
        return build_model("binary_mlp", hidden=config.hidden, **common)
    return build_model(config.model, width=config.width, **common)


def _schedule(config: TrainConfig, init: float, steps_per_epoch: int) -> optim.schedules.Schedule:
    """The configured schedule, advanced once per epoch (the paper's ``1 - e/E`` for linear)."""
    total = config.epochs * steps_per_epoch
    return optim.schedules.by_name(config.schedule, init, total, per_epoch_steps=steps_per_epoch,
                                   step_size=max(1, config.epochs // 3) * steps_per_epoch)


def optimizer_from_config(config: TrainConfig, model: Model, steps_per_epoch: int) -> Transform:
    """Binary weights -> the configured binary optimiser; real parameters -> Adam.

    On the CPU with ``backend="numba"`` the fused one-pass kernels replace the filter chains
    (same arithmetic, same bits, same state layout: ``tests/test_optim_fused.py``).
    """
    fast = config.device == "cpu" and config.backend == "numba"
    cema, bop, sgd, adam = ((fused.fused_cema, fused.fused_bop, fused.fused_sgd, fused.fused_adam)
                            if fast else (optim.cema, optim.bop, optim.sgd, optim.adam))
    if config.optimizer == "cema":
        binary = cema(_schedule(config, config.alpha, steps_per_epoch), config.gamma)
    elif config.optimizer == "bop":
        binary = bop(config.threshold, config.gamma)
    elif config.optimizer == "bop2nd":
        binary = optim.bop2nd(config.threshold, config.gamma, config.sigma)
    elif config.optimizer == "sgd":
        binary = sgd(_schedule(config, config.lr, steps_per_epoch), config.momentum,
                     config.weight_decay, config.decoupled)
    elif config.optimizer == "adam":
        binary = adam(_schedule(config, config.lr, steps_per_epoch),
                      weight_decay=config.weight_decay, decoupled=config.decoupled)
    else:
        raise MinibnnError(f"unknown optimizer {config.optimizer!r}")
    real = adam(_schedule(config, config.real_lr, steps_per_epoch),
                weight_decay=config.real_weight_decay)
    return optim.partition({"binary": binary, "real": real}, model.param_label)


def load_data(config: TrainConfig) -> Any:
    """The configured dataset, in the configured dtype (training subset applied)."""
    from minibnn.data import load_dataset

    ds = load_dataset(config.dataset, data_dir=config.data_dir, dtype=config.dtype)
    if config.train_subset is not None:
        n = config.train_subset
        ds = dataclasses.replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])
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


def train_step(model: Model, optimizer: Transform, state: TrainState, x: Any, y: Any,
               label_smoothing: float = 0.0) -> tuple[float, int, dict[str, int]]:
    """One update in place on ``state``; returns (loss, correct predictions, flips per layer)."""
    logits, new_buffers, cache = model.forward(state.params, state.buffers, x, train=True)
    loss, dlogits = softmax_cross_entropy(logits, y, label_smoothing=label_smoothing)
    grads = model.backward(dlogits, cache)
    new_params, state.opt_state = optimizer.update(grads, state.opt_state, state.params)
    flips = {name: int(((state.params[name] >= 0) != (new_params[name] >= 0)).sum())
             for name in model.binary_names}
    state.params, state.step = new_params, state.step + 1
    state.buffers.update(new_buffers)
    correct = int((logits.argmax(axis=1) == y).sum())
    return float(loss), correct, flips


def evaluate(model: Model, params: Params, buffers: Params, x: Any, y: Any,
             batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode (BatchNorm uses running statistics)."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits, _, _ = model.forward(params, buffers, xb, train=False)
        loss, _ = softmax_cross_entropy(logits, yb)
        total_loss += float(loss) * len(xb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, unit="batch")


def train_epoch(model: Model, optimizer: Transform, state: TrainState, x: Any, y: Any,
                config: TrainConfig, progress: bool = False) -> dict[str, float]:
    """One pass over the shuffled training set; returns the epoch's training metrics."""
    xp = device_module(config.device)
    n = len(x)
    order = state.rng.permutation(n)
    batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        # BatchNorm cannot normalise a batch of one: the last sample joins the previous batch
        batches[-2:] = [np.concatenate(batches[-2:])]
    sizes = {name: state.params[name].size for name in model.binary_names}
    flips = dict.fromkeys(sizes, 0)
    loss_sum, correct = 0.0, 0
    for idx in _progress(batches, progress, f"epoch {state.epoch + 1}/{config.epochs}"):
        idx_dev = xp.asarray(idx)
        xb = x[idx_dev]
        if config.shift:
            xb = random_shift(xb, config.shift, state.rng)
        loss, right, step_flips = train_step(model, optimizer, state, xb, y[idx_dev],
                                             config.label_smoothing)
        loss_sum += loss * len(idx)
        correct += right
        for name, count in step_flips.items():
            flips[name] += count
    metrics = {"train_loss": loss_sum / n, "train_acc": correct / n}
    for name, count in flips.items():
        # mean per-step flip ratio: flipped weights / (weights * steps), as the paper logs it
        metrics[f"flip_ratio:{name}"] = count / (sizes[name] * len(batches))
    return metrics


def _checkpoint(state: TrainState) -> Checkpoint:
    return Checkpoint(params={k: to_numpy(v) for k, v in state.params.items()},
                      buffers={k: to_numpy(v) for k, v in state.buffers.items()},
                      opt_state=_tree_to_numpy(state.opt_state),
                      rng_state=state.rng.bit_generator.state, epoch=state.epoch,
                      step=state.step)


def _tree_to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_to_numpy(v) for k, v in tree.items()}
    return to_numpy(tree)


def _tree_to_device(tree: Any, device: str) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_to_device(v, device) for k, v in tree.items()}
    if np.ndim(tree) == 0 and np.asarray(tree).dtype.kind in "iu":
        return np.asarray(tree)      # step counters stay host scalars
    return to_device(tree, device)


def check_checkpoint(ck: Checkpoint, params: Params, path: str, buffers: Params | None = None,
                     opt_state: Params | None = None) -> None:
    """The stored arrays must be exactly the ones the rebuilt model (and optimiser) declare."""
    _check_tree(ck.params, params, path, "parameter")
    if buffers is not None:
        _check_tree(ck.buffers, buffers, path, "buffer")
    if opt_state is not None:
        _check_tree(_flatten(ck.opt_state), _flatten(opt_state), path, "optimiser state entry")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def _check_tree(stored: Params, expected: Params, path: str, what: str) -> None:
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise MinibnnError(f"{path}: checkpoint does not match the model in its config "
                           f"(missing {what}s {missing[:3]}, unexpected {extra[:3]})")
    for name, value in expected.items():
        if tuple(np.shape(stored[name])) != tuple(np.shape(value)):
            raise MinibnnError(f"{path}: {what} {name!r} has shape {np.shape(stored[name])}, "
                               f"the model expects {np.shape(value)}")


def fit(config: TrainConfig | None, out_path: str, resume: bool = False, progress: bool = True,
        stop_after: int | None = None, log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Train as configured, writing ``out_path`` after every epoch; return the metrics.

    ``resume=True`` continues the run stored in ``out_path`` with its stored config (``config``
    may then be None and is ignored).
    ``stop_after`` ends this invocation after that many epochs (the run stays resumable).
    """
    previous: RunFile | None = None
    if resume:
        previous = load_run(out_path)
        config = TrainConfig.from_json(previous.config_json)
        if previous.checkpoint is None:
            raise MinibnnError(f"{out_path} has no checkpoint to resume from")
    if config is None:
        raise MinibnnError("fit needs a config unless it resumes a run file")
    config.validate()
    if stop_after is not None and stop_after < 1:
        raise MinibnnError(f"--stop-after must be >= 1, got {stop_after}")
    check_writable(out_path)
    set_cpu_kernels(config.backend)
    dtype = resolve_dtype(config.dtype)
    ds = load_data(config)
    x_train, y_train = to_device(ds.x_train, config.device), to_device(ds.y_train, config.device)
    x_test, y_test = to_device(ds.x_test, config.device), to_device(ds.y_test, config.device)
    model = model_from_config(config, tuple(ds.x_train.shape[1:]), ds.num_classes)
    steps_per_epoch = -(-len(ds.x_train) // config.batch_size)
    optimizer = optimizer_from_config(config, model, steps_per_epoch)

    rng = np.random.default_rng(config.seed)
    params, buffers = model.init(rng, dtype)
    state = TrainState(_tree_to_device(params, config.device),
                       _tree_to_device(buffers, config.device), {}, rng)
    state.opt_state = optimizer.init(state.params)
    metrics: dict[str, list[float]] = {}
    if previous is not None:
        ck = previous.checkpoint
        check_checkpoint(ck, params, out_path, buffers, optimizer.init(params))
        state.params = _tree_to_device(ck.params, config.device)
        state.buffers = _tree_to_device(ck.buffers, config.device)
        state.opt_state = _tree_to_device(ck.opt_state, config.device)
        try:
            state.rng.bit_generator.state = ck.rng_state
        except (TypeError, ValueError, KeyError):
            raise MinibnnError(f"{out_path}: checkpoint RNG state is corrupt") from None
        state.epoch, state.step = ck.epoch, ck.step
        metrics = previous.metrics
        if state.epoch >= config.epochs:
            log(f"{out_path} already finished its {config.epochs} epochs; nothing to resume")
        else:
            log(f"resuming {out_path} at epoch {state.epoch + 1}/{config.epochs}")

    done_now = 0
    while state.epoch < config.epochs and (stop_after is None or done_now < stop_after):
        start = time.perf_counter()
        epoch_metrics = train_epoch(model, optimizer, state, x_train, y_train, config, progress)
        test_loss, test_acc = evaluate(model, state.params, state.buffers, x_test, y_test)
        epoch_metrics.update(test_loss=test_loss, test_acc=test_acc,
                             seconds=time.perf_counter() - start)
        state.epoch += 1
        done_now += 1
        for name, value in epoch_metrics.items():
            metrics.setdefault(name, []).append(float(value))
        save_run(out_path, RunFile(config.to_json(), metrics, _checkpoint(state)))
        mean_flip = np.mean([v for k, v in epoch_metrics.items() if k.startswith("flip_ratio:")]
                            or [0.0])
        log(f"epoch {state.epoch:3d}/{config.epochs}  train loss {epoch_metrics['train_loss']:.4f}"
            f"  train acc {epoch_metrics['train_acc']:.4f}  test acc {test_acc:.4f}"
            f"  flip ratio {mean_flip:.2e}  {epoch_metrics['seconds']:.1f}s")
    return metrics


def evaluate_run(path: str, device: str = "cpu") -> dict[str, float]:
    """Test loss and accuracy of the checkpoint in a run file."""
    run = load_run(path)
    if run.checkpoint is None:
        raise MinibnnError(f"{path} has no checkpoint to evaluate")
    config = TrainConfig.from_json(run.config_json)
    config.device = device
    ds = load_data(config)
    model = model_from_config(config, tuple(ds.x_train.shape[1:]), ds.num_classes)
    params, buffers = model.init(np.random.default_rng(0), resolve_dtype(config.dtype))
    check_checkpoint(run.checkpoint, params, path, buffers)
    loss, acc = evaluate(model, _tree_to_device(run.checkpoint.params, device),
                         _tree_to_device(run.checkpoint.buffers, device),
                         to_device(ds.x_test, device), to_device(ds.y_test, device))
    return {"test_loss": loss, "test_acc": acc, "epoch": run.checkpoint.epoch}
