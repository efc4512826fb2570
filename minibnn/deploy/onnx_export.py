"""ONNX export: a trained model as a standard ONNX graph (opset 17) that onnxruntime runs.

Layer by layer, as declared (NCHW, eval mode):

    Dense / BinaryDense         Gemm(x, W, b, transB=1)      binary W = sign(w) (x mean|w| with
    Conv2d / BinaryConv2d       Conv(x, W, b, pads, strides)   scale), as float initialisers
    BatchNorm                   BatchNormalization (running statistics; no affine: 1 and 0)
    Sign                        Where(x >= 0, 1, -1)          minibnn's sign(0) = +1
    MaxPool2d / AvgPool2d       MaxPool / AveragePool(count_include_pad=1)
    GlobalAvgPool               GlobalAveragePool, then Flatten
    Flatten, ReLU, Hardtanh     Flatten(axis=1), Relu, Clip(-1, 1)
    PReLU / LearnableBias       PRelu / Add with a per-channel (C, 1, 1) or (C,) initialiser
    Residual                    body and shortcut, then Add

The graph is float32 (binary weights stored as float +-1: ONNX has no 1-bit convolution);
input ``x`` (N, C, H, W) standardised as in training, output ``logits`` (N, classes). A layer
with no ONNX form is a one-line error naming it. Needs the optional extra ``onnx``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from minibnn.errors import MinibnnError
from minibnn.nn import functional as F
from minibnn.nn.containers import Residual, Sequential
from minibnn.nn.models import Model
from minibnn.nn.modules import (BatchNorm, BinaryConv2d, BinaryDense, Conv2d, Dense,
                                LearnableBias, Module, PReLU, Stateless, _BinaryWeights)

OPSET = 17


class _Graph:
    """Nodes and initialisers being built; fresh tensor names."""

    def __init__(self, onnx: Any):
        self.onnx, self.nodes, self.inits = onnx, [], []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], **attrs))
        return out


def _channel_shape(ndim: int, v: np.ndarray) -> np.ndarray:
    return v.reshape(-1, 1, 1) if ndim == 4 else v


def _emit(g: _Graph, module: Module, x: str, ndim: int, params: dict, buffers: dict
          ) -> tuple[str, int]:
    """Append ``module``'s nodes; return the output name and its rank."""
    f32 = np.float32
    if isinstance(module, Sequential):
        for layer in module.layers:
            x, ndim = _emit(g, layer, x, ndim, params, buffers)
        return x, ndim
    if isinstance(module, Residual):
        y, _ = _emit(g, module.body, x, ndim, params, buffers)
        s = x if module.shortcut is None else _emit(g, module.shortcut, x, ndim, params,
                                                    buffers)[0]
        return g.node("Add", [y, s], "add"), ndim
    if isinstance(module, (Dense, BinaryDense, Conv2d, BinaryConv2d)):
        if isinstance(module, _BinaryWeights):
            w, _ = module.effective_weight(params)         # sign(w), a * sign(w), or b
        else:
            w = params[module.key("w")]
        inputs = [x, g.const(module.key("w"), w.astype(f32))]
        if module.key("b") in params:
            inputs.append(g.const(module.key("b"), params[module.key("b")].astype(f32)))
        if isinstance(module, (Dense, BinaryDense)):
            return g.node("Gemm", inputs, module.name, transB=1), 2
        p = module.padding
        return g.node("Conv", inputs, module.name, strides=[module.stride] * 2,
                      pads=[p, p, p, p], kernel_shape=list(w.shape[2:])), 4
    if isinstance(module, BatchNorm):
        c = module.channels
        gamma = params.get(module.key("gamma"), np.ones(c)).astype(f32)
        beta = params.get(module.key("beta"), np.zeros(c)).astype(f32)
        inputs = [x, g.const(module.key("gamma"), gamma), g.const(module.key("beta"), beta),
                  g.const(module.key("running_mean"),
                          buffers[module.key("running_mean")].astype(f32)),
                  g.const(module.key("running_var"),
                          buffers[module.key("running_var")].astype(f32))]
        return g.node("BatchNormalization", inputs, module.name, epsilon=float(module.eps)), ndim
    if isinstance(module, PReLU):
        a = _channel_shape(ndim, params[module.key("a")].astype(f32))
        return g.node("PRelu", [x, g.const(module.key("a"), a)], module.name), ndim
    if isinstance(module, LearnableBias):
        b = _channel_shape(ndim, params[module.key("b")].astype(f32))
        return g.node("Add", [x, g.const(module.key("b"), b)], module.name), ndim
    if isinstance(module, Stateless):
        return _emit_stateless(g, module, x, ndim)
    raise MinibnnError(f"ONNX export: layer {type(module).__name__} {module.name!r} has no "
                       "ONNX form")


def _emit_stateless(g: _Graph, module: Stateless, x: str, ndim: int) -> tuple[str, int]:
    fn, kw = module.forward_fn, module.kwargs
    if fn is F.sign_forward:
        nonneg = g.node("GreaterOrEqual", [x, g.const("zero", np.zeros((), np.float32))], "ge")
        return g.node("Where", [nonneg, g.const("one", np.ones((), np.float32)),
                                g.const("minus_one", -np.ones((), np.float32))], "sign"), ndim
    if fn is F.flatten_forward:
        return g.node("Flatten", [x], "flatten", axis=1), 2
    if fn is F.relu_forward:
        return g.node("Relu", [x], "relu"), ndim
    if fn is F.hardtanh_forward:
        return g.node("Clip", [x, g.const("lo", -np.ones((), np.float32)),
                               g.const("hi", np.ones((), np.float32))], "hardtanh"), ndim
    if fn in (F.maxpool2d_forward, F.avgpool2d_forward):
        k = int(kw["kernel"])
        s = int(kw.get("stride") or k)
        p = int(kw.get("padding") or 0)
        attrs: dict[str, Any] = dict(kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
        if fn is F.avgpool2d_forward:
            return g.node("AveragePool", [x], "avgpool", count_include_pad=1, **attrs), 4
        return g.node("MaxPool", [x], "maxpool", **attrs), 4
    if fn is F.global_avgpool_forward:
        pooled = g.node("GlobalAveragePool", [x], "gap")
        return g.node("Flatten", [pooled], "gap_flat", axis=1), 2
    raise MinibnnError(f"ONNX export: operation {fn.__name__.removesuffix('_forward')!r} has "
                       "no ONNX form")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MinibnnError("ONNX export needs the onnx package: pip install 'minibnn[onnx]'"
                           ) from None
    return onnx


def build_onnx(model: Model, params: dict, buffers: dict) -> Any:
    """The ONNX ModelProto of ``model`` with these parameters (float32 only)."""
    onnx = _onnx()
    dtype = np.dtype(next(iter(params.values())).dtype)
    if dtype != np.float32:
        raise MinibnnError(f"ONNX export writes float32 graphs; this model is {dtype.name} "
                           "(train it with --dtype float32)")
    g = _Graph(onnx)
    out, _ = _emit(g, model.net, "x", 1 + len(model.input_shape), params, buffers)
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["logits"]))
    tp = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, model.name,
        [onnx.helper.make_tensor_value_info("x", tp, ["N", *model.input_shape])],
        [onnx.helper.make_tensor_value_info("logits", tp, ["N", model.num_classes])],
        initializer=g.inits)
    proto = onnx.helper.make_model(graph, producer_name="minibnn",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(proto)
    return proto
