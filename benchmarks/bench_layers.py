"""Per-layer forward+backward time of the CNN layers: minibnn's training kernels vs PyTorch (CPU).

Shapes: batch 128, float32, 3x3 convolutions at the layers of ``binary_cnn`` (CIFAR-10, widths
32 and 128; stride 1, padding 1) and of ``birealnet`` (width 16; its stride-2 convolutions and
one stride-1 convolution per stage).

What is timed, each one forward and one backward (input and weight gradients; the first layer
of a network computes no input gradient in either framework):
  * ``minibnn`` = the channels-last kernels a binary_cnn step runs (``nn.channels_last``): a
    binary convolution reads packed +-1 input bits, its forward is the exact XNOR-popcount
    ``binary_conv2d`` (int32 NHWC counts) and its backward ``conv2d_nhwc_backward`` on the
    cached bits; the real first convolution is ``conv2d_nhwc_forward``/``backward`` on floats;
  * ``minibnn NCHW`` = the functional NCHW convolution (im2col + GEMM, ``F.conv2d_forward`` /
    ``F.conv2d_backward``), which birealnet still trains on (its residual blocks are not
    grouped channels-last);
  * ``torch`` = ``torch.nn.functional.conv2d`` on the same +-1 input (NCHW, autograd), weight
    and input gradients;
  * max-pool 2x2 after the binary convolutions: minibnn ``maxpool2d_nhwc`` on the int32 counts
    vs ``F.max_pool2d``; BatchNorm + sign: minibnn's fused ``batchnorm_sign_pack_train`` and
    its backward (approx STE) vs ``F.batch_norm`` then sign with the same STE (autograd).

Best of R interleaved rounds; ``ratio = torch time / minibnn time`` (> 1: minibnn is faster).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py \
        [--repeats R] [--widths 32,128] [--smoke] [--json out.json]
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import numpy as np

from _bench import (blas_line, machine_info, print_table, set_threads, time_interleaved,
                    try_import_torch, write_json)


def conv_shapes(width: int) -> list[tuple[str, int, int, int, int, bool]]:
    """binary_cnn's convolutions: (name, C, O, H, stride, binary)."""
    w = width
    return [(f"cnn w{w} conv1 3->{w}@32", 3, w, 32, 1, False),
            (f"cnn w{w} conv2 {w}->{w}@32", w, w, 32, 1, True),
            (f"cnn w{w} conv3 {w}->{2 * w}@16", w, 2 * w, 16, 1, True),
            (f"cnn w{w} conv4 {2 * w}->{2 * w}@16", 2 * w, 2 * w, 16, 1, True),
            (f"cnn w{w} conv5 {2 * w}->{4 * w}@8", 2 * w, 4 * w, 8, 1, True),
            (f"cnn w{w} conv6 {4 * w}->{4 * w}@8", 4 * w, 4 * w, 8, 1, True)]


BIREAL_SHAPES = [("bireal 16->16@32 s1", 16, 16, 32, 1, True),
                 ("bireal 16->32@32 s2", 16, 32, 32, 2, True),
                 ("bireal 32->32@16 s1", 32, 32, 16, 1, True),
                 ("bireal 32->64@16 s2", 32, 64, 16, 2, True),
                 ("bireal 64->64@8 s1", 64, 64, 8, 1, True)]


def minibnn_conv(x: np.ndarray, w: np.ndarray, stride: int, binary: bool
                 ) -> Callable[[], Any]:
    from minibnn import kernels
    from minibnn.nn.channels_last import weight_matrix

    n, c, h, _ = x.shape
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    wmat = weight_matrix(w)
    bits = kernels.pack_signs(xl)
    oh = (h + 2 - 3) // stride + 1
    dy = np.random.default_rng(1).standard_normal((n, oh, oh, w.shape[0])).astype(np.float32)

    def run() -> Any:
        if binary:
            wbits, wsum = kernels.pack_conv_weights(w)
            kernels.binary_conv2d(bits, wbits, wsum, c, 3, 3, stride, 1, layout="nhwc")
            return kernels.conv2d_nhwc_backward(dy, bits, wmat, 3, 3, stride, 1, True)
        kernels.conv2d_nhwc_forward(xl, wmat, 3, 3, stride, 1)
        return kernels.conv2d_nhwc_backward(dy, xl, wmat, 3, 3, stride, 1, False)
    return run


def minibnn_nchw_conv(x: np.ndarray, w: np.ndarray, stride: int, binary: bool
                      ) -> Callable[[], Any]:
    from minibnn.nn import functional as F

    def run() -> Any:
        y, cache = F.conv2d_forward(x, w, stride=stride, padding=1)
        return F.conv2d_backward(np.ones_like(y), cache)
    return run


def torch_conv(torch: Any, x: np.ndarray, w: np.ndarray, stride: int, binary: bool
               ) -> Callable[[], Any]:
    xt = torch.from_numpy(x).requires_grad_(binary)
    wt = torch.from_numpy(w).requires_grad_(True)

    def run() -> Any:
        xt.grad = wt.grad = None
        y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1)
        y.backward(torch.ones_like(y))
        return wt.grad
    return run


def pool_candidates(torch: Any, n: int, c: int, h: int) -> dict[str, Callable[[], Any]]:
    from minibnn import kernels

    rng = np.random.default_rng(2)
    counts = rng.integers(-9 * c, 9 * c + 1, (n, h, h, c)).astype(np.int32)
    dy = rng.standard_normal((n, h // 2, h // 2, c)).astype(np.float32)

    def mb() -> Any:
        _, arg = kernels.maxpool2d_nhwc_forward(counts, 2, 2)
        return kernels.maxpool2d_nhwc_backward(dy, arg, counts.shape, 2, 2)
    fns: dict[str, Callable[[], Any]] = {"minibnn": mb}
    if torch is not None:
        xt = torch.from_numpy(counts.transpose(0, 3, 1, 2).astype(np.float32)).requires_grad_()
        dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())

        def tp() -> Any:
            xt.grad = None
            torch.nn.functional.max_pool2d(xt, 2).backward(dyt)
            return xt.grad
        fns["torch"] = tp
    return fns


def bn_candidates(torch: Any, n: int, c: int, h: int) -> dict[str, Callable[[], Any]]:
    from minibnn import kernels

    rng = np.random.default_rng(3)
    counts = rng.integers(-9 * c, 9 * c + 1, (n * h * h, c)).astype(np.int32)
    gamma = np.ones(c, np.float32)
    beta = np.zeros(c, np.float32)
    ds = rng.standard_normal((n * h * h, c)).astype(np.float32)

    def mb() -> Any:
        _, mean, _, inv_std = kernels.batchnorm_sign_pack_train(counts, gamma, beta, 1e-5)
        return kernels.batchnorm_sign_pack_backward(ds, counts, mean, inv_std, gamma,
                            beta, "approx", 5.0)
    fns: dict[str, Callable[[], Any]] = {"minibnn": mb}
    if torch is not None:
        x = counts.reshape(n, h, h, c).transpose(0, 3, 1, 2).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        gt = torch.from_numpy(gamma.copy()).requires_grad_()
        bt = torch.from_numpy(beta.copy()).requires_grad_()
        dst = torch.from_numpy(ds.reshape(n, h, h, c).transpose(0, 3, 1, 2).copy())

        class SignApprox(torch.autograd.Function):
            @staticmethod
            def forward(ctx, y):  # type: ignore[no-untyped-def]
                ctx.save_for_backward(y)
                return torch.where(y >= 0, 1.0, -1.0)

            @staticmethod
            def backward(ctx, d):  # type: ignore[no-untyped-def]
                (y,) = ctx.saved_tensors
                return d * torch.clamp(2.0 - 2.0 * y.abs(), min=0.0)

        def tb() -> Any:
            xt.grad = gt.grad = bt.grad = None
            y = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True)
            SignApprox.apply(y).backward(dst)
            return xt.grad
        fns["torch"] = tb
    return fns


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--widths", default="32,128")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="width 4, batch 8, one round (for CI)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    widths = [4] if args.smoke else [int(v) for v in args.widths.split(",")]
    batch = 8 if args.smoke else args.batch
    repeats = 1 if args.smoke else args.repeats
    torch = try_import_torch()
    threads = set_threads(torch)
    print(blas_line())
    rng = np.random.default_rng(0)
    shapes = [s for w in widths for s in conv_shapes(w)] + ([] if args.smoke else BIREAL_SHAPES)
    rows, records = [], {}
    for name, c, o, h, stride, binary in shapes:
        x = rng.standard_normal((batch, c, h, h)).astype(np.float32)
        if binary:
            x = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
        w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
        fns = {"minibnn": minibnn_conv(x, w, stride, binary),
               "minibnn NCHW": minibnn_nchw_conv(x, w, stride, binary)}
        if torch is not None:
            fns["torch"] = torch_conv(torch, x, w, stride, binary)
        t = time_interleaved(fns, repeats)
        records[name] = t
        tt = t.get("torch")
        rows.append([name, 1e3 * t["minibnn"], 1e3 * t["minibnn NCHW"],
                     "n/a" if tt is None else 1e3 * tt,
                     "n/a" if tt is None else tt / t["minibnn"],
                     "n/a" if tt is None else tt / t["minibnn NCHW"]])
    print_table(f"conv2d 3x3 forward+backward, batch {batch}, float32, {threads} threads, "
                f"best of {repeats} interleaved rounds",
                ["layer", "minibnn ms", "minibnn NCHW ms", "torch ms", "ratio", "ratio NCHW"],
                rows)
    other_rows = []
    for w in widths:
        for h, c in ((32, w), (16, 2 * w), (8, 4 * w)):
            for kind, build in (("maxpool 2x2", pool_candidates), ("BN+sign", bn_candidates)):
                name = f"{kind} {c}@{h}"
                fns = build(torch, batch, c, h)
                t = time_interleaved(fns, repeats)
                records[name] = t
                tt = t.get("torch")
                other_rows.append([name, 1e3 * t["minibnn"], "n/a" if tt is None else 1e3 * tt,
                                   "n/a" if tt is None else tt / t["minibnn"]])
    print_table("max-pool and BatchNorm+sign forward+backward (same batch and rounds)",
                ["layer", "minibnn ms", "torch ms", "ratio"], other_rows)
    print("\nratio = torch time / minibnn time (> 1: minibnn is faster); minibnn = the "
          "channels-last training kernels, NCHW = the functional im2col convolution")
    write_json(args.json, {"benchmark": "layers", "machine": machine_info(torch),
                           "batch": batch, "seconds": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
