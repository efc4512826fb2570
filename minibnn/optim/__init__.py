"""Optimisers in optax's shape, built by chaining small named gradient filters.

    opt = optim.cema(alpha=1e-3, gamma=0.1)
    state = opt.init(params)                          # {"m": {...}, "v": {...}, "b": {}}
    params, state = opt.update(grads, state, params)  # the readable chain (pure)
    opt.step_in_place(grads, state, params)           # the fused kernel where compiled;
                                                      # params and state updated in place

See ``filters.py`` for the building blocks, ``optimizers.py`` for the chains, their fused steps
and ``defaults(name)``, ``base.py`` for ``Transform`` and ``chain``, ``checks.py`` for the
argument checks every optimiser shares (finite, in-range hyperparameters; gradients and states
that match the parameters' names, shapes and dtypes).
"""
from minibnn.optim.base import Chain, FusedStep, Transform, chain
from minibnn.optim.filters import (add_decayed_weights, apply_updates, ema, flip, iir2,
                                   normalize_by_rms, scale_by_adam, scale_by_learning_rate,
                                   scale_by_schedule, trace)
from minibnn.optim.optimizers import adam, bop, bop2nd, cema, defaults, second_order, sgd
from minibnn.optim.partition import Partition, partition
from minibnn.optim.schedules import constant, cosine, linear, step_decay

__all__ = [
    "Chain", "FusedStep", "Transform", "chain", "add_decayed_weights", "apply_updates", "ema",
    "flip", "iir2", "normalize_by_rms", "scale_by_adam", "scale_by_learning_rate",
    "scale_by_schedule", "trace", "adam", "bop", "bop2nd", "cema", "defaults", "second_order",
    "sgd", "Partition", "partition", "constant", "cosine", "linear", "step_decay",
]
