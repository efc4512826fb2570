"""GPU backend: the CUDA bodies and the reference bodies on CuPy arrays against the NumPy
reference, the layers on the GPU against the CPU, and the one-line errors when there is no GPU.

Two kinds of tests live here:
  * GPU tests (classes ``Test*OnGpu``): marked ``gpu`` and skipped, with the reason, unless
    ``minibnn.backend.gpu_available()``. A module-level ``pytestmark`` would also skip the tests
    below that must run everywhere, so the same two marks (``GPU``) are set on each GPU class.
    Every op is checked twice where it has a CUDA body: ``kernels.get(op, "cuda")`` and the
    reference body run on CuPy arrays (``use_backend("numpy")``, what ``call`` runs on the GPU
    for an op without a CUDA body), both against the reference on NumPy arrays.
  * tests that run on every machine: importing ``minibnn.kernels.gpu`` without CuPy, the
    signatures of the CUDA bodies, and the ``DeviceError`` a user gets from a CUDA body,
    ``device_module("gpu")`` and ``minibnn train --device gpu`` when there is no GPU.

Tolerances (GPU vs the reference on NumPy arrays):
  * optimiser steps: the CUDA kernels are compiled without FMA contraction and evaluate the
    reference's expressions in its order, and the reference on CuPy arrays runs one CuPy
    kernel per operation, so both should be bit-identical; m, v, w are compared with rtol 1e-6
    (float32) / 1e-12 (float64), atol 0; b and the flip counts exactly;
  * BatchNorm + sign, eval mode: exact; train mode: CUDA body == reference on CuPy exactly (the
    same CuPy reductions), statistics vs NumPy rtol 1e-5 (float32) / 1e-12 (float64), signs
    exact wherever |y| > 1e-3 (elsewhere rounding of the statistics decides);
  * im2col, max-pooling forward, bit packing, XNOR GEMM, binary conv: exact; col2im and
    max-pooling backward rtol 1e-6;
  * layers and models (float64): outputs, gradients and running statistics rtol 1e-9.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest

from minibnn import backend, kernels
from minibnn.backend import gpu_available
from minibnn.errors import DeviceError, DTypeError, ShapeError

from oracles import reference as numpy_ref

GPU = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")]

RTOL = {np.float32: 1e-6, np.float64: 1e-12}

#: the ops with a CUDA body (real kernels); every other op runs its reference on CuPy arrays
CUDA_OPS = ("batchnorm_sign_eval", "batchnorm_sign_train", "cema_update", "bop_update",
            "sgd_update", "adam_update", "pack_signs", "unpack_signs", "xnor_gemm",
            "binary_conv2d", "conv2d_nhwc_forward", "conv2d_nhwc_backward",
            "maxpool2d_nhwc_forward", "maxpool2d_nhwc_backward", "batchnorm_sign_pack_train",
            "batchnorm_sign_pack_eval", "batchnorm_sign_pack_backward")


@pytest.fixture
def cp():
    import cupy

    return cupy


def _host(a: Any) -> Any:
    return backend.to_numpy(a) if hasattr(a, "shape") else a


def _packed_conv_inputs(rng: np.random.Generator, c: int, o: int) -> tuple[Any, Any, Any]:
    """Packed signs of a random (2, 9, 9, c) NHWC input and of random (o, c, 3, 3) weights, on
    the host: (xbits, wbits, wsum), the arguments of the packed 3x3 conv ops."""
    x = rng.standard_normal((2, 9, 9, c)).astype(np.float32)
    w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    return (numpy_ref("pack_signs")(x), *numpy_ref("pack_conv_weights")(w))


def gpu_bodies(op: str) -> dict[str, Callable[..., Any]]:
    """The GPU bodies of ``op`` to check: its CUDA body (if any) and the reference on CuPy."""
    bodies = {"reference on cupy": numpy_ref(op)}
    if op in CUDA_OPS:
        bodies["cuda"] = kernels.get(op, "cuda")
    return bodies


# =========================================================================== runs everywhere


def test_gpu_module_imports_without_cupy():
    """``import minibnn.kernels.gpu`` must not need CuPy (here CuPy is made unimportable)."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import minibnn.kernels.gpu\n"
            "from minibnn import kernels\n"
            "from minibnn.backend import gpu_available\n"
            "assert not gpu_available()\n"
            "print(sorted(op for op, b in kernels.registered().items() if 'cuda' in b))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sorted(CUDA_OPS))


def test_cuda_bodies_mirror_the_reference_signatures():
    """Same parameters (names, order, defaults) as the reference body of each op."""
    for op in CUDA_OPS:
        mine = inspect.signature(kernels.get(op, "cuda")).parameters
        theirs = inspect.signature(kernels.get(op, "numpy")).parameters
        assert [(p.name, p.default) for p in mine.values()] == \
               [(p.name, p.default) for p in theirs.values()], op


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend CuPy is absent, whatever this machine has."""
    from minibnn.kernels import gpu_launch

    monkeypatch.setattr(backend, "_cupy", lambda: None)
    monkeypatch.setattr(gpu_launch, "_CUPY", None)


_F = np.zeros(8, dtype=np.float32)


@pytest.mark.parametrize("name, args", [
    ("cema_update", (_F, _F, _F, _F, 0.1, 0.1)),
    ("bop_update", (_F, _F, _F, 0.1, 1e-6)),
    ("sgd_update", (_F, None, _F, 0.1)),
    ("adam_update", (_F, _F, _F, _F, 0.1, 1)),
    ("pack_signs", (_F,)),
    ("unpack_signs", (np.zeros((2, 1), np.uint64), 8)),
    ("xnor_gemm", (np.zeros((2, 1), np.uint64), np.zeros((2, 1), np.uint64), 8)),
    ("batchnorm_sign_eval", (_F.reshape(2, 4), None, None)),
    ("batchnorm_sign_train", (_F.reshape(2, 4),)),
    ("binary_conv2d", (np.zeros((1, 3, 3, 1), np.uint64), np.zeros((2, 9), np.uint64),
                       np.zeros((2, 9), np.int32), 8, 3, 3)),
    ("conv2d_nhwc_forward", (_F.reshape(1, 2, 2, 2), _F.reshape(8, 1), 2, 2)),
    ("conv2d_nhwc_backward", (_F.reshape(1, 1, 1, 8), _F.reshape(1, 2, 2, 2),
                              _F.reshape(8, 1), 2, 2)),
    ("maxpool2d_nhwc_forward", (_F.reshape(1, 2, 2, 2), 2, 2)),
    ("maxpool2d_nhwc_backward", (_F.reshape(1, 1, 1, 8), np.zeros((1, 1, 1, 8), np.uint8),
                                 (1, 2, 2, 8), 2, 2)),
    ("batchnorm_sign_pack_train", (_F.reshape(4, 2), _F[:2], _F[:2])),
    ("batchnorm_sign_pack_eval", (_F.reshape(4, 2), _F[:2], _F[:2], _F[:2], _F[:2])),
    ("batchnorm_sign_pack_backward", (_F.reshape(4, 2), _F.reshape(4, 2), _F[:2], _F[:2],
                                      _F[:2], _F[:2])),
])
def test_cuda_body_without_gpu_is_one_line_device_error(no_gpu, name, args):
    assert name in CUDA_OPS
    with pytest.raises(DeviceError) as info:
        kernels.get(name, "cuda")(*args)
    message = str(info.value)
    assert "\n" not in message and "GPU" in message and name in message


def test_device_module_gpu_without_gpu_is_device_error(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    for call in (lambda: backend.device_module("gpu"),
                 lambda: backend.to_device(np.zeros(3), "gpu")):
        with pytest.raises(DeviceError) as info:
            call()
        assert "GPU" in str(info.value) and "\n" not in str(info.value)
    assert backend.device_module("cpu") is np


def test_cli_train_on_gpu_without_gpu_exits_2_with_one_line(tmp_path):
    args = ["train", "--device", "gpu", "--dataset", "synthetic", "--out",
            str(tmp_path / "run.h5"), "--no-progress"]
    if gpu_available():
        # this machine has a GPU: run the same command with CuPy made unimportable
        cmd = [sys.executable, "-c",
               "import sys, runpy; sys.modules['cupy'] = None; sys.argv[0] = 'minibnn'; "
               "runpy.run_module('minibnn.commands.cli', run_name='__main__')", *args]
    else:
        cmd = [sys.executable, "-m", "minibnn", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minibnn: error:"), proc.stderr
    assert "GPU" in lines[0]
    assert not (tmp_path / "run.h5").exists()


# =========================================================================== GPU only


class TestDispatchOnGpu:
    pytestmark = GPU

    def test_call_chooses_by_array_type(self, cp):
        x = cp.zeros((1, 1, 3, 3), cp.float32)
        v = cp.zeros(4, cp.float32)
        assert kernels.backend_for("cema_update", v) == "cuda"
        assert kernels.backend_for("im2col", x) == "numpy"          # the reference on CuPy
        assert isinstance(kernels.call("im2col", x, 3, 3), cp.ndarray)
        with kernels.use_backend("numpy"):
            assert kernels.backend_for("cema_update", v) == "numpy"
        with kernels.use_backend("cuda"):
            assert kernels.backend_for("cema_update", v) == "cuda"
            assert kernels.backend_for("im2col", x) == "numpy"
        with kernels.use_backend("numba"):
            with pytest.raises(kernels.BackendError, match="'numba' cannot run cupy arrays"):
                kernels.call("cema_update", v, v, v, v, 0.1, 0.1)


def _opt_buffers(rng, shape, dtype, n_ties=5):
    """b = ±1, m, v, g random, with a few positions where m = v = g = 0 (exact ties)."""
    b = np.where(rng.random(shape) < 0.5, 1.0, -1.0).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for a in (m, v, g):
        a.reshape(-1)[:n_ties] = 0
    return b, m, v, g


SHAPES = [(10_037,), (37, 129), (1,)]


class TestOptimiserParityOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("tie, threshold", [("keep", 0.0), ("positive", 0.0),
                                                ("keep", 1e-3)])
    def test_cema(self, cp, body, dtype, shape, tie, threshold):
        rng = np.random.default_rng(1)
        b, m, v, g = _opt_buffers(rng, shape, dtype)
        dev = [cp.asarray(a) for a in (b, m, v, g)]
        ref, fn = numpy_ref("cema_update"), gpu_bodies("cema_update")[body]
        for _ in range(3):                          # a few steps: flips feed back into b
            n_ref = ref(b, m, v, g, alpha=0.3, gamma=0.2, threshold=threshold, tie=tie)
            n_gpu = fn(*dev, alpha=0.3, gamma=0.2, threshold=threshold, tie=tie)
            assert int(n_gpu) == n_ref
        np.testing.assert_array_equal(_host(dev[0]), b)
        np.testing.assert_allclose(_host(dev[1]), m, rtol=RTOL[dtype], atol=0)
        np.testing.assert_allclose(_host(dev[2]), v, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("tie, threshold", [("keep", 1e-6), ("positive", 0.0)])
    def test_bop(self, cp, body, dtype, shape, tie, threshold):
        rng = np.random.default_rng(2)
        b, m, _, g = _opt_buffers(rng, shape, dtype)
        dev = [cp.asarray(a) for a in (b, m, g)]
        ref, fn = numpy_ref("bop_update"), gpu_bodies("bop_update")[body]
        for _ in range(3):
            n_ref = ref(b, m, g, gamma=0.1, threshold=threshold, tie=tie)
            n_gpu = fn(*dev, gamma=0.1, threshold=threshold, tie=tie)
            assert int(n_gpu) == n_ref
        np.testing.assert_array_equal(_host(dev[0]), b)
        np.testing.assert_allclose(_host(dev[1]), m, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_tie_at_the_threshold_sets_plus_one(self, cp, body, dtype):
        """larq's rule: b = +1 wherever m b == threshold exactly (gamma = 1 makes m = g)."""
        rng = np.random.default_rng(3)
        thr = 0.25
        b = np.where(rng.random(1000) < 0.5, 1.0, -1.0).astype(dtype)
        g = rng.standard_normal(1000).astype(dtype)
        tied = rng.random(1000) < 0.3
        g[tied] = thr * b[tied]
        for tie in ("keep", "positive"):
            want_b, want_m = b.copy(), np.zeros_like(b)
            n_ref = numpy_ref("bop_update")(want_b, want_m, g, 1.0, thr, tie)
            dev_b, dev_m = cp.asarray(b), cp.zeros(1000, dtype)
            n_gpu = gpu_bodies("bop_update")[body](dev_b, dev_m, cp.asarray(g), 1.0, thr, tie)
            assert int(n_gpu) == n_ref
            np.testing.assert_array_equal(_host(dev_b), want_b)
            dev_b, dev_m, dev_v = cp.asarray(b), cp.zeros(1000, dtype), cp.zeros(1000, dtype)
            gpu_bodies("cema_update")[body](dev_b, dev_m, dev_v, cp.asarray(g), 1.0, 1.0, thr,
                                            tie)
            np.testing.assert_array_equal(_host(dev_b), want_b)
        assert (want_b[tied] == 1).all() and (b[tied] == -1).any()

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("momentum, dampening", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
    @pytest.mark.parametrize("weight_decay", [0.0, 5e-2])
    @pytest.mark.parametrize("decoupled", [False, True])
    def test_sgd(self, cp, body, dtype, momentum, dampening, weight_decay, decoupled):
        rng = np.random.default_rng(3)
        _, m, _, g = _opt_buffers(rng, SHAPES[0], dtype)
        w = rng.standard_normal(SHAPES[0]).astype(dtype)
        m = m if momentum else None
        dev_w, dev_g = cp.asarray(w), cp.asarray(g)
        dev_m = cp.asarray(m) if m is not None else None
        ref, fn = numpy_ref("sgd_update"), gpu_bodies("sgd_update")[body]
        for step in range(3):                       # step 0 is PyTorch's first momentum step
            kw = dict(lr=0.05, momentum=momentum, weight_decay=weight_decay,
                      dampening=dampening, decoupled=decoupled, first_step=step == 0)
            ref(w, m, g, **kw)
            fn(dev_w, dev_m, dev_g, **kw)
        np.testing.assert_allclose(_host(dev_w), w, rtol=RTOL[dtype], atol=0)
        if m is not None:
            np.testing.assert_allclose(_host(dev_m), m, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (1e-2, False),
                                                         (1e-2, True)])
    def test_adam(self, cp, body, dtype, weight_decay, decoupled):
        rng = np.random.default_rng(4)
        _, m, v, g = _opt_buffers(rng, SHAPES[1], dtype)
        v = np.abs(v)
        w = rng.standard_normal(SHAPES[1]).astype(dtype)
        dev = [cp.asarray(a) for a in (w, m, v, g)]
        ref, fn = numpy_ref("adam_update"), gpu_bodies("adam_update")[body]
        for step in (1, 2, 7):
            kw = dict(lr=1e-3, step=step, weight_decay=weight_decay, decoupled=decoupled)
            ref(w, m, v, g, **kw)
            fn(*dev, **kw)
        for got, want in zip(dev[:3], (w, m, v)):
            np.testing.assert_allclose(_host(got), want, rtol=RTOL[dtype], atol=0)

    def test_bad_arguments_are_one_line_errors(self, cp):
        a = cp.zeros(6, dtype=cp.float32)
        cema, bop = kernels.get("cema_update", "cuda"), kernels.get("bop_update", "cuda")
        with pytest.raises(DTypeError, match="CuPy array"):
            cema(np.zeros(6, np.float32), a, a, a, 0.1, 0.1)
        with pytest.raises(ShapeError, match="shape"):
            cema(a, a, a, cp.zeros(5, dtype=cp.float32), 0.1, 0.1)
        with pytest.raises(DTypeError, match="dtype"):
            bop(a, a, cp.zeros(6, dtype=cp.float64), 0.1, 0.0)
        with pytest.raises(ShapeError, match="C-contiguous"):
            w = cp.zeros((4, 6), dtype=cp.float32).T
            kernels.get("adam_update", "cuda")(w, w.copy(), w.copy(), w.copy(), 0.1, 1)
        with pytest.raises(ShapeError, match="momentum"):
            kernels.get("sgd_update", "cuda")(a, None, a, 0.1, momentum=0.9)


class TestBatchNormSignOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(16, 5), (4, 3, 7, 9)])
    def test_eval_is_exact(self, cp, body, dtype, shape):
        rng = np.random.default_rng(5)
        c = shape[1]
        x = rng.standard_normal(shape).astype(dtype)
        x.reshape(-1)[:3] = 0
        mean, var = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.1
        gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        fn = gpu_bodies("batchnorm_sign_eval")[body]
        want = numpy_ref("batchnorm_sign_eval")(x, mean, var, gamma, beta)
        got = fn(*(cp.asarray(a) for a in (x, mean, var, gamma, beta)))
        np.testing.assert_array_equal(_host(got), want)
        got_default = fn(cp.asarray(x), cp.asarray(mean), cp.asarray(var))
        np.testing.assert_array_equal(_host(got_default),
                                      numpy_ref("batchnorm_sign_eval")(x, mean, var))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(64, 5), (8, 3, 7, 9)])
    def test_train_backward_is_the_layers_backward(self, cp, dtype, shape):
        """The fused layer's train-mode backward op (its reference on CuPy: no CUDA body) is
        sign_backward then batchnorm_backward on CuPy, bit for bit."""
        from minibnn.nn.functional import SignCache, batchnorm_backward, sign_backward
        from minibnn.nn.functional.batchnorm import BatchNormCache

        rng = np.random.default_rng(7)
        c = shape[1]
        x, ds = (cp.asarray(rng.standard_normal(shape).astype(dtype)) for _ in range(2))
        gamma, beta = (cp.asarray(rng.standard_normal(c).astype(dtype)) for _ in range(2))
        _, y, xhat, _, _, inv_std = kernels.batchnorm_sign_train(x, gamma, beta)
        got = kernels.batchnorm_sign_backward_train(ds, y, xhat, inv_std, gamma, "approx")
        want = batchnorm_backward(sign_backward(ds, SignCache(y, "approx", 5.0)),
                                  BatchNormCache(xhat, inv_std, gamma, True, True, None, None))
        for g_, w_ in zip(got, want):
            assert isinstance(g_, cp.ndarray)
            np.testing.assert_array_equal(_host(g_), _host(w_))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(64, 5), (8, 3, 7, 9)])
    def test_train_matches_reference(self, cp, dtype, shape):
        rng = np.random.default_rng(6)
        c = shape[1]
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        dev = [cp.asarray(a) for a in (x, gamma, beta)]
        want = numpy_ref("batchnorm_sign_train")(x, gamma, beta)
        on_cupy = [_host(a) for a in numpy_ref("batchnorm_sign_train")(*dev)]
        got = [_host(a) for a in kernels.get("batchnorm_sign_train", "cuda")(*dev)]
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for name, g_, r_, w_ in zip(("s", "y", "xhat", "mean", "var", "inv_std"), got, on_cupy,
                                    want):
            assert g_.shape == w_.shape and g_.dtype == w_.dtype, name
            np.testing.assert_array_equal(g_, r_, err_msg=name)   # same CuPy reductions
            if name != "s":
                np.testing.assert_allclose(g_, w_, rtol=tol, atol=tol, err_msg=name)
        clear = np.abs(want[1]) > 1e-3
        np.testing.assert_array_equal(got[0][clear], want[0][clear])


class TestConvAndPoolingOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("kh, kw, stride, padding", [(3, 3, 1, 1), (3, 2, 2, 0),
                                                          (1, 1, 1, 0), (5, 5, 2, 2)])
    def test_im2col_col2im(self, cp, kh, kw, stride, padding):
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
        cols = kernels.call("im2col", cp.asarray(x), kh, kw, stride, padding)
        want = numpy_ref("im2col")(x, kh, kw, stride, padding)
        np.testing.assert_array_equal(_host(cols), want)
        d = rng.standard_normal(want.shape).astype(np.float32)
        got = kernels.call("col2im", cp.asarray(d), x.shape, kh, kw, stride, padding)
        np.testing.assert_allclose(_host(got), numpy_ref("col2im")(d, x.shape, kh, kw, stride,
                                                                   padding), rtol=1e-6)

    @pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
    def test_maxpool(self, cp, kernel, stride, padding):
        rng = np.random.default_rng(8)
        x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
        x[0, 0, :2, :2] = 1.0                       # a tie: the first maximum wins
        y, arg = kernels.call("maxpool2d_forward", cp.asarray(x), kernel, stride, padding)
        y_ref, arg_ref = numpy_ref("maxpool2d_forward")(x, kernel, stride, padding)
        np.testing.assert_array_equal(_host(y), y_ref)
        np.testing.assert_array_equal(_host(arg), arg_ref)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        got = kernels.call("maxpool2d_backward", cp.asarray(dy), arg, x.shape, kernel, stride,
                           padding)
        want = numpy_ref("maxpool2d_backward")(dy, arg_ref, x.shape, kernel, stride, padding)
        np.testing.assert_allclose(_host(got), want, rtol=1e-6)


class TestBitPackingAndXnorOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (3, 4, 200), (2, 3, 64)])
    def test_pack_unpack(self, cp, body, dtype, shape):
        rng = np.random.default_rng(9)
        x = rng.standard_normal(shape).astype(dtype)
        x.reshape(-1)[::7] = 0                      # sign(0) = +1, bit 1
        packed = gpu_bodies("pack_signs")[body](cp.asarray(x))
        want = numpy_ref("pack_signs")(x)
        assert packed.dtype == np.uint64 and packed.shape == want.shape
        np.testing.assert_array_equal(_host(packed), want)
        back = gpu_bodies("unpack_signs")[body](packed, shape[-1], dtype)
        assert back.dtype == dtype
        np.testing.assert_array_equal(_host(back),
                                      numpy_ref("unpack_signs")(want, shape[-1], dtype))

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    def test_unpack_signs_errors(self, cp, body):
        """Both GPU bodies raise what the CPU bodies raise (one shared check)."""
        unpack = gpu_bodies("unpack_signs")[body]
        with pytest.raises(DTypeError, match="unpack_signs: p must be uint64"):
            unpack(cp.zeros((2, 1), cp.int64), 8)
        with pytest.raises(ShapeError, match=r"unpack_signs: p must have a last axis of ceil"):
            unpack(cp.zeros((2, 1), cp.uint64), 65)

    @pytest.mark.parametrize("shape", [(5, 70), (2, 65, 3, 4), (3, 1)])
    def test_threshold_pack_reference_on_cupy(self, cp, shape):
        """threshold_pack has no CUDA body: its reference runs on CuPy arrays, exactly."""
        rng = np.random.default_rng(13)
        c = shape[1]
        y = rng.integers(-9, 10, shape).astype(np.int32)
        t = rng.integers(-9, 10, c).astype(np.int32)
        t[0] = y.reshape(shape[0], c, -1)[0, 0, 0]            # y == t exactly somewhere
        d = rng.choice(np.array([-1, 1], np.int8), c)
        y_dev = cp.asarray(y)
        assert kernels.backend_for("threshold_pack", y_dev) == "numpy"
        got = kernels.call("threshold_pack", y_dev, cp.asarray(t), cp.asarray(d))
        assert isinstance(got, cp.ndarray) and got.dtype == np.uint64
        np.testing.assert_array_equal(_host(got), numpy_ref("threshold_pack")(y, t, d))
        with pytest.raises(DTypeError, match="threshold must be a CuPy array"):
            kernels.call("threshold_pack", y_dev, t, cp.asarray(d))

    @pytest.mark.parametrize("pool", [(1, 1, 0), (2, 2, 0), (3, 2, 1)])
    def test_binary_conv2d_threshold_pack_reference_on_cupy(self, cp, pool):
        """The fused packed conv layer has no CUDA body: its reference runs on CuPy arrays
        (the CUDA binary_conv2d inside), exactly."""
        rng = np.random.default_rng(14)
        c, o = 70, 65
        xbits, wbits, wsum = _packed_conv_inputs(rng, c, o)
        t = rng.integers(-20, 21, o).astype(np.int32)
        d = rng.choice(np.array([-1, 1], np.int8), o)
        want = numpy_ref("binary_conv2d_threshold_pack")(xbits, wbits, wsum, c, 3, 3, 1, 1, t,
                                                         d, *pool)
        args = [cp.asarray(a) for a in (xbits, wbits, wsum)]
        assert kernels.backend_for("binary_conv2d_threshold_pack", *args) == "numpy"
        got = kernels.binary_conv2d_threshold_pack(*args, c, 3, 3, 1, 1, cp.asarray(t),
                                                   cp.asarray(d), *pool)
        assert isinstance(got, cp.ndarray) and got.dtype == np.uint64
        np.testing.assert_array_equal(_host(got), want)

    def test_bias_sign_pack_reference_on_cupy(self, cp):
        """bias_sign_pack has no CUDA body: its reference runs on CuPy arrays, exactly."""
        rng = np.random.default_rng(16)
        x, b = rng.standard_normal((300, 70)).astype(np.float32), \
            rng.standard_normal(70).astype(np.float32)
        x[::3] = -b
        got = kernels.bias_sign_pack(cp.asarray(x), cp.asarray(b))
        assert isinstance(got, cp.ndarray) and got.dtype == np.uint64
        np.testing.assert_array_equal(_host(got), numpy_ref("bias_sign_pack")(x, b))

    def test_binary_conv2d_lookup_reference_on_cupy(self, cp):
        """The conv + count-table layer has no CUDA body: its reference runs on CuPy arrays (the
        CUDA binary_conv2d inside), exactly."""
        rng = np.random.default_rng(15)
        c, o = 70, 65
        xbits, wbits, wsum = _packed_conv_inputs(rng, c, o)
        table = rng.standard_normal((2 * 9 * c + 1, o)).astype(np.float32)
        want = numpy_ref("binary_conv2d_lookup")(xbits, wbits, wsum, c, 3, 3, 1, 1, table)
        args = [cp.asarray(a) for a in (xbits, wbits, wsum)]
        got = kernels.binary_conv2d_lookup(*args, c, 3, 3, 1, 1, cp.asarray(table))
        assert isinstance(got, cp.ndarray) and got.dtype == np.float32
        np.testing.assert_array_equal(_host(got), want)

    @pytest.mark.parametrize("body", ["cuda", "reference on cupy"])
    @pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 0, 2), (65, 64, 63), (64, 65, 64),
                                         (130, 4608, 67), (7, 1000, 129)])
    def test_xnor_gemm_is_exact(self, cp, body, m, k, n):
        rng = np.random.default_rng(10)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        pa, pb = numpy_ref("pack_signs")(a), numpy_ref("pack_signs")(b)
        got = gpu_bodies("xnor_gemm")[body](cp.asarray(pa), cp.asarray(pb), k)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(_host(got), numpy_ref("xnor_gemm")(pa, pb, k))
        sa, sb = np.where(a >= 0, 1.0, -1.0), np.where(b >= 0, 1.0, -1.0)
        np.testing.assert_array_equal(_host(got), (sa @ sb.T).astype(np.int64))

    @pytest.mark.parametrize("backend_name", ["auto", "numpy"])
    @pytest.mark.parametrize("c, o, hw, k, stride, padding", [(70, 5, 9, 3, 1, 1),
                                                               (3, 4, 6, 3, 2, 1),
                                                               (64, 8, 5, 1, 1, 0),
                                                               (5, 3, 7, 3, 1, 0)])
    def test_binary_conv2d_is_exact(self, cp, backend_name, c, o, hw, k, stride, padding):
        """Reference bodies on CuPy arrays, with the CUDA pack_signs / xnor_gemm inside
        ("auto") or the reference ones ("numpy")."""
        rng = np.random.default_rng(11)
        x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        wbits_ref, wsum_ref = numpy_ref("pack_conv_weights")(w)
        xbits_ref = numpy_ref("pack_conv_input")(x)
        want = numpy_ref("binary_conv2d")(xbits_ref, wbits_ref, wsum_ref, c, k, k, stride,
                                          padding)
        with kernels.use_backend(backend_name):
            wbits, wsum = kernels.call("pack_conv_weights", cp.asarray(w))
            xbits = kernels.call("pack_conv_input", cp.asarray(x))
            y = kernels.call("binary_conv2d", xbits, wbits, wsum, c, k, k, stride, padding)
        np.testing.assert_array_equal(_host(wbits), wbits_ref)
        np.testing.assert_array_equal(_host(wsum), wsum_ref)
        np.testing.assert_array_equal(_host(xbits), xbits_ref)
        assert y.dtype == np.int32 and isinstance(y, cp.ndarray)
        np.testing.assert_array_equal(_host(y), want)


class TestChannelsLastOnGpu:
    """The CUDA bodies of the channels-last ops (kernels/gpu_channels_last.py) against the
    reference on NumPy arrays: exact where the reference's order is kept (gather, col2im,
    pooling, BatchNorm + sign + pack), the GEMMs to rtol 1e-5 (cuBLAS vs OpenBLAS)."""

    pytestmark = GPU

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("c, o, hw, k, stride, padding", [(3, 5, 9, 3, 1, 1),
                                                               (70, 4, 6, 3, 2, 1),
                                                               (8, 8, 7, 1, 1, 0),
                                                               (2, 3, 8, 5, 2, 2)])
    def test_conv2d_nhwc(self, cp, dtype, c, o, hw, k, stride, padding):
        rng = np.random.default_rng(21)
        x = rng.standard_normal((3, hw, hw, c)).astype(dtype)
        wmat = rng.standard_normal((k * k * c, o)).astype(dtype)
        cuda_fwd = kernels.get("conv2d_nhwc_forward", "cuda")
        want = numpy_ref("conv2d_nhwc_forward")(x, wmat, k, k, stride, padding)
        got = cuda_fwd(cp.asarray(x), cp.asarray(wmat), k, k, stride, padding)
        np.testing.assert_allclose(_host(got), want, rtol=1e-5, atol=1e-5)
        dy = rng.standard_normal(want.shape).astype(dtype)
        bits = numpy_ref("pack_signs")(x)                 # a binary layer's packed cache
        for source, src_dev in ((x, cp.asarray(x)), (bits, cp.asarray(bits))):
            dx_ref, dw_ref = numpy_ref("conv2d_nhwc_backward")(dy, source, wmat, k, k, stride,
                                                               padding)
            dx, dw = kernels.get("conv2d_nhwc_backward", "cuda")(
                cp.asarray(dy), src_dev, cp.asarray(wmat), k, k, stride, padding)
            np.testing.assert_allclose(_host(dw), dw_ref, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(_host(dx), dx_ref, rtol=1e-5, atol=1e-4)

    @pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64])
    @pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2), (3, 1)])
    def test_maxpool2d_nhwc_is_exact(self, cp, dtype, kernel, stride):
        rng = np.random.default_rng(22)
        x = rng.integers(-3, 4, (2, 9, 8, 5)).astype(dtype)     # many ties: first max wins
        y_ref, arg_ref = numpy_ref("maxpool2d_nhwc_forward")(x, kernel, stride)
        y, arg = kernels.get("maxpool2d_nhwc_forward", "cuda")(cp.asarray(x), kernel, stride)
        np.testing.assert_array_equal(_host(y), y_ref)
        np.testing.assert_array_equal(_host(arg), arg_ref)
        if dtype == np.int32:
            return
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        want = numpy_ref("maxpool2d_nhwc_backward")(dy, arg_ref, x.shape, kernel, stride)
        got = kernels.get("maxpool2d_nhwc_backward", "cuda")(cp.asarray(dy), arg, x.shape,
                                                             kernel, stride)
        np.testing.assert_array_equal(_host(got), want)

    @pytest.mark.parametrize("z_dtype, dtype", [(np.int32, np.float32), (np.float32, np.float32),
                                                (np.int32, np.float64),
                                                (np.float64, np.float64)])
    @pytest.mark.parametrize("c", [1, 64, 70, 130])
    @pytest.mark.parametrize("ste", ["identity", "clipped", "approx", "swish"])
    def test_batchnorm_sign_pack(self, cp, z_dtype, dtype, c, ste):
        rng = np.random.default_rng(23)
        z = (rng.integers(-20, 21, (300, c)) if z_dtype == np.int32
             else rng.standard_normal((300, c))).astype(z_dtype)
        gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
        beta = rng.uniform(-0.5, 0.5, c).astype(dtype)
        dev = [cp.asarray(a) for a in (z, gamma, beta)]
        want = numpy_ref("batchnorm_sign_pack_train")(z, gamma, beta)
        train = kernels.get("batchnorm_sign_pack_train", "cuda")(*dev)
        # statistics: exact from int32 counts (exact float64 sums), else to rounding
        stat_rtol = 0 if z_dtype == np.int32 else RTOL[dtype]
        for g, w in zip(train[1:], want[1:]):
            np.testing.assert_allclose(_host(g), w, rtol=stat_rtol, atol=0)
        mean, var, inv_std = (_host(a) for a in train[1:])
        # the bits are exactly the reference's from the same statistics
        np.testing.assert_array_equal(
            _host(train[0]), numpy_ref("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta))
        np.testing.assert_array_equal(
            _host(kernels.get("batchnorm_sign_pack_eval", "cuda")(
                dev[0], train[1], train[2], dev[1], dev[2])),
            numpy_ref("batchnorm_sign_pack_eval")(z, mean, var, gamma, beta))
        ds = rng.standard_normal(z.shape).astype(dtype)
        want = numpy_ref("batchnorm_sign_pack_backward")(ds, z, mean, inv_std, gamma, beta, ste)
        got = kernels.get("batchnorm_sign_pack_backward", "cuda")(
            cp.asarray(ds), dev[0], train[1], train[3], dev[1], dev[2], ste)
        # float64 column sums in another order (and CUDA's exp/tanh for swish): to rounding
        for g, w in zip(got, want):
            np.testing.assert_allclose(_host(g), w, rtol=1e-5 if dtype == np.float32 else 1e-10,
                                       atol=1e-6 if dtype == np.float32 else 1e-12)

    def test_xnor_gemm_beyond_the_old_grid_limit(self, cp):
        """More than 65,535 column tiles (N > 4,194,240), the old grid axis y's limit."""
        n = 65_536 * 64 + 3
        rng = np.random.default_rng(24)
        b = rng.integers(0, 2 ** 63, (n, 1), dtype=np.uint64)
        a = rng.integers(0, 2 ** 63, (2, 1), dtype=np.uint64)
        got = kernels.get("xnor_gemm", "cuda")(cp.asarray(a), cp.asarray(b), 64)
        np.testing.assert_array_equal(_host(got), numpy_ref("xnor_gemm")(a, b, 64))

    @pytest.mark.parametrize("layout", ["nchw", "nhwc"])
    def test_binary_conv2d_direct_is_exact(self, cp, layout):
        rng = np.random.default_rng(25)
        for c, o, hw, k, stride, padding in [(70, 5, 9, 3, 1, 1), (3, 4, 6, 3, 2, 1),
                                             (130, 7, 5, 5, 1, 2)]:
            x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
            w = rng.standard_normal((o, c, k, k)).astype(np.float32)
            wbits, wsum = numpy_ref("pack_conv_weights")(w)
            xbits = numpy_ref("pack_conv_input")(x)
            want = numpy_ref("binary_conv2d")(xbits, wbits, wsum, c, k, k, stride, padding,
                                              layout)
            got = kernels.get("binary_conv2d", "cuda")(
                cp.asarray(xbits), cp.asarray(wbits), cp.asarray(wsum), c, k, k, stride,
                padding, layout)
            np.testing.assert_array_equal(_host(got), want)


class TestModelsOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("build, shape", [
        (lambda m: m.binary_cnn((2, 8, 8), width=4, num_classes=3), (5, 2, 8, 8)),
        (lambda m: m.binary_mlp(in_features=20, hidden=(16, 16), num_classes=4), (8, 20)),
        (lambda m: m.birealnet((3, 8, 8), width=4, blocks_per_stage=(1, 1), num_classes=3),
         (4, 3, 8, 8)),
    ])
    def test_forward_backward_match_cpu(self, cp, build, shape):
        """float64: logits, loss, gradients, running statistics (train) and eval logits on the
        GPU equal the CPU's to rtol 1e-9 (BatchNorm + sign fused on both)."""
        from minibnn.nn import models
        from minibnn.nn.functional import softmax_cross_entropy

        model = build(models)
        rng = np.random.default_rng(12)
        params, buffers = model.init(rng, np.float64)
        x = rng.standard_normal(shape)
        y = rng.integers(0, model.num_classes, size=shape[0])
        runs = {}
        for device in ("cpu", "gpu"):
            p = {k: backend.to_device(v, device) for k, v in params.items()}
            buf = {k: backend.to_device(v, device) for k, v in buffers.items()}
            xd, yd = backend.to_device(x, device), backend.to_device(y, device)
            logits, new_buf, cache = model.forward(p, buf, xd, train=True)
            loss, dlogits = softmax_cross_entropy(logits, yd)
            grads = model.backward(dlogits, cache)
            evaluated, _, _ = model.forward(p, new_buf, xd, train=False)
            runs[device] = [_host(logits), float(loss), {k: _host(g) for k, g in grads.items()},
                            {k: _host(v) for k, v in new_buf.items()}, _host(evaluated)]
            if device == "gpu":
                assert isinstance(logits, cp.ndarray)
                assert all(isinstance(g, cp.ndarray) for g in grads.values())
        (lc, sc, gc, bc, ec), (lg, sg, gg, bg, eg) = runs["cpu"], runs["gpu"]
        np.testing.assert_allclose(lg, lc, rtol=1e-9, atol=1e-12)
        assert sg == pytest.approx(sc, rel=1e-9)
        for k in gc:
            np.testing.assert_allclose(gg[k], gc[k], rtol=1e-9, atol=1e-12, err_msg=k)
        for k in bc:
            np.testing.assert_allclose(bg[k], bc[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(eg, ec, rtol=1e-9, atol=1e-12)
