"""P9 in PyTorch: a binary MLP and CNN trained as latent SGDW and as ``minibnn.torch.CEMA``.

The same comparison as ``closed_loop.py``, written as a user of PyTorch would write it:

    latent:  ``minibnn.torch.SGD(momentum=mu, decoupled=True)`` on real w, forward sign(w)
             (identity weight STE): ``torch.optim.SGD`` with the decoupled weight decay
             applied before each step, ``w <- (1 - eta_t lam) w`` (SGDW: then SGD's step
             makes ``w = (1 - eta_t lam) w - eta_t m``), eta_t the schedule at update t
    filter:  ``minibnn.torch.CEMA`` on +-1 weights with the P2 map, alpha_t = lam * eta_t,
             gamma = 1 - mu, from the matched state (``theory.matched_initial_state``, loaded
             with ``load_minibnn_state``)

Real parameters (first layer, BatchNorm, classifier) get ``torch.optim.Adam`` on both sides.
The two copies are one module class in float64 on the CPU; a binary weight enters the forward
as ``sign(w)`` (sign(0) = +1), which is b itself on the filter side, so while the binary
weights agree the forwards, losses and gradients are bitwise equal.  ``_Tracker`` (shared with
``closed_loop.py``) asserts ``sign(w) == b`` after every step.  The networks have the sizes
of ``closed_loop``'s (they are PyTorch modules, not minibnn's layers).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import numpy as np

from minibnn import optim, theory
from verification.closed_loop import PairRun, _teacher_data, _Tracker


def _modules() -> Any:
    """The layers, built on first use (PyTorch is optional)."""
    import torch
    from torch import nn

    class SignSTE(torch.autograd.Function):
        """Activations: sign(x) (sign(0) = +1) forward, hardtanh STE ``dy * (|x| <= 1)``."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x)
            return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

        @staticmethod
        def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
            (x,) = ctx.saved_tensors
            return dy * (x.abs() <= 1).to(dy.dtype)

    class WeightSign(torch.autograd.Function):
        """Binary weights: sign(w) forward, identity backward (``weight_ste="identity"``)."""

        @staticmethod
        def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
            return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

        @staticmethod
        def backward(ctx: Any, dw: torch.Tensor) -> torch.Tensor:
            return dw

    class BinaryLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(SignSTE.apply(x), WeightSign.apply(self.weight))

    class BinaryConv2d(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.conv2d(SignSTE.apply(x), WeightSign.apply(self.weight),
                                        padding=self.padding)

    def mlp() -> nn.Module:
        """24 -> 32 (real) -> 32 -> 32 (binary) -> 4 (real), BatchNorm after each hidden layer."""
        return nn.Sequential(nn.Linear(24, 32), nn.BatchNorm1d(32),
                             BinaryLinear(32, 32, bias=False), nn.BatchNorm1d(32),
                             BinaryLinear(32, 32, bias=False), nn.BatchNorm1d(32),
                             nn.Hardtanh(), nn.Linear(32, 4))

    def cnn() -> nn.Module:
        """1x8x8: conv 4 (real), binary conv 4, max pool, binary conv 4, classifier 3."""
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                             BinaryConv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                             nn.MaxPool2d(2),
                             BinaryConv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                             nn.Hardtanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))

    return (BinaryLinear, BinaryConv2d), {"mlp": (mlp, (24,), 4), "cnn": (cnn, (1, 8, 8), 3)}


def _init(model: Any, binary: list[str], rng: np.random.Generator, init_scale: float) -> None:
    """Latent weights ``init_scale * N(0, 1)``; real weights N(0, 1/fan_in); BatchNorm 1, 0."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in binary:
                value = init_scale * rng.standard_normal(tuple(p.shape))
            elif p.ndim == 1:      # biases, BatchNorm shifts; BatchNorm scales are set below
                value = np.zeros(tuple(p.shape))
            else:
                value = rng.standard_normal(tuple(p.shape)) / np.sqrt(p[0].numel())
            p.copy_(torch.from_numpy(value))
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.fill_(1.0)


def torch_pair(kind: str, steps: int, lr: Callable[[int], float], momentum: float,
               weight_decay: float, seed: int = 0, batch: int = 16, samples: int = 128,
               init_scale: float = 1.0, alpha_factor: float = 1.0) -> PairRun:
    """Train the latent (SGDW) and the filter (CEMA) copy of network ``kind`` ("mlp", "cnn")
    together in PyTorch; compare every step.  ``alpha_factor`` multiplies CEMA's rate (1 is
    the P2 map; a test plants other values)."""
    import torch

    from minibnn.torch import CEMA, SGD, load_minibnn_state, split_binary

    binary_types, nets = _modules()
    build, shape, classes = nets[kind]
    latent = build().double()
    binary = [f"{name}.weight" for name, m in latent.named_modules()
              if isinstance(m, binary_types)]
    rng = np.random.default_rng(seed)
    _init(latent, binary, rng, init_scale)
    filt = copy.deepcopy(latent)
    lat, bin_ = split_binary(latent, binary), split_binary(filt, binary)
    w0 = {k: p.detach().numpy().copy() for k, p in lat.binary.items()}
    with torch.no_grad():
        for k, p in bin_.binary.items():
            p.copy_(torch.where(p >= 0, 1.0, -1.0))
    sgd = SGD(lat.binary.values(), lr=lr, momentum=momentum, weight_decay=weight_decay,
              decoupled=True)
    cema = CEMA(bin_.binary.values(), alpha=lambda t: alpha_factor * weight_decay * lr(t),
                gamma=1.0 - momentum)
    matched = {k: theory.matched_initial_state(w, lr(0), momentum, weight_decay, True)
               for k, w in w0.items()}
    init = optim.cema(init_state={"m": {k: s[0] for k, s in matched.items()},
                                  "v": {k: s[1] for k, s in matched.items()}})
    load_minibnn_state(cema, init.init(w0), bin_.binary)
    opts_lat = [sgd, torch.optim.Adam(lat.real.values(), 1e-3)]
    opts_bin = [cema, torch.optim.Adam(bin_.real.values(), 1e-3)]
    x, y = (torch.from_numpy(a) for a in _teacher_data(rng, samples, shape, classes))
    run = PairRun(f"binary {kind.upper()} [torch]", 0, 0, 0, 0.0, [], None)
    tracker = _Tracker(run, binary, weight_decay * (1.0 - momentum))
    for t in range(steps):
        idx = torch.from_numpy(rng.choice(samples, batch, replace=False))
        losses = []
        for model, opts in ((latent, opts_lat), (filt, opts_bin)):
            for opt in opts:
                opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            losses.append(loss.item())
        if losses[0] != losses[1]:
            run.first_difference = f"step {t}: loss {losses[0]!r} (latent) vs {losses[1]!r} (filter)"
            return run
        run.losses.append(losses[0])
        old_b = {k: p.detach().numpy().copy() for k, p in bin_.binary.items()}
        for opt in opts_lat + opts_bin:
            opt.step()
        numpy = lambda params: {k: p.detach().numpy() for k, p in params.items()}  # noqa: E731
        v = {k: cema.state[p]["v"].numpy() for k, p in bin_.binary.items()}
        if not tracker.step(t, numpy(lat.binary), numpy(bin_.binary), old_b, v):
            return run
    return run


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one CPU thread for the block: these networks are tiny, and threads that
    compete with other work on the machine make them tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_torch_runs(steps_mlp: int = 60, steps_cnn: int = 50) -> list[PairRun]:
    """P9's two networks, schedules and settings (``closed_loop.default_runs``), in PyTorch."""
    with one_thread():
        return [torch_pair("mlp", steps_mlp, optim.step_decay(0.5, 20, 0.5), momentum=0.9,
                           weight_decay=0.05, seed=1, init_scale=0.1),
                torch_pair("cnn", steps_cnn, optim.cosine(0.5, steps_cnn, end=0.05),
                           momentum=0.75, weight_decay=0.1, seed=2, batch=8, samples=64,
                           init_scale=0.1)]
