"""The CUDA bodies, launchers and kernels, executed on the CPU by the emulator and pinned to
their references: the GPU path's arithmetic and indexing, checked before a GPU sees it.

``tests/cuda_emulator.py`` compiles each kernel's exact source (``cuda_sources``) with g++ and
runs it over an emulated grid; ``import cupy`` is its stand-in, so the registered ``"cuda"``
bodies run unchanged (argument checks, allocation, launch configuration, the kernels). Every
launch also checks each argument against the kernel's parameter list (count, scalar sizes,
array dtypes), which CuPy itself does not.

Expected agreement with the reference on NumPy arrays (host arithmetic, no contraction):
exact everywhere except the swish STE (glibc's exp/tanh vs NumPy's: to 1e-5) and the
convolution GEMMs (NumPy's matmul vs the reference's blocked one: to 1e-5); the gather,
col2im and pooling kernels are compared exactly on their own. What this cannot show: speed,
limits of a real device, and CUDA's own math library (``scripts/gpu_check.sh`` on a GPU).

CI sets ``MINIBNN_REQUIRE_EMULATOR=1`` where g++ exists, so there these tests run or fail.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from minibnn import backend, kernels
from minibnn.kernels import channels_last, gpu_launch

from oracles import reference

import cuda_emulator
from cuda_emulator import EMULATED_CUPY, EmuArray

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def emulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    why = cuda_emulator.available()
    if why is not None:
        if os.environ.get("MINIBNN_REQUIRE_EMULATOR") == "1":
            pytest.fail(why)
        pytest.skip(why)
    monkeypatch.setitem(sys.modules, "cupy", EMULATED_CUPY)
    # the real cupyx (loaded lazily once the real CuPy was imported) would import the stand-in
    # if anything touched it meanwhile (hypothesis scans sys.modules): hide it for the test
    for name in [n for n in sys.modules if n == "cupyx" or n.startswith("cupyx.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(backend, "_cupy", lambda: EMULATED_CUPY)
    monkeypatch.setattr(gpu_launch, "_CUPY", None)
    monkeypatch.setattr(gpu_launch, "MAX_BLOCKS", 3)     # small grids: the grid-stride loops
    gpu_launch.kernel.cache_clear()
    yield
    gpu_launch.kernel.cache_clear()


def dev(a: np.ndarray) -> EmuArray:
    return np.ascontiguousarray(a).view(EmuArray) if a.ndim else np.asarray(a).view(EmuArray)


def host(a: Any) -> Any:
    return np.asarray(a.view(np.ndarray)) if isinstance(a, np.ndarray) else a


def cuda(op: str) -> Callable[..., Any]:
    return kernels.get(op, "cuda")


def same(got: Any, want: Any, rtol: float = 0.0) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w, rtol)
        return
    if want is None:
        assert got is None
        return
    got = host(got)
    assert isinstance(got, np.ndarray) and got.dtype == np.asarray(want).dtype
    if rtol:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    else:
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- optimiser steps


def _buffers(rng: np.random.Generator, n: int, dtype: Any) -> list[np.ndarray]:
    b = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(dtype)
    m, v, g = ((s * rng.standard_normal(n)).astype(dtype) for s in (0.1, 0.01, 1.0))
    for a in (m, v, g):
        a[:7] = 0                                          # exact ties
    return [b, m, v, g]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tie, threshold", [("keep", 0.0), ("positive", 0.0), ("keep", 1e-3)])
def test_cema_and_bop(dtype, tie, threshold):
    rng = np.random.default_rng(1)
    host_bufs = _buffers(rng, 2_000, dtype)
    devs = [dev(a.copy()) for a in host_bufs]
    for _ in range(3):
        n_ref = reference("cema_update")(*host_bufs, 0.3, 0.2, threshold, tie)
        n_gpu = cuda("cema_update")(*devs, 0.3, 0.2, threshold, tie)
        assert host(n_gpu).shape == () and int(n_gpu) == int(n_ref) > 0
        n_ref = reference("bop_update")(host_bufs[0], host_bufs[1], host_bufs[3], 0.1,
                                        threshold, tie)
        n_gpu = cuda("bop_update")(devs[0], devs[1], devs[3], 0.1, threshold, tie)
        assert int(n_gpu) == int(n_ref)
    for d, h in zip(devs, host_bufs):
        same(d, h)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, decay, decoupled", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                        (0.9, 1e-2, False), (0.9, 1e-2, True),
                                                        (0.0, 1e-2, True)])
def test_sgd(dtype, momentum, decay, decoupled):
    rng = np.random.default_rng(2)
    w, m, _, g = _buffers(rng, 1_500, dtype)
    devs = [dev(w.copy()), dev(m.copy()), dev(g)]
    for first in (True, False):
        reference("sgd_update")(w, m, g, 0.1, momentum, decay, 0.1, decoupled, first)
        cuda("sgd_update")(devs[0], devs[1], devs[2], 0.1, momentum, decay, 0.1, decoupled,
                           first)
    same(devs[0], w)
    same(devs[1], m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay, decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_adam(dtype, decay, decoupled):
    rng = np.random.default_rng(3)
    w, m, v, g = _buffers(rng, 1_500, dtype)
    v = np.abs(v)
    devs = [dev(a.copy()) for a in (w, m, v)] + [dev(g[::-1].copy())]
    for step in (1, 2, 3):
        reference("adam_update")(w, m, v, g[::-1], 1e-3, step, weight_decay=decay,
                                 decoupled=decoupled)
        cuda("adam_update")(*devs, 1e-3, step, weight_decay=decay, decoupled=decoupled)
    for d, h in zip(devs, (w, m, v)):
        same(d, h)


def test_a_strided_gradient_is_read_correctly():
    rng = np.random.default_rng(4)
    b, m, v, g = _buffers(rng, 600, np.float32)
    g2 = np.stack([g, -g], axis=1)                         # g is the strided column g2[:, 0]
    devs = [dev(a.copy()) for a in (b, m, v)]
    reference("cema_update")(b, m, v, g2[:, 0], 0.3, 0.2)
    cuda("cema_update")(*devs, dev(g2)[:, 0], 0.3, 0.2)
    for d, h in zip(devs, (b, m, v)):
        same(d, h)


# --------------------------------------------------------------------------- BatchNorm + sign


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37, 5), (4, 3, 5, 6)])
def test_batchnorm_sign(dtype, shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma, beta = (rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-1, 1, c).astype(dtype))
    same(cuda("batchnorm_sign_train")(dev(x), dev(gamma), dev(beta)),
         reference("batchnorm_sign_train")(x, gamma, beta))
    mean, var = x.mean(axis=0 if x.ndim == 2 else (0, 2, 3)), x.var(axis=0 if x.ndim == 2
                                                                     else (0, 2, 3))
    same(cuda("batchnorm_sign_eval")(dev(x), dev(mean), dev(var), dev(gamma), dev(beta)),
         reference("batchnorm_sign_eval")(x, mean, var, gamma, beta))


@pytest.mark.parametrize("shape", [(37, 5), (4, 3, 5, 6)])
def test_batchnorm_sign_backward_runs_its_reference_on_the_device(shape):
    """No CUDA body: the op runs its reference on device arrays, the NumPy reference's bits."""
    rng = np.random.default_rng(8)
    x, ds = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    gamma, beta = (rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2))
    _, y, xhat, _, _, inv_std = reference("batchnorm_sign_train")(x, gamma, beta)
    got = kernels.batchnorm_sign_backward_train(dev(ds), dev(y), dev(xhat), dev(inv_std),
                                                dev(gamma), "clipped")
    assert all(isinstance(g, EmuArray) for g in got)
    same(got, reference("batchnorm_sign_backward_train")(ds, y, xhat, inv_std, gamma, "clipped"))


# --------------------------------------------------------------------------- packing, XNOR


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (63,), (65,), (3, 4, 200), (2, 3, 64)])
def test_pack_and_unpack_signs(dtype, shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::7] = 0                                 # sign(0) = +1
    packed = cuda("pack_signs")(dev(x))
    same(packed, reference("pack_signs")(x))
    same(cuda("unpack_signs")(packed, shape[-1], dtype),
         reference("unpack_signs")(reference("pack_signs")(x), shape[-1], dtype))


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (65, 64, 63), (64, 600, 130), (3, 0, 2)])
def test_xnor_gemm(m, k, n):
    rng = np.random.default_rng(7)
    a = reference("pack_signs")(rng.standard_normal((m, k)).astype(np.float32))
    b = reference("pack_signs")(rng.standard_normal((n, k)).astype(np.float32))
    same(cuda("xnor_gemm")(dev(a), dev(b), k), reference("xnor_gemm")(a, b, k))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("c, o, hw, k, stride, padding", [(70, 5, 7, 3, 1, 1),
                                                           (3, 4, 6, 3, 2, 1),
                                                           (130, 3, 5, 5, 1, 2),
                                                           (5, 3, 7, 3, 1, 0)])
def test_binary_conv2d(layout, c, o, hw, k, stride, padding):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((o, c, k, k)).astype(np.float32)
    wbits, wsum = reference("pack_conv_weights")(w)
    xbits = reference("pack_conv_input")(x)
    same(cuda("binary_conv2d")(dev(xbits), dev(wbits), dev(wsum), c, k, k, stride, padding,
                               layout),
         reference("binary_conv2d")(xbits, wbits, wsum, c, k, k, stride, padding, layout))


# --------------------------------------------------------------------------- channels-last ops

CONVS = [(3, 5, 7, 3, 1, 1), (70, 4, 6, 3, 2, 1), (8, 6, 5, 1, 1, 0), (2, 3, 8, 5, 2, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c, o, hw, k, stride, padding", CONVS)
def test_gather_and_col2im_are_the_references(dtype, c, o, hw, k, stride, padding):
    from minibnn.kernels import gpu_channels_last

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, hw, hw, c)).astype(dtype)
    cols = channels_last.im2col_nhwc(x, k, k, stride, padding)
    same(gpu_channels_last._gather(dev(x), c, dtype, k, k, stride, padding), cols)
    bits = reference("pack_signs")(x)
    same(gpu_channels_last._gather(dev(bits), c, dtype, k, k, stride, padding),
         channels_last.im2col_nhwc(reference("unpack_signs")(bits, c, dtype), k, k, stride,
                                   padding))
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    same(gpu_channels_last._col2im(dev(dcols), x.shape, k, k, stride, padding),
         channels_last.col2im_nhwc(dcols, x.shape, k, k, stride, padding))


@pytest.mark.parametrize("c, o, hw, k, stride, padding", CONVS)
def test_conv2d_nhwc(c, o, hw, k, stride, padding):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, hw, hw, c)).astype(np.float32)
    wmat = rng.standard_normal((k * k * c, o)).astype(np.float32)
    y = reference("conv2d_nhwc_forward")(x, wmat, k, k, stride, padding)
    same(cuda("conv2d_nhwc_forward")(dev(x), dev(wmat), k, k, stride, padding), y, rtol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for source in (x, reference("pack_signs")(x)):
        for need_dx in (True, False):
            same(cuda("conv2d_nhwc_backward")(dev(dy), dev(source), dev(wmat), k, k, stride,
                                              padding, need_dx),
                 reference("conv2d_nhwc_backward")(dy, source, wmat, k, k, stride, padding,
                                                   need_dx), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2), (3, 1)])
def test_maxpool2d_nhwc(dtype, kernel, stride):
    rng = np.random.default_rng(11)
    x = rng.integers(-3, 4, (2, 9, 8, 5)).astype(dtype)   # many ties: the first max wins
    y, arg = reference("maxpool2d_nhwc_forward")(x, kernel, stride)
    got = cuda("maxpool2d_nhwc_forward")(dev(x), kernel, stride)
    same(got, (y, arg))
    if dtype != np.int32:
        dy = rng.standard_normal(y.shape).astype(dtype)
        same(cuda("maxpool2d_nhwc_backward")(dev(dy), got[1], x.shape, kernel, stride),
             reference("maxpool2d_nhwc_backward")(dy, arg, x.shape, kernel, stride))


@pytest.mark.parametrize("z_dtype, dtype", [(np.int32, np.float32), (np.float32, np.float32),
                                            (np.int32, np.float64), (np.float64, np.float64),
                                            (np.float64, np.float32)])
@pytest.mark.parametrize("c", [1, 64, 70])
@pytest.mark.parametrize("ste", ["identity", "clipped", "approx", "swish"])
def test_batchnorm_sign_pack(z_dtype, dtype, c, ste):
    """(float64 counts with float32 parameters have no kernel instance: the reference runs.)"""
    rng = np.random.default_rng(12)
    z = (rng.integers(-9, 10, (70, c)) if z_dtype == np.int32
         else rng.standard_normal((70, c))).astype(z_dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.uniform(-0.5, 0.5, c).astype(dtype)
    want = reference("batchnorm_sign_pack_train")(z, gamma, beta)
    same(cuda("batchnorm_sign_pack_train")(dev(z), dev(gamma), dev(beta)), want)
    _, mean, var, inv_std = want
    same(cuda("batchnorm_sign_pack_eval")(dev(z), dev(mean), dev(var), dev(gamma), dev(beta)),
         reference("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta))
    ds = rng.standard_normal(z.shape).astype(dtype)
    same(cuda("batchnorm_sign_pack_backward")(dev(ds), dev(z), dev(mean), dev(inv_std),
                                              dev(gamma), dev(beta), ste, 3.0),
         reference("batchnorm_sign_pack_backward")(ds, z, mean, inv_std, gamma, beta, ste, 3.0),
         rtol=1e-5 if ste == "swish" else 0.0)


# --------------------------------------------------------------------------- the emulator


def test_the_emulator_refuses_an_argument_of_the_wrong_type():
    """A launcher passing an int64 where the kernel reads int (garbage on a GPU, unchecked by
    CuPy) is caught: so these tests can fail on a launch's arguments, not only its results."""
    from minibnn.kernels import cuda_sources as src

    x = dev(np.zeros(10, np.float32))
    unpack = gpu_launch.kernel(src.UNPACK_SIGNS, "float")
    p = dev(np.zeros(1, np.uint64))
    with pytest.raises(TypeError, match="argument total is int32, the kernel reads long long"):
        unpack((1,), (32,), (p, x, np.int32(10), np.int64(10), np.int64(1)))
    with pytest.raises(TypeError, match="argument y is float64, the kernel reads float"):
        unpack((1,), (32,), (p, dev(np.zeros(10)), np.int64(10), np.int64(10), np.int64(1)))
    with pytest.raises(TypeError, match="takes 5 arguments, got 4"):
        unpack((1,), (32,), (p, x, np.int64(10), np.int64(10)))


@pytest.mark.parametrize("model, options, shape", [
    ("binary_mlp", {"in_features": 20, "hidden": (16, 16)}, (6, 20)),
    ("binary_cnn", {"input_shape": (3, 8, 8), "width": 4}, (4, 3, 8, 8)),
    ("birealnet", {"input_shape": (3, 8, 8), "width": 4, "blocks_per_stage": (1, 1)},
     (4, 3, 8, 8)),
])
def test_training_steps_on_the_emulated_gpu_match_the_cpu(model, options, shape):
    """The trainer's train_step with every CUDA body (float64): the same losses, gradients
    through the whole model and the same binary weights after the steps as on the CPU."""
    import importlib

    from minibnn.nn import models
    from minibnn import optim

    train = importlib.import_module("minibnn.run.train")
    net = getattr(models, model)(num_classes=3, **options)
    rng = np.random.default_rng(13)
    params, buffers = net.init(rng, np.float64)
    x, y = rng.standard_normal(shape), rng.integers(0, 3, shape[0])
    results = {}
    for device in ("cpu", "gpu"):
        opt = optim.partition({"binary": optim.cema(1e-2, 1e-1), "real": optim.adam(1e-2)},
                              net.param_label)
        put = dev if device == "gpu" else np.array
        state = train.TrainState({k: put(v) for k, v in params.items()},
                                 {k: put(v) for k, v in buffers.items()}, {}, rng)
        state.opt_state = train._tree_to_device(opt.init(params), "cpu")
        if device == "gpu":
            state.opt_state = _to_emulated(state.opt_state)
        losses = []
        with kernels.use_backend("cuda" if device == "gpu" else "auto"):
            for _ in range(3):
                loss, _, _ = train.train_step(net, opt, state, put(x), put(y))
                losses.append(float(loss))
        results[device] = losses, {k: host(v) for k, v in state.params.items()}
    (cpu_loss, cpu_params), (gpu_loss, gpu_params) = results["cpu"], results["gpu"]
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-9)
    for name in net.binary_names:
        np.testing.assert_array_equal(gpu_params[name], cpu_params[name], err_msg=name)
    for name in cpu_params:
        np.testing.assert_allclose(gpu_params[name], cpu_params[name], rtol=1e-8, atol=1e-10,
                                   err_msg=name)


def _to_emulated(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_emulated(v) for k, v in tree.items()}
    return dev(tree) if isinstance(tree, np.ndarray) else tree


def test_the_gpu_benchmark_runs_on_the_emulated_gpu(monkeypatch, tmp_path, capsys):
    """benchmarks/bench_gpu.py --smoke end to end (smaller shapes: the emulator runs a warp's
    threads as OS threads), so the script a GPU run relies on is known to work."""
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_gpu

    monkeypatch.setattr(bench_gpu, "INPUT_SHAPE", (3, 8, 8))
    monkeypatch.setattr(bench_gpu, "_torch_cuda", lambda: None)
    monkeypatch.setitem(bench_gpu.SMOKE, "xnor_shapes", [(8, 4608, 8)])
    monkeypatch.setitem(bench_gpu.SMOKE, "opt_params", 5_000)
    sgemm_rate = bench_gpu.sgemm_rate
    monkeypatch.setattr(bench_gpu, "sgemm_rate", lambda cp, repeats: sgemm_rate(cp, 1, n=64))
    out = tmp_path / "bench.json"
    assert bench_gpu.main(["--smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference / minibnn" in printed and "cuBLAS / xnor" in printed
    payload = json.loads(out.read_text())
    assert {"training", "optimisers", "xnor"} <= set(payload)
    assert [r["model"] for r in payload["training"]] == ["binary_mlp", "binary_cnn"]


def test_the_equivalence_suite_holds_on_the_emulated_cuda_bodies():
    """P1-P9 with ``fused[cuda]`` among the implementations (the CUDA optimiser kernels on the
    emulated GPU, P9's closed loop and its trainer step included), 20 examples each: the same
    check ``scripts/gpu_check.sh`` runs on a real GPU with each property's full count."""
    from verification import engine, runner

    engine._backend_status.cache_clear()
    try:
        assert "cuda" in engine.fused_backends()
        results = runner.run(examples=20, only="P1,P2,P3,P4,P5,P6,P7,P8,P9")
    finally:
        engine._backend_status.cache_clear()
    assert [r.pid for r in results] == [f"P{i}" for i in range(1, 10)]
    for r in results:
        assert r.holds, (r.pid, r.counterexample)
        assert "cuda" in r.implementations and "fused[cuda]" not in r.skipped, (r.pid, r)


def test_mixed_dtypes_and_dtypes_without_a_kernel_take_the_reference_s_way():
    """Arguments a kernel would misread run as the reference runs them: float64 input with
    float32 weights (gathered in the input's dtype), float64 running statistics with float32
    parameters, int8 unpacking and float16 pooling (no kernel instance: the reference)."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 5, 5, 3))                    # float64
    wmat = rng.standard_normal((27, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 5, 4)).astype(np.float32)
    same(cuda("conv2d_nhwc_backward")(dev(dy), dev(x), dev(wmat), 3, 3, 1, 1),
         reference("conv2d_nhwc_backward")(dy, x, wmat, 3, 3, 1, 1), rtol=1e-5)
    z = rng.integers(-5, 6, (40, 3)).astype(np.int32)
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)     # float64
    same(cuda("batchnorm_sign_pack_eval")(dev(z), dev(mean), dev(var), dev(gamma), dev(beta)),
         reference("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta))
    bits = reference("pack_signs")(rng.standard_normal((3, 70)))
    same(cuda("unpack_signs")(dev(bits), 70, np.int8), reference("unpack_signs")(bits, 70, np.int8))
    h = rng.standard_normal((1, 4, 4, 2)).astype(np.float16)
    same(cuda("maxpool2d_nhwc_forward")(dev(h), 2, 2), reference("maxpool2d_nhwc_forward")(h, 2, 2))


@pytest.mark.parametrize("ste", ["identity", "clipped", "approx", "swish"])
def test_a_nan_in_the_rows_stays_nan_in_the_gradient(ste):
    """np.maximum keeps NaN; the CUDA approx STE must too (else a divergence would hide)."""
    rng = np.random.default_rng(15)
    z = rng.standard_normal((30, 3)).astype(np.float32)
    z[4, 1] = np.nan
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    _, mean, _, inv_std = reference("batchnorm_sign_pack_train")(z, gamma, beta)
    ds = rng.standard_normal(z.shape).astype(np.float32)
    want = reference("batchnorm_sign_pack_backward")(ds, z, mean, inv_std, gamma, beta, ste)
    got = cuda("batchnorm_sign_pack_backward")(dev(ds), dev(z), dev(mean), dev(inv_std),
                                               dev(gamma), dev(beta), ste)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(host(g)), np.isnan(w))


@pytest.mark.parametrize("model, options", [("binary_mlp", {"hidden": [32, 32]})])
def test_minibnn_train_device_gpu_end_to_end_on_the_emulated_gpu(tmp_path, model, options):
    """`fit` with ``device="gpu"``: data (uint8, standardised per batch on the device),
    training with the CUDA bodies, evaluation, checkpoints read back from the device; float64,
    so the binary weights and metrics must equal a CPU run's. (The CNN's steps are checked by
    ``test_training_steps_on_the_emulated_gpu_match_the_cpu`` on 8x8 images: at the synthetic
    set's 28x28 the emulator's warp-vote kernels take minutes.)"""
    from minibnn.run.files import load_run
    from minibnn.run.spec import spec_from_options
    from minibnn.run.train import fit

    spec = spec_from_options({"model": model, **options, "dataset": "synthetic", "epochs": 2,
                              "train_subset": 120, "batch_size": 40, "dtype": "float64",
                              "val_split": 40})
    runs = {}
    for device in ("cpu", "gpu"):
        out = str(tmp_path / f"{device}.h5")
        runs[device] = fit(spec, out, progress=False, log=lambda line: None,
                           local={"device": device}), load_run(out)
    (cpu_metrics, cpu_run), (gpu_metrics, gpu_run) = runs["cpu"], runs["gpu"]
    for name in ("train_loss", "val_acc", "test_acc"):
        np.testing.assert_allclose(gpu_metrics[name], cpu_metrics[name], rtol=1e-9, err_msg=name)
    for name, value in cpu_run.checkpoint.params.items():
        np.testing.assert_allclose(gpu_run.checkpoint.params[name], value, rtol=1e-7,
                                   atol=1e-9, err_msg=name)
    assert gpu_run.checkpoint.binary == cpu_run.checkpoint.binary
