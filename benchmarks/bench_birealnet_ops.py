"""birealnet's channels-last steps, before and after a change: per step kind and the whole step.

The code under test is this checkout's ``minibnn.nn.channels_last`` (the twins) and
``minibnn.kernels.cpu_channels_last`` (their Numba bodies); "before" is the same two files at
git revision ``--before`` (default HEAD), loaded side by side from ``git show`` (their
``@register`` calls are caught, so the registry keeps this checkout's bodies; the old twins
call the old bodies, and every other op as it is now).

What is timed, in one process, interleaved (one run of each per round), medians of the rounds
(``--best``: the best round, steadier on a loaded machine):
  * per twin kind, one twin of each kind birealnet runs at batch 128, width 16 (stage 1:
    32x32x16; the binary convolution also at stages 2 and 3), its forward and its backward,
    and a whole stage-1 residual block (bias+sign, binary conv, BatchNorm, identity shortcut);
  * the whole birealnet training step (``bench_train.minibnn_step``: forward, backward,
    optimiser step), two models with the same weights and input, one whose group runs the
    old twins.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_birealnet_ops.py \
        [--before REV] [--repeats R] [--threads T] [--batch B]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from _bench import REPO, print_table, set_threads


def load_before(rev: str, folder: Path) -> ModuleType:
    """``nn/channels_last.py`` at ``rev`` as a module whose ``kernels`` are the op bodies of
    ``kernels/cpu_channels_last.py`` at ``rev`` (other ops: this checkout's)."""
    from minibnn import kernels
    from minibnn.kernels import registry

    def source(path: str, name: str) -> Path:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
        out = folder / f"{name}.py"               # a real file: Numba caches by its path
        out.write_text(text)
        return out

    def load(path: Path, name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    bodies: dict[str, Callable[..., Any]] = {}

    def catch(op: Any, backend: str) -> Callable[[Any], Any]:
        def keep(fn: Any) -> Any:
            bodies[registry.op_name(op)] = fn
            return fn
        return keep

    real_register = registry.register
    registry.register = catch                    # type: ignore[assignment]
    try:
        load(source("minibnn/kernels/cpu_channels_last.py", "before_cpu_cl"), "before_cpu_cl")
    finally:
        registry.register = real_register        # type: ignore[assignment]
    old_kernels = SimpleNamespace(**{name: getattr(kernels, name) for name in dir(kernels)
                                     if not name.startswith("_")})
    for name, fn in bodies.items():
        setattr(old_kernels, name, fn)
    module = load(source("minibnn/nn/channels_last.py", "before_cl"), "before_cl")
    module.kernels = old_kernels                 # type: ignore[attr-defined]
    from minibnn.nn import channels_last as now
    module.Packed, module.Counts = now.Packed, now.Counts   # one activation type for both
    return module


def as_before(twin: Any, before: ModuleType) -> None:
    """Make ``twin`` (and a Residual's branches) an instance of its class in ``before``."""
    twin.__class__ = getattr(before, type(twin).__name__)
    for branch in (getattr(twin, "body", None), getattr(twin, "shortcut", None)):
        for t in branch or []:
            as_before(t, before)


def median_interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                       stat: Callable[[list[float]], float] = np.median) -> dict[str, float]:
    """Median (or ``stat``) time in seconds of each callable over ``repeats`` rounds, one call
    of each per round (after one warm-up round)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(stat(v)) for k, v in times.items()}


def twin_cases(batch: int, width: int) -> list[tuple[str, Any, Any, dict, dict]]:
    """(label, twin, input, params, buffers) for each twin kind of a birealnet block."""
    from minibnn import kernels
    from minibnn.nn import channels_last as cl
    from minibnn.nn.modules import (BatchNorm, BiasSign, BinaryConv2d, LearnableBias, PReLU,
                                    Sign)

    rng = np.random.default_rng(0)
    cases = []

    def add(label: str, layer: Any, twin: Any, x: Any) -> None:
        params, buffers = layer.init(rng, np.float32)
        cases.append((label, twin, x, params, buffers))

    h, c = 32, width
    x = rng.standard_normal((batch, h, h, c)).astype(np.float32)
    bias = BiasSign(LearnableBias("move", c), Sign("approx"))
    add(f"bias+sign {h}x{h}x{c}", bias.bias, cl.BiasSignNHWC(bias), x)
    counts = cl.Counts(rng.integers(-40, 41, (batch, h, h, c)).astype(np.int32), np.float32)
    bn = BatchNorm("bn", c)
    add(f"BatchNorm (counts) {h}x{h}x{c}", bn, cl.BatchNormNHWC(bn), counts)
    prelu = PReLU("act", c)
    add(f"PReLU {h}x{h}x{c}", prelu, cl.PReLUNHWC(prelu), x)
    body = [cl.BiasSignNHWC(bias), cl.ConvNHWC(BinaryConv2d("res.conv", c, c, 3, 1, 1), True),
            cl.BatchNormNHWC(BatchNorm("res.bn", c))]
    block = (bias.bias, body[1].layer, body[2].bn)
    params, buffers = {}, {}
    for layer in block:
        p, b = layer.init(rng, np.float32)
        params.update(p)
        buffers.update(b)
    cases.append((f"Bi-Real residual block {h}x{h}x{c}", cl.ResidualNHWC(body, None), x,
                  params, buffers))
    for hs, ci, co, s in ((32, c, c, 1), (32, c, 2 * c, 2), (16, 2 * c, 2 * c, 1),
                          (8, 4 * c, 4 * c, 1)):
        conv = BinaryConv2d(f"conv{hs}_{ci}_{co}", ci, co, 3, s, 1)
        signs = rng.standard_normal((batch, hs, hs, ci)).astype(np.float32)
        bits = cl.Packed(kernels.pack_signs(signs), ci, np.float32)
        add(f"binary conv {hs}x{hs}x{ci}->{co} s{s}", conv, cl.ConvNHWC(conv, True), bits)
    return cases


def relisted(cache: Any) -> Any:
    """``cache`` with every list in it copied (arrays shared): a backward pass consumes the
    lists of its cache (``backward_steps``), so each timed backward gets its own."""
    if isinstance(cache, list):
        return [relisted(c) for c in cache]
    if isinstance(cache, tuple):
        items = [relisted(c) for c in cache]
        return type(cache)(*items) if hasattr(cache, "_fields") else tuple(items)
    return cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD", help="git revision of the old twins")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--no-step", action="store_true", help="skip the whole-step timing")
    parser.add_argument("--best", action="store_true",
                        help="report the best round instead of the median (a loaded machine)")
    args = parser.parse_args(argv)

    import copy

    from bench_train import minibnn_step
    from minibnn.kernels import threads
    from minibnn.nn.channels_last import ChannelsLast, as_float

    n = set_threads(None) if args.threads is None else args.threads
    threads.set_threads(n)
    folder = Path(tempfile.mkdtemp(prefix="bench_birealnet_ops_"))
    before = load_before(args.before, folder)
    stat = min if args.best else np.median
    print(f"threads {n}; before = {args.before}; {'best' if args.best else 'median'} of "
          f"{args.repeats} interleaved rounds")

    rows = []
    for label, twin, x, params, buffers in twin_cases(args.batch, args.width):
        old = copy.deepcopy(twin)             # a Residual's branches: copies too
        as_before(old, before)
        fwd = {}
        for who, t in (("before", old), ("after", twin)):
            fwd[who] = t.forward(params, buffers, x, True)
        y_shape = as_float(fwd["after"][0], np.float32).shape     # dy: a float activation
        dy = np.random.default_rng(1).standard_normal(y_shape).astype(np.float32)
        f = median_interleaved({w: (lambda t=t: t.forward(params, buffers, x, True))
                                for w, t in (("before", old), ("after", twin))}, args.repeats,
                               stat)
        b = median_interleaved({w: (lambda t=t, w=w: t.backward(dy, relisted(fwd[w][2])))
                                for w, t in (("before", old), ("after", twin))}, args.repeats,
                               stat)
        rows.append([label, 1e3 * f["before"], 1e3 * f["after"], 1e3 * b["before"],
                     1e3 * b["after"], (f["before"] + b["before"]) / (f["after"] + b["after"])])
    print_table("per twin (ms; speed-up = before / after, forward + backward)",
                ["step", "fwd before", "fwd after", "bwd before", "bwd after", "speed-up"], rows)

    if not args.no_step:
        steps = {}
        for who in ("before", "after"):
            step, model, _ = minibnn_step("birealnet", (3, 32, 32), args.batch,
                                          {"width": args.width})
            if who == "before":
                for group in model.net.steps():
                    if isinstance(group, ChannelsLast):
                        for t in group.twins:
                            as_before(t, before)
            steps[who] = step
        t = median_interleaved(steps, args.repeats, stat)
        print_table("whole birealnet training step (ms)",
                    ["before", "after", "speed-up"],
                    [[1e3 * t["before"], 1e3 * t["after"], t["before"] / t["after"]]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
