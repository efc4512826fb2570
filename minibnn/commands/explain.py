"""``minibnn explain`` and ``minibnn verify``: the hyperparameter map of docs/theory.md.

    minibnn explain --lr 0.1 --momentum 0.9 --weight-decay 5e-4 [--decoupled] [--plot out.png]
    minibnn explain --alpha 1e-4 --gamma 1e-3 [--decoupled]        # the other direction
    minibnn explain RUN.h5 [--plot out.png]                        # the filter a run used
    minibnn verify [--examples N] [--only P3,P10]                  # from a checkout

``explain`` prints the CEMA rates (or the second-order filter when none exist), the poles and
what each one does (memory in steps, oscillation, integration or divergence), the initial
state matching a latent initialisation, and whether the textbook map ``alpha = lr*wd,
gamma = 1 - momentum`` would be wrong; ``--plot`` draws both impulse responses overlaid (and
the naive one when it differs), ``--normalise`` each divided by its peak so that shapes compare.
``explain RUN.h5`` prints the filter a trained run used (read by ``explain_run``): its rates and
their schedule, its memory in steps and in the run's epochs, and how much of the initial state
the run's steps left; ``--plot`` draws that filter's response over the run.  ``verify`` runs the
equivalence suite in ``verification/``, a folder of the source checkout that is not installed.

Every bad input (a non-finite or out-of-range number, an overflowing product, an unknown plot
format, a missing output folder, a plot too large for this machine's memory) is refused up
front, before anything is printed, with a one-line ``MinibnnError``.
"""
from __future__ import annotations

import argparse
import cmath
import importlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from minibnn import theory
from minibnn.errors import MinibnnError
from minibnn.commands.explain_run import RunFilter, read_run_filter
from minibnn.commands.figures import check_plot_path, save_figure
from minibnn.run.resources import check_memory, format_bytes, physical_memory
from minibnn.run.spec import Bop, Bop2nd, Cema, Sgd, flag

#: where the properties cited in the output are stated and proved
DOC = "docs/theory.md"

#: bytes per step and per drawn line that matplotlib needs for a ``Line2D`` of float64 data: it
#: keeps 32 (the (x, y) vertex array and the path made from it) and copies 16 more while
#: building them; 48 is also the peak RSS per point and line measured with matplotlib 3.11
#: saving PNG (PDF and SVG within 10%).
MPL_BYTES_PER_POINT = 48

#: bytes per step of the shared x axis (``t``, float64)
AXIS_BYTES_PER_STEP = 8


#: the default plot length: 5 slow time constants, within [50, MAX_DEFAULT_STEPS]; a filter
#: that never forgets (a pole at 1) gets NO_MEMORY_STEPS
MAX_DEFAULT_STEPS = 200_000
NO_MEMORY_STEPS = 500


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``minibnn explain``."""
    parser.description = ("Map latent-weight SGD hyperparameters to the equivalent gradient "
                          f"filter (CEMA alpha, gamma), or back with --alpha/--gamma ({DOC}); "
                          "or, given a run file, explain the filter that run trained with.")
    parser.add_argument("run", nargs="?", default=None, metavar="RUN.h5",
                        help="a run file: print the filter it trained with (its rates and "
                             "schedule, memory in steps and epochs, how far the initial state "
                             "was forgotten); not with the latent or filter options")
    parser.add_argument("--lr", type=float, default=None, help="latent SGD learning rate")
    parser.add_argument("--momentum", type=float, default=None,
                        help="latent SGD momentum mu (default 0)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="weight decay lambda (default 0)")
    parser.add_argument("--decoupled", action="store_true",
                        help=f"decoupled weight decay (SGDW, {DOC} (B)); default: PyTorch SGD's "
                             f"coupled L2 decay ({DOC} (A))")
    parser.add_argument("--alpha", type=float, default=None,
                        help="go the other way: CEMA's second rate (with --gamma)")
    parser.add_argument("--gamma", type=float, default=None, help="CEMA's first (momentum) rate")
    parser.add_argument("--plot", metavar="OUT.png", default=None,
                        help="write both impulse responses, overlaid, to this image (the "
                             "format follows the extension: png, pdf, svg, ...)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps shown in the plot (default: 5 slow time constants, at least 50 "
                        f"and at most {MAX_DEFAULT_STEPS:,}; {NO_MEMORY_STEPS} when a pole is at 1;"
                        " with RUN.h5: the steps the run trained)")
    parser.add_argument("--normalise", action="store_true",
                        help="with --plot: divide each response by its largest absolute value, so "
                             "that curves of different scale compare by shape (only the shape "
                             "decides a sign)")


def run(args: argparse.Namespace) -> int:
    """Print the explanation for parsed ``args``; 0 on success (errors raise MinibnnError)."""
    _check_finite_options(args)
    if getattr(args, "run", None) is not None:
        return run_trained(args)
    if args.alpha is not None or args.gamma is not None:
        if args.lr is not None:
            raise MinibnnError("give either --lr (latent -> filter) or --alpha/--gamma "
                               "(filter -> latent), not both")
        if args.alpha is None or args.gamma is None:
            raise MinibnnError("--alpha and --gamma go together")
        latent_only = [opt for opt, value in (("--momentum", args.momentum),
                                              ("--weight-decay", args.weight_decay),
                                              ("--plot", args.plot), ("--steps", args.steps),
                                              ("--normalise", args.normalise or None))
                       if value is not None]
        if latent_only:
            verb, them = ("applies", "it") if len(latent_only) == 1 else ("apply", "them")
            raise MinibnnError(f"{', '.join(latent_only)} only {verb} to a latent configuration "
                               f"(--lr ...): drop {them} with --alpha/--gamma (the filter fixes "
                               f"only momentum and lr*weight_decay, {DOC} P5)")
        print(explain_filter(args.alpha, args.gamma, args.decoupled))
        return 0
    if args.lr is None:
        raise MinibnnError("give --lr (with --momentum, --weight-decay), or --alpha and --gamma, "
                           "or a run file RUN.h5")
    _check_plot_options(args)
    momentum = 0.0 if args.momentum is None else args.momentum
    weight_decay = 0.0 if args.weight_decay is None else args.weight_decay
    theory.check_latent(args.lr, momentum, weight_decay, name=flag)
    theory.check_product(args.lr, weight_decay, name=flag)
    if args.plot is not None:
        check_plot_path(args.plot)
    eq = theory.latent_to_filter(args.lr, momentum, weight_decay, args.decoupled)
    if not args.plot:
        print(explain_latent(eq))
        return 0
    steps = _plot_steps(eq, args.steps)
    check_plot_memory(steps, _plot_lines(eq))
    try:
        responses = impulse_responses(eq, steps)  # refused here if one overflows
        text = explain_latent(eq)
        print(text)
        plot_impulse_responses(eq, args.plot, steps, responses, normalise=args.normalise)
    except MemoryError:
        raise MinibnnError(f"out of memory computing or drawing {steps} steps (~"
                           f"{format_bytes(plot_bytes(steps, _plot_lines(eq)))} needed): pass a "
                           "smaller --steps") from None
    print(f"impulse responses ({steps} steps) written to {args.plot}")
    return 0


def _check_plot_options(args: argparse.Namespace) -> None:
    """``--steps`` and ``--normalise`` shape the plot: they need ``--plot``."""
    for opt, given in (("--steps", args.steps is not None), ("--normalise", args.normalise)):
        if given and not args.plot:
            raise MinibnnError(f"{opt} {'sets the length of' if opt == '--steps' else 'changes'} "
                               "the plot: add --plot OUT.png")


def _check_finite_options(args: argparse.Namespace) -> None:
    """argparse's ``float`` accepts ``inf`` and ``nan``: refuse them, naming the option."""
    for opt, value in (("--lr", args.lr), ("--momentum", args.momentum),
                       ("--weight-decay", args.weight_decay), ("--alpha", args.alpha),
                       ("--gamma", args.gamma)):
        if value is not None and not math.isfinite(value):
            raise MinibnnError(f"{opt} must be a finite number, got {value}")


def _g(x: Any) -> str:
    return f"{float(x):.6g}"


def _pole_text(p: Any) -> str:
    if isinstance(p, complex):
        return f"{p.real:.6g}{p.imag:+.6g}i (|p| = {abs(p):.6g})"
    return _g(p)


def pole_memory(pole: Any, tau: float | None = None) -> str:
    """What a pole does to a gradient, in words: its memory, oscillation, or divergence.

    ``tau`` is the pole's time constant in steps (``theory.time_constant(pole)`` when None;
    ``FilterEquivalent.time_constants`` computes it from the rate, which is more accurate for a
    pole that rounds to 1).  The categories:

    * ``|p| > 1``: unstable, the response grows without bound;
    * ``|p| < 1``: memory of ``tau`` steps; a negative pole alternates in sign every step, a
      complex one oscillates with period ``2 pi / |arg p|`` steps; ``p = 0`` keeps nothing;
    * ``p == 1``: an integrator, nothing is ever forgotten (weight decay 0);
    * ``|p| == 1`` otherwise (e.g. ``p = -1``): oscillates forever without decaying.
    """
    p = complex(pole)
    r = abs(p)
    if not math.isfinite(r):
        raise MinibnnError(f"the pole {pole} is not a finite number")
    if r > 1:
        return "unstable: |pole| > 1, the filter diverges"
    if tau is None:
        tau = theory.time_constant(pole)
    if math.isfinite(tau):
        if r == 0:
            return "memory 0 steps (pole 0 keeps nothing)"
        text = f"memory {tau:.4g} steps"
        if p.imag != 0:
            return text + f", oscillating with period {2 * math.pi / abs(cmath.phase(p)):.4g} steps"
        if p.real < 0:
            return text + ", alternating in sign every step"
        return text
    if p == 1:
        return "memory forever (integrator: pole 1, nothing is forgotten)"
    return "no decay: |pole| = 1 but pole != 1, the filter oscillates forever without decaying"


def explain_latent(eq: theory.FilterEquivalent) -> str:
    """The human-readable explanation of a latent configuration."""
    view = (f"decoupled weight decay (SGDW, {DOC} (B))" if eq.decoupled
            else f"coupled weight decay (PyTorch SGD, {DOC} (A))")
    lines = [f"latent SGD: lr={_g(eq.lr)}, momentum={_g(eq.momentum)}, "
             f"weight_decay={_g(eq.weight_decay)}, {view}"]
    if eq.exact:
        lines.append(f"equivalent filter: CEMA alpha = {_g(eq.alpha)}, gamma = {_g(eq.gamma)}")
    else:
        lines.append("equivalent filter: no CEMA (alpha, gamma) exists")
    lines.append(f"  why: {eq.reason}")
    lines.append(f"second-order form: v_t = {_g(eq.a1)} v_(t-1) {_signed(eq.a2)} v_(t-2) + "
                 f"{_g(eq.c)} g_t, with v = -{_g(eq.v_scale)} * w (reproduces it exactly)")
    texts = [_pole_text(p) for p in eq.poles]
    lines.append(f"poles: {texts[0]}, {texts[1]}")
    for text, pole, tau in zip(texts, eq.poles, eq.time_constants):
        lines.append(f"  {text}: {pole_memory(pole, tau)}")
    if eq.exact:
        state = ("m0 = 0, v0 = -{k} * w0" if (eq.decoupled or eq.momentum == 0)
                 else "m0 = v0 = -{k} * w0")
        lines.append("initial state matching a latent init w0: " + state.format(k=_g(eq.v_scale)))
        lines.append("lr schedule: " + (f"exact as the same schedule on alpha ({DOC} P7)"
                                        if eq.schedule_exact else
                                        "only approximate as an alpha schedule under coupled "
                                        f"decay with constant momentum ({DOC} P7)"))
    lines.append(_naive_text(eq))
    if eq.weight_decay > 0:
        lines.append(_scale_text(eq))
    return "\n".join(lines)


def _scale_text(eq: theory.FilterEquivalent) -> str:
    """P5: ``(lr, wd, w0) -> (c lr, wd / c, c w0)`` flips the same weights (c = 10, or 1/10)."""
    head = f"only lr*weight_decay = {_g(eq.lr * eq.weight_decay)} and w0/lr matter ({DOC} P5)"
    lr, wd = float(eq.lr), float(eq.weight_decay)
    for c, scaled in ((10, "scaled by 10"), (0.1, "divided by 10")):
        if math.isfinite(lr * c) and lr * c > 0 and math.isfinite(wd / c) and wd / c > 0:
            return (f"{head}: lr={_g(lr * c)}, weight_decay={_g(wd / c)} with w0 {scaled} "
                    "flips the same weights")
    return head


def _signed(x: Any) -> str:
    return f"- {_g(-x)}" if x < 0 else f"+ {_g(abs(x))}"


def _naive_text(eq: theory.FilterEquivalent) -> str:
    alpha, gamma = eq.naive
    head = f"naive map (alpha = lr*wd = {_g(alpha)}, gamma = 1 - momentum = {_g(gamma)}): "
    if eq.weight_decay == 0:
        return head + "alpha = 0 is no filter (the latent weight integrates, see above)"
    if eq.naive_is_exact:
        return head + "correct here (it is the exact map)"
    if eq.exact:
        return head + (f"WRONG for coupled decay with momentum: the exact alpha is "
                       f"{float(eq.alpha) / float(alpha):.3g}x the naive one")
    return head + "WRONG: no CEMA reproduces this configuration"


def explain_filter(alpha: float, gamma: float, decoupled: bool) -> str:
    """The latent configurations equivalent to CEMA ``(alpha, gamma)``."""
    theory.check_rate(flag("alpha"), alpha)
    theory.check_rate(flag("gamma"), gamma)
    back = theory.filter_to_latent(alpha, gamma, decoupled=decoupled)
    if back.lr_times_weight_decay == 0:
        raise MinibnnError(f"--alpha {_g(alpha)} times --gamma {_g(gamma)} underflows to 0: "
                           "lr*weight_decay would be 0 (no decay); use larger rates")
    view = "SGDW (decoupled)" if decoupled else "PyTorch SGD (coupled)"
    lines = [f"CEMA alpha = {_g(alpha)}, gamma = {_g(gamma)} equals {view} with "
             f"momentum = {_g(back.momentum)} and lr * weight_decay = "
             f"{_g(back.lr_times_weight_decay)}",
             f"  {back.note}"]
    for lr in (1.0, 0.1, 0.01):
        lines.append(f"  e.g. lr = {_g(lr)}, weight_decay = {_g(back.lr_times_weight_decay / lr)}")
    if not decoupled:
        lines.append(f"  (coupled: exact for a constant lr only, {DOC} P7)")
    return "\n".join(lines)


def _plot_lines(eq: theory.FilterEquivalent) -> int:
    """Lines the plot draws: latent, its filter, and the naive CEMA when it differs."""
    return 2 + _draws_naive(eq)


def _draws_naive(eq: theory.FilterEquivalent) -> bool:
    alpha, gamma = eq.naive
    return not eq.naive_is_exact and 0 < alpha <= 1 and 0 < gamma <= 1


def plot_bytes(steps: int, lines: int) -> int:
    """Peak bytes ``plot_impulse_responses`` needs for ``steps`` steps and ``lines`` lines.

    Per step: the x axis (float64), and per line its response (``theory``'s float64 output,
    ``theory.RESPONSE_BYTES_PER_STEP``) plus what matplotlib holds to draw and save it.
    """
    per_line = theory.RESPONSE_BYTES_PER_STEP + MPL_BYTES_PER_POINT
    return steps * (AXIS_BYTES_PER_STEP + lines * per_line)


def check_plot_memory(steps: int, lines: int) -> None:
    """Refuse ``--steps`` whose responses and plot cannot fit in this machine's memory."""
    have = physical_memory()
    most = max(have // plot_bytes(1, lines), 2) if have else steps
    check_memory(plot_bytes(steps, lines), f"--steps {steps} (the responses and their plot)",
                 f"pass at most --steps {most}", have)


def _plot_steps(eq: theory.FilterEquivalent, steps: int | None) -> int:
    if steps is not None:
        if steps < 2:
            raise MinibnnError(f"--steps must be at least 2, got {steps}")
        return steps
    slow = max(eq.time_constants)
    return (int(min(max(5 * slow, 50), MAX_DEFAULT_STEPS)) if math.isfinite(slow)
            else NO_MEMORY_STEPS)


def _check_response(name: str, response: np.ndarray, largest_pole: float) -> None:
    """An unstable filter's response overflows float64: say after how many steps."""
    finite = np.isfinite(response)
    if not finite.all():
        k = int(np.argmin(finite))  # steps 1..k are finite
        fix = (f"pass --steps {k} or fewer" if k >= 2 else "it cannot be drawn")
        raise MinibnnError(f"the {name} impulse response overflows float64 after {k} steps "
                           f"(unstable: |pole| = {largest_pole:.4g} > 1): {fix}")


def _largest_pole(eq: theory.FilterEquivalent) -> float:
    return max(abs(complex(p)) for p in eq.poles)


def impulse_responses(eq: theory.FilterEquivalent, steps: int) -> list[tuple[np.ndarray, dict]]:
    """The plotted responses with their line styles: latent SGD, its exact filter (CEMA or
    second order) and the naive CEMA when it differs; an overflowing one is refused."""
    latent = theory.latent_impulse_response(eq.lr, eq.momentum, eq.weight_decay, eq.decoupled,
                                            steps)
    _check_response("latent", latent, _largest_pole(eq))
    out = [(latent, dict(lw=3, alpha=0.5, label=f"latent SGD, -{_g(eq.v_scale)} w_t"))]
    if eq.exact:
        filt = theory.filter_impulse_response(eq.alpha, eq.gamma, steps)
        label = f"CEMA alpha={_g(eq.alpha)}, gamma={_g(eq.gamma)}"
    else:
        filt = theory.second_order_impulse_response(eq.a1, eq.a2, eq.c, steps)
        label = "second-order filter"
    _check_response("filter", filt, _largest_pole(eq))
    out.append((filt, dict(fmt="k--", lw=1, label=label)))
    if _draws_naive(eq):
        # Every CEMA has unit DC gain, as does the latent response: the shapes compare directly.
        naive = theory.filter_impulse_response(*eq.naive, steps)
        out.append((naive, dict(fmt=":", color="tab:red", label="naive CEMA (lr*wd, 1-momentum)")))
    return out


def peak_normalised(responses: list[tuple[np.ndarray, dict]]) -> list[tuple[np.ndarray, dict]]:
    """Each response divided by its largest absolute value (``y / max|y|``), so that its peak
    is +-1: curves that differ only in scale then lie on each other (the naive CEMA of a coupled
    configuration looks 10x off on an absolute scale; only the shape decides a sign).  An
    all-zero response is kept as it is."""
    out = []
    for y, style in responses:
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        out.append((y / peak if peak > 0 else y, style))
    return out


def plot_impulse_responses(eq: theory.FilterEquivalent, path: str | Path, steps: int,
                           responses: list[tuple[np.ndarray, dict]] | None = None,
                           normalise: bool = False) -> None:
    """Both views' responses to one unit gradient (and the naive CEMA's, if it differs).

    ``responses`` are ``impulse_responses(eq, steps)``, computed here when None;
    ``normalise``: draw them ``peak_normalised``.
    """
    if responses is None:
        responses = impulse_responses(eq, steps)
    draw_responses(responses, path, steps, "impulse response: latent view vs filter view",
                   normalise)


def draw_responses(responses: list[tuple[np.ndarray, dict]], path: str | Path, steps: int,
                   title: str, normalise: bool = False, run_end: int | None = None) -> None:
    """Draw ``(response, line style)`` pairs over steps 1..``steps`` and save them to ``path``;
    ``run_end``: mark the last step of a run that the plot goes beyond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if normalise:
        responses = peak_normalised(responses)
    t = np.arange(1, steps + 1, dtype=np.float64)  # float: matplotlib then keeps no x copy
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for y, style in responses:
            style = dict(style)
            ax.plot(t, y, *([style.pop("fmt")] if "fmt" in style else []), **style)
        if run_end is not None and run_end < steps:
            ax.axvline(run_end, color="0.6", lw=0.8, ls="-.",
                       label=f"end of the run (step {run_end:,}); its last rates hold after it")
        ax.set_xlabel("steps after a unit gradient")
        ax.set_ylabel("v / its peak (normalised: compare shapes)" if normalise
                      else "filter state v (sign decides b = -sign v)")
        ax.set_title(title)
        ax.legend(loc="upper right")  # "best" scans every point: slow for a long plot
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    try:
        save_figure(fig, path, dpi=120)
    except (RuntimeError, ValueError) as exc:  # e.g. a format's external program failed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MinibnnError(f"cannot write plot {path}: {first}") from None


# --- explain RUN.h5: the filter a trained run used -----------------------------------------

#: the options that describe a configuration by hand, which a run file already fixes
CONFIG_OPTIONS = ("lr", "momentum", "weight_decay", "alpha", "gamma")


def run_trained(args: argparse.Namespace) -> int:
    """``explain RUN.h5``: print (and with ``--plot`` draw) the filter the run trained with."""
    given = [flag(name) for name in CONFIG_OPTIONS if getattr(args, name) is not None]
    given += ["--decoupled"] if args.decoupled else []
    if given:
        raise MinibnnError(f"{args.run} is a run file: its settings fix the filter, so drop "
                           f"{', '.join(given)} (or drop RUN.h5 to explain given settings)")
    _check_plot_options(args)
    if args.plot is not None:
        check_plot_path(args.plot)
    rf = read_run_filter(args.run)
    if not args.plot:
        print(explain_trained(rf))
        return 0
    if rf.cema_segments() is None and rf.lr_segments() is None:
        raise MinibnnError(f"--plot: {rf.spec.binary_optimizer.name} has no linear filter to "
                           f"draw (its gradient normalisation is nonlinear, {DOC} P8, P10)")
    steps = args.steps if args.steps is not None else max(2, rf.length.steps)
    if steps < 2:
        raise MinibnnError(f"--steps must be at least 2, got {steps}")
    lines = len(run_impulse_responses(rf, 2))
    check_plot_memory(steps, lines)
    try:
        responses = run_impulse_responses(rf, steps)
        print(explain_trained(rf))
        spe = rf.length.steps_per_epoch
        draw_responses(responses, args.plot, steps, f"filter of {Path(rf.path).name}: a gradient "
                       f"at its first step ({spe:,} steps per epoch)", args.normalise,
                       run_end=rf.length.steps)
    except MemoryError:
        raise MinibnnError(f"out of memory computing or drawing {steps} steps (~"
                           f"{format_bytes(plot_bytes(steps, lines))} needed): pass a "
                           "smaller --steps") from None
    print(f"impulse response ({steps:,} steps) written to {args.plot}")
    return 0


def run_impulse_responses(rf: RunFilter, steps: int) -> list[tuple[np.ndarray, dict]]:
    """The run's filter's response to a unit gradient at its first step, under its schedule
    (epoch by epoch; past the run the last epoch's rates hold): latent SGD's own recursion and
    the CEMA it maps to, or the run's CEMA (Bop's EMA)."""
    out = []
    lr_segments = rf.lr_segments()
    if lr_segments is not None:
        b = rf.spec.binary_optimizer
        latent = theory.scheduled_latent_impulse_response(lr_segments, b.momentum,
                                                          b.weight_decay, b.decoupled, steps)
        _check_response("latent", latent, max(_largest_pole(eq) for eq in rf.equivalents))
        out.append((latent, dict(lw=3, alpha=0.5, label="latent SGD, -k w_t")))
    segments = rf.cema_segments()
    if segments is not None:
        if rf.optimizer == "sgd":
            approx = any(not eq.schedule_exact for eq in rf.equivalents) and len(set(rf.rates)) > 1
            label = "CEMA of the map" + (f" (approximate, {DOC} P7)" if approx else "")
            style = dict(fmt="k--", lw=1, label=label)
        else:
            label = {"cema": "CEMA", "bop": "Bop's EMA (CEMA, gamma = 1)"}[rf.optimizer]
            style = dict(lw=1.5, label=label + (f", {rf.rate_name}: {rf.schedule} schedule"
                                                if len(set(rf.rates)) > 1 else ""))
        out.append((theory.scheduled_filter_impulse_response(segments, steps), style))
    return out


def memory_text(tau: float, steps_per_epoch: int) -> str:
    """A memory of ``tau`` steps against the run's epochs: ``"995 steps = 2.12 epochs of 469
    steps"``."""
    epochs = tau / steps_per_epoch
    return (f"{_count(tau, 4)} steps = {_count(epochs, 3)} epochs of "
            f"{steps_per_epoch:,} steps")


def _count(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant digits (steps: 4, as ``pole_memory``), and whole, with
    thousands separators, once it has that many digits before the point (no ``1e+03``)."""
    return f"{x:,.0f}" if x >= 10 ** (digits - 1) else f"{x:.{digits}g}"


def fraction_text(weight: float) -> str:
    """``weight`` to 4 digits, or as ``1 - x`` when those would round it to 1."""
    text = f"{weight:.4g}"
    return f"1 - {1 - weight:.2g}" if text == "1" and weight < 1 else text


def forgotten_words(weight: float) -> str:
    """The initial state's remaining weight (``theory.initial_state_weight``) in words."""
    if weight > 1:
        return "amplified, not forgotten: the filter is unstable"
    if weight == 1:
        return f"never forgotten: nothing decays it ({DOC} P6)"
    share = f"{(1 - weight) * 100:.2g}% forgotten"
    if weight >= 0.9:
        return f"barely forgotten ({share}): the initial state still counts almost fully"
    if weight >= 0.1:
        return f"partly forgotten ({share})"
    if weight >= 1e-3:
        return f"mostly forgotten ({share})"
    return "forgotten (less than 0.1% is left)"


def explain_trained(rf: RunFilter) -> str:
    """The explanation of the filter a trained run used (see ``explain_run``)."""
    spec, n = rf.spec, rf.length
    b = spec.binary_optimizer
    lines = [f"run {rf.path}: {b.name} on {spec.model.name} / {spec.data.name}, "
             f"{n.epochs_done} of {n.epochs_planned} epochs trained = {n.steps:,} steps "
             f"({n.steps_per_epoch:,} steps per epoch of batch {n.batch_size})"]
    lines += _filter_lines(rf)
    lines.append(_schedule_text(rf))
    if rf.optimizer == "sgd" and len(set(rf.rates)) > 1:
        lines.append(_last_epoch_map(rf.equivalents[-1]))
    if rf.filters is not None:
        lines += _memory_lines(rf)
    lines.append(_initial_state_text(rf))
    weight = rf.initial_weight
    if weight is not None:
        approx = (rf.optimizer == "sgd" and len(set(rf.rates)) > 1
                  and not all(eq.schedule_exact for eq in rf.equivalents))
        started = spec.loop.init_from is not None and spec.loop.init_weight_decay > 0
        state = ("the initial state keeps" if spec.binary_storage != "binary" or started
                 else "an initial state (the buffers start at 0 here) would keep")
        lines.append(f"forgetting: after the run's {n.steps:,} steps {state} "
                     f"{fraction_text(weight)} of its weight (the dominant |pole| to the power of the "
                     f"steps, epoch by epoch{f'; approximate, {DOC} P7' if approx else ''}): "
                     f"{forgotten_words(weight)}")
    return "\n".join(lines)


def _filter_lines(rf: RunFilter) -> list[str]:
    """What the optimiser is as a filter, in the spec's own settings."""
    b = rf.spec.binary_optimizer
    if isinstance(b, Cema):
        return [f"filter: CEMA alpha = {_g(b.alpha)}, gamma = {_g(b.gamma)}"]
    if isinstance(b, Bop2nd):
        return [f"filter: Bop2ndOrder, EMAs of g (gamma = {_g(b.gamma)}) and g^2 (sigma = "
                f"{_g(b.sigma)}), flips where m / (sqrt(s) + eps) * b > threshold = "
                f"{_g(b.threshold)}: the division is nonlinear, so no exact CEMA (alpha, gamma) "
                f"exists ({DOC} P8); the memories below are its two EMAs'"]
    if isinstance(b, Bop):
        return [f"filter: Bop, one EMA m with rate gamma = {_g(b.gamma)}, flips where m * b > "
                f"threshold = {_g(b.threshold)}: at threshold 0 this is CEMA with alpha = "
                f"{_g(b.gamma)}, gamma = 1 ({DOC} P8); a threshold > 0 adds a dead zone that no "
                "linear filter has"]
    if isinstance(b, Sgd):
        return explain_latent(rf.equivalents[0]).splitlines()
    decay = "decoupled (AdamW)" if b.decoupled else "coupled L2"
    lines = [f"latent Adam: lr={_g(b.lr)}, weight_decay={_g(b.weight_decay)}, {decay} decay",
             "filter: none exact: Adam divides each step by a running RMS of its gradients, per "
             f"coordinate, a nonlinear filter outside the linear family ({DOC} P10; like "
             "Bop2ndOrder, P8)"]
    if rf.filters is not None:
        lines.append("  its decoupled decay still shrinks w by 1 - lr*weight_decay every step: "
                     "the memory below is how long w0 lasts, not a filter of the gradients")
    elif b.weight_decay == 0:
        lines.append(f"  no weight decay: nothing forgets w0, a per-weight flip threshold ({DOC} "
                     "P6) that Adam's steps (each roughly lr in size) must cross")
    else:
        lines.append("  its coupled L2 decay is normalised with the gradients: no decay rate of "
                     "w0 can be stated")
    return lines


def _schedule_text(rf: RunFilter) -> str:
    first, last = rf.rates[0], rf.rates[-1]
    if rf.schedule == "constant":
        return f"{rf.rate_name} = {_g(first)}, constant ({rf.rates_from})"
    if len(rf.rates) == 1:
        return (f"{rf.rate_name} = {_g(first)} in the one trained epoch ({rf.schedule} "
                f"schedule; {rf.rates_from})")
    return (f"{rf.rate_name} follows the {rf.schedule} schedule: {_g(first)} in the first epoch, "
            f"{_g(last)} in the last trained epoch ({rf.rates_from})")


def _last_epoch_map(eq: theory.FilterEquivalent) -> str:
    head = f"in the last epoch (lr = {_g(eq.lr)}): "
    if not eq.exact:
        return head + "no CEMA (alpha, gamma) exists"
    text = f"CEMA alpha = {_g(eq.alpha)}, gamma = {_g(eq.gamma)}"
    return head + text + ("" if eq.schedule_exact else
                          f" (the map of a constant lr: only approximate under the schedule, "
                          f"{DOC} P7)")


def _memory_lines(rf: RunFilter) -> list[str]:
    """The poles of the first (and, if it differs, the last) epoch and their memories."""
    spe = rf.length.steps_per_epoch
    ends = [("the first epoch", rf.filters[0])]
    if rf.filters[-1] != rf.filters[0]:
        ends.append(("the last epoch", rf.filters[-1]))
    lines, summary = [], []
    for when, f in ends:
        if rf.optimizer != "sgd":          # explain_latent has printed the first epoch's poles
            lines.append(f"poles in {when}: {', '.join(_pole_text(p) for p in f.poles)}")
            for p, tau in zip(f.poles, f.time_constants):
                words = pole_memory(p, tau)
                extra = f" = {memory_text(tau, spe).split(' = ', 1)[1]}" if math.isfinite(tau) \
                    and tau > 0 else ""
                lines.append(f"  {_pole_text(p)}: {words}{extra}")
        tau = f.time_constants[f.slow]
        summary.append((memory_text(tau, spe) if math.isfinite(tau)
                        else pole_memory(f.poles[f.slow], tau)) + f" in {when}")
    lines.append("memory ~ " + "; ".join(summary) + " (the slow pole)")
    return lines


def _initial_state_text(rf: RunFilter) -> str:
    s = rf.spec.model.init_scale
    loop = rf.spec.loop
    if loop.init_from is not None:
        if rf.spec.binary_storage != "binary":
            return (f"initial state: the latent weights of --init-from {loop.init_from} (not "
                    f"the --init-scale draw)")
        if loop.init_weight_decay > 0:
            return (f"initial state: b0 = sign(w1) and v0 = -{_g(loop.init_weight_decay)} * "
                    f"gamma * w1, m0 = 0 from the weights w1 of --init-from {loop.init_from} "
                    f"(decoupled SGD's state at weight decay {_g(loop.init_weight_decay)}, "
                    f"{DOC} P2)")
        return (f"initial state: b0 = sign(w1) from --init-from {loop.init_from}, the buffers "
                f"at 0 (--init-weight-decay 0: only the signs carry over)")
    if rf.spec.binary_storage == "binary":
        return ("initial state: the buffers start at 0 with b0 = sign(w0), so --init-scale "
                f"({_g(s)}) plays no part (zero buffers are the limit of an ever smaller latent "
                f"init, {DOC} P6)")
    head = (f"initial state: latent w0 ~ U(-r, r) per layer, r = {_g(s)} / sqrt(fan_in) "
            f"(--init-scale {_g(s)})")
    if rf.optimizer == "adam":
        return head + ": no exact filter, so no matched filter state"
    where = "(above)" if rf.equivalents[0].exact else "(theory.matched_second_order_state)"
    return head + (f"; the filter starts from the state matching it {where}, and only w0/lr "
                   f"matters ({DOC} P5)")


def configure_verify_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``minibnn verify`` (the same as ``python -m verification``)."""
    parser.description = (f"Run the equivalence suite of {DOC} (P1-P10) from the verification/ "
                          "folder of a minibnn checkout.")
    parser.add_argument("--examples", type=int, default=None, metavar="N",
                        help="hypothesis examples per property (default: each property's own)")
    parser.add_argument("--only", default=None, metavar="P3[,P10]",
                        help="comma-separated property ids to check (P1 ... P10)")
    parser.add_argument("--random", action="store_true",
                        help="draw fresh random examples (default: derandomised, reproducible)")


def _import_verification() -> Any:
    """``verification.runner`` from the checkout holding this minibnn (or the working dir)."""
    checkout = Path(__file__).resolve().parents[2]            # minibnn/commands/explain.py
    for root in (checkout, Path.cwd()):
        if (root / "verification" / "runner.py").is_file() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        return importlib.import_module("verification.runner")
    except ImportError as exc:
        raise MinibnnError("the verification suite is not importable (it lives in the "
                           "verification/ folder of a minibnn checkout and needs hypothesis): "
                           f"{exc}") from None


def run_verify(args: argparse.Namespace) -> int:
    """Run the suite; exit status 0 if every property holds, 1 otherwise.

    Bad options (an empty or unknown ``--only``, ``--examples`` < 1) raise ``MinibnnError``
    from ``verification.runner``, which ``minibnn``'s main prints as one line (exit 2).
    """
    return _import_verification().run_from_args(args)
