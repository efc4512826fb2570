"""What a run takes from other runs: a teacher to distil from, and a first step to start from.

The official code of the paper (and ReActNet's) trains a binary network in steps:

  0. a real-valued teacher (``--weights real --activations real``);
  1. binary activations, real weights (``--weights real``), distilled from the teacher;
  2. binary weights too, started from step 1's weights (``--init-from STEP1.h5``), distilled.

Both must be finished runs. Each session's provenance names them (absolute path, SHA-256,
epoch, step), and a resume refuses a teacher file that has changed since the run started.

``--teacher RUN.h5 --distill T`` replaces the cross-entropy by the distillation loss
``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (``nn.functional.distillation_kl``):
the teacher's logits are computed on the very batch the student sees (augmentation included),
in eval mode (its BatchNorm running statistics), and never trained.

``--init-from RUN.h5`` starts a run from another run's checkpoint: every parameter and buffer
of the new model must be in it with the same shape (real-weight layers keep the binary layers'
names for this, ``nn.models``). A binary weight starts as

  * latent optimisers (sgd, adam): the latent weight ``w = w1``;
  * filter optimisers (cema, bop, ...): ``b0 = sign(w1)`` (``w1 >= 0`` gives +1, the flip rule's
    sign), with the filter's state at zero; for cema with ``--init-weight-decay lam > 0``, the
    state that reproduces latent weights ``w1`` (``theory.matched_initial_state``): the cema is
    read as decoupled SGD with momentum ``1 - gamma``, weight decay ``lam`` and learning rate
    ``alpha / lam``, whose state is ``v0 = -lam * gamma * w1`` and ``m0 = 0`` (docs/theory.md
    P2), so ``w1``'s magnitudes decide how long each sign holds and are forgotten at the
    filter's rate. ``lam = 0`` keeps only the signs.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

import numpy as np

from minibnn import theory
from minibnn.backend import get_array_module, to_device
from minibnn.errors import MinibnnError
from minibnn.nn.functional import distillation_kl
from minibnn.nn.models import Model
from minibnn.run.files import load_run
from minibnn.run.spec import Cema, RunSpec, run_model

Array = Any
Params = dict[str, Array]
#: ``loss_fn(logits, x, y) -> (loss, dlogits)``: what a training step minimises
LossFn = Callable[[Array, Array, Array], tuple[Array, Array]]


def file_sha256(path: str) -> str:
    """The SHA-256 of the file's bytes (a run file: its checkpoint, metrics and spec)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpointed(path: str, role: str, input_shape: tuple[int, ...], num_classes: int,
                  dataset: str, standardisation: tuple[Any, Any] | None = None
                  ) -> tuple[RunSpec, Model, Params, Params, dict[str, Any]]:
    """The run at ``path`` (spec, model, parameters, buffers, and a record naming it: absolute
    path, SHA-256, epoch, step), or a one-line error when it is unfinished, or was trained for
    other inputs (``standardisation``: this run's per-channel mean and std, which the other's
    inputs must share)."""
    run = load_run(path)
    if run.checkpoint is None:
        raise MinibnnError(f"{role} {path} has no checkpoint: train it first")
    spec, _, model = run_model(run)
    if run.checkpoint.epoch < spec.loop.epochs:
        raise MinibnnError(f"{role} {path} has trained {run.checkpoint.epoch} of its "
                           f"{spec.loop.epochs} epochs: finish it first (minibnn train "
                           f"--resume {path}), or this run would depend on when it started")
    if tuple(model.input_shape) != tuple(input_shape) or model.num_classes != num_classes:
        raise MinibnnError(f"{role} {path} was trained on inputs {tuple(model.input_shape)} "
                           f"with {model.num_classes} classes, not {tuple(input_shape)} with "
                           f"{num_classes}")
    if spec.data.name != dataset:
        raise MinibnnError(f"{role} {path} was trained on {spec.data.name}, not {dataset} "
                           f"(its inputs were standardised differently)")
    if standardisation is not None and run.description is not None:
        theirs = (run.description.get("mean"), run.description.get("std"))
        ours = tuple([float(v) for v in values] for values in standardisation)
        if theirs[0] is not None and not np.allclose(theirs, ours, rtol=1e-6, atol=0):
            raise MinibnnError(f"{role} {path} standardised its inputs with mean {theirs[0]} "
                               f"and std {theirs[1]}, this run with {ours[0]} and {ours[1]} "
                               f"(another image folder?)")
    record = {"path": os.path.abspath(path), "sha256": file_sha256(path),
              "epoch": run.checkpoint.epoch, "step": run.checkpoint.step}
    return spec, model, run.checkpoint.params, run.checkpoint.buffers, record


def distillation_loss(path: str, temperature: float, input_shape: tuple[int, ...],
                      num_classes: int, dataset: str, device: str, dtype: Any,
                      standardisation: tuple[Any, Any] | None = None
                      ) -> tuple[LossFn, dict[str, Any]]:
    """The loss of distilling from the run at ``path`` (its eval-mode logits on each batch are
    the target of ``distillation_kl`` at ``temperature``), and the record naming the teacher
    (``_checkpointed``)."""
    _, teacher, params, buffers, record = _checkpointed(path, "teacher", input_shape,
                                                        num_classes, dataset, standardisation)
    params = {k: to_device(np.asarray(v, dtype=dtype), device) for k, v in params.items()}
    buffers = {k: to_device(np.asarray(v, dtype=dtype), device) for k, v in buffers.items()}

    def loss_fn(logits: Array, x: Array, y: Array) -> tuple[Array, Array]:
        target, _, _ = teacher.forward(params, buffers, x, train=False)
        return distillation_kl(logits, target, temperature)

    return loss_fn, record


def check_same_teacher(sessions: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """A resumed run must distil from the very teacher it started with: the first session's
    record (``sessions``: the run file's provenance, oldest first) must have ``record``'s
    SHA-256, else a one-line error (a changed teacher would change the run silently)."""
    first = next((s["teacher"] for s in sessions if "teacher" in s), None)
    if first is not None and first.get("sha256") != record["sha256"]:
        raise MinibnnError(f"the teacher {record['path']} is not the file this run started "
                           f"with (sha256 {first.get('sha256', '?')[:12]}... then, "
                           f"{record['sha256'][:12]}... now): distilling from another teacher "
                           f"would change the run; restore it or start a new run")


def init_from(spec: RunSpec, model: Model, params: Params, buffers: Params
              ) -> tuple[Params, Params, dict[str, Params], dict[str, Any]]:
    """(params, buffers, cema initial state, the start's record) of a run started from
    ``spec.loop.init_from``.

    ``params``/``buffers``: the new model's own (``model.init``), which give the names, shapes
    and dtype the checkpoint must supply. The initial state (``{"m": ..., "v": ...}`` over the
    binary weights) is empty unless the run is cema with ``init_weight_decay > 0``.
    """
    path = spec.loop.init_from
    _, _, old_params, old_buffers, record = _checkpointed(
        path, "--init-from run", model.input_shape, model.num_classes, spec.data.name)
    for kind, new, old in (("parameter", params, old_params), ("buffer", buffers, old_buffers)):
        for name, value in new.items():
            if name not in old:
                raise MinibnnError(f"--init-from {path} has no {kind} {name!r} of the new "
                                   f"model (same model and width needed)")
            if tuple(old[name].shape) != tuple(value.shape):
                raise MinibnnError(f"--init-from {path}: {kind} {name!r} has shape "
                                   f"{tuple(old[name].shape)}, the new model needs "
                                   f"{tuple(value.shape)}")
    new_params = {k: np.asarray(old_params[k], dtype=v.dtype) for k, v in params.items()}
    new_buffers = {k: np.asarray(old_buffers[k], dtype=v.dtype) for k, v in buffers.items()}
    state: dict[str, Params] = {}
    if spec.binary_storage == "binary":
        latent = {name: new_params[name] for name in model.binary_names}
        for name, w in latent.items():
            new_params[name] = np.where(w >= 0, 1, -1).astype(w.dtype)   # the flip rule's sign
        lam = spec.loop.init_weight_decay
        if lam > 0:
            state = cema_initial_state(spec.binary_optimizer, latent, lam)
    return new_params, new_buffers, state, record


def cema_initial_state(cema: Cema, latent: Params, weight_decay: float) -> dict[str, Params]:
    """``{"m": m0, "v": v0}``: the cema state that continues latent weights ``latent`` as
    decoupled SGD (momentum ``1 - gamma``, decay ``weight_decay``, lr ``alpha / weight_decay``)
    would (``theory.matched_initial_state``; alpha at the first step)."""
    alpha = float(cema.alpha)
    m, v = {}, {}
    for name, w in latent.items():
        m0, v0 = theory.matched_initial_state(w.astype(np.float64), lr=alpha / weight_decay,
                                              momentum=1.0 - cema.gamma,
                                              weight_decay=weight_decay, decoupled=True)
        m[name], v[name] = np.asarray(m0, dtype=w.dtype), np.asarray(v0, dtype=w.dtype)
    return {"m": m, "v": v}


def set_initial_state(opt_state: dict[str, Any], initial: dict[str, Params], device: str
                      ) -> None:
    """Write ``initial`` (``{"m": ..., "v": ...}``) into the binary group's cema buffers
    (``opt_state["binary"][stage]["s"][name]``, the checkpoint's ``binary/v/s/<param>``)."""
    for stage, buffers in initial.items():
        target = opt_state["binary"][stage]["s"]
        for name, value in buffers.items():
            xp = get_array_module(target[name])
            target[name][...] = xp.asarray(to_device(value, device))
