"""P9: whole networks, closed loop, through the real minibnn layers, optimisers and trainer.

Two copies of one network are trained side by side in float64 on the same batches:

    latent:  binary weights stored as real w, forward uses sign(w) (identity weight STE, no
             mean|w| scale), optimised by decoupled SGD (B) with momentum and a decaying lr
    filter:  binary weights stored as +-1, optimised by CEMA under the P2 map
             (alpha_t = lam * lr_t, gamma = 1 - mu) from the matched state v0 = -lam(1-mu) w0

Real-valued parameters (first layer, BatchNorm, classifier) get Adam on both sides.  If the
binary weights agree at a step, the forward passes, losses and gradients are bitwise equal, so
by induction the runs stay identical; the check asserts that at every step.

Each pair runs in every optimiser implementation (``engine``): the chains, and the fused steps
forced on each kernel backend (``fused[cuda]`` moves the whole network to the GPU).  Where
PyTorch is installed, the two networks are also trained in PyTorch (``closed_loop_torch``):
``torch.optim.SGD`` with decoupled decay against ``minibnn.torch.CEMA``.  A last
pair goes through the trainer itself: ``train.optimizer_from_spec`` builds both optimisers
from run specs (``minibnn.run.spec``) and ``train.train_step`` runs them (``optimizer.step_in_place``: the
fused kernels of the default backend), with a per-epoch linear schedule.  In that pair two BatchNorm channels
after a binary layer have scale 0 and a shift outside the activation STE's support, so their
weight rows get exactly zero gradients; those rows start at w0 = 0, hence v = m = 0 throughout:
exact ties (CEMA keeps b = +1, the latent sign(0) = +1), counted in the report.
minibnn's ``sign(0) = +1`` differs from CEMA's keep-on-tie rule only where a latent weight is
exactly 0 and b was -1: steps with exact zeros are counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from minibnn import theory
from verification import engine
from verification.core import PropertyResult, Timer

P9 = ("closed loop (binary MLP + CNN, float64, decaying lr): latent SGDW vs CEMA (P2 map) "
      "give identical b and losses every step")

#: BatchNorm channels (of bn2) whose binary weight rows get exactly zero gradients
TIE_CHANNELS = (0, 1)


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
    ties: int = 0


def _teacher_data(rng: np.random.Generator, n: int, shape: tuple[int, ...], classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random linear teacher (learnable, float64)."""
    x = rng.standard_normal((n, *shape))
    teacher = rng.standard_normal((int(np.prod(shape)), classes))
    return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int64)


def _tree(tree: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(tree, dict):
        return {k: _tree(v, fn) for k, v in tree.items()}
    return fn(tree)


class _Device:
    """Where an implementation runs: host NumPy, or the GPU for ``fused[cuda]``."""

    def __init__(self, impl: str):
        self.backend = None if impl == engine.CHAIN else impl[len("fused["):-1]
        self.to_dev, self.to_host = engine.converters(self.backend)

    def context(self) -> Any:
        import contextlib

        from minibnn import kernels

        return kernels.use_backend(self.backend) if self.backend else contextlib.nullcontext()


class _Tracker:
    """Compares the two copies after each step and keeps the report's counts."""

    def __init__(self, run: PairRun, binary: list[str], k_scale: float):
        self.run, self.binary, self.k_scale = run, binary, k_scale

    def step(self, t: int, w: dict[str, np.ndarray], b: dict[str, np.ndarray],
             old_b: dict[str, np.ndarray], v: dict[str, np.ndarray]) -> bool:
        """Record step ``t + 1``; False (and ``first_difference``) when b differs."""
        run = self.run
        for k in self.binary:
            run.exact_zero_weights += int(np.count_nonzero(w[k] == 0))
            run.ties += int(np.count_nonzero(v[k] == 0))
            run.max_state_gap = max(run.max_state_gap, float(
                np.max(np.abs(v[k] + self.k_scale * w[k])) / max(float(np.max(np.abs(v[k]))),
                                                                 1e-300)))
            run.flips += int(np.count_nonzero(b[k] != old_b[k]))
            sign_w = np.where(w[k] >= 0, 1.0, -1.0)
            if not np.array_equal(sign_w, b[k]):
                bad = int(np.count_nonzero(sign_w != b[k]))
                run.first_difference = f"step {t + 1}: {bad} binary weights of {k} differ"
                return False
        run.steps = t + 1
        return True


def closed_loop_pair(build: Callable[..., Any], name: str, steps: int, lr: Callable[[int], float],
                     momentum: float, weight_decay: float, seed: int = 0, batch: int = 16,
                     samples: int = 128, init_scale: float = 1.0, alpha_factor: float = 1.0,
                     impl: str = engine.CHAIN) -> PairRun:
    """Train the latent and the filter copy of ``build(...)`` together; compare every step.

    ``alpha_factor`` multiplies the CEMA rate (1 is the P2 map; tests plant other values);
    ``impl`` is the optimiser implementation (``engine.implementations``).
    """
    from minibnn import optim
    from minibnn.nn.functional import softmax_cross_entropy

    dev = _Device(impl)
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
    state0 = {k: theory.matched_initial_state(p_lat[k], lr(0), momentum, weight_decay, True)
              for k in binary}
    gamma = 1.0 - momentum
    opt_lat = optim.partition({"binary": optim.sgd(lr, momentum, weight_decay, decoupled=True),
                               "real": optim.adam(1e-3)}, latent_model.param_label)
    opt_bin = optim.partition(
        {"binary": optim.cema(lambda t: alpha_factor * weight_decay * lr(t), gamma,
                              init_state={"m": {k: dev.to_dev(s[0]) for k, s in state0.items()},
                                          "v": {k: dev.to_dev(s[1]) for k, s in state0.items()}}),
         "real": optim.adam(1e-3)}, filter_model.param_label)
    if dev.backend is not None:
        opt_lat, opt_bin = engine.forced(opt_lat), engine.forced(opt_bin)
    x, y = _teacher_data(rng, samples, latent_model.input_shape, latent_model.num_classes)
    x_dev, y_dev = dev.to_dev(x), dev.to_dev(y)
    p_lat, buf_lat = _tree(p_lat, dev.to_dev), _tree(buf_lat, dev.to_dev)
    p_bin, buf_bin = _tree(p_bin, dev.to_dev), _tree(buf_bin, dev.to_dev)
    s_lat, s_bin = opt_lat.init(p_lat), opt_bin.init(p_bin)
    run = PairRun(f"{name} [{impl}]", 0, 0, 0, 0.0, [], None)
    tracker = _Tracker(run, binary, weight_decay * (1.0 - momentum))
    with dev.context():
        for t in range(steps):
            idx = rng.choice(samples, batch, replace=False)
            xb, yb = x_dev[dev.to_dev(idx)], y_dev[dev.to_dev(idx)]
            logits_l, buf_lat, cache_l = latent_model.forward(p_lat, buf_lat, xb, train=True)
            logits_b, buf_bin, cache_b = filter_model.forward(p_bin, buf_bin, xb, train=True)
            loss_l, d_l = softmax_cross_entropy(logits_l, yb)
            loss_b, d_b = softmax_cross_entropy(logits_b, yb)
            if float(loss_l) != float(loss_b):
                run.first_difference = (f"step {t}: loss {float(loss_l)!r} (latent) vs "
                                        f"{float(loss_b)!r} (filter)")
                return run
            run.losses.append(float(loss_l))
            g_l, g_b = latent_model.backward(d_l, cache_l), filter_model.backward(d_b, cache_b)
            old_b = {k: dev.to_host(p_bin[k]).copy() for k in binary}
            p_lat, s_lat = opt_lat.update(g_l, s_lat, p_lat)
            p_bin, s_bin = opt_bin.update(g_b, s_bin, p_bin)
            v = {k: dev.to_host(s_bin["binary"]["v"]["s"][k]) for k in binary}
            if not tracker.step(t, {k: dev.to_host(p_lat[k]) for k in binary},
                                {k: dev.to_host(p_bin[k]) for k in binary}, old_b, v):
                return run
    return run


def _mlp(**kw: Any) -> Any:
    from minibnn.nn import models

    return models.binary_mlp(in_features=24, hidden=(32, 32, 32), num_classes=4, **kw)


def _cnn(**kw: Any) -> Any:
    from minibnn.nn import models

    return models.binary_cnn(input_shape=(1, 8, 8), width=4, num_classes=3, **kw)


def default_runs(steps_mlp: int = 60, steps_cnn: int = 50,
                 impls: list[str] | None = None) -> list[PairRun]:
    """The two networks of P9, in each implementation: a binary MLP (step-decay lr) and a
    small binary CNN (cosine lr)."""
    from minibnn import optim

    runs = []
    for impl in impls or [engine.CHAIN]:
        runs += [
            closed_loop_pair(_mlp, "binary MLP", steps_mlp, optim.step_decay(0.5, 20, 0.5),
                             momentum=0.9, weight_decay=0.05, seed=1, init_scale=0.1,
                             impl=impl),
            closed_loop_pair(_cnn, "binary CNN", steps_cnn, optim.cosine(0.5, steps_cnn, end=0.05),
                             momentum=0.75, weight_decay=0.1, seed=2, batch=8, samples=64,
                             init_scale=0.1, impl=impl),
        ]
    return runs


def trainer_pair(epochs: int = 3, steps_per_epoch: int = 10, batch: int = 16, seed: int = 3,
                 device_arrays: bool = False, tie_channels: tuple[int, ...] = TIE_CHANNELS
                 ) -> PairRun:
    """Latent SGDW and CEMA given by run specs, stepped by ``train.train_step``.

    Both optimisers come from ``train.optimizer_from_spec`` (schedule: linear, per epoch,
    for lr, alpha and the real Adam's lr); the CEMA state is then set to the matched state.
    Channels ``tie_channels`` of ``bn2`` get scale 0 and shift 5 (outside the ``approx``
    STE's support) on both sides, and the matching rows of ``fc2`` start at w0 = 0: their
    gradients are exactly 0, so v stays exactly 0 (ties).  ``device_arrays`` runs on CuPy.
    """
    from minibnn import kernels
    from minibnn.run import train
    from minibnn.run.spec import spec_from_options

    lr, mu, lam = 0.5, 0.75, 2.0 ** -4          # alpha = lam lr and gamma = 1 - mu are exact
    common = dict(model="binary_mlp", hidden=[32, 32, 32], scale=False, weight_ste="identity",
                  init_scale=0.1, schedule="linear", epochs=epochs, batch_size=batch,
                  dtype="float64", seed=seed, real_lr=1e-3)
    cfg_lat = spec_from_options(dict(optimizer="sgd", lr=lr, momentum=mu, weight_decay=lam,
                                     decoupled=True, **common))
    cfg_bin = spec_from_options(dict(optimizer="cema", alpha=lam * lr, gamma=1.0 - mu, **common))
    shape, classes = (24,), 4
    latent_model = train.model_from_spec(cfg_lat, shape, classes)
    filter_model = train.model_from_spec(cfg_bin, shape, classes)
    rng = np.random.default_rng(seed)
    p_lat, buf_lat = latent_model.init(rng, np.float64)
    binary = list(latent_model.binary_names)
    rows = list(tie_channels)
    p_lat["fc2.w"][rows] = 0.0
    p_lat["bn2.gamma"][rows], p_lat["bn2.beta"][rows] = 0.0, 5.0
    p_bin = {k: (np.where(v >= 0, 1.0, -1.0) if k in binary else v.copy())
             for k, v in p_lat.items()}
    opt_lat = train.optimizer_from_spec(cfg_lat, latent_model, steps_per_epoch)
    opt_bin = train.optimizer_from_spec(cfg_bin, filter_model, steps_per_epoch)
    dev = _Device("fused[cuda]" if device_arrays else engine.CHAIN)
    p_lat, p_bin = _tree(p_lat, dev.to_dev), _tree(p_bin, dev.to_dev)
    s_lat, s_bin = opt_lat.init(p_lat), opt_bin.init(p_bin)
    for k in binary:
        m0, v0 = theory.matched_initial_state(dev.to_host(p_lat[k]), lr, mu, lam, True)
        s_bin["binary"]["m"]["s"][k][...] = dev.to_dev(m0)
        s_bin["binary"]["v"]["s"][k][...] = dev.to_dev(v0)
    st_lat = train.TrainState(p_lat, _tree(buf_lat, dev.to_dev), s_lat, np.random.default_rng(0))
    st_bin = train.TrainState(p_bin, _tree({k: v.copy() for k, v in buf_lat.items()}, dev.to_dev),
                              s_bin, np.random.default_rng(0))
    x, y = _teacher_data(rng, batch * steps_per_epoch, shape, classes)
    x, y = dev.to_dev(x), dev.to_dev(y)
    used = kernels.backend_for("cema_update", st_bin.params["fc2.w"])
    run = PairRun(f"trainer step [{used} kernels]", 0, 0, 0, 0.0, [], None)
    tracker = _Tracker(run, binary, lam * (1.0 - mu))
    t = 0
    for _ in range(epochs):
        for i in range(steps_per_epoch):
            xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
            old_b = {k: dev.to_host(st_bin.params[k]).copy() for k in binary}
            loss_l, _, _ = train.train_step(latent_model, opt_lat, st_lat, xb, yb, 0.0)
            loss_b, _, _ = train.train_step(filter_model, opt_bin, st_bin, xb, yb, 0.0)
            if float(loss_l) != float(loss_b):
                run.first_difference = (f"step {t}: loss {float(loss_l)!r} (latent) vs "
                                        f"{float(loss_b)!r} (filter)")
                return run
            run.losses.append(float(loss_l))
            v = {k: dev.to_host(st_bin.opt_state["binary"]["v"]["s"][k]) for k in binary}
            if not tracker.step(t, {k: dev.to_host(st_lat.params[k]) for k in binary},
                                {k: dev.to_host(st_bin.params[k]) for k in binary}, old_b, v):
                return run
            t += 1
    return run


def check_p9(examples: int | None = None) -> PropertyResult:
    """P9: identical binary weights and losses at every step, for an MLP and a CNN, in every
    optimiser implementation (PyTorch's too), and through the trainer's own step.

    ``examples`` is accepted for a uniform signature and ignored: the networks, their
    schedules and data are fixed; the count reported is the number of steps compared.
    """
    cov = engine.Coverage(reference=False, torch_offered=True)
    with Timer() as timer:
        impls = [engine.CHAIN] + [engine.fused_name(b) for b in engine.fused_backends()]
        nets = default_runs(impls=impls)
        for impl in impls:
            cov.add(impl)
        trainer = [trainer_pair()]
        if "cuda" in engine.fused_backends():
            trainer.append(trainer_pair(device_arrays=True))
        cov.extra.append("trainer step")
        in_torch = []
        if engine.torch_missing() is None:
            from verification.closed_loop_torch import default_torch_runs

            in_torch = default_torch_runs()
            cov.add(engine.TORCH)
    runs = nets + trainer + in_torch
    failure = "; ".join(f"{r.name}: {r.first_difference}" for r in runs if r.first_difference)
    summary = (f"MLP + CNN x {len(impls)} implementations: {sum(r.steps for r in nets)} steps, "
               f"{sum(r.flips for r in nets)} flips, "
               f"{sum(r.exact_zero_weights for r in nets)} exact zeros; "
               + "; ".join(f"{r.name}: {r.steps} steps, {r.flips} flips, {r.ties} exact ties "
                           f"(v = 0)" for r in trainer))
    if in_torch:
        summary += (f"; PyTorch SGDW vs minibnn.torch.CEMA, MLP + CNN: "
                    f"{sum(r.steps for r in in_torch)} steps, "
                    f"{sum(r.flips for r in in_torch)} flips")
    gap = max((r.max_state_gap for r in runs), default=0.0)
    return PropertyResult("P9", P9, sum(r.steps for r in runs), not failure, failure or None,
                          "float64, real layers + optimisers + trainer step, bitwise losses",
                          f"{summary}; max |v + lam(1-mu) w| / max|v| = {gap:.2g}",
                          timer.seconds, implementations=cov.text(), skipped=cov.skipped())
