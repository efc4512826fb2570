"""Training step time, images/s and peak memory: minibnn vs the same model in PyTorch (CPU).

Models (batch 128, float32, random data of the dataset's shape):
  * binary_mlp on MNIST shapes (1x28x28) with the CLI's default widths;
  * binary_cnn on CIFAR-10 shapes (3x32x32) with the CLI's default width (32) and at width 128
    (the literature's VGG-small widths);
  * birealnet on CIFAR-10 shapes with its default width (16): residual blocks of learnable
    bias, sign, binary 3x3 convolution and BatchNorm around a real shortcut, PReLU;
all with the CLI's default activation STE (the table names widths and STE).
minibnn runs ``minibnn.run.train.train_step`` with the CLI's default optimiser (CEMA on the ±1
weights, Adam on the real ones, flips counted; no augmentation). The PyTorch twin is built
layer by layer from the minibnn model and starts from the same weights: ``nn.Linear``/
``nn.Conv2d``, ``F.batch_norm``, ``nn.MaxPool2d``, ±1 weights used directly, ``sign`` with the
same STE (a custom autograd function), ``F.cross_entropy``, then the same CEMA step written
with in-place tensor ops and ``torch.optim.Adam`` on the real parameters. Same thread count.
(The twin is built recursively from the layers, residual blocks included; a test checks that
its train-mode logits equal minibnn's.)

Speed: best step time of R interleaved rounds (one step of each candidate per round) after
a warm-up step; ``speed ratio = torch time / minibnn time`` (> 1: minibnn is faster), and
``kernels gain`` = minibnn's step time with ``backend="numpy"`` (the reference code and the
filter chains) / with the default ``backend="auto"`` (Numba kernels, fused optimiser steps).

Memory: each framework runs in a fresh subprocess (with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed
at 128 KiB, so buffers a step frees go back to the OS instead of staying in the heap). After
the model, optimiser state and batch exist and one warm-up step has run, the process's
peak-RSS counter is reset
(``echo 5 > /proc/self/clear_refs``), one step runs, and the step's peak memory is
``VmHWM - VmRSS`` measured before the step (Linux ``/proc/self/status``): the activations,
caches, gradients and temporaries a step needs on top of what stays resident. Where
clear_refs is not available the column reads n/a.

    python benchmarks/bench_train.py [--smoke] [--repeats R] [--no-memory] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Any, Callable, Sequence

import numpy as np

from _bench import (blas_line, machine_info, print_table, set_threads, time_interleaved, try_import_torch,
                    write_json)

#: name -> (model, input shape, spec option overrides); the smoke variants are tiny.
MODELS = {
    "binary_mlp/MNIST": ("binary_mlp", (1, 28, 28), {}),
    "binary_cnn/CIFAR-10": ("binary_cnn", (3, 32, 32), {}),
    "binary_cnn-w128/CIFAR-10": ("binary_cnn", (3, 32, 32), {"width": 128}),
    "birealnet/CIFAR-10": ("birealnet", (3, 32, 32), {}),
}
SMOKE_MODELS = {
    "binary_mlp/MNIST": ("binary_mlp", (1, 28, 28), {"hidden": [64, 64]}),
    "binary_cnn/CIFAR-10": ("binary_cnn", (3, 32, 32), {"width": 4}),
    "birealnet/CIFAR-10": ("birealnet", (3, 32, 32), {"width": 4}),
}


def minibnn_step(model_name: str, input_shape: tuple[int, ...], batch: int,
                 overrides: dict[str, Any], backend: str = "auto"
                 ) -> tuple[Callable[[], Any], Any, dict[str, Any]]:
    """One minibnn training step closure, the model, and its initial parameters (the training
    state's own arrays: each step updates them in place, so copy them before the first step).

    ``backend`` picks the kernels ("auto": Numba kernels and fused optimiser steps,
    "numpy": the reference code); it is selected again before every step, so steps of both
    backends can be interleaved in one process.
    """
    from minibnn.run.spec import spec_from_options
    from minibnn.run.train import TrainState, model_from_spec, optimizer_from_spec, train_step

    spec = spec_from_options({"model": model_name, "dataset": "synthetic", "batch_size": batch,
                              **overrides})
    model = model_from_spec(spec, input_shape, 10)
    optimizer = optimizer_from_spec(spec, model, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    params, buffers = model.init(rng, np.float32)
    state = TrainState(dict(params), dict(buffers), optimizer.init(params), rng)
    x = rng.standard_normal((batch,) + tuple(input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step() -> Any:
        from minibnn import kernels

        with kernels.use_backend(backend):
            return train_step(model, optimizer, state, x, y)

    return step, model, params


def describe(model: Any) -> str:
    """Widths and activation STE of a built model, for the table."""
    cfg = model.config
    size = (f"hidden {','.join(map(str, cfg['hidden']))}" if "hidden" in cfg
            else f"width {cfg['width']}")
    return f"{size}, STE {cfg['act_ste']}"


def torch_step(torch: Any, model: Any, params: dict[str, np.ndarray], batch: int,
               alpha: float = 1e-3, gamma: float = 1e-1) -> Callable[[], Any]:
    """The same network and update in PyTorch (see the module docstring)."""
    from minibnn.nn import containers as C
    from minibnn.nn import functional as F
    from minibnn.nn import modules as M

    nn, tf = torch.nn, torch.nn.functional

    def sign_ste(ste: str) -> Callable[[Any], Any]:
        """sign with minibnn's STE backward (functional/sign.py): identity, clipped, approx."""
        grads = {"identity": lambda x: torch.ones_like(x),
                 "clipped": lambda x: (x.abs() <= 1).to(x.dtype),
                 "approx": lambda x: torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)}
        if ste not in grads:
            raise NotImplementedError(f"no PyTorch twin for the {ste!r} STE")

        class SignSTE(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):  # type: ignore[no-untyped-def]
                ctx.save_for_backward(x)
                return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

            @staticmethod
            def backward(ctx, dy):  # type: ignore[no-untyped-def]
                (x,) = ctx.saved_tensors
                return dy * grads[ste](x)

        return SignSTE.apply

    class Lambda(nn.Module):
        def __init__(self, fn: Callable[[Any], Any]):
            super().__init__()
            self.fn = fn

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fn(x)

    class BatchNorm(nn.Module):
        def __init__(self, c: int, momentum: float, eps: float):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
            self.register_buffer("rm", torch.zeros(c))
            self.register_buffer("rv", torch.ones(c))
            self.momentum, self.eps = momentum, eps

        def forward(self, x):  # type: ignore[no-untyped-def]
            return tf.batch_norm(x, self.rm, self.rv, self.weight, self.bias, True,
                                 self.momentum, self.eps)

    def t(name: str) -> Any:
        return nn.Parameter(torch.from_numpy(params[name].copy()))

    class Residual(nn.Module):
        def __init__(self, body: Any, shortcut: Any | None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    binary: list[Any] = []

    def twin(layer: Any) -> Any:
        """The PyTorch module of one minibnn layer (containers recursively)."""
        if isinstance(layer, C.Sequential):
            return nn.Sequential(*(twin(inner) for inner in layer.layers))
        if isinstance(layer, C.Residual):
            return Residual(twin(layer.body),
                            None if layer.shortcut is None else twin(layer.shortcut))
        if isinstance(layer, M.Stateless):
            fn, k = layer.forward_fn, layer.kwargs
            if fn is F.sign_forward:
                return Lambda(sign_ste(k.get("ste", "identity")))
            if fn is F.flatten_forward:
                return nn.Flatten()
            if fn is F.maxpool2d_forward:
                return nn.MaxPool2d(k["kernel"], k["stride"], k["padding"])
            if fn is F.avgpool2d_forward:
                return nn.AvgPool2d(k["kernel"], k["stride"], k["padding"])
            if fn is F.global_avgpool_forward:
                return Lambda(lambda x: x.mean(dim=(2, 3)))
            raise NotImplementedError(f"no PyTorch twin for {fn.__name__}")
        if isinstance(layer, M.BinaryDense):
            w = t(layer.key("w"))
            binary.append(w)
            return Lambda(lambda x, w=w: tf.linear(x, w))
        if isinstance(layer, M.BinaryConv2d):
            w = t(layer.key("w"))
            binary.append(w)
            return Lambda(lambda x, w=w, s=layer.stride, p=layer.padding:
                          tf.conv2d(x, w, stride=s, padding=p))
        if isinstance(layer, M.Dense):
            lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            lin.weight = t(layer.key("w"))
            if layer.bias:
                lin.bias = t(layer.key("b"))
            return lin
        if isinstance(layer, M.Conv2d):
            o, c, k, _ = layer.shape
            conv = nn.Conv2d(c, o, k, layer.stride, layer.padding, bias=layer.bias)
            conv.weight = t(layer.key("w"))
            if layer.bias:
                conv.bias = t(layer.key("b"))
            return conv
        if isinstance(layer, M.BatchNorm):
            return BatchNorm(layer.channels, layer.momentum, layer.eps)
        if isinstance(layer, M.LearnableBias):            # x + b per channel
            b = t(layer.key("b"))
            holder = Lambda(lambda x, b=b: x + b.view(1, -1, 1, 1))
            holder.b = b
            return holder
        if isinstance(layer, M.PReLU):
            prelu = nn.PReLU(layer.channels)
            prelu.weight = t(layer.key("a"))
            return prelu
        raise NotImplementedError(f"no PyTorch twin for {type(layer).__name__}")

    net = twin(model.net)
    ids = {id(p) for p in binary}
    real = [p for p in net.parameters() if id(p) not in ids]
    adam = torch.optim.Adam(real, lr=1e-3)
    m = [torch.zeros_like(p) for p in binary]
    v = [torch.zeros_like(p) for p in binary]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch,) + tuple(model.input_shape))
                         .astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))

    def step() -> None:
        adam.zero_grad(set_to_none=True)
        for p in binary:
            p.grad = None
        logits = net(x)
        loss = tf.cross_entropy(logits, y)
        loss.backward()
        with torch.no_grad():
            for p, mi, vi in zip(binary, m, v):
                mi.mul_(1 - gamma).add_(p.grad, alpha=gamma)     # m = (1-gamma) m + gamma g
                vi.mul_(1 - alpha).add_(mi, alpha=alpha)         # v = (1-alpha) v + alpha m
                flip = vi * p > 0
                int(flip.sum())                                  # flips counted, as minibnn does
                p.copy_(torch.where(flip, -p, p))
        adam.step()
        float(loss.detach())

    step.net = net                      # type: ignore[attr-defined]  (the twin, for its test)
    return step


def _status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def step_peak_memory(step: Callable[[], Any]) -> int | None:
    """Peak resident bytes one call of ``step`` adds (VmHWM after - VmRSS before), or None."""
    step()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                         # reset VmHWM to VmRSS
        before = _status()["VmRSS"]
    except OSError:
        return None
    step()
    return max(0, _status()["VmHWM"] - before)


def _memory_child(framework: str, key: str, batch: int, smoke: bool) -> None:
    """Subprocess entry: print the step's peak memory of one framework as JSON."""
    name, shape, over = (SMOKE_MODELS if smoke else MODELS)[key]
    step, model, params = minibnn_step(name, shape, batch, over)
    if framework == "torch":
        torch = try_import_torch()
        set_threads(torch)
        step = torch_step(torch, model, params, batch)
    print(json.dumps({"peak_bytes": step_peak_memory(step)}))


def _memory(framework: str, key: str, batch: int, smoke: bool) -> int | None:
    cmd = [sys.executable, __file__, "--memory-child", framework, key, "--batch", str(batch)]
    if smoke:
        cmd.append("--smoke")
    # A fixed mmap threshold keeps glibc from raising it after the warm-up step and then
    # holding freed buffers in its heap, which would hide the measured step's peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny widths, batch 16, one round, no memory (for CI)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--memory-child", nargs=2, metavar=("FRAMEWORK", "MODEL"),
                   help=argparse.SUPPRESS)
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated model keys to run (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 16 if args.smoke else 128
    if args.memory_child:
        _memory_child(*args.memory_child, args.batch, args.smoke)
        return 0
    torch = try_import_torch()
    threads = set_threads(torch)
    print(blas_line())
    repeats = 1 if args.smoke else args.repeats
    measure_memory = not (args.no_memory or args.smoke)
    if torch is None:
        print("torch not installed: the PyTorch columns read n/a")
    rows, records = [], {}
    table = SMOKE_MODELS if args.smoke else MODELS
    keys = list(table) if args.only is None else args.only.split(",")
    unknown = [k for k in keys if k not in table]
    if unknown:
        p.error(f"unknown model key(s) {unknown}; choose from {list(table)}")
    for key in keys:
        name, shape, over = table[key]
        step, model, params = minibnn_step(name, shape, args.batch, over)
        fns = {"minibnn": step,
               "minibnn numpy": minibnn_step(name, shape, args.batch, over, "numpy")[0]}
        if torch is not None:
            fns["torch"] = torch_step(torch, model, params, args.batch)
        t = time_interleaved(fns, repeats)
        mem = {f: _memory(f, key, args.batch, args.smoke) if measure_memory else None
               for f in ("minibnn", "torch") if f in fns}
        tt, tn = t.get("torch"), t.get("minibnn numpy")
        rows.append([f"{key} ({describe(model)})",
                     "n/a" if tn is None else tn / t["minibnn"], args.batch / t["minibnn"], "n/a" if tt is None else args.batch / tt,
                     "n/a" if tt is None else tt / t["minibnn"], _mib(mem["minibnn"]),
                     _mib(mem.get("torch"))])
        records[key] = {"seconds": t, "peak_step_bytes": mem, "batch": args.batch}
    print(f"batch {args.batch}, float32, {threads} threads, best of {repeats} interleaved rounds")
    print_table("training step: minibnn vs PyTorch (same model, same update)",
                ["model", "kernels gain", "minibnn img/s", "torch img/s", "speed ratio",
                 "minibnn MiB", "torch MiB"], rows)
    print("\nkernels gain = minibnn step time with the NumPy reference kernels / with the Numba "
          "kernels;\nspeed ratio = torch step time / minibnn step time; MiB = peak memory one "
          "step adds (VmHWM - VmRSS, fresh process each)")
    write_json(args.json, {"benchmark": "train", "machine": machine_info(torch),
                           "repeats": repeats, "models": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
