"""P10: the non-equivalences of docs/theory.md, each shown by a minimal counterexample.

For each one, ``hypothesis.find`` searches simple cases (small integers, a handful of simple
hyperparameters, short streams) for one where the latent run and the filter that would be its
natural equivalent disagree on a binary weight, then shrinks it; the shrunk case is printed.
Exact (Fraction) references are used wherever the algorithm is rational; Adam (a square root)
and the ``mean|w|`` scale (a softmax network, run through the real minibnn layers) are float64,
each with a control run that must still agree (so the difference is due to the feature alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as Q
from typing import Any, Callable

import numpy as np
from hypothesis import find
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from minibnn import theory
from verification import reference as ref
from verification.core import PropertyResult, Timer, current_settings, describe, fmt

P10 = ("non-equivalences found by minimal counterexample: clipping, |w|<=1 STE mask, mean|w| "
       "scale, Adam, dampening, (A) under lr decay, naive (A) map")

FIND_BUDGET = 2000

_GRADS = st.lists(st.integers(-3, 3).map(Q), min_size=1, max_size=8)
_W0 = st.integers(-2, 2).map(Q)
_LR = st.sampled_from([Q(1), Q(1, 2), Q(1, 4), Q(1, 10)])
_LAM = st.sampled_from([Q(1), Q(1, 2), Q(1, 4)])
_MU = st.sampled_from([Q(0), Q(1, 2), Q(9, 10)])
_POLE = st.sampled_from([Q(0), Q(1, 2), Q(1, 4), Q(3, 4), Q(9, 10)])
_POSITIVE_POLE = st.sampled_from([Q(1, 2), Q(1, 4), Q(3, 4), Q(9, 10)])


@dataclass
class Finding:
    """One non-equivalence: whether a counterexample was found, and the minimal one."""

    name: str
    found: bool
    text: str
    tried: int


def _bits(bs: list[int]) -> str:
    """A binary trajectory as ``+--+`` (b_0 first)."""
    return "".join("+" if b > 0 else "-" for b in bs)


def _differ(latent: ref.Run, filt: ref.Run, what: str) -> str | None:
    """The first *strict* disagreement: ``w_t != 0``, ``v_t != 0`` and ``sign(w_t) = sign(v_t)``.

    Steps where either side sits exactly on a tie are skipped, so no counterexample rests on
    the tie rule.
    """
    for t, (w, v) in enumerate(zip(latent.state, filt.state)):
        if w != 0 and v != 0 and (w > 0) == (v > 0):
            return (f"latent b {_bits(latent.b)} vs {what} b {_bits(filt.b)}; at step {t} "
                    f"w = {fmt(w)} but v = {fmt(v)}")
    return None


def search(name: str, strategy: st.SearchStrategy, mismatch: Callable[[Any], str | None],
           budget: int = FIND_BUDGET) -> Finding:
    """``hypothesis.find`` the simplest case on which ``mismatch`` reports a difference."""
    tried = [0]

    def condition(case: Any) -> bool:
        tried[0] += 1
        return mismatch(case) is not None

    try:
        case = find(strategy, condition, settings=current_settings(budget))
    except NoSuchExample:
        return Finding(name, False, f"no counterexample in {tried[0]} cases", tried[0])
    return Finding(name, True, mismatch(case) or "", tried[0])


# ------------------------------------------------------------ latent clipping and STE mask
def _b_case() -> st.SearchStrategy[dict[str, Any]]:
    """(B) hyperparameters with eta lam <= 1, a small init and a short stream."""
    return st.fixed_dictionaries(dict(lr=_LR, lam=_LAM, mu=_MU, w0=_W0, grads=_GRADS)).filter(
        lambda c: c["lr"] * c["lam"] <= 1)


def _p2_filter(c: dict[str, Any]) -> ref.Run:
    m0, v0 = theory.matched_initial_state(c["w0"], c["lr"], c["mu"], c["lam"], True)
    return ref.cema(c["grads"], c["lr"] * c["lam"], 1 - c["mu"], m0, v0)


def _clipping(c: dict[str, Any]) -> str | None:
    latent = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], True, c["w0"], clip=1)
    diff = _differ(latent, _p2_filter(c), "CEMA (P2 map)")
    return diff and f"SGDW + clip to [-1,1], {describe(**c)}: {diff}"


def _ste_mask(c: dict[str, Any]) -> str | None:
    latent = ref.latent_sgd(c["grads"], c["lr"], c["mu"], c["lam"], True, c["w0"], ste_mask=1)
    diff = _differ(latent, _p2_filter(c), "CEMA (P2 map)")
    return diff and f"SGDW, gradient zeroed where |w| > 1, {describe(**c)}: {diff}"


# ------------------------------------------------------------------- mean|w| scaling factor
_nonzero_quarter = st.tuples(st.integers(1, 4), st.sampled_from([1, -1])).map(
    lambda p: p[0] * p[1] / 4)


def _scale_case() -> st.SearchStrategy[dict[str, Any]]:
    """A one-layer binary classifier (n inputs -> 2 classes) on a tiny full batch."""
    small = st.integers(-2, 2).map(float)
    return st.integers(1, 3).flatmap(lambda n: st.fixed_dictionaries(dict(
        x=st.lists(st.lists(small, min_size=n, max_size=n), min_size=1, max_size=3),
        w0=st.lists(st.lists(_nonzero_quarter, min_size=n, max_size=n), min_size=2, max_size=2),
        lr=st.sampled_from([1.0, 0.5, 0.25]), lam=st.sampled_from([1.0, 0.5]),
        mu=st.sampled_from([0.0, 0.5]), steps=st.integers(1, 6))))


def _train_one_layer(c: dict[str, Any], storage: str, scale: bool) -> list[list[float]]:
    """Binary weights after each full-batch step of the real BinaryDense + softmax CE."""
    from minibnn import optim
    from minibnn.nn.functional import softmax_cross_entropy
    from minibnn.nn.modules import BinaryDense

    x = np.array(c["x"], dtype=np.float64)
    y = np.arange(len(x)) % 2                          # labels 0, 1, 0
    w0 = np.array(c["w0"], dtype=np.float64)
    layer = BinaryDense("fc", w0.shape[1], 2, storage=storage, scale=scale)
    if storage == "latent":
        params = {"fc.w": w0}
        opt = optim.sgd(c["lr"], c["mu"], c["lam"], decoupled=True)
    else:
        m0, v0 = theory.matched_initial_state(w0, c["lr"], c["mu"], c["lam"], True)
        params = {"fc.w": np.where(w0 >= 0, 1.0, -1.0)}
        opt = optim.cema(c["lr"] * c["lam"], 1.0 - c["mu"],
                         init_state={"m": {"fc.w": m0}, "v": {"fc.w": v0}})
    state = opt.init(params)
    history = [np.where(params["fc.w"] >= 0, 1.0, -1.0).ravel().tolist()]
    for _ in range(c["steps"]):
        logits, _, cache = layer.forward(params, {}, x, True)
        _, dlogits = softmax_cross_entropy(logits, y)
        _, grads = layer.backward(dlogits, cache)
        params, state = opt.update(grads, state, params)
        history.append(np.where(params["fc.w"] >= 0, 1.0, -1.0).ravel().tolist())
    return history


def _scaling_factor(c: dict[str, Any]) -> str | None:
    if c["lr"] * c["lam"] > 1:
        return None
    cema = _train_one_layer(c, "binary", False)
    if _train_one_layer(c, "latent", False) != cema:
        return None                                   # control must agree (P9 in miniature)
    scaled = _train_one_layer(c, "latent", True)
    if scaled == cema:
        return None
    t = next(i for i, (a, b) in enumerate(zip(scaled, cema)) if a != b)
    return (f"BinaryDense(scale=mean|w|) + SGDW, {describe(**c)}"
            f": step {t}: latent b {_bits(scaled[t])} vs CEMA b {_bits(cema[t])} "
            f"(without the scale both agree)")


# ---------------------------------------------------------------------------------- Adam
def _adam_case() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(dict(
        lr=st.sampled_from([0.5, 1.0, 0.1]), lam=st.sampled_from([1.0, 0.5]),
        b1=st.sampled_from([0.0, 0.5, 0.9]), w0=st.integers(-2, 2).map(float),
        grads=st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=8)))


def _adam(c: dict[str, Any]) -> str | None:
    """Real ``optim.adam`` (coupled L2) vs CEMA(alpha = lr lam, gamma = 1 - b1) (the P2 map)."""
    from minibnn import optim

    b0 = 1 if c["w0"] >= 0 else -1
    p = {"w": np.array([c["w0"]])}
    opt = optim.adam(c["lr"], c["b1"], 0.999, 1e-8, c["lam"])
    state, ws = opt.init(p), [c["w0"]]
    for g in c["grads"]:
        p, state = opt.update({"w": np.array([g])}, state, p)
        ws.append(float(p["w"][0]))
    latent_b = [ref.initial_sign(c["w0"], b0)]
    for w in ws[1:]:
        latent_b.append(ref.sign_keep(w, latent_b[-1]))
    v0 = -c["lam"] * (1 - c["b1"]) * c["w0"]
    filt = ref.cema(c["grads"], c["lr"] * c["lam"], 1 - c["b1"], 0.0, v0, b0)
    diff = _differ(ref.Run(ws, latent_b), filt, "CEMA(lr lam, 1-b1)")
    return diff and f"Adam on latent w, b2=0.999, {describe(**c)}: {diff}"


# ------------------------------------------------------------------------ dampening, (A)
def _a_case(extra: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict[str, Any]]:
    """(A) with rational poles p1, p2 (mu = p1 p2) and lam; lr derived per case."""
    return st.fixed_dictionaries({**dict(p1=_POLE, p2=_POLE, lam=_LAM, w0=_W0, grads=_GRADS),
                                  **extra})


def _p3_rates(lr: Any, mu: Any, lam: Any) -> tuple[Any, Any]:
    eq = theory.latent_to_filter(lr, mu, lam, decoupled=False)
    return eq.alpha, eq.gamma


def _dampening(c: dict[str, Any]) -> str | None:
    """PyTorch dampening: m = mu m + (1-tau) d, but m_1 = d_1 undamped.  The candidate filter
    is the P3 map of the damped steady state, i.e. of lr' = lr (1 - tau)."""
    mu, lam, tau = c["p1"] * c["p2"], c["lam"], c["tau"]
    lr = (1 - c["p1"]) * (1 - c["p2"]) / (lam * (1 - tau))
    latent = ref.latent_sgd(c["grads"], lr, mu, lam, False, c["w0"], dampening=tau)
    alpha, gamma = _p3_rates(lr * (1 - tau), mu, lam)
    v0 = -lam * c["w0"]
    diff = _differ(latent, ref.cema(c["grads"], alpha, gamma, v0, v0),
                   f"CEMA(P3 map of lr(1-tau): alpha={fmt(alpha)}, gamma={fmt(gamma)})")
    return diff and (f"SGD(A) lr={fmt(lr)}, momentum={fmt(mu)}, dampening={fmt(tau)}, "
                     f"lam={fmt(lam)}, w0={fmt(c['w0'])}, grads={fmt(c['grads'])}: {diff}")


def _decay_under_a(c: dict[str, Any]) -> str | None:
    """(A) with constant mu and lr_t = lr_0 f_t vs CEMA with alpha_t = alpha_0 f_t (P7)."""
    mu, lam = c["p1"] * c["p2"], c["lam"]
    lr0 = (1 - c["p1"]) * (1 - c["p2"]) / lam
    n = len(c["grads"])
    factors = [c["factor"] ** (t // c["every"]) for t in range(n)]
    latent = ref.latent_sgd(c["grads"], [lr0 * f for f in factors], mu, lam, False, c["w0"])
    alpha0, gamma = _p3_rates(lr0, mu, lam)
    v0 = -lam * c["w0"]
    diff = _differ(latent, ref.cema(c["grads"], [alpha0 * f for f in factors], gamma, v0, v0),
                   f"CEMA(alpha_t = {fmt(alpha0)} f_t, gamma={fmt(gamma)})")
    return diff and (f"SGD(A) lr_t={fmt(lr0)}*{fmt(c['factor'])}^(t//{c['every']}), "
                     f"momentum={fmt(mu)}, lam={fmt(lam)}, w0={fmt(c['w0'])}, "
                     f"grads={fmt(c['grads'])}: {diff}")


def _naive_a(c: dict[str, Any]) -> str | None:
    """(A) vs CEMA(alpha = eta lam, gamma = 1 - mu) with P3's state m0 = v0 = -lam w0."""
    mu, lam = c["p1"] * c["p2"], c["lam"]
    lr = (1 - c["p1"]) * (1 - c["p2"]) / lam
    latent = ref.latent_sgd(c["grads"], lr, mu, lam, False, c["w0"])
    v0 = -lam * c["w0"]
    diff = _differ(latent, ref.cema(c["grads"], lr * lam, 1 - mu, v0, v0),
                   f"naive CEMA(alpha={fmt(lr * lam)}, gamma={fmt(1 - mu)})")
    return diff and (f"SGD(A) lr={fmt(lr)}, momentum={fmt(mu)}, lam={fmt(lam)}, "
                     f"w0={fmt(c['w0'])}, grads={fmt(c['grads'])}: {diff}")


def findings(budget: int = FIND_BUDGET) -> list[Finding]:
    """Search every non-equivalence of docs/theory.md P10."""
    # Poles > 0: with momentum 0 PyTorch ignores dampening, so mu = p1 p2 must be positive.
    damp = {"tau": st.sampled_from([Q(1, 2), Q(1, 4), Q(9, 10)]), "p1": _POSITIVE_POLE,
            "p2": _POSITIVE_POLE}
    decay = {"factor": st.sampled_from([Q(1, 2), Q(1, 10)]), "every": st.integers(1, 4)}
    return [
        search("latent clipping", _b_case(), _clipping, budget),
        search("|w| <= 1 STE mask", _b_case(), _ste_mask, budget),
        search("mean|w| scaling factor", _scale_case(), _scaling_factor, budget),
        search("Adam on latent weights", _adam_case(), _adam, budget),
        search("PyTorch dampening", _a_case(damp), _dampening, budget),
        search("(A), constant momentum, lr decay", _a_case(decay), _decay_under_a, budget),
        search("naive map for (A)", _a_case({}), _naive_a, budget),
    ]


def check_p10(examples: int | None = None) -> PropertyResult:
    """P10: every expected counterexample is found (each search stops at its first find;
    ``examples`` can only raise the budget above ``FIND_BUDGET``)."""
    with Timer() as timer:
        found = findings(max(examples or 0, FIND_BUDGET))
    missing = [f.name for f in found if not f.found]
    return PropertyResult(
        "P10", P10, sum(f.tried for f in found), not missing,
        f"no counterexample found for: {', '.join(missing)}" if missing else None,
        "exact (Fraction); Adam, mean|w| in float64",
        f"{sum(f.found for f in found)}/{len(found)} found, minimal by shrinking",
        timer.seconds, details=[(f.name, f.text) for f in found],
        implementations="reference, chain (optim.adam, optim.sgd/cema + BinaryDense)")
