"""GPU benchmarks: minibnn on CuPy against PyTorch on the same GPU, and the CuPy kernels against
the device's own copy and cuBLAS. Needs a CUDA GPU with CuPy; without one it says so and exits 0.

Three tables, every figure a ratio measured in this run on this device (absolute times go to the
JSON file only):

1. Training step (forward, loss, backward, update) of ``binary_mlp`` (hidden 2048, 2048) and
   ``binary_cnn`` (VGG-small shape, ``--width``) on CIFAR-shaped input (3x32x32, 10 classes) at
   batch 128 and 1024. minibnn: binary weights stored as ±1 and trained by CEMA, real parameters
   by Adam (the trainer's default), updated by ``optimizer.step_in_place`` (the fused CUDA kernels,
   the path ``minibnn.run.train.train_step`` takes): forward, loss, backward and that step, without the
   trainer's accuracy/flip counts. Peers: the same step on the readable reference bodies
   (``kernels.use_backend("numpy")``: the ``xp`` array code on CuPy arrays, what the GPU ran
   before the channels-last ops had CUDA bodies), and PyTorch where it is installed (the GPU
   machines this project borrows have none: that column then reads "-"). A last column times
   ``train_step`` itself, the same step plus those counts, to show what they cost, and the
   last the step's GEMM work (3 x its forward multiply-accumulates) at the SGEMM rate cuBLAS
   reaches in this run, over the step's time: how close the step is to GEMM-bound. PyTorch: the same network (±1 weights, sign
   activations with the identity STE, BatchNorm, same layers), Adam on real parameters and the
   same CEMA update written with in-place torch ops; TF32 is off in both (CuPy does not use it
   unless CUPY_TF32=1), cuDNN autotuning on. Every step, both minibnn ones and torch's, reads
   the loss back to the host once (``float(loss)``: minibnn's loss is a 0-d device array;
   ``loss.item()`` in torch), which waits for the device, and every timing ends with a device
   synchronisation. Ratio = torch / minibnn (> 1: minibnn faster).
2. Fused optimiser steps over 10M float32 parameters: effective bandwidth (bytes a step must
   move, counting every buffer as read once and written once) relative to a device-to-device
   copy (``cupy.copyto``, 2 x 4 bytes per element), and the speed-up over the same optimiser
   built from ``minibnn.optim`` filter chains (plain CuPy array expressions, several launches).
3. XNOR-popcount GEMM against float32 ``cupy.matmul`` (cuBLAS) at K >= 4608: C (M x N) =
   A (M x K) B (K x N), B packed ahead of time (weights), A packed either ahead ("xnor") or
   inside the timed region ("pack+xnor"). Every XNOR result is checked to equal the float
   product of the ±1 matrices exactly before it is timed. Ratio = cuBLAS / ours.

Timing: kernels are timed with CUDA events on CuPy's current stream (warm-up first, then the
best of ``--repeats`` rounds of ``--iters`` launches, candidates interleaved); training steps,
which include Python work, with a wall clock between full device synchronisations.

    python benchmarks/bench_gpu.py [--smoke] [--repeats R] [--width W] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np

from _bench import print_table, ratio, write_json  # (puts the checkout on sys.path)
from minibnn import optim

MLP_HIDDEN = (2048, 2048)
BATCHES = (128, 1024)
OPT_PARAMS = 10_000_000
XNOR_SHAPES = [(1024, 4608, 512), (4096, 4608, 4096), (16384, 4608, 1024), (8192, 8192, 8192)]
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
# the trainer's defaults: CEMA on binary weights, Adam on real parameters
ALPHA, GAMMA = optim.defaults("cema")["alpha"], optim.defaults("cema")["gamma"]
REAL_LR = optim.defaults("adam")["lr"]

SMOKE = dict(hidden=(64, 64), width=4, batches=(8,), opt_params=100_000,
             xnor_shapes=[(64, 4608, 32), (33, 4608, 65)])


# --------------------------------------------------------------------------- timing


def time_events(cp: Any, fns: dict[str, Callable[[], Any]], repeats: int, iters: int,
                warmup: int = 3) -> dict[str, float]:
    """Seconds per call of each GPU callable, from CUDA events around ``iters`` back-to-back
    calls on CuPy's current stream; best of ``repeats`` interleaved rounds."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            start.record()
            for _ in range(iters):
                f()
            end.record()
            end.synchronize()
            best[k] = min(best[k], cp.cuda.get_elapsed_time(start, end) / 1e3 / iters)
    return best


def time_wall(sync: Callable[[], None], fns: dict[str, Callable[[], Any]], repeats: int,
              iters: int, warmup: int = 3) -> dict[str, float]:
    """Seconds per call, wall clock between device synchronisations (Python work included);
    best of ``repeats`` interleaved rounds of ``iters`` calls."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                f()
            sync()
            best[k] = min(best[k], (time.perf_counter() - t0) / iters)
    return best


# --------------------------------------------------------------------------- 1. training step


def minibnn_step(cp: Any, name: str, batch: int, hidden: tuple[int, ...], width: int,
                 rng: np.random.Generator) -> tuple[dict[str, Callable[[], Any]], int]:
    """The minibnn training step on the GPU ("minibnn") and ``train_step`` ("minibnn+metrics"):
    the same forward, backward and ``optimizer.step_in_place``, the second with the trainer's
    counts.
    Each returns the loss as a Python float (one device sync per step, as torch's). Also
    returns the model's multiply-accumulates per image (``minibnn summary``'s count)."""
    from minibnn.backend import to_device
    from minibnn.nn.functional import softmax_cross_entropy
    from minibnn.nn.models import binary_cnn, binary_mlp
    from minibnn.run.train import TrainState, train_step

    if name == "binary_mlp":
        model = binary_mlp(INPUT_SHAPE, hidden=hidden, num_classes=NUM_CLASSES,
                           binary_storage="binary")
    else:
        model = binary_cnn(INPUT_SHAPE, width=width, num_classes=NUM_CLASSES,
                           binary_storage="binary")
    params, buffers = model.init(rng, np.float32)
    opt = optim.partition({"binary": optim.cema(ALPHA, GAMMA), "real": optim.adam(REAL_LR)},
                          model.param_label)
    params = {k: to_device(v, "gpu") for k, v in params.items()}
    buffers = {k: to_device(v, "gpu") for k, v in buffers.items()}
    x = cp.asarray(rng.standard_normal((batch,) + INPUT_SHAPE, dtype=np.float32))
    y = cp.asarray(rng.integers(0, NUM_CLASSES, size=batch))
    # each step owns its parameters and optimiser state (the fused step updates both in place)
    plain = TrainState({k: v.copy() for k, v in params.items()}, dict(buffers),
                       opt.init(params), rng)
    with_metrics = TrainState({k: v.copy() for k, v in params.items()}, dict(buffers),
                              opt.init(params), rng)

    def step() -> float:
        logits, new_buffers, cache = model.forward(plain.params, plain.buffers, x, train=True)
        loss, dlogits = softmax_cross_entropy(logits, y)
        grads = model.backward(dlogits, cache)
        plain.params = opt.step_in_place(grads, plain.opt_state, plain.params)
        plain.buffers.update(new_buffers)
        return float(loss)

    def step_with_metrics() -> float:
        loss, _, _ = train_step(model, opt, with_metrics, x, y)
        return float(loss)

    from minibnn.commands.summary import summarize

    totals = summarize(model)[1]
    macs = int(totals["binary_macs"] + totals["float_macs"])
    return {"minibnn": step, "minibnn+metrics": step_with_metrics}, macs


def torch_step(torch: Any, name: str, batch: int, hidden: tuple[int, ...], width: int,
               rng: np.random.Generator) -> Callable[[], Any]:
    """The same network and update in PyTorch on the GPU (see the module docstring)."""
    nn = torch.nn

    class SignSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

        @staticmethod
        def backward(ctx: Any, g: Any) -> Any:
            return g                                   # identity STE

    class Sign(nn.Module):
        def forward(self, x: Any) -> Any:
            return SignSTE.apply(x)

    binary: list[Any] = []
    if name == "binary_mlp":
        n_in = int(np.prod(INPUT_SHAPE))
        layers: list[Any] = [nn.Flatten(), nn.Linear(n_in, hidden[0], bias=False),
                             nn.BatchNorm1d(hidden[0])]
        for a, b in zip(hidden[:-1], hidden[1:]):
            lin = nn.Linear(a, b, bias=False)
            binary.append(lin.weight)
            layers += [Sign(), lin, nn.BatchNorm1d(b)]
        layers += [Sign(), nn.Linear(hidden[-1], NUM_CLASSES)]
    else:
        ch = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        layers = [nn.Conv2d(INPUT_SHAPE[0], ch[0], 3, padding=1, bias=False), nn.BatchNorm2d(ch[0])]
        for i in range(1, 6):
            conv = nn.Conv2d(ch[i - 1], ch[i], 3, padding=1, bias=False)
            binary.append(conv.weight)
            layers += [Sign(), conv]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.BatchNorm2d(ch[i]))
        hw = (INPUT_SHAPE[1] // 8) * (INPUT_SHAPE[2] // 8)
        layers += [Sign(), nn.Flatten(), nn.Linear(ch[-1] * hw, NUM_CLASSES)]
    model = nn.Sequential(*layers).cuda()
    with torch.no_grad():
        for p in binary:
            p.copy_(torch.where(p >= 0, 1.0, -1.0))
    binary_ids = {id(p) for p in binary}
    real = [p for p in model.parameters() if id(p) not in binary_ids]
    adam = torch.optim.Adam(real, lr=REAL_LR)
    m = [torch.zeros_like(p) for p in binary]
    v = [torch.zeros_like(p) for p in binary]
    x = torch.from_numpy(rng.standard_normal((batch,) + INPUT_SHAPE, dtype=np.float32)).cuda()
    y = torch.from_numpy(rng.integers(0, NUM_CLASSES, size=batch)).cuda()

    def step() -> float:
        adam.zero_grad(set_to_none=True)
        for p in binary:
            p.grad = None
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        adam.step()
        with torch.no_grad():                          # CEMA, in place
            for p, mi, vi in zip(binary, m, v):
                mi.mul_(1.0 - GAMMA).add_(p.grad, alpha=GAMMA)
                vi.mul_(1.0 - ALPHA).add_(mi, alpha=ALPHA)
                p.copy_(torch.where(vi * p > 0, -p, p))
        return loss.item()

    return step


def sgemm_rate(cp: Any, repeats: int, n: int = 4096) -> float:
    """cuBLAS's float32 GEMM rate on this device (flop/s), measured now: (n x n) @ (n x n)."""
    a = cp.ones((n, n), dtype=cp.float32)
    b = cp.ones((n, n), dtype=cp.float32)
    seconds = time_events(cp, {"sgemm": lambda: a @ b}, repeats, 5)["sgemm"]
    return 2.0 * n ** 3 / seconds


def _on_reference(step: Callable[[], float]) -> float:
    from minibnn import kernels

    with kernels.use_backend("numpy"):
        return step()


def bench_training(cp: Any, torch: Any | None, cfg: dict[str, Any], repeats: int
                   ) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows, records = [], []
    sync = cp.cuda.Device().synchronize
    sgemm = sgemm_rate(cp, repeats)
    for name in ("binary_mlp", "binary_cnn"):
        for batch in cfg["batches"]:
            rng = np.random.default_rng(0)
            fns, macs = minibnn_step(cp, name, batch, cfg["hidden"], cfg["width"], rng)
            # the same step on the readable reference bodies (xp array code on CuPy arrays)
            reference = minibnn_step(cp, name, batch, cfg["hidden"], cfg["width"],
                                     np.random.default_rng(0))[0]["minibnn"]
            fns["reference"] = lambda: _on_reference(reference)
            if torch is not None:
                fns["torch"] = torch_step(torch, name, batch, cfg["hidden"], cfg["width"], rng)
            iters = 2 if batch >= 1024 else 5
            t = time_wall(sync, fns, repeats, iters)
            # the step's GEMM work (forward and two backward products: 3 x the forward MACs,
            # 2 flops each) at cuBLAS's SGEMM rate: the least time a GEMM-bound step could take
            floor = 3 * 2 * macs * batch / sgemm
            rows.append([name, batch, ratio(t["reference"], t["minibnn"]),
                         ratio(t.get("torch"), t["minibnn"]),
                         t["minibnn+metrics"] / t["minibnn"], floor / t["minibnn"]])
            records.append({"model": name, "batch": batch, "seconds": t, "macs_per_image": macs,
                            "sgemm_flops_per_s": sgemm, "gemm_floor_s": floor})
            cp.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                torch.cuda.empty_cache()
    return rows, records


# --------------------------------------------------------------------------- 2. optimiser steps


def bench_optimisers(cp: Any, n: int, repeats: int) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    from minibnn.kernels import gpu

    rng = np.random.default_rng(1)

    def arr(scale: float = 1.0) -> Any:
        return cp.asarray((scale * rng.standard_normal(n)).astype(np.float32))

    def signs() -> Any:
        return cp.where(arr() >= 0, 1.0, -1.0).astype(cp.float32)

    g = arr()
    src, dst = arr(), cp.empty(n, dtype=cp.float32)
    copy_t = time_events(cp, {"copy": lambda: cp.copyto(dst, src)}, repeats, 20)["copy"]
    copy_bw = 2 * 4 * n / copy_t

    def chain(opt: Any, p: Any) -> Callable[[], Any]:
        """The unfused optimiser: a minibnn.optim chain on the same parameter vector."""
        params, grads = {"p": p.copy()}, {"p": g}
        st = {"params": params, "state": opt.init(params)}

        def run() -> None:
            st["params"], st["state"] = opt.update(grads, st["state"], st["params"])
        return run

    # separate buffers per optimiser (Adam's v must stay >= 0)
    cema_buf = (signs(), arr(0.1), arr(0.01))
    bop_buf = (signs(), arr(0.1))
    sgd_buf = (arr(), arr(0.1))
    adam_buf = (arr(), arr(0.1), cp.abs(arr(0.01)))
    adam_step = [0]

    def adam_fused() -> None:
        adam_step[0] += 1
        gpu.adam_update(*adam_buf, g, 1e-3, adam_step[0])

    cases = [
        ("CEMA", 7, lambda: gpu.cema_update(*cema_buf, g, ALPHA, GAMMA),
         chain(optim.cema(ALPHA, GAMMA), cema_buf[0])),
        ("Bop", 5, lambda: gpu.bop_update(*bop_buf, g, GAMMA, 1e-6),
         chain(optim.bop(1e-6, GAMMA), bop_buf[0])),
        ("SGD momentum", 5, lambda: gpu.sgd_update(*sgd_buf, g, 1e-2, momentum=0.9),
         chain(optim.sgd(1e-2, momentum=0.9), sgd_buf[0])),
        ("Adam", 7, adam_fused, chain(optim.adam(1e-3), adam_buf[0])),
    ]
    rows, records = [], []
    for name, words, fused, unfused in cases:
        t = time_events(cp, {"fused": fused, "chain": unfused}, repeats, 10)
        bw = words * 4 * n / t["fused"]
        rows.append([name, f"{words} x 4 B", bw / copy_bw, t["chain"] / t["fused"]])
        records.append({"optimiser": name, "params": n, "bytes_per_param": words * 4,
                        "seconds": t, "copy_seconds": copy_t,
                        "fused_GBps": bw / 1e9, "copy_GBps": copy_bw / 1e9})
    return rows, records


# --------------------------------------------------------------------------- 3. XNOR GEMM


def bench_xnor(cp: Any, shapes: list[tuple[int, int, int]], repeats: int
               ) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    from minibnn.kernels import gpu

    rng = np.random.default_rng(2)
    rows, records = [], []
    for mm, k, nn in shapes:
        a = cp.asarray(rng.standard_normal((mm, k), dtype=np.float32))
        b = cp.asarray(rng.standard_normal((k, nn), dtype=np.float32))
        b_bits = gpu.pack_signs(cp.ascontiguousarray(b.T))       # weights: packed ahead
        a_bits = gpu.pack_signs(a)
        sa, sb = cp.where(a >= 0, 1.0, -1.0).astype(cp.float32), cp.where(b >= 0, 1.0, -1.0)
        expect = cp.matmul(sa, sb.astype(cp.float32))            # integers |.| <= K < 2**24: exact
        got = gpu.xnor_gemm(a_bits, b_bits, k)
        if not bool((got.astype(cp.float32) == expect).all()):
            raise AssertionError(f"xnor_gemm differs from the float product at {(mm, k, nn)}")
        del sa, sb, expect, got
        fns = {"cublas": lambda: cp.matmul(a, b),
               "xnor": lambda: gpu.xnor_gemm(a_bits, b_bits, k),
               "pack+xnor": lambda: gpu.xnor_gemm(gpu.pack_signs(a), b_bits, k)}
        t = time_events(cp, fns, repeats, 5)
        rows.append([f"{mm}x{k}x{nn}", t["cublas"] / t["xnor"], t["cublas"] / t["pack+xnor"]])
        records.append({"M": mm, "K": k, "N": nn, "seconds": t,
                        "cublas_TFLOPs": 2 * mm * k * nn / t["cublas"] / 1e12,
                        "xnor_TOPs": 2 * mm * k * nn / t["xnor"] / 1e12})
        del a, b, a_bits, b_bits
        cp.get_default_memory_pool().free_all_blocks()
    return rows, records


# --------------------------------------------------------------------------- main


def _torch_cuda() -> Any | None:
    """torch with a usable CUDA device, or None (then the torch column reads "n/a")."""
    try:
        import torch
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch


def _device_info(cp: Any, torch: Any | None) -> dict[str, Any]:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props.get("name", b"?")
    info = {"device": name.decode() if isinstance(name, bytes) else str(name),
            "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "numpy": np.__version__, "python": platform.python_version(),
            "cupy_tf32": os.environ.get("CUPY_TF32", "0")}
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (best is kept)")
    ap.add_argument("--width", type=int, default=64, help="base width of binary_cnn")
    ap.add_argument("--skip", default="", help="comma-separated: training,optimisers,xnor")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from minibnn.backend import gpu_available

    if not gpu_available():
        print("bench_gpu: no CUDA GPU available (CuPy is not installed or sees no device); "
              "nothing to measure.")
        return 0
    import cupy as cp

    torch = _torch_cuda()
    cfg = dict(hidden=MLP_HIDDEN, width=args.width, batches=BATCHES, opt_params=OPT_PARAMS,
               xnor_shapes=XNOR_SHAPES)
    if args.smoke:
        cfg.update(SMOKE)
    repeats = 1 if args.smoke else args.repeats
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    info = _device_info(cp, torch)
    print(f"device: {info['device']}  cupy {info['cupy']}  torch {info.get('torch', 'absent')}")
    payload: dict[str, Any] = {"machine": info, "config": {k: str(v) for k, v in cfg.items()}}

    if "training" not in skip:
        rows, recs = bench_training(cp, torch, cfg, repeats)
        print_table(f"training step, CIFAR-shaped input (binary_cnn width {cfg['width']}); "
                    "ratios > 1: minibnn faster",
                    ["model", "batch", "reference / minibnn", "torch / minibnn",
                     "with metrics / without", "GEMM floor / step"], rows)
        payload["training"] = recs
    if "optimisers" not in skip:
        rows, recs = bench_optimisers(cp, cfg["opt_params"], repeats)
        print_table(f"fused optimiser step, {cfg['opt_params']:,} float32 params",
                    ["optimiser", "moves/param", "bandwidth / copy", "chain / fused"], rows)
        payload["optimisers"] = recs
    if "xnor" not in skip:
        rows, recs = bench_xnor(cp, cfg["xnor_shapes"], repeats)
        print_table("XNOR-popcount GEMM vs float32 cupy.matmul (cuBLAS); > 1: XNOR faster",
                    ["M x K x N", "cuBLAS / xnor", "cuBLAS / pack+xnor"], rows)
        payload["xnor"] = recs
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
