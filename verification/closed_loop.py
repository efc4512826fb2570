"""P9: whole networks, closed loop, through the real minibnn layers and optimisers.

Two copies of one network are trained side by side in float64 on the same batches:

    latent:  binary weights stored as real w, forward uses sign(w) (identity weight STE, no
             mean|w| scale), optimised by decoupled SGD (B) with momentum and a decaying lr
    filter:  binary weights stored as +-1, optimised by CEMA under the P2 map
             (alpha_t = lam * lr_t, gamma = 1 - mu) from the matched state v0 = -lam(1-mu) w0

Real-valued parameters (first layer, BatchNorm, classifier) get Adam on both sides.  If the
binary weights agree at a step, the forward passes, losses and gradients are bitwise equal, so
by induction the runs stay identical; the check asserts that at every step.  minibnn's
``sign(0) = +1`` differs from CEMA's keep-on-tie rule only where a latent weight is exactly 0:
such steps are counted (none are expected in float64) and reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from minibnn import theory
from verification.core import PropertyResult, Timer

P9 = ("closed loop (binary MLP + CNN, float64, decaying lr): latent SGDW vs CEMA (P2 map) "
      "give identical b and losses every step")


@dataclass
class PairRun:
    """Outcome of one closed-loop comparison."""

    name: str
    steps: int
    flips: int
    exact_zero_weights: int
    max_state_gap: float
    losses: list[float]
    first_difference: str | None


def _teacher_data(rng: np.random.Generator, n: int, shape: tuple[int, ...], classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random linear teacher (learnable, float64)."""
    x = rng.standard_normal((n, *shape))
    teacher = rng.standard_normal((int(np.prod(shape)), classes))
    return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int64)


def closed_loop_pair(build: Callable[..., Any], name: str, steps: int, lr: Callable[[int], float],
                     momentum: float, weight_decay: float, seed: int = 0, batch: int = 16,
                     samples: int = 128, init_scale: float = 1.0, alpha_factor: float = 1.0
                     ) -> PairRun:
    """Train the latent and the filter copy of ``build(...)`` together; compare every step.

    ``alpha_factor`` multiplies the CEMA rate (1 is the P2 map; tests plant other values).
    """
    from minibnn import optim
    from minibnn.nn.functional import softmax_cross_entropy

    latent_model = build(binary_storage="latent", scale=False, weight_ste="identity",
                         init_scale=init_scale)
    filter_model = build(binary_storage="binary", scale=False, weight_ste="identity",
                         init_scale=init_scale)
    rng = np.random.default_rng(seed)
    p_lat, buf_lat = latent_model.init(rng, np.float64)
    binary = list(latent_model.binary_names)
    p_bin = {k: (np.where(v >= 0, 1.0, -1.0) if k in binary else v.copy())
             for k, v in p_lat.items()}
    buf_bin = {k: v.copy() for k, v in buf_lat.items()}
    lr0 = lr(0)
    state0 = {k: theory.matched_initial_state(p_lat[k], lr0, momentum, weight_decay, True)
              for k in binary}
    gamma = 1.0 - momentum
    opt_lat = optim.partition({"binary": optim.sgd(lr, momentum, weight_decay, decoupled=True),
                               "real": optim.adam(1e-3)}, latent_model.param_label)
    opt_bin = optim.partition({"binary": optim.cema(lambda t: alpha_factor * weight_decay * lr(t), gamma,
                                                    init_state={"m": {k: s[0] for k, s in state0.items()},
                                                                "v": {k: s[1] for k, s in state0.items()}}),
                               "real": optim.adam(1e-3)}, filter_model.param_label)
    s_lat, s_bin = opt_lat.init(p_lat), opt_bin.init(p_bin)
    x, y = _teacher_data(rng, samples, latent_model.input_shape, latent_model.num_classes)
    k_scale = weight_decay * (1.0 - momentum)
    m, v = ({k: s[0].copy() for k, s in state0.items()}, {k: s[1].copy() for k, s in state0.items()})
    run = PairRun(name, 0, 0, 0, 0.0, [], None)
    for t in range(steps):
        idx = rng.choice(samples, batch, replace=False)
        logits_l, buf_lat, cache_l = latent_model.forward(p_lat, buf_lat, x[idx], train=True)
        logits_b, buf_bin, cache_b = filter_model.forward(p_bin, buf_bin, x[idx], train=True)
        loss_l, d_l = softmax_cross_entropy(logits_l, y[idx])
        loss_b, d_b = softmax_cross_entropy(logits_b, y[idx])
        if loss_l != loss_b:
            run.first_difference = f"step {t}: loss {loss_l!r} (latent) vs {loss_b!r} (filter)"
            return run
        run.losses.append(loss_l)
        g_l, g_b = latent_model.backward(d_l, cache_l), filter_model.backward(d_b, cache_b)
        old_b = {k: p_bin[k].copy() for k in binary}
        p_lat, s_lat = opt_lat.update(g_l, s_lat, p_lat)
        p_bin, s_bin = opt_bin.update(g_b, s_bin, p_bin)
        for k in binary:
            # Track the CEMA state alongside (same recursion as optim.cema) to report |v + k w|.
            a_t = alpha_factor * weight_decay * lr(t)
            m[k] = (1.0 - gamma) * m[k] + gamma * g_b[k]
            v[k] = (1.0 - a_t) * v[k] + a_t * m[k]
            w = p_lat[k]
            run.exact_zero_weights += int(np.count_nonzero(w == 0))
            run.max_state_gap = max(run.max_state_gap, float(
                np.max(np.abs(v[k] + k_scale * w)) / max(float(np.max(np.abs(v[k]))), 1e-300)))
            run.flips += int(np.count_nonzero(p_bin[k] != old_b[k]))
            sign_w = np.where(w >= 0, 1.0, -1.0)
            if not np.array_equal(sign_w, p_bin[k]):
                bad = int(np.count_nonzero(sign_w != p_bin[k]))
                run.first_difference = f"step {t + 1}: {bad} binary weights of {k} differ"
                return run
        run.steps = t + 1
    return run


def default_runs(steps_mlp: int = 60, steps_cnn: int = 50) -> list[PairRun]:
    """The two networks of P9: a binary MLP (step-decay lr) and a small binary CNN (cosine lr)."""
    from minibnn import optim
    from minibnn.nn import models

    def mlp(**kw: Any) -> Any:
        return models.binary_mlp(in_features=24, hidden=(32, 32, 32), num_classes=4, **kw)

    def cnn(**kw: Any) -> Any:
        return models.binary_cnn(input_shape=(1, 8, 8), width=4, num_classes=3, **kw)

    return [
        closed_loop_pair(mlp, "binary MLP", steps_mlp, optim.step_decay(0.5, 20, 0.5),
                         momentum=0.9, weight_decay=0.05, seed=1, init_scale=0.1),
        closed_loop_pair(cnn, "binary CNN", steps_cnn, optim.cosine(0.5, steps_cnn, end=0.05),
                         momentum=0.75, weight_decay=0.1, seed=2, batch=8, samples=64,
                         init_scale=0.1),
    ]


def check_p9(examples: int | None = None) -> PropertyResult:
    """P9: identical binary weights and losses at every step, for an MLP and a CNN.

    ``examples`` is accepted for a uniform signature and ignored: the two networks, their
    schedules and data are fixed; the count reported is the number of steps compared.
    """
    with Timer() as timer:
        runs = default_runs()
    failure = "; ".join(f"{r.name}: {r.first_difference}" for r in runs if r.first_difference)
    summary = ", ".join(f"{r.name}: {r.steps} steps, {r.flips} flips, "
                        f"{r.exact_zero_weights} exact zeros" for r in runs)
    gap = max((r.max_state_gap for r in runs), default=0.0)
    return PropertyResult("P9", P9, sum(r.steps for r in runs), not failure, failure or None,
                          "float64, real layers + optimisers, bitwise losses",
                          f"{summary}; max |v + lam(1-mu) w| / max|v| = {gap:.2g}",
                          timer.seconds)
