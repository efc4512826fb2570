"""The kernel registry: which body ``kernels.call`` runs, its overrides and errors, and that the
layers give the same results on every backend (``use_backend("numpy")`` vs ``"auto"``).

Tolerances for layers, numpy vs auto (Numba on this machine): forward values exact (im2col,
max pooling and BatchNorm+sign are exact kernels); gradients rtol = atol = 1e-5 (float32) /
1e-12 (float64), since col2im and the max-pool backward add in another order.
"""
import subprocess
import sys

import numba  # noqa: F401  (a hard dependency: a missing or broken Numba fails this file)
import numpy as np
import pytest

from minibnn import kernels
from minibnn.errors import MinibnnError
from minibnn.kernels import BackendError
from minibnn.nn import functional as F
from minibnn.nn import models
from minibnn.nn.containers import Sequential, _fuse_signs
from minibnn.nn.modules import BatchNorm, BatchNormSign, Sign

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _in_fresh_interpreter(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# =========================================================================== the registry


def test_kernels_import_nothing_from_nn():
    """Importing minibnn.kernels and loading every body leaves minibnn.nn unimported."""
    out = _in_fresh_interpreter(
        "import sys\n"
        "from minibnn import kernels\n"
        "from minibnn.kernels import bitpack\n"
        "table = kernels.registered()\n"
        "print(len(table), sorted(m for m in sys.modules if m.startswith('minibnn.nn')))\n")
    count, loaded = out.split(" ", 1)
    assert int(count) >= 16 and loaded.strip() == "[]"


def test_registered_table():
    table = kernels.registered()
    ops = {"im2col", "col2im", "maxpool2d_forward", "maxpool2d_backward", "batchnorm_sign_eval",
           "batchnorm_sign_train", "pack_signs", "unpack_signs", "xnor_gemm", "pack_conv_input",
           "pack_conv_weights", "binary_conv2d", "cema_update", "bop_update", "sgd_update",
           "adam_update"}
    assert ops <= set(table)
    assert all("numpy" in backends for backends in table.values())
    # a CUDA body only where it is a real kernel; the rest runs the reference on CuPy arrays
    cuda = {op for op, backends in table.items() if "cuda" in backends}
    assert cuda == {"batchnorm_sign_eval", "batchnorm_sign_train", "pack_signs", "unpack_signs",
                    "xnor_gemm", "binary_conv2d", "cema_update", "bop_update", "sgd_update",
                    "adam_update", "conv2d_nhwc_forward", "conv2d_nhwc_backward",
                    "maxpool2d_nhwc_forward", "maxpool2d_nhwc_backward",
                    "batchnorm_sign_pack_train", "batchnorm_sign_pack_eval",
                    "batchnorm_sign_pack_backward"}
    assert {op for op, backends in table.items() if "numba" not in backends} == \
           {"pack_conv_weights"}


def test_choice_by_array_type_and_use_backend_override_and_nesting():
    x = np.zeros((1, 1, 3, 3), np.float32)
    assert kernels.backend_for("im2col", x) == "numba" and kernels.has_compiled("im2col", x)
    assert kernels.backend_for("pack_conv_weights", x) == "numpy"      # no Numba body
    assert not kernels.has_compiled("pack_conv_weights", x)
    with kernels.use_backend("numpy"):
        assert kernels.backend_for("im2col", x) == "numpy"
        assert not kernels.has_compiled("cema_update", x)
        with kernels.use_backend("numba"):                              # inner one wins
            assert kernels.backend_for("im2col", x) == "numba"
            assert kernels.backend_for("pack_conv_weights", x) == "numpy"
            with kernels.use_backend("auto"):
                assert kernels.backend_for("im2col", x) == "numba"
        assert kernels.backend_for("im2col", x) == "numpy"               # restored on exit
    assert kernels.backend_for("im2col", x) == "numba"
    with pytest.raises(ZeroDivisionError):
        with kernels.use_backend("numpy"):
            1 / 0
    assert kernels.backend_for("im2col", x) == "numba"                   # restored on error


def test_call_runs_the_chosen_body(monkeypatch):
    seen = []
    body = kernels.get("xnor_gemm", "numpy")

    def spy(*args, **kw):
        seen.append(kw)
        return body(*args)

    monkeypatch.setitem(kernels.registry._IMPLS["xnor_gemm"], "numpy", spy)
    a = np.zeros((2, 1), np.uint64)
    with kernels.use_backend("numpy"):
        assert kernels.call("xnor_gemm", a, a, 8).tolist() == [[8, 8], [8, 8]]
    assert len(seen) == 1


def test_errors_are_one_line_backend_errors():
    x = np.zeros(4, np.float32)
    cases = [
        (lambda: kernels.use_backend("fortran").__enter__(), r"unknown kernel backend 'fortran'"),
        (lambda: kernels.call("conv3d", x), r"unknown kernel op 'conv3d'"),
        (lambda: kernels.get("pack_conv_weights", "cuda"), r"has no 'cuda' body"),
        (lambda: kernels.register("im2col", "opencl"), r"unknown backend 'opencl'"),
    ]
    for call, pattern in cases:
        with pytest.raises(BackendError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value) and isinstance(info.value, MinibnnError)
    with kernels.use_backend("cuda"):                 # CUDA cannot run NumPy arrays
        with pytest.raises(BackendError, match=r"'cuda' cannot run numpy arrays") as info:
            kernels.call("cema_update", x, x, x, x, 0.1, 0.1)
        assert "\n" not in str(info.value)
        with pytest.raises(BackendError, match="cuda"):
            kernels.backend_for("im2col", x)


class _FakeCupyArray:
    """Looks like a CuPy array to the registry, which decides by the type's module."""


_FakeCupyArray.__module__ = "cupy._core.core"


def test_cupy_arrays_choose_cuda_or_the_reference_and_refuse_numba():
    v = _FakeCupyArray()
    assert kernels.backend_for("cema_update", v) == "cuda"
    assert kernels.backend_for("im2col", v) == "numpy"              # reference on CuPy arrays
    with kernels.use_backend("cuda"):
        assert kernels.backend_for("im2col", v) == "numpy"
    with kernels.use_backend("numpy"):
        assert kernels.backend_for("cema_update", v) == "numpy"
    with kernels.use_backend("numba"):
        with pytest.raises(BackendError, match=r"'numba' cannot run cupy arrays") as info:
            kernels.backend_for("cema_update", v)
        assert "\n" not in str(info.value)
    assert kernels.backend_for("cema_update", np.zeros(3), v) == "cuda"   # any CuPy argument


def test_without_numba_auto_is_a_loud_error_and_the_reference_still_runs():
    out = _in_fresh_interpreter(
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from minibnn import kernels\n"
        "x = np.ones((1, 1, 3, 3), np.float32)\n"
        "with kernels.use_backend('numpy'):\n"
        "    print(kernels.backend_for('im2col', x), kernels.call('im2col', x, 3, 3).shape)\n"
        "for backend in ('auto', 'numba'):\n"
        "    with kernels.use_backend(backend):\n"
        "        try:\n"
        "            kernels.call('im2col', x, 3, 3)\n"
        "        except kernels.BackendError as e:\n"
        "            print(e)\n")
    first, *errors = out.strip().splitlines()
    assert first == "numpy (1, 9)"
    assert len(errors) == 2
    for error in errors:
        assert "'numba' did not import" in error and "--backend numpy" in error


# =========================================================================== layers: numpy vs auto


def _run_both(fn):
    out = []
    for backend in ("numpy", "auto"):
        with kernels.use_backend(backend):
            out.append(fn())
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k, stride, padding", [
    ((1, 1, 5, 5), 3, 1, 0), ((2, 3, 7, 6), 3, 2, 1), ((3, 2, 9, 9), 5, 1, 2), ((2, 4, 4, 4), 1, 1, 0),
])
def test_conv2d_same_on_every_backend(dtype, shape, k, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    w = rng.normal(size=(5, shape[1], k, k)).astype(dtype)

    def run():
        y, cache = F.conv2d_forward(x, w, stride=stride, padding=padding)
        dx, dw, _ = F.conv2d_backward(np.ones_like(y), cache)
        return y, dx, dw

    (y0, dx0, dw0), (y1, dx1, dw1) = _run_both(run)
    assert np.array_equal(y0, y1) and np.array_equal(dw0, dw1)
    np.testing.assert_allclose(dx1, dx0, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_same_on_every_backend(kind):
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 7))
    fwd, bwd = ((F.maxpool2d_forward, F.maxpool2d_backward) if kind == "max"
                else (F.avgpool2d_forward, F.avgpool2d_backward))

    def run():
        y, cache = fwd(x, 3, 2, 1)
        return y, bwd(np.ones_like(y), cache)

    (y0, dx0), (y1, dx1) = _run_both(run)
    assert np.array_equal(y0, y1)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build, shape", [
    (lambda: models.binary_cnn((2, 8, 8), width=4, num_classes=3), (5, 2, 8, 8)),
    (lambda: models.binary_mlp((1, 6, 6), hidden=(16, 8), num_classes=3), (6, 1, 6, 6)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_models_same_on_every_backend(build, shape, dtype):
    model = build()
    rng = np.random.default_rng(3)
    params, buffers = model.init(rng, dtype)
    x = rng.normal(size=shape).astype(dtype)

    def run():
        logits, new_buffers, cache = model.forward(params, buffers, x, train=True)
        grads = model.backward(np.ones_like(logits), cache)
        evaluated, _, _ = model.forward(params, new_buffers, x, train=False)
        return logits, new_buffers, grads, evaluated

    (l0, b0, g0, e0), (l1, b1, g1, e1) = _run_both(run)
    assert np.array_equal(l0, l1) and np.array_equal(e0, e1)
    for k in b0:
        assert np.array_equal(b0[k], b1[k]), k
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=TOL[dtype], atol=TOL[dtype], err_msg=k)


# ======================================================================= BatchNorm + sign fusion


def _layer_by_layer(net, params, buffers, x, train, dy):
    """Run the Sequential's layers one by one (no fusion): output, buffers, grads."""
    caches, new_buffers = [], {}
    for layer in net.layers:
        x, updated, cache = layer.forward(params, buffers, x, train)
        new_buffers.update(updated)
        caches.append(cache)
    grads = {}
    for layer, cache in zip(reversed(net.layers), reversed(caches)):
        dy, g = layer.backward(dy, cache)
        grads.update(g)
    return x, new_buffers, grads, dy


def _run_steps(steps, params, buffers, x, train, dy):
    """Run ``steps`` in order and back: output, buffers, grads, dx, caches."""
    caches, new_buffers = [], {}
    for step in steps:
        x, updated, cache = step.forward(params, buffers, x, train)
        new_buffers.update(updated)
        caches.append(cache)
    grads = {}
    for step, cache in zip(reversed(steps), reversed(caches)):
        dy, g = step.backward(dy, cache)
        grads.update(g)
    return x, new_buffers, grads, dy, caches


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_sequential_fuses_batchnorm_sign_with_the_same_bits(train, backend):
    model = models.binary_cnn((2, 8, 8), width=4, num_classes=3, act_ste="approx")
    net = model.net
    # the fused NCHW steps (which the channels-last group then runs NHWC: see
    # test_channels_last_model.py)
    steps = _fuse_signs(net.layers)
    fused = [s for s in steps if isinstance(s, BatchNormSign)]
    assert len(fused) == 6 and len(steps) == len(net.layers) - 6    # every BN -> Sign pair
    assert all(s.name == s.bn.name for s in fused)
    group = net.steps()[0].steps
    assert [(type(a), a.name) for a in group] == [(type(a), a.name) for a in steps[:len(group)]]
    rng = np.random.default_rng(4)
    params, buffers = model.init(rng, np.float32)
    params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in params.items()}
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((3, 3)).astype(np.float32)
    built = net.steps()
    with kernels.use_backend(backend):
        y, new_buffers, grads, dx, cache = _run_steps(steps, params, buffers, x, train, dy)
        y2, new_buffers2, grads2, dx2 = _layer_by_layer(net, params, buffers, x, train, dy)
        _, _, net_cache = net.forward(params, buffers, x, train)
    # the steps are built once, and the cache has one entry per step (not per layer)
    assert len(net_cache) == len(built) and all(a is b for a, b in zip(net.steps(), built))
    assert len(net_cache[0]) == len(group)
    assert np.array_equal(y, y2) and np.array_equal(dx, dx2)
    assert set(new_buffers) == set(new_buffers2) and set(grads) == set(grads2) == set(params)
    for k in new_buffers:
        assert np.array_equal(new_buffers[k], new_buffers2[k]), k
    for k in grads:
        assert np.array_equal(grads[k], grads2[k]), k


def test_fusion_only_for_affine_batchnorm_followed_by_the_real_sign():
    bn, sign = BatchNorm("bn", 3), Sign("approx")
    assert isinstance(Sequential([bn, sign], layout="nhwc").steps()[0], BatchNormSign)
    no_affine = BatchNorm("bn", 3, affine=False)
    assert Sequential([no_affine, sign], layout="nhwc").steps() == [no_affine, sign]
    assert Sequential([sign, bn], layout="nhwc").steps() == [sign, bn]
    assert Sequential([bn, sign]).steps() == [bn, sign]              # nchw: as written
    other = Sign()
    other.forward_fn = lambda x, ste="identity": (x, None)          # a replaced sign
    assert Sequential([bn, other], layout="nhwc").steps() == [bn, other]
    with pytest.raises(MinibnnError, match="needs an affine BatchNorm and a Sign"):
        BatchNormSign(no_affine, sign)
    params, buffers = Sequential([bn, sign]).init(np.random.default_rng(0), np.float32)
    assert set(params) == {"bn.gamma", "bn.beta"}
    assert set(buffers) == {"bn.running_mean", "bn.running_var"}


def test_every_op_is_a_function_object_declared_by_its_reference_body():
    """Layers call ops as functions (``kernels.im2col(...)``); each op carries its reference
    body, and compiled bodies are registered for the op object itself."""
    import ast
    import inspect
    from pathlib import Path

    from minibnn.kernels import cpu, reference

    table = kernels.registered()
    assert sorted(kernels.OPS) == sorted(table)
    for name in kernels.OPS:
        op = getattr(kernels, name)
        assert op.op_name == name and op.__name__ == name
        assert op.reference is kernels.get(name, "numpy") is kernels.get(op, "numpy")
        assert inspect.signature(op) == inspect.signature(op.reference)
    assert kernels.get(kernels.im2col, "numba") is cpu.im2col
    assert reference.im2col is kernels.im2col
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(kernels.im2col(x, 3, 3, 1, 1),
                                  kernels.call("im2col", x, 3, 3, 1, 1))
    # no string-keyed dispatch left in the package outside the registry
    root = Path(kernels.__file__).resolve().parent.parent
    for path in root.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "call" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                raise AssertionError(f"{path}: dispatch by name {node.args[0].value!r}")
