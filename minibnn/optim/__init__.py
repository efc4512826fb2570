"""Optimisers in optax's shape, built by chaining small gradient filters.

    opt = optim.cema(alpha=1e-4, gamma=1e-3)
    state = opt.init(params)
    params, state = opt.update(grads, state, params)

See ``filters.py`` for the building blocks and ``optimizers.py`` for the chains.
"""
from minibnn.optim.base import Transform, chain
from minibnn.optim.filters import (add_decayed_weights, apply_updates, ema, flip, iir2,
                                   normalize_by_rms, scale_by_adam, scale_by_learning_rate,
                                   scale_by_schedule, trace)
from minibnn.optim.optimizers import adam, bop, bop2nd, cema, second_order, sgd
from minibnn.optim.partition import partition
from minibnn.optim.schedules import constant, cosine, linear, step_decay

__all__ = [
    "Transform", "chain", "add_decayed_weights", "apply_updates", "ema", "flip", "iir2",
    "normalize_by_rms", "scale_by_adam", "scale_by_learning_rate", "scale_by_schedule", "trace",
    "adam", "bop", "bop2nd", "cema", "second_order", "sgd", "partition", "constant", "cosine",
    "linear", "step_decay",
]
