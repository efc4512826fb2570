"""A minibnn run as a ``torch.nn.Module``: ``build(path)`` reads a PyTorch export.

``minibnn export RUN.h5 --format torch --out model.pt`` (``minibnn.deploy.torch_export``)
writes the run's parameters, buffers, spec and optimiser state; ``build`` rebuilds minibnn's own
model from the stored spec (``run.train.model_from_spec``: one definition of each
architecture) and translates its *declared* layers (``Sequential.layers``, whatever layout it
trained in) one by one:

    Dense, Conv2d             F.linear / F.conv2d; weights (out, in) and OIHW, as stored
    BinaryDense, BinaryConv2d latent storage (sgd, adam runs): the latent w is the parameter,
                              W = a * sign(w) with the weight STE as its backward, and with a
                              scale a = mean_in |w| per output channel (a = 1 without):
                              dL/dw = a ste'(w) dL/dW + sign(w) mean_in(dL/dW sign(w)),
                              minibnn's ``_BinaryWeights.weight_grad``;
                              +-1 storage (filter optimisers): W = b, dL/db = dL/dW
    BatchNorm                 F.batch_norm: batch statistics in train mode (running ones
                              updated as minibnn and PyTorch both do), running ones in eval
    Sign                      ``SignSTE``: sign(0) = +1, backward dy * ste'(x)
    ReLU                      F.relu (real activations: backward dy where x > 0, as minibnn)
    PReLU, LearnableBias      where(x > 0, x, a x) and x + b, per channel
    RPReLU                    its three layers in order: LearnableBias ``NAME.move_in``,
                              PReLU ``NAME.prelu``, LearnableBias ``NAME.move_out``
    MaxPool2d, AvgPool2d      F.max_pool2d (ties: the first maximum, as minibnn),
                              F.avg_pool2d (padded zeros count, as minibnn)
    GlobalAvgPool, Flatten    mean over H, W; flatten(1)
    Residual                  body(x) + shortcut(x) (identity shortcut when None)
    Concat                    cat([branch(x), ...], dim=1) (ReActNet's widening block)

A model built with ``weights="real"`` has Dense/Conv2d (no bias) where the binary layers were,
under their names, and ``activations="real"`` a ReLU for each Sign: both translate as above.

A layer with no form here is a one-line error naming it. Parameters and buffers keep minibnn's
names: ``module.state_dict()`` has exactly the run checkpoint's keys (``fc2.w``,
``bn1.running_mean``, ``s1b1.conv.w``), nested as the dots say, so optimiser state keyed by
those names finds its parameter (``named_parameters``). The wiring between layers is plain
Python (``_Chain``, ``_Sum``, ``_Cat``), not registered modules, so no extra names appear.

The STE table is ``minibnn.ops.sign``'s, written here in torch (``STE_GRADS``, keyed by its
``STE_NAMES``; tests/test_torch_export.py checks every entry against ``ste_grad``), so it runs
on any torch device. minibnn itself never needs torch: it is imported only by the functions
here, and a missing torch is a one-line error naming ``pip install 'minibnn[torch]'``.
"""
from __future__ import annotations

import inspect
import os
import pickle
import zipfile
from typing import Any, Callable

import numpy as np

from minibnn.errors import DataFileError, MinibnnError
from minibnn.nn import functional as F
from minibnn.nn.containers import Concat, Residual, Sequential
from minibnn.nn.models import Model
from minibnn.nn.modules import (BatchNorm, BinaryConv2d, Conv2d, Dense, LearnableBias, Module,
                                PReLU, RPReLU, Stateless, _BinaryWeights, sign_ste)
from minibnn.ops.sign import STE_NAMES, check_ste, ste_grad

#: what ``export_torch`` writes and ``build`` reads (``format`` and ``version`` keys)
FORMAT, VERSION = "minibnn-torch", 1
#: the entries ``build`` and ``minibnn.torch.resume.optimizers`` read from an export
ENTRIES = ("spec", "input_shape", "num_classes", "dtype", "state_dict", "binary",
           "steps_per_epoch", "optimizer_state")

#: the beta a binary layer's weight STE runs with: ``ste_grad``'s default (the layers pass none)
WEIGHT_STE_BETA: float = inspect.signature(ste_grad).parameters["beta"].default

try:                                   # minibnn runs without PyTorch: build() then says how to
    import torch                       # get it (require_torch), and these bases stand unused
    from torch import nn
    _Module, _Function = nn.Module, torch.autograd.Function
except ImportError:                    # pragma: no cover - exercised where torch is missing
    torch = nn = None                  # type: ignore[assignment]
    _Module = _Function = object       # type: ignore[assignment,misc]

Tensor = Any


def require_torch() -> Any:
    """The ``torch`` module, or a one-line ``MinibnnError`` saying how to install it."""
    if torch is None:
        raise MinibnnError("minibnn.torch needs PyTorch: pip install 'minibnn[torch]'")
    return torch


# ------------------------------------------------------------------ sign and its STE table


def _swish_grad(x: Tensor, beta: float) -> Tensor:
    """SignSwish's derivative in ``minibnn.ops.sign._swish_grad``'s overflow-free form:
    ``2 b e^-|t| (2 - t tanh(t/2)) / (1 + e^-|t|)^2``, t = b x."""
    t = beta * x
    e = torch.exp(-t.abs())
    return (2.0 * beta) * e * (2.0 - t * torch.tanh(0.5 * t)) / (1.0 + e) ** 2


#: ``minibnn.ops.sign``'s STE table in torch: name -> (x, beta) -> d sign(x)/dx as defined
STE_GRADS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "identity": lambda x, beta: torch.ones_like(x),
    "clipped": lambda x, beta: (x.abs() <= 1).to(x.dtype),          # 1 if |x| <= 1
    "approx": lambda x, beta: (2.0 - 2.0 * x.abs()).clamp_min(0.0),  # max(0, 2 - 2|x|)
    "swish": _swish_grad,
}
assert tuple(STE_GRADS) == STE_NAMES, "the torch STE table must cover minibnn's STE_NAMES"


def sign(x: Tensor) -> Tensor:
    """``where(x >= 0, 1, -1)`` in x's dtype: sign(0) = +1, as ``minibnn.ops.sign.sign``."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class SignSTE(_Function):
    """``sign(x)`` forward; backward ``dy * ste'(x)`` from the STE table (``STE_GRADS``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ste: str, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.ste, ctx.beta = ste, beta
        return sign(x)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.ste == "identity":
            return dy, None, None
        return dy * STE_GRADS[ctx.ste](x, ctx.beta), None, None


# ------------------------------------------------------------------ layers with parameters


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """A (C,) vector shaped to broadcast over axis 1 of x: (1, C) or (1, C, 1, 1)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class Weights(_Module):
    """minibnn's Dense, Conv2d, BinaryDense or BinaryConv2d: parameter ``w`` (and ``b``)."""

    def __init__(self, layer: Module, dtype: Any):
        super().__init__()
        if isinstance(layer, Dense):
            shape, has_bias = (layer.out_features, layer.in_features), layer.bias
        else:                                  # Conv2d and the binary layers keep .shape
            shape, has_bias = layer.shape, getattr(layer, "bias", False)
        self.w = nn.Parameter(torch.zeros(shape, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(shape[0], dtype=dtype)) if has_bias else None
        conv = isinstance(layer, (Conv2d, BinaryConv2d))
        self.stride, self.padding = (layer.stride, layer.padding) if conv else (None, None)
        #: (storage, scale, weight STE) of a binary layer, None for a real one
        self.binary = ((layer.storage, layer.scale, layer.weight_ste)
                       if isinstance(layer, _BinaryWeights) else None)

    def weight(self) -> tuple[Tensor, Tensor | None]:
        """``(W, a)``: the layer computes ``a * (x . W)``, a per output channel (None: 1).

        W is w itself (a real layer, or +-1 trained directly: dL/db = dL/dW) or sign(w) with
        the weight STE (latent storage); a = mean_in |w| with a scale. Scaling the output
        rather than the weight is the same product, computed as minibnn's engine does it:
        exact integer counts of +-1 inputs, then times a, so equal counts stay equal (a
        max-pool after the layer breaks ties as minibnn does)."""
        if self.binary is None or self.binary[0] == "binary":
            return self.w, None
        _, scale, ste = self.binary
        s = SignSTE.apply(self.w, ste, WEIGHT_STE_BETA)
        if not scale:
            return s, None
        # a = mean_in |w| = mean_in(w * sign(w)); the detached sign gives da/dw = sign(w) / n,
        # minibnn's second term (sign(0) = +1 included, where autograd's |w|' would be 0)
        a = (self.w * s.detach()).mean(dim=tuple(range(1, self.w.dim())))
        return s, a

    def extra_repr(self) -> str:
        kind = ("real" if self.binary is None else
                "+-1" if self.binary[0] == "binary" else
                f"latent, {self.binary[2]} STE{', scaled' if self.binary[1] else ''}")
        conv = "" if self.stride is None else f", stride {self.stride}, padding {self.padding}"
        return f"w {tuple(self.w.shape)} {kind}{', bias' if self.b is not None else ''}{conv}"

    def forward(self, x: Tensor) -> Tensor:
        w, a = self.weight()
        if self.stride is None:
            y = torch.nn.functional.linear(x, w, self.b)
        else:
            y = torch.nn.functional.conv2d(x, w, self.b, stride=self.stride,
                                           padding=self.padding)
        return y if a is None else y * _per_channel(a, y)      # binary layers have no bias


class BatchNormLayer(_Module):
    """minibnn's BatchNorm: ``gamma``, ``beta`` (if affine), buffers ``running_mean``,
    ``running_var``; momentum and eps as the layer's (PyTorch's convention, minibnn's too)."""

    def __init__(self, layer: BatchNorm, dtype: Any):
        super().__init__()
        c = layer.channels
        self.gamma = nn.Parameter(torch.ones(c, dtype=dtype)) if layer.affine else None
        self.beta = nn.Parameter(torch.zeros(c, dtype=dtype)) if layer.affine else None
        self.register_buffer("running_mean", torch.zeros(c, dtype=dtype))
        self.register_buffer("running_var", torch.ones(c, dtype=dtype))
        self.momentum, self.eps = layer.momentum, layer.eps

    def extra_repr(self) -> str:
        return f"{len(self.running_mean)}, momentum {self.momentum}, eps {self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var,
                                              self.gamma, self.beta, self.training,
                                              self.momentum, self.eps)


class PReLULayer(_Module):
    """minibnn's PReLU: ``y = x if x > 0 else a[c] x`` (parameter ``a``)."""

    def __init__(self, layer: PReLU, dtype: Any):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(layer.channels, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, _per_channel(self.a, x) * x)


class BiasLayer(_Module):
    """minibnn's LearnableBias: ``y = x + b[c]`` (parameter ``b``)."""

    def __init__(self, layer: LearnableBias, dtype: Any):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(layer.channels, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return x + _per_channel(self.b, x)


# ------------------------------------------------------------------ wiring (plain Python)


class _Chain:
    """Steps applied in order (a minibnn Sequential)."""

    def __init__(self, steps: list[Callable[[Tensor], Tensor]]):
        self.steps = steps

    def __call__(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x


class _Sum:
    """``body(x) + shortcut(x)``, the shortcut being the identity when None (a Residual)."""

    def __init__(self, body: Callable[[Tensor], Tensor],
                 shortcut: Callable[[Tensor], Tensor] | None):
        self.body, self.shortcut = body, shortcut

    def __call__(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class _Cat:
    """``[branch_1(x), branch_2(x), ...]`` along the channels (a Concat): autograd sums the
    branches' input gradients, as minibnn's ``dx = sum_i dx_i``."""

    def __init__(self, branches: list[Callable[[Tensor], Tensor]]):
        self.branches = branches

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def _stateless(layer: Stateless) -> Callable[[Tensor], Tensor]:
    """The torch form of a parameter-free minibnn step, by its functional forward."""
    tf = torch.nn.functional
    fn, kw = layer.forward_fn, layer.kwargs
    if fn is F.sign_forward:
        ste, beta = sign_ste(layer)
        beta = check_ste("Sign", ste, beta)
        return lambda x: SignSTE.apply(x, ste, beta)
    if fn is F.relu_forward:
        return tf.relu
    if fn is F.flatten_forward:
        return lambda x: x.flatten(1)
    if fn is F.global_avgpool_forward:
        return lambda x: x.mean(dim=(2, 3))
    if fn in (F.maxpool2d_forward, F.avgpool2d_forward):
        k = kw.get("kernel", 2)
        stride, padding = kw.get("stride") or k, kw.get("padding", 0)
        if fn is F.maxpool2d_forward:
            return lambda x: tf.max_pool2d(x, k, stride, padding)
        return lambda x: tf.avg_pool2d(x, k, stride, padding, count_include_pad=True)
    raise MinibnnError(f"the step {getattr(fn, '__name__', fn)!r} has no PyTorch form in "
                       "minibnn.torch")


#: minibnn layer type -> the torch module holding its parameters (checked in this order:
#: the binary layers before Dense/Conv2d, which they do not subclass, are all Weights)
_LEAVES: tuple[tuple[type, Any], ...] = (
    (_BinaryWeights, Weights), (Dense, Weights), (Conv2d, Weights),
    (BatchNorm, BatchNormLayer), (PReLU, PReLULayer), (LearnableBias, BiasLayer))


def _attach(root: Any, dotted: str, module: Any) -> None:
    """Register ``module`` under ``dotted`` (``"s1b1.conv"``): the parts before the last dot
    become empty ``nn.Module`` namespaces, so state-dict keys are minibnn's names."""
    *path, leaf = dotted.split(".")
    parent = root
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    if leaf in parent._modules:
        raise MinibnnError(f"duplicate layer name {dotted!r} in the model")
    parent.add_module(leaf, module)


def _translate(layer: Module, root: Any, dtype: Any) -> Callable[[Tensor], Tensor]:
    """The torch form of a minibnn layer; layers with parameters are registered on ``root``."""
    if isinstance(layer, (Sequential, RPReLU)):     # layers in order (RPReLU: its three)
        return _Chain([_translate(inner, root, dtype) for inner in layer.layers])
    if isinstance(layer, Residual):
        shortcut = None if layer.shortcut is None else _translate(layer.shortcut, root, dtype)
        return _Sum(_translate(layer.body, root, dtype), shortcut)
    if isinstance(layer, Concat):
        return _Cat([_translate(branch, root, dtype) for branch in layer.branches])
    if isinstance(layer, Stateless):
        return _stateless(layer)
    for kind, leaf in _LEAVES:
        if isinstance(layer, kind):
            module = leaf(layer, dtype)
            _attach(root, layer.name, module)
            return module
    raise MinibnnError(f"layer {type(layer).__name__} {layer.name!r} has no PyTorch form "
                       "in minibnn.torch")


class MinibnnNet(_Module):
    """A minibnn model as a ``torch.nn.Module``: ``forward(x)`` maps standardised
    (N, *input_shape) inputs of the module's dtype to (N, classes) logits.

    ``name``, ``input_shape``, ``num_classes``, ``binary_names`` are the model's;
    ``binary_storage`` is ``"binary"`` (+-1 parameters) or ``"latent"`` (latent reals).
    """

    def __init__(self, model: Model, dtype: Any = None):
        require_torch()
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.name, self.input_shape = model.name, tuple(model.input_shape)
        self.num_classes = model.num_classes
        self.binary_names = list(model.binary_names)
        self.binary_storage = model.config.get("binary_storage", "latent")
        #: the layers' wiring: plain callables (not registered: no extra state-dict names)
        self._run = _translate(model.net, self, dtype)
        #: per-channel standardisation and class names of the data (set by ``build``)
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self.classes: tuple[str, ...] = tuple(str(i) for i in range(model.num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)

    def preprocess(self, images: np.ndarray) -> Tensor:
        """uint8 images (N, C, H, W) -> standardised inputs in the module's dtype and device
        (``minibnn.data.standardise``, as training did)."""
        from minibnn.data import standardise

        if self.mean is None or self.std is None:
            raise MinibnnError("this model stores no normalisation: standardise the images "
                               "yourself")
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise MinibnnError(f"preprocess: images must be uint8, got {images.dtype}")
        w = next(self.parameters())
        x = standardise(images, self.mean, self.std, str(w.dtype).removeprefix("torch."))
        return torch.from_numpy(np.ascontiguousarray(x)).to(w.device)

    def extra_repr(self) -> str:
        return (f"{self.name}: input {self.input_shape}, {self.num_classes} classes, "
                f"binary weights {self.binary_storage}")


# ------------------------------------------------------------------ reading the export


def read_export(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict ``export_torch`` wrote to ``path``, loaded with ``weights_only=True``; a
    missing file, a file of another kind or version, or one lacking an entry is a one-line
    error."""
    require_torch()
    if not os.path.exists(path):
        raise DataFileError(f"PyTorch export not found: {path}")
    if not os.path.isfile(path):
        raise DataFileError(f"{path} is not a file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError,
            ValueError, KeyError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"{path} is not a minibnn PyTorch export ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataFileError(f"{path} is not a minibnn PyTorch export (no format={FORMAT!r} "
                            "tag; write one with minibnn export RUN.h5 --format torch)")
    if data.get("version") != VERSION:
        raise DataFileError(f"{path}: PyTorch export version {data.get('version')!r} is not "
                            f"supported (this minibnn reads version {VERSION}: re-export it)")
    missing = [key for key in ENTRIES if key not in data]
    if missing:
        raise DataFileError(f"{path}: the PyTorch export lacks {', '.join(missing)}; the file "
                            "is corrupt (re-export it)")
    return data


def model_of(data: dict[str, Any]) -> Model:
    """The minibnn model an export describes, built as the run built it."""
    from minibnn.run.spec import spec_from_dict
    from minibnn.run.train import model_from_spec

    spec = spec_from_dict(data["spec"])
    return model_from_spec(spec, tuple(data["input_shape"]), int(data["num_classes"]))


def build(path: str, map_location: Any = "cpu") -> "MinibnnNet":
    """The network of a ``minibnn export --format torch`` file as a ``torch.nn.Module`` (in
    train mode, as ``torch.nn`` modules start), its parameters and buffers loaded."""
    data = read_export(path, map_location)
    dtype = getattr(torch, data["dtype"])
    net = MinibnnNet(model_of(data), dtype)
    try:
        net.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        raise DataFileError(f"{path}: the stored weights do not fit {net.name}: "
                            f"{' '.join(str(exc).split())}") from None
    if isinstance(map_location, (str, torch.device)):     # a dict or callable: left on CPU
        net.to(map_location)
    net.mean = tuple(data["mean"]) if data.get("mean") else None
    net.std = tuple(data["std"]) if data.get("std") else None
    if data.get("classes"):
        net.classes = tuple(data["classes"])
    return net
