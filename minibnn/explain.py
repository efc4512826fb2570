"""``minibnn explain`` and ``minibnn verify``: the hyperparameter map of THEORY.md on the command line.

    minibnn explain --lr 0.1 --momentum 0.9 --weight-decay 5e-4 [--decoupled] [--plot out.png]
    minibnn explain --alpha 1e-4 --gamma 1e-3 [--decoupled]        # the other direction
    minibnn verify [--examples N] [--only P3,P10]                  # from a checkout

``explain`` prints the CEMA rates (or the second-order filter when none exist), the poles and
their memory in steps, the initial state matching a latent initialisation, and whether the
textbook map ``alpha = lr*wd, gamma = 1 - momentum`` would be wrong; ``--plot`` draws both
impulse responses overlaid (and the naive one when it differs).  ``verify`` runs the
equivalence suite in ``verification/``, a folder of the source checkout that is not installed.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from minibnn import theory
from minibnn.errors import MinibnnError
from minibnn.figures import save_figure


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``minibnn explain``."""
    parser.description = ("Map latent-weight SGD hyperparameters to the equivalent gradient "
                          "filter (CEMA alpha, gamma), or back with --alpha/--gamma (THEORY.md).")
    parser.add_argument("--lr", type=float, default=None, help="latent SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.0, help="latent SGD momentum mu")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay lambda")
    parser.add_argument("--decoupled", action="store_true",
                        help="decoupled weight decay (SGDW, THEORY (B)); default: PyTorch SGD's "
                             "coupled L2 decay (THEORY (A))")
    parser.add_argument("--alpha", type=float, default=None,
                        help="go the other way: CEMA's second rate (with --gamma)")
    parser.add_argument("--gamma", type=float, default=None, help="CEMA's first (momentum) rate")
    parser.add_argument("--plot", metavar="OUT.png", default=None,
                        help="write both impulse responses, overlaid, to this PNG")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps shown in the plot (default: 5 slow time constants)")


def run(args: argparse.Namespace) -> int:
    """Print the explanation for parsed ``args``; 0 on success (errors raise MinibnnError)."""
    if args.alpha is not None or args.gamma is not None:
        if args.lr is not None:
            raise MinibnnError("give either --lr (latent -> filter) or --alpha/--gamma "
                               "(filter -> latent), not both")
        if args.alpha is None or args.gamma is None:
            raise MinibnnError("--alpha and --gamma go together")
        print(explain_filter(args.alpha, args.gamma, args.decoupled))
        return 0
    if args.lr is None:
        raise MinibnnError("give --lr (with --momentum, --weight-decay), or --alpha and --gamma")
    eq = theory.latent_to_filter(args.lr, args.momentum, args.weight_decay, args.decoupled)
    print(explain_latent(eq))
    if args.plot:
        steps = _plot_steps(eq, args.steps)
        plot_impulse_responses(eq, args.plot, steps)
        print(f"impulse responses ({steps} steps) written to {args.plot}")
    return 0


def _g(x: Any) -> str:
    return f"{float(x):.6g}"


def _pole_text(p: Any) -> str:
    if isinstance(p, complex):
        return f"{p.real:.6g}{p.imag:+.6g}i (|p| = {abs(p):.6g})"
    return _g(p)


def _memory(tau: float) -> str:
    return "forever (integrator)" if math.isinf(tau) else f"{tau:.4g} steps"


def explain_latent(eq: theory.FilterEquivalent) -> str:
    """The human-readable explanation of a latent configuration."""
    view = ("decoupled weight decay (SGDW, THEORY (B))" if eq.decoupled
            else "coupled weight decay (PyTorch SGD, THEORY (A))")
    lines = [f"latent SGD: lr={_g(eq.lr)}, momentum={_g(eq.momentum)}, "
             f"weight_decay={_g(eq.weight_decay)}, {view}"]
    if eq.exact:
        lines.append(f"equivalent filter: CEMA alpha = {_g(eq.alpha)}, gamma = {_g(eq.gamma)}")
    else:
        lines.append("equivalent filter: no CEMA (alpha, gamma) exists")
    lines.append(f"  why: {eq.reason}")
    lines.append(f"second-order form: v_t = {_g(eq.a1)} v_(t-1) {_signed(eq.a2)} v_(t-2) + "
                 f"{_g(eq.c)} g_t, with v = -{_g(eq.v_scale)} * w (reproduces it exactly)")
    taus = eq.time_constants
    lines.append(f"poles: {_pole_text(eq.poles[0])}, {_pole_text(eq.poles[1])}; memory "
                 f"{_memory(taus[0])} and {_memory(taus[1])}")
    if eq.exact:
        state = ("m0 = 0, v0 = -{k} * w0" if (eq.decoupled or eq.momentum == 0)
                 else "m0 = v0 = -{k} * w0")
        lines.append("initial state matching a latent init w0: " + state.format(k=_g(eq.v_scale)))
        lines.append("lr schedule: " + ("exact as the same schedule on alpha (THEORY P7)"
                                        if eq.schedule_exact else
                                        "only approximate as an alpha schedule under coupled "
                                        "decay with constant momentum (THEORY P7)"))
    lines.append(_naive_text(eq))
    if eq.weight_decay > 0:
        lines.append(f"only lr*weight_decay = {_g(eq.lr * eq.weight_decay)} and w0/lr matter "
                     f"(THEORY P5): lr={_g(eq.lr * 10)}, weight_decay="
                     f"{_g(eq.weight_decay / 10)} with w0 scaled by 10 flips the same weights")
    return "\n".join(lines)


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
    back = theory.filter_to_latent(alpha, gamma, decoupled=decoupled)
    view = "SGDW (decoupled)" if decoupled else "PyTorch SGD (coupled)"
    lines = [f"CEMA alpha = {_g(alpha)}, gamma = {_g(gamma)} equals {view} with "
             f"momentum = {_g(back.momentum)} and lr * weight_decay = "
             f"{_g(back.lr_times_weight_decay)}",
             f"  {back.note}"]
    for lr in (1.0, 0.1, 0.01):
        lines.append(f"  e.g. lr = {_g(lr)}, weight_decay = {_g(back.lr_times_weight_decay / lr)}")
    if not decoupled:
        lines.append("  (coupled: exact for a constant lr only, THEORY P7)")
    return "\n".join(lines)


def _plot_steps(eq: theory.FilterEquivalent, steps: int | None) -> int:
    if steps is not None:
        if steps < 2:
            raise MinibnnError(f"--steps must be at least 2, got {steps}")
        return steps
    slow = max(eq.time_constants)
    return int(min(max(5 * slow, 50), 5000)) if math.isfinite(slow) else 500


def plot_impulse_responses(eq: theory.FilterEquivalent, path: str | Path, steps: int) -> None:
    """Both views' responses to one unit gradient (and the naive CEMA's, if it differs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(1, steps + 1)
    latent = theory.latent_impulse_response(eq.lr, eq.momentum, eq.weight_decay, eq.decoupled,
                                            steps)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, latent, lw=3, alpha=0.5, label=f"latent SGD, -{_g(eq.v_scale)} w_t")
    if eq.exact:
        ax.plot(t, theory.filter_impulse_response(eq.alpha, eq.gamma, steps), "k--", lw=1,
                label=f"CEMA alpha={_g(eq.alpha)}, gamma={_g(eq.gamma)}")
    else:
        ax.plot(t, theory.second_order_impulse_response(eq.a1, eq.a2, eq.c, steps), "k--", lw=1,
                label="second-order filter")
    alpha, gamma = eq.naive
    if not eq.naive_is_exact and 0 < alpha <= 1 and 0 < gamma <= 1:
        naive = theory.filter_impulse_response(alpha, gamma, steps)
        # Every CEMA has unit DC gain, as does the latent response: the shapes compare directly.
        ax.plot(t, naive, ":", color="tab:red", label="naive CEMA (lr*wd, 1-momentum)")
    ax.set_xlabel("steps after a unit gradient")
    ax.set_ylabel("filter state v (sign decides b = -sign v)")
    ax.set_title("impulse response: latent view vs filter view")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def configure_verify_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``minibnn verify`` (the same as ``python -m verification``)."""
    parser.description = ("Run the equivalence suite of THEORY.md (P1-P10) from the verification/ "
                          "folder of a minibnn checkout.")
    parser.add_argument("--examples", type=int, default=None, metavar="N",
                        help="hypothesis examples per property (default: each property's own)")
    parser.add_argument("--only", default=None, metavar="P3[,P10]",
                        help="comma-separated property ids to check")
    parser.add_argument("--random", action="store_true",
                        help="draw fresh random examples (default: derandomised, reproducible)")


def _import_verification() -> Any:
    """``verification.runner`` from the checkout holding this minibnn (or the working dir)."""
    checkout = Path(__file__).resolve().parents[1]
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
    """Run the suite; exit status 0 if every property holds, 1 otherwise."""
    return _import_verification().run_from_args(args)
