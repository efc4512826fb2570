"""The gradient filter a trained run used, read from its run file (for ``minibnn explain RUN.h5``).

``read_run_filter(path)`` turns a run file's stored spec, per-epoch rates and checkpoint into a
``RunFilter``: the run's length (steps per epoch = checkpoint steps / epochs, exact since every
epoch makes the same number of updates), the rate the schedule drives (CEMA's ``alpha``, the
latent optimisers' ``lr``) in each trained epoch, and the filter each epoch applied:

* ``cema``: the cascade with poles ``1 - alpha_e``, ``1 - gamma`` (docs/theory.md section 2);
* ``bop``: one EMA with rate ``gamma`` (CEMA with gamma = 1 and alpha = Bop's gamma, P8);
* ``bop2nd``: its EMAs of ``g`` and ``g^2`` (rates gamma, sigma), a nonlinear filter (P8);
* ``sgd``: ``theory.latent_to_filter`` of the epoch's lr (exact per epoch under (B) or without
  momentum, only approximate for (A) with momentum under a changing lr, P7);
* ``adam``: no filter (P10); with decoupled decay, ``w0`` still decays by ``1 - lr*wd`` a step.

Presentation (text, plots) is ``minibnn.commands.explain``'s; this module only reads and computes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from minibnn import theory
from minibnn.errors import DataFileError, MinibnnError
from minibnn.run.files import RunFile, load_run
from minibnn.run.spec import Adam, Bop, Bop2nd, Cema, RunSpec, Sgd, read_stored_config

#: the metric (``train.optimizer_rates``'s name) holding each optimiser's per-epoch rate
RATE_METRIC = {"cema": "alpha", "sgd": "lr", "adam": "lr", "bop": "gamma", "bop2nd": "gamma"}


@dataclass(frozen=True)
class RunLength:
    """How long the run trained, in the units the filter's memory is compared with."""

    steps_per_epoch: int
    epochs_done: int
    epochs_planned: int
    batch_size: int

    @property
    def steps(self) -> int:
        """Optimiser updates made (the checkpoint's step count)."""
        return self.steps_per_epoch * self.epochs_done


@dataclass(frozen=True)
class EpochFilter:
    """The linear filter of one epoch: its poles, their memories in steps and ``ln`` of the
    dominant ``|pole|`` (what one step leaves of the slowest part of the state)."""

    poles: tuple[Any, ...]
    time_constants: tuple[float, ...]
    log_decay: float

    @classmethod
    def of_rates(cls, *rates: float) -> "EpochFilter":
        """EMAs with these rates: poles ``1 - rate``, memories from the rates (``log1p``)."""
        return cls(tuple(1 - r for r in rates), tuple(theory.rate_time_constant(r) for r in rates),
                   theory.ema_log_decay(*rates))

    @classmethod
    def of_equivalent(cls, eq: theory.FilterEquivalent) -> "EpochFilter":
        return cls(tuple(eq.poles), tuple(eq.time_constants), eq.log_decay)

    @property
    def slow(self) -> int:
        """Index of the slowest pole (the longest memory)."""
        return max(range(len(self.poles)), key=lambda i: self.time_constants[i])


@dataclass(frozen=True)
class RunFilter:
    """What ``minibnn explain RUN.h5`` reports: see the module docstring."""

    path: str
    spec: RunSpec
    length: RunLength
    #: the scheduled (or constant) rate: its name, schedule name, value in each trained epoch,
    #: and where the values come from
    rate_name: str
    schedule: str
    rates: tuple[float, ...]
    rates_from: str
    #: the filter of each trained epoch, None where no linear filter exists (Adam)
    filters: tuple[EpochFilter, ...] | None
    #: sgd: ``theory.latent_to_filter`` of each trained epoch's lr
    equivalents: tuple[theory.FilterEquivalent, ...] = ()

    @property
    def optimizer(self) -> str:
        return optimizer_family(self.spec)

    @property
    def initial_weight(self) -> float | None:
        """What the initial state keeps after the run's steps: ``prod_e |p_e|^(steps_e)`` over
        the epochs' dominant poles (``theory.initial_state_weight``); None without a filter."""
        if self.filters is None:
            return None
        spe = self.length.steps_per_epoch
        return theory.initial_state_weight([(f.log_decay, spe) for f in self.filters])

    def cema_segments(self) -> list[tuple[float, float, int]] | None:
        """``(alpha, gamma, steps)`` per trained epoch of the CEMA that is (or maps) the run's
        filter, for ``theory.scheduled_filter_impulse_response``; None when none exists."""
        b, spe = self.spec.binary_optimizer, self.length.steps_per_epoch
        if isinstance(b, Cema):
            return [(a, b.gamma, spe) for a in self.rates]
        if isinstance(b, Bop) and not isinstance(b, Bop2nd):
            return [(b.gamma, 1.0, spe)]             # P8: at threshold 0, CEMA with gamma = 1
        if self.equivalents and all(eq.exact for eq in self.equivalents):
            return [(eq.alpha, eq.gamma, spe) for eq in self.equivalents]
        return None

    def lr_segments(self) -> list[tuple[float, int]] | None:
        """``(lr, steps)`` per trained epoch of latent SGD (``scheduled_latent_impulse_response``)."""
        if not isinstance(self.spec.binary_optimizer, Sgd):
            return None
        return [(lr, self.length.steps_per_epoch) for lr in self.rates]


def optimizer_family(spec: RunSpec) -> str:
    """The binary optimiser's name, with ``bop2nd_corrected`` counted as ``bop2nd``."""
    name = spec.binary_optimizer.name
    return "bop2nd" if name.startswith("bop2nd") else name


def run_length(run: RunFile, spec: RunSpec, path: str) -> RunLength:
    """Steps per epoch from the checkpoint (steps / epochs: every epoch makes the same updates)."""
    ck = run.checkpoint
    if ck is None or ck.epoch < 1:
        raise MinibnnError(f"{path} holds no finished epoch: there is no trained filter to explain")
    if ck.step < ck.epoch or ck.step % ck.epoch:
        raise DataFileError(f"{path}: the checkpoint's {ck.step} steps are not a whole number "
                            f"of steps for each of its {ck.epoch} epochs; the file is corrupt")
    return RunLength(ck.step // ck.epoch, ck.epoch, spec.loop.epochs, spec.loop.batch_size)


def epoch_rates(run: RunFile, spec: RunSpec, length: RunLength) -> tuple[tuple[float, ...], str]:
    """The scheduled rate in each trained epoch and its source: the stored per-epoch rates
    (what the optimiser used), else the spec's schedule (``train.optimizer_rates``)."""
    from minibnn.run.train import optimizer_rates

    name = RATE_METRIC[optimizer_family(spec)]
    stored = run.metrics.get(name)
    if stored is not None and len(stored) == length.epochs_done \
            and all(math.isfinite(v) for v in stored):
        return tuple(stored), "the stored per-epoch rates"
    rate = optimizer_rates(spec, length.steps_per_epoch)[name]
    spe = length.steps_per_epoch
    values = tuple(float(rate(e * spe)) if callable(rate) else float(rate)
                   for e in range(length.epochs_done))
    source = "the spec's schedule"
    if run.replans:
        source += (" (not stored; --extend re-planned it, so the earlier epochs' values may "
                   "differ)")
    return values, source


def _filters(spec: RunSpec, rates: tuple[float, ...]
             ) -> tuple[tuple[EpochFilter, ...] | None, tuple[theory.FilterEquivalent, ...]]:
    b = spec.binary_optimizer
    if isinstance(b, Cema):
        return tuple(EpochFilter.of_rates(a, b.gamma) for a in rates), ()
    if isinstance(b, Bop2nd):
        return tuple(EpochFilter.of_rates(b.gamma, b.sigma) for _ in rates), ()
    if isinstance(b, Bop):
        return tuple(EpochFilter.of_rates(b.gamma) for _ in rates), ()
    if isinstance(b, Sgd):
        eqs = tuple(theory.latent_to_filter(lr, b.momentum, b.weight_decay, b.decoupled)
                    for lr in rates)
        return tuple(EpochFilter.of_equivalent(eq) for eq in eqs), eqs
    if isinstance(b, Adam) and b.decoupled and b.weight_decay > 0:
        # AdamW: w_t = (1 - lr wd) w_{t-1} - lr * step_t, so w0 decays by 1 - lr*wd a step
        # whatever the (normalised) steps are: a decay, not a filter of the gradients
        decays = [lr * b.weight_decay for lr in rates]
        if all(0 < d <= 1 for d in decays):
            return tuple(EpochFilter.of_rates(d) for d in decays), ()
    return None, ()


def read_run_filter(path: str) -> RunFilter:
    """The filter the run in ``path`` used; a missing or corrupt file is a one-line error."""
    run = load_run(path)
    spec, _ = read_stored_config(run.config_json)
    length = run_length(run, spec, path)
    rates, source = epoch_rates(run, spec, length)
    b = spec.binary_optimizer
    schedule = getattr(b, "schedule", "constant")
    try:
        filters, eqs = _filters(spec, rates)
    except MinibnnError as exc:        # e.g. an lr of 0 in some epoch
        raise MinibnnError(f"{path}: the run's {b.name} settings have no filter: {exc}") from None
    return RunFilter(path, spec, length, RATE_METRIC[optimizer_family(spec)],
                     schedule, rates, source, filters, eqs)
