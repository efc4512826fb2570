"""What a run takes from other runs: a teacher to distil from, and a first step to start from.

The official code of the paper (and ReActNet's) trains a binary network in steps:

  0. a real-valued teacher (``--weights real --activations real``);
  1. binary activations, real weights (``--weights real``), distilled from the teacher;
  2. binary weights too, started from step 1's weights (``--init-from STEP1.h5``), distilled.

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

from typing import Any, Callable

import numpy as np

from minibnn import theory
from minibnn.backend import get_array_module, to_device
from minibnn.errors import MinibnnError
from minibnn.nn.functional import distillation_kl, softmax_cross_entropy
from minibnn.nn.models import Model
from minibnn.run.files import load_run
from minibnn.run.spec import Cema, RunSpec, run_model

Array = Any
Params = dict[str, Array]
#: ``loss_fn(logits, x, y) -> (loss, dlogits)``: what a training step minimises
LossFn = Callable[[Array, Array, Array], tuple[Array, Array]]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The ordinary loss: softmax cross-entropy with the labels (``label_smoothing``)."""
    def loss_fn(logits: Array, x: Array, y: Array) -> tuple[Array, Array]:
        return softmax_cross_entropy(logits, y, label_smoothing=label_smoothing)

    return loss_fn


def _checkpointed(path: str, role: str, input_shape: tuple[int, ...], num_classes: int,
                  dataset: str) -> tuple[RunSpec, Model, Params, Params]:
    """The run at ``path`` (spec, model, parameters, buffers), or a one-line error when it has
    no checkpoint or was trained for other inputs."""
    run = load_run(path)
    if run.checkpoint is None:
        raise MinibnnError(f"{role} {path} has no checkpoint: train it first")
    spec, _, model = run_model(run)
    if tuple(model.input_shape) != tuple(input_shape) or model.num_classes != num_classes:
        raise MinibnnError(f"{role} {path} was trained on inputs {tuple(model.input_shape)} "
                           f"with {model.num_classes} classes, not {tuple(input_shape)} with "
                           f"{num_classes}")
    if spec.data.name != dataset:
        raise MinibnnError(f"{role} {path} was trained on {spec.data.name}, not {dataset} "
                           f"(its inputs were standardised differently)")
    return spec, model, run.checkpoint.params, run.checkpoint.buffers


def distillation_loss(path: str, temperature: float, input_shape: tuple[int, ...],
                      num_classes: int, dataset: str, device: str, dtype: Any) -> LossFn:
    """The loss of distilling from the run at ``path``: its eval-mode logits on each batch are
    the target of ``distillation_kl`` at ``temperature``."""
    _, teacher, params, buffers = _checkpointed(path, "teacher", input_shape, num_classes,
                                                dataset)
    params = {k: to_device(np.asarray(v, dtype=dtype), device) for k, v in params.items()}
    buffers = {k: to_device(np.asarray(v, dtype=dtype), device) for k, v in buffers.items()}

    def loss_fn(logits: Array, x: Array, y: Array) -> tuple[Array, Array]:
        target, _, _ = teacher.forward(params, buffers, x, train=False)
        return distillation_kl(logits, target, temperature)

    return loss_fn


def init_from(spec: RunSpec, model: Model, params: Params, buffers: Params
              ) -> tuple[Params, Params, dict[str, Params]]:
    """(params, buffers, cema initial state) of a run started from ``spec.loop.init_from``.

    ``params``/``buffers``: the new model's own (``model.init``), which give the names, shapes
    and dtype the checkpoint must supply. The initial state (``{"m": ..., "v": ...}`` over the
    binary weights) is empty unless the run is cema with ``init_weight_decay > 0``.
    """
    path = spec.loop.init_from
    _, _, old_params, old_buffers = _checkpointed(path, "--init-from run", model.input_shape,
                                                  model.num_classes, spec.data.name)
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
    return new_params, new_buffers, state


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
