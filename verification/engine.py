"""minibnn's own optimisers as implementations under test: the chain and each fused backend.

    for impl in implementations(opt):              # "chain", "fused[numpy]", "fused[numba]", ...
        run = scalar_run(opt, impl, b0, grads, probe)

``"chain"`` runs ``opt.update`` (the readable filters).  ``"fused[B]"`` runs the optimiser's
fused kernel step (``opt.fused.step``) under ``kernels.use_backend(B)``, forced even where
``opt.step_in_place`` would pick the chain: B = ``numpy`` (the reference kernel bodies), ``numba``
(the compiled CPU bodies) and ``cuda`` (CuPy arrays; results copied back to NumPy).  A backend that
cannot run on this machine is skipped, with the reason (``skipped_backends``).  ``Coverage``
records which implementations a property actually checked: the report's column.

``"torch"`` runs an optimiser's PyTorch twin (``minibnn.torch``) on float64 CPU tensors,
where PyTorch is installed: a filter optimiser's (``CEMA``, ...: bit for bit minibnn's), or
latent sgd's, PyTorch's own ``torch.optim.SGD`` (``minibnn.torch.SGD``: minibnn's to rounding,
its signs outside the float margin; ``add(..., alpha=)`` is a fused multiply-add).  The
optimiser is then given as a ``Recipe`` (its minibnn name, keywords and initial state) rather
than a built chain, so that it can be built either way; the twin starts from minibnn's initial
state (``load_minibnn_state``) and reports its state in minibnn's layout (``minibnn_state``),
so the same probes read both.

The comparisons used by the properties are here too: bitwise equality with a reference run,
and agreement of signs wherever a latent weight is outside the float margin.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from verification import reference as ref
from verification.core import FLOAT_MARGIN, Mismatch

CHAIN = "chain"
TORCH = "torch"


def fused_name(backend: str) -> str:
    return f"fused[{backend}]"


@functools.lru_cache(maxsize=None)
def _backend_status() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(backends that run here, ((backend, why not), ...)), probed once."""
    from minibnn import kernels

    present, skipped = ["numpy"], []
    try:
        kernels.get("cema_update", "numba")
        with kernels.use_backend("numba"):
            kernels.backend_for("cema_update", np.zeros(1))
        present.append("numba")
    except Exception as exc:  # BackendError: Numba missing or no numba body
        skipped.append(("numba", _reason(exc)))
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        kernels.get("cema_update", "cuda")
        present.append("cuda")
    except Exception as exc:  # ImportError (no CuPy), CUDA runtime errors, BackendError
        skipped.append(("cuda", _reason(exc)))
    return tuple(present), tuple(skipped)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fused_backends() -> tuple[str, ...]:
    """Kernel backends the fused steps are checked on here (numpy always)."""
    return _backend_status()[0]


def skipped_backends() -> dict[str, str]:
    """``fused[B] -> reason`` for each backend that cannot run on this machine."""
    return {fused_name(b): why for b, why in _backend_status()[1]}


def torch_missing() -> str | None:
    """Why the PyTorch twins cannot run here (``minibnn.torch``'s one-line error), or None."""
    from minibnn.errors import MinibnnError

    try:
        import minibnn.torch  # noqa: F401
    except MinibnnError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Recipe:
    """An optimiser by its ``minibnn.optim`` constructor's name (``cema``, ``bop``, ``bop2nd``,
    ``second_order``, ``sgd``: ``minibnn.torch.NAMED`` has each), its keywords and its initial
    state (the constructor's ``init_state``, where it has one): ``recipe()`` is minibnn's
    optimiser (looked up when called), ``recipe.torch(params)`` its PyTorch twin."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    init_state: dict[str, Any] | None = None

    def __call__(self) -> Any:
        from minibnn import optim

        extra = {"init_state": self.init_state} if self.init_state is not None else {}
        return getattr(optim, self.name)(**self.kwargs, **extra)

    def torch(self, params: dict[str, Any]) -> Any:
        from minibnn.torch import from_name

        return from_name(self.name, list(params.values()), **self.kwargs)


def implementations(opt: Any) -> list[str]:
    """The chain, the fused step on every present backend when ``opt`` has one, and the
    PyTorch twin of a ``Recipe`` where PyTorch is installed."""
    built = opt() if isinstance(opt, Recipe) else opt
    impls = [CHAIN]
    if getattr(built, "fused", None) is not None:
        impls += [fused_name(b) for b in fused_backends()]
    if isinstance(opt, Recipe) and torch_missing() is None:
        impls.append(TORCH)
    return impls


def forced(opt: Any) -> Any:
    """``opt`` with ``update`` replaced by its fused step (each group's, for a partition)."""
    from minibnn import optim

    if isinstance(opt, optim.Partition):
        return optim.partition({label: forced(o) for label, o in opt.optimizers.items()},
                               opt.label_of)
    if opt.fused is None:
        return opt
    return optim.Transform(opt.init, opt.fused.step)


class Stepper:
    """One implementation of ``opt`` as ``params, state = stepper(grads, state, params)``.

    NumPy arrays in and out; ``fused[cuda]`` moves them to the device and back (the state stays
    on the device between steps).
    """

    def __init__(self, opt: Any, impl: str):
        self.impl = impl
        self.backend = None if impl == CHAIN else impl[len("fused["):-1]
        self.opt = opt if impl == CHAIN else forced(opt)
        self.to_dev, self.to_host = converters(self.backend)

    def init(self, params: dict[str, np.ndarray]) -> Any:
        return self.opt.init({k: self.to_dev(v) for k, v in params.items()})

    def __call__(self, grads: dict[str, np.ndarray], state: Any,
                 params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
        from minibnn import kernels

        g = {k: self.to_dev(v) for k, v in grads.items()}
        p = {k: self.to_dev(v.copy()) for k, v in params.items()}   # a fused step writes p
        if self.backend is None:
            new, state = self.opt.update(g, state, p)
        else:
            with kernels.use_backend(self.backend):
                new, state = self.opt.update(g, state, p)
        return {k: self.to_host(v) for k, v in new.items()}, state

    def host(self, value: Any) -> Any:
        return self.to_host(value)


class TorchStepper:
    """A ``Recipe``'s PyTorch twin as a ``Stepper``: float64 CPU tensors, NumPy in and out.

    The twin keeps its own state; the state handed back is its ``minibnn_state``, and the
    parameters passed in must be those it returned (checked)."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.impl = recipe, TORCH

    def init(self, params: dict[str, np.ndarray]) -> Any:
        import torch

        from minibnn.torch import load_minibnn_state

        self.params = {k: torch.nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float64)))
                       for k, v in params.items()}
        self.opt = self.recipe.torch(self.params)
        load_minibnn_state(self.opt, self.recipe().init(params), self.params)
        return self._state()

    def _state(self) -> Any:
        from minibnn.torch import minibnn_state

        return minibnn_state(self.opt, self.params)

    def __call__(self, grads: dict[str, np.ndarray], state: Any,
                 params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
        import torch

        for k, p in self.params.items():
            if not np.array_equal(p.detach().numpy(), params[k]):
                raise ValueError(f"TorchStepper: parameters {k!r} are not the twin's")
            p.grad = torch.from_numpy(np.array(grads[k], dtype=np.float64))
        self.opt.step()
        return {k: p.detach().numpy().copy() for k, p in self.params.items()}, self._state()

    def host(self, value: Any) -> Any:
        return value


def stepper(opt: Any, impl: str) -> Stepper | TorchStepper:
    """Implementation ``impl`` of ``opt`` (a built optimiser, or a ``Recipe``)."""
    if impl == TORCH:
        return TorchStepper(opt)
    return Stepper(opt() if isinstance(opt, Recipe) else opt, impl)


def converters(backend: str | None) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(to the backend's arrays, back to NumPy): CuPy for "cuda", the identity otherwise."""
    if backend != "cuda":
        return (lambda a: a), (lambda a: a)
    import cupy as cp

    return cp.asarray, cp.asnumpy


@dataclass
class ScalarRun:
    """One weight's run: parameter and probed state at t = 0..T (probe[0] is the initial)."""

    params: list[float]
    probe: list[float]


def run(opt: Any, impl: str, w0: np.ndarray, grads: np.ndarray,
        probe: Callable[[Any], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Drive ``opt`` (an optimiser or a ``Recipe``; implementation ``impl``) on float64 weights ``w0`` (shape (k,)) with
    gradients ``grads`` (shape (T, k)); return parameters and probed states, shape (T+1, k).

    ``probe(state)`` picks the signed state to record, e.g. ``lambda s: s["v"]["s"]["w"]``
    for CEMA's ``v`` (zeros when None).
    """
    step = stepper(opt, impl)
    params = {"w": np.array(w0, dtype=np.float64)}
    state = step.init(params)
    ws, probes = [params["w"].copy()], [_probe(step, probe, state, params["w"])]
    for g in grads:
        params, state = step({"w": np.array(g, dtype=np.float64)}, state, params)
        ws.append(params["w"].copy())
        probes.append(_probe(step, probe, state, params["w"]))
    return np.array(ws), np.array(probes)


def _probe(stepper: Stepper | TorchStepper, probe: Callable[[Any], Any] | None, state: Any,
           like: np.ndarray) -> np.ndarray:
    if probe is None:
        return np.zeros_like(like)
    return np.array(stepper.host(probe(state)), dtype=np.float64).copy()


def scalar_run(opt: Any, impl: str, w0: float, grads: Sequence[float],
               probe: Callable[[Any], Any] | None = None) -> ScalarRun:
    """``run`` on one weight, as lists of Python floats (to compare with ``reference``)."""
    ws, probes = run(opt, impl, np.array([float(w0)]),
                     np.array([[float(g)] for g in grads]).reshape(len(grads), 1), probe)
    return ScalarRun([float(x) for x in ws[:, 0]], [float(x) for x in probes[:, 0]])


@dataclass
class Coverage:
    """Which implementations a property checked (the report's "implementations" column)."""

    used: dict[str, None] = field(default_factory=dict)
    chain_only: dict[str, None] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    reference: bool = True          # the reference recursions were checked too
    cases: int = 0                  # engine-stage cases the engine actually ran
    not_applicable: int = 0         # engine-stage cases it could not run (rates outside (0, 1])
    torch_offered: bool = False     # a filter optimiser with a PyTorch twin was run

    def add(self, impl: str) -> None:
        self.used[impl] = None

    def implementations(self, opt: Any) -> list[str]:
        """``implementations(opt)``, noting that a ``Recipe`` offered the PyTorch twin."""
        self.torch_offered = self.torch_offered or isinstance(opt, Recipe)
        return implementations(opt)

    def count(self, ran: bool) -> None:
        """One engine-stage case: run on the engine (True) or outside its domain (False)."""
        if ran:
            self.cases += 1
        else:
            self.not_applicable += 1

    def cases_text(self) -> str:
        """``engine: N cases`` (and how many drawn cases it could not run)."""
        text = f"engine: {self.cases} cases"
        if self.not_applicable:
            text += f" ({self.not_applicable} more drawn outside its rates, not counted)"
        return text

    def no_kernel(self, optimizer: str) -> None:
        """``optimizer`` has no fused step: only its chain was run."""
        self.chain_only[optimizer] = None

    def text(self) -> str:
        parts = ["reference"] if self.reference else []
        if CHAIN in self.used:
            parts.append(CHAIN)
        backends = [i[len("fused["):-1] for i in self.used if i.startswith("fused[")]
        if backends:
            parts.append(f"fused[{','.join(backends)}]")
        if TORCH in self.used:
            parts.append(TORCH)
        parts += self.extra
        text = ", ".join(parts)
        if self.chain_only:
            text += f" (no fused kernel: {', '.join(self.chain_only)})"
        return text

    def skipped(self) -> dict[str, str]:
        """Backends skipped here, when the property ran any fused step; the PyTorch twins,
        when the property offered them and PyTorch is missing."""
        out = skipped_backends() if any(i.startswith("fused[") for i in self.used) else {}
        why = torch_missing() if self.torch_offered else None
        if why is not None:
            out[TORCH] = why
        return out


# ------------------------------------------------------------------------------ comparisons
def magnitude_bound(grads: Sequence[float], lr: Any, mu: Any, lam: float, decoupled: bool,
                    w0: float) -> list[float]:
    """``sum_s |h(t, s) g_s| + |h0(t) w0|``: the size of the terms summed into latent ``w_t``.

    ``h(t, s)`` is the response of ``w_t`` to a unit gradient at step s, ``h0`` the response to
    the initial weight (schedules included: one vector run of the latent recursion, a
    component per input).  Rounding errors are relative to this magnitude, so a sign is only
    compared where ``|w_t|`` exceeds ``FLOAT_MARGIN`` of it.
    """
    steps = len(grads)
    eta, mom = ref.per_step(lr, steps), ref.per_step(mu, steps)
    w = np.zeros(steps + 1)
    w[steps] = 1.0                                  # the last component carries w0
    m = np.zeros(steps + 1)
    out = [abs(w0)]
    mags = np.abs(np.append(np.asarray(grads, dtype=float), float(w0)))
    for t in range(steps):
        g = np.zeros(steps + 1)
        g[t] = 1.0
        d = g if decoupled else g + lam * w
        m = d if t == 0 or mom[t] == 0 else mom[t] * m + d
        w = (1 - eta[t] * lam) * w - eta[t] * m if decoupled else w - eta[t] * m
        out.append(float(np.abs(w) @ mags))
    return out


def same_bits(want: ref.Run, got: ScalarRun, case: str, binary: bool = True,
              state: bool = True) -> None:
    """``got`` has the reference run's parameters (b, or w when not ``binary``) and states."""
    want_params = want.b if binary else want.state
    for t, (x, y) in enumerate(zip(want_params, got.params)):
        if x != y:
            what = "b" if binary else "w"
            raise Mismatch(f"{case}: step {t}: {what} = {y!r}, reference {x!r}")
    if state:
        for t, (x, y) in enumerate(zip(want.state, got.probe)):
            if x != y:
                raise Mismatch(f"{case}: step {t}: state = {y!r}, reference {x!r}")


def carried_scale(scale: Sequence[float], ws: Sequence[float]) -> list[float]:
    """``max_{s<=t} max(scale_s, |w_s|)``: the magnitude rounding errors are relative to."""
    out, carried = [], 0.0
    for s, w in zip(scale, ws):
        carried = max(carried, s, abs(w))
        out.append(carried)
    return out


def decided(w: float, carried: float) -> bool:
    """A latent weight is decided when ``|w|`` exceeds the float margin of its magnitude."""
    return carried > 0 and abs(w) > FLOAT_MARGIN * carried


def same_latent_signs(want: Sequence[float], got: Sequence[float], scale: Sequence[float],
                      case: str) -> None:
    """Latent weights agree in sign wherever the reference weight is decided."""
    for t, (c, x, y) in enumerate(zip(carried_scale(scale, want), want, got)):
        if decided(x, c) and (x > 0) != (y > 0):
            raise Mismatch(f"{case}: step {t}: w = {y!r}, reference w = {x!r} "
                           f"(margin {FLOAT_MARGIN:g} of {c:.3g})")


def latent_matches_binary(ws: Sequence[float], bs: Sequence[float], scale: Sequence[float],
                          case: str, skip: Callable[[int], bool] = lambda t: False) -> None:
    """A latent run's signs are a filter run's binary weights wherever ``w`` is decided."""
    for t, (c, w, b) in enumerate(zip(carried_scale(scale, ws), ws, bs)):
        if skip(t) or not decided(w, c):
            continue
        if (w > 0) != (b > 0):
            raise Mismatch(f"{case}: step {t}: latent w = {w!r} but filter b = {b:+g}")
