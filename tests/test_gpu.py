"""GPU backend: CuPy kernels against their NumPy oracles, a training step GPU vs CPU, and the
one-line errors when there is no GPU.

Two kinds of tests live here:
  * GPU tests (classes ``Test*OnGpu``): marked ``gpu`` and skipped unless
    ``minibnn.backend.gpu_available()``. A module-level ``pytestmark`` would also skip the tests
    below that must run everywhere, so the same two marks (``GPU``) are set on each GPU class.
  * tests that run on every machine: importing ``minibnn.kernels.gpu`` without CuPy, and the
    ``DeviceError`` a user gets from a GPU kernel, ``device_module("gpu")`` and
    ``minibnn train --device gpu`` when there is no GPU.

Tolerances (GPU vs ``kernels.reference``):
  * optimiser steps: the kernels are compiled without FMA contraction and evaluate the
    reference's expressions in its order, so they should be bit-identical; m, v, w are compared
    with rtol 1e-6 (float32) / 1e-12 (float64), atol 0; b and the flip counts exactly;
  * BatchNorm + sign, eval mode: exact; train mode: statistics rtol 1e-5 (float32) / 1e-12
    (float64), signs exact wherever |y| > 1e-3 (elsewhere rounding of the statistics decides);
  * im2col, pooling, bit packing, XNOR GEMM, binary conv: exact;
  * training step (float64): logits, loss, gradients and updated parameters rtol 1e-9.
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

from minibnn import backend
from minibnn.backend import gpu_available
from minibnn.errors import DeviceError, DTypeError, ShapeError
from minibnn.kernels import reference as ref

GPU = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")]

RTOL = {np.float32: 1e-6, np.float64: 1e-12}


@pytest.fixture
def cp():
    import cupy

    return cupy


@pytest.fixture
def gpu():
    from minibnn.kernels import gpu as module

    return module


def _host(a):
    return backend.to_numpy(a)


# =========================================================================== runs everywhere


def test_gpu_module_imports_without_cupy():
    """``import minibnn.kernels.gpu`` must not need CuPy (here CuPy is made unimportable)."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import minibnn.kernels.gpu as g\n"
            "from minibnn.backend import gpu_available\n"
            "assert not gpu_available()\n"
            "print(len(g.__all__))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 16


def test_gpu_kernels_mirror_the_reference_api():
    """Same names and the same parameters (names, order, defaults) as kernels.reference."""
    from minibnn.kernels import gpu

    for name in gpu.__all__:
        mine = inspect.signature(getattr(gpu, name)).parameters
        theirs = inspect.signature(getattr(ref, name)).parameters
        assert [(p.name, p.default) for p in mine.values()] == \
               [(p.name, p.default) for p in theirs.values()], name


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend CuPy is absent, whatever this machine has."""
    from minibnn.kernels import gpu

    monkeypatch.setattr(backend, "_cupy", lambda: None)
    monkeypatch.setattr(gpu, "_CUPY", None)
    return gpu


_F = np.zeros(8, dtype=np.float32)


@pytest.mark.parametrize("name, args", [
    ("cema_update", (_F, _F, _F, _F, 0.1, 0.1)),
    ("bop_update", (_F, _F, _F, 0.1, 1e-6)),
    ("sgd_update", (_F, None, _F, 0.1)),
    ("adam_update", (_F, _F, _F, _F, 0.1, 1)),
    ("pack_signs", (_F,)),
    ("xnor_gemm", (np.zeros((2, 1), np.uint64), np.zeros((2, 1), np.uint64), 8)),
    ("batchnorm_sign_eval", (_F.reshape(2, 4), None, None)),
    ("im2col", (_F.reshape(1, 2, 2, 2), 1, 1)),
])
def test_gpu_kernel_without_gpu_is_one_line_device_error(no_gpu, name, args):
    with pytest.raises(DeviceError) as info:
        getattr(no_gpu, name)(*args)
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
               "runpy.run_module('minibnn.cli', run_name='__main__')", *args]
    else:
        cmd = [sys.executable, "-m", "minibnn.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minibnn: error:"), proc.stderr
    assert "GPU" in lines[0]
    assert not (tmp_path / "run.h5").exists()


# =========================================================================== GPU only


def _opt_buffers(rng, shape, dtype, n_ties=5):
    """b = ±1, m, v, g random, with a few positions where m = v = g = 0 (exact ties)."""
    b = np.where(rng.random(shape) < 0.5, 1.0, -1.0).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.standard_normal(shape)).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    flat = [a.reshape(-1) for a in (m, v, g)]
    for a in flat:
        a[:n_ties] = 0
    return b, m, v, g


SHAPES = [(10_037,), (37, 129), (1,)]


class TestOptimiserParityOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("tie, threshold", [("keep", 0.0), ("positive", 0.0),
                                                ("keep", 1e-3)])
    def test_cema(self, cp, gpu, dtype, shape, tie, threshold):
        rng = np.random.default_rng(1)
        b, m, v, g = _opt_buffers(rng, shape, dtype)
        dev = [cp.asarray(a) for a in (b, m, v, g)]
        for step in range(3):                       # a few steps: flips feed back into b
            n_ref = ref.cema_update(b, m, v, g, alpha=0.3, gamma=0.2, threshold=threshold,
                                    tie=tie)
            n_gpu = gpu.cema_update(*dev, alpha=0.3, gamma=0.2, threshold=threshold, tie=tie)
            assert int(n_gpu) == n_ref
        np.testing.assert_array_equal(_host(dev[0]), b)
        np.testing.assert_allclose(_host(dev[1]), m, rtol=RTOL[dtype], atol=0)
        np.testing.assert_allclose(_host(dev[2]), v, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("tie, threshold", [("keep", 1e-6), ("positive", 0.0)])
    def test_bop(self, cp, gpu, dtype, shape, tie, threshold):
        rng = np.random.default_rng(2)
        b, m, _, g = _opt_buffers(rng, shape, dtype)
        dev = [cp.asarray(a) for a in (b, m, g)]
        for step in range(3):
            n_ref = ref.bop_update(b, m, g, gamma=0.1, threshold=threshold, tie=tie)
            n_gpu = gpu.bop_update(*dev, gamma=0.1, threshold=threshold, tie=tie)
            assert int(n_gpu) == n_ref
        np.testing.assert_array_equal(_host(dev[0]), b)
        np.testing.assert_allclose(_host(dev[1]), m, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("momentum, dampening", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
    @pytest.mark.parametrize("weight_decay", [0.0, 5e-2])
    @pytest.mark.parametrize("decoupled", [False, True])
    def test_sgd(self, cp, gpu, dtype, momentum, dampening, weight_decay, decoupled):
        rng = np.random.default_rng(3)
        _, m, _, g = _opt_buffers(rng, SHAPES[0], dtype)
        w = rng.standard_normal(SHAPES[0]).astype(dtype)
        m = m if momentum else None
        dev_w, dev_g = cp.asarray(w), cp.asarray(g)
        dev_m = cp.asarray(m) if m is not None else None
        for step in range(3):                       # step 0 is PyTorch's first momentum step
            kw = dict(lr=0.05, momentum=momentum, weight_decay=weight_decay,
                      dampening=dampening, decoupled=decoupled, first_step=step == 0)
            ref.sgd_update(w, m, g, **kw)
            gpu.sgd_update(dev_w, dev_m, dev_g, **kw)
        np.testing.assert_allclose(_host(dev_w), w, rtol=RTOL[dtype], atol=0)
        if m is not None:
            np.testing.assert_allclose(_host(dev_m), m, rtol=RTOL[dtype], atol=0)

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (1e-2, False),
                                                         (1e-2, True)])
    def test_adam(self, cp, gpu, dtype, weight_decay, decoupled):
        rng = np.random.default_rng(4)
        _, m, v, g = _opt_buffers(rng, SHAPES[1], dtype)
        v = np.abs(v)
        w = rng.standard_normal(SHAPES[1]).astype(dtype)
        dev = [cp.asarray(a) for a in (w, m, v, g)]
        for step in (1, 2, 7):
            kw = dict(lr=1e-3, step=step, weight_decay=weight_decay, decoupled=decoupled)
            ref.adam_update(w, m, v, g, **kw)
            gpu.adam_update(*dev, **kw)
        for got, want in zip(dev[:3], (w, m, v)):
            np.testing.assert_allclose(_host(got), want, rtol=RTOL[dtype], atol=0)

    def test_bad_arguments_are_one_line_errors(self, cp, gpu):
        a = cp.zeros(6, dtype=cp.float32)
        with pytest.raises(DTypeError, match="CuPy array"):
            gpu.cema_update(np.zeros(6, np.float32), a, a, a, 0.1, 0.1)
        with pytest.raises(ShapeError, match="shape"):
            gpu.cema_update(a, a, a, cp.zeros(5, dtype=cp.float32), 0.1, 0.1)
        with pytest.raises(DTypeError, match="dtype"):
            gpu.bop_update(a, a, cp.zeros(6, dtype=cp.float64), 0.1, 0.0)
        with pytest.raises(ShapeError, match="C-contiguous"):
            w = cp.zeros((4, 6), dtype=cp.float32).T
            gpu.adam_update(w, w.copy(), w.copy(), w.copy(), 0.1, 1)
        with pytest.raises(ShapeError, match="momentum"):
            gpu.sgd_update(a, None, a, 0.1, momentum=0.9)


class TestBatchNormSignOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(16, 5), (4, 3, 7, 9)])
    def test_eval_is_exact(self, cp, gpu, dtype, shape):
        rng = np.random.default_rng(5)
        c = shape[1]
        x = rng.standard_normal(shape).astype(dtype)
        x.reshape(-1)[:3] = 0
        mean, var = rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.1
        gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        want = ref.batchnorm_sign_eval(x, mean, var, gamma, beta)
        got = gpu.batchnorm_sign_eval(*(cp.asarray(a) for a in (x, mean, var, gamma, beta)))
        np.testing.assert_array_equal(_host(got), want)
        got_default = gpu.batchnorm_sign_eval(cp.asarray(x), cp.asarray(mean), cp.asarray(var))
        np.testing.assert_array_equal(_host(got_default), ref.batchnorm_sign_eval(x, mean, var))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(64, 5), (8, 3, 7, 9)])
    def test_train_matches_reference(self, cp, gpu, dtype, shape):
        rng = np.random.default_rng(6)
        c = shape[1]
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        want = ref.batchnorm_sign_train(x, gamma, beta)
        got = [_host(a) for a in gpu.batchnorm_sign_train(cp.asarray(x), cp.asarray(gamma),
                                                          cp.asarray(beta))]
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for name, g_, w_ in zip(("s", "y", "xhat", "mean", "var", "inv_std"), got, want):
            assert g_.shape == w_.shape and g_.dtype == w_.dtype, name
            if name != "s":
                np.testing.assert_allclose(g_, w_, rtol=tol, atol=tol, err_msg=name)
        clear = np.abs(want[1]) > 1e-3
        np.testing.assert_array_equal(got[0][clear], want[0][clear])


class TestConvAndPoolingOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("kh, kw, stride, padding", [(3, 3, 1, 1), (3, 2, 2, 0),
                                                          (1, 1, 1, 0), (5, 5, 2, 2)])
    def test_im2col_col2im(self, cp, gpu, kh, kw, stride, padding):
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
        cols = gpu.im2col(cp.asarray(x), kh, kw, stride, padding)
        want = ref.im2col(x, kh, kw, stride, padding)
        np.testing.assert_array_equal(_host(cols), want)
        d = rng.standard_normal(want.shape).astype(np.float32)
        np.testing.assert_allclose(_host(gpu.col2im(cp.asarray(d), x.shape, kh, kw, stride,
                                                    padding)),
                                   ref.col2im(d, x.shape, kh, kw, stride, padding), rtol=1e-6)

    @pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
    def test_maxpool(self, cp, gpu, kernel, stride, padding):
        rng = np.random.default_rng(8)
        x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
        x[0, 0, :2, :2] = 1.0                       # a tie: the first maximum wins
        y, arg = gpu.maxpool2d_forward(cp.asarray(x), kernel, stride, padding)
        y_ref, arg_ref = ref.maxpool2d_forward(x, kernel, stride, padding)
        np.testing.assert_array_equal(_host(y), y_ref)
        np.testing.assert_array_equal(_host(arg), arg_ref)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        got = gpu.maxpool2d_backward(cp.asarray(dy), arg, x.shape, kernel, stride, padding)
        np.testing.assert_allclose(_host(got), ref.maxpool2d_backward(dy, arg_ref, x.shape,
                                                                       kernel, stride, padding),
                                   rtol=1e-6)


class TestBitPackingAndXnorOnGpu:
    pytestmark = GPU

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (3, 4, 200), (2, 3, 64)])
    def test_pack_unpack(self, cp, gpu, dtype, shape):
        rng = np.random.default_rng(9)
        x = rng.standard_normal(shape).astype(dtype)
        x.reshape(-1)[::7] = 0                      # sign(0) = +1, bit 1
        packed = gpu.pack_signs(cp.asarray(x))
        want = ref.pack_signs(x)
        assert packed.dtype == np.uint64 and packed.shape == want.shape
        np.testing.assert_array_equal(_host(packed), want)
        back = gpu.unpack_signs(packed, shape[-1], dtype)
        np.testing.assert_array_equal(_host(back), ref.unpack_signs(want, shape[-1], dtype))

    @pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 0, 2), (65, 64, 63), (64, 65, 64),
                                         (130, 4608, 67), (7, 1000, 129)])
    def test_xnor_gemm_is_exact(self, cp, gpu, m, k, n):
        rng = np.random.default_rng(10)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        if k == 0:                                  # no bits: the empty sum, C = 0
            pa, pb = np.zeros((m, 0), np.uint64), np.zeros((n, 0), np.uint64)
        else:
            pa, pb = ref.pack_signs(a), ref.pack_signs(b)
        got = gpu.xnor_gemm(cp.asarray(pa), cp.asarray(pb), k)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(_host(got), ref.xnor_gemm(pa, pb, k))
        sa, sb = np.where(a >= 0, 1.0, -1.0), np.where(b >= 0, 1.0, -1.0)
        np.testing.assert_array_equal(_host(got), (sa @ sb.T).astype(np.int64))

    @pytest.mark.parametrize("c, o, hw, k, stride, padding", [(70, 5, 9, 3, 1, 1),
                                                               (3, 4, 6, 3, 2, 1),
                                                               (64, 8, 5, 1, 1, 0),
                                                               (5, 3, 7, 3, 1, 0)])
    def test_binary_conv2d_is_exact(self, cp, gpu, c, o, hw, k, stride, padding):
        rng = np.random.default_rng(11)
        x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        wbits, wsum = gpu.pack_conv_weights(cp.asarray(w))
        wbits_ref, wsum_ref = ref.pack_conv_weights(w)
        np.testing.assert_array_equal(_host(wbits), wbits_ref)
        np.testing.assert_array_equal(_host(wsum), wsum_ref)
        xbits = gpu.pack_conv_input(cp.asarray(x))
        np.testing.assert_array_equal(_host(xbits), ref.pack_conv_input(x))
        y = gpu.binary_conv2d(xbits, wbits, wsum, c, k, k, stride, padding)
        want = ref.binary_conv2d(ref.pack_conv_input(x), wbits_ref, wsum_ref, c, k, k, stride,
                                 padding)
        assert y.dtype == np.int32
        np.testing.assert_array_equal(_host(y), want)


class TestTrainingStepOnGpu:
    pytestmark = GPU

    def test_binary_mlp_step_matches_cpu(self, cp):
        """Three CEMA + Adam steps of a small binary MLP in float64: GPU == CPU (rtol 1e-9)."""
        from minibnn import optim
        from minibnn.nn.functional import softmax_cross_entropy
        from minibnn.nn.models import binary_mlp

        model = binary_mlp(in_features=20, hidden=(16, 16), num_classes=4,
                           binary_storage="binary")
        rng = np.random.default_rng(12)
        params, buffers = model.init(rng, np.float64)
        x = rng.standard_normal((8, 20))
        y = rng.integers(0, 4, size=8)
        opt = optim.partition({"binary": optim.cema(0.05, 0.3), "real": optim.adam(1e-2)},
                              model.param_label)
        runs = {}
        for device in ("cpu", "gpu"):
            p = {k: backend.to_device(v, device) for k, v in params.items()}
            buf = {k: backend.to_device(v, device) for k, v in buffers.items()}
            xd, yd = backend.to_device(x, device), backend.to_device(y, device)
            state = opt.init(p)
            record = []
            for _ in range(3):
                logits, new_buf, cache = model.forward(p, buf, xd, train=True)
                loss, dlogits = softmax_cross_entropy(logits, yd)
                grads = model.backward(dlogits, cache)
                p, state = opt.update(grads, state, p)
                buf.update(new_buf)
                record.append((_host(logits), loss, {k: _host(g) for k, g in grads.items()},
                               {k: _host(v) for k, v in p.items()},
                               {k: _host(v) for k, v in buf.items()}))
            if device == "gpu":
                assert all(isinstance(v, cp.ndarray) for v in p.values())
            runs[device] = record
        for (lc, sc, gc, pc, bc), (lg, sg, gg, pg, bg) in zip(runs["cpu"], runs["gpu"]):
            np.testing.assert_allclose(lg, lc, rtol=1e-9, atol=1e-12)
            assert sg == pytest.approx(sc, rel=1e-9)
            for k in gc:
                np.testing.assert_allclose(gg[k], gc[k], rtol=1e-9, atol=1e-12, err_msg=k)
            for k in pc:
                if k in model.binary_names:
                    np.testing.assert_array_equal(pg[k], pc[k], err_msg=k)
                else:
                    np.testing.assert_allclose(pg[k], pc[k], rtol=1e-9, atol=1e-12, err_msg=k)
            for k in bc:
                np.testing.assert_allclose(bg[k], bc[k], rtol=1e-9, atol=1e-12, err_msg=k)
