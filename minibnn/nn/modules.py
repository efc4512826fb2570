"""Thin stateless wrappers that name parameters and chain the functional layers.

A ``Module`` owns no arrays.  It knows its parameter names and shapes and calls the
forward/backward pairs of ``minibnn.nn.functional``::

    params, buffers = module.init(rng, dtype)            # flat dicts "block1.conv.w" -> array
    y, new_buffers, cache = module.forward(params, buffers, x, train)
    dx, grads = module.backward(dy, cache)              # grads: dict like params

``buffers`` hold non-trained state (BatchNorm running statistics); ``forward`` returns updated
copies instead of mutating.  Binary weights are *declared*: ``binary_names`` lists them, and
each binary layer stores them either as latent reals (``storage="latent"``: the forward pass
uses ``sign(w)``) or as +-1 directly (``storage="binary"``: the forward pass uses ``b`` and the
gradient is ``dL/db``).  The model never guesses which.

The containers that chain modules (``Sequential``, ``Residual``) are in ``nn.containers``.
"""
from __future__ import annotations

import inspect
from typing import Any, NamedTuple, Sequence

import numpy as np

from minibnn.backend import FLOAT_DTYPES
from minibnn.errors import DTypeError, MinibnnError
from minibnn.nn import functional as F
from minibnn.nn.functional import sign as _sign
from minibnn.run.resources import check_weight_fits

Array = Any
Params = dict[str, Array]

BINARY_STORAGES = ("latent", "binary")


def model_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype if it is float32 or float64 (what models are built in),
    else DTypeError ("model dtype must be float32 or float64, got float16")."""
    try:
        dt = None if dtype is None else np.dtype(dtype)   # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        shown = dt.name if dt is not None else repr(dtype)
        raise DTypeError(f"model dtype must be {' or '.join(FLOAT_DTYPES)}, got {shown}")
    return dt


class Module:
    """Base class: a named piece of a network with no parameters unless it declares some."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def key(self, suffix: str) -> str:
        """Full parameter name, e.g. ``"block1.conv" + ".w"``."""
        return f"{self.name}.{suffix}" if self.name else suffix

    @property
    def binary_names(self) -> list[str]:
        return []

    def init(self, rng: np.random.Generator, dtype: Any) -> tuple[Params, Params]:
        return {}, {}

    def forward(self, params: Params, buffers: Params, x: Array, train: bool
                ) -> tuple[Array, Params, Any]:
        raise NotImplementedError

    def backward(self, dy: Array, cache: Any) -> tuple[Array, Params]:
        raise NotImplementedError


def forward_steps(steps: Sequence[Any], params: Params, buffers: Params, x: Any, train: bool
                  ) -> tuple[Any, Params, list[Any]]:
    """Run ``steps`` (modules, or anything with their ``forward``/``backward``) one after the
    other: the last output, the buffers they updated, and one cache per step."""
    caches, new_buffers = [], {}
    for step in steps:
        x, updated, cache = step.forward(params, buffers, x, train)
        new_buffers.update(updated)
        caches.append(cache)
    return x, new_buffers, caches


def backward_steps(steps: Sequence[Any], dy: Any, caches: list[Any], input_grad: bool = True
                   ) -> tuple[Any, Params]:
    """The backward pass of ``forward_steps``: the steps in reverse, each given the dx of the
    one after it; returns the first step's dx and the gradients of all.

    It consumes ``caches``: each step's entry is dropped (set to None) once its backward has
    run, so the activations it held are freed as the pass goes, not all at its end (as
    PyTorch frees a graph's saved tensors); run ``forward`` again to differentiate twice.

    ``input_grad=False`` (nobody reads the input gradient: a model's top level): the
    parameter-free steps at the front are not differentiated, and the first step with
    parameters, where it is a dense layer, skips its ``dx`` product; dx is then None.
    """
    grads: Params = {}
    first = 0 if input_grad else next(
        (i for i, step in enumerate(steps) if not isinstance(step, Stateless)), len(steps))
    for i in reversed(range(first, len(steps))):
        if i == first and not input_grad and isinstance(steps[i], DENSE_STEPS):
            dy, step_grads = steps[i].backward(dy, caches[i], need_dx=False)
        else:
            dy, step_grads = steps[i].backward(dy, caches[i])
        caches[i] = None
        grads.update(step_grads)
    caches[:first] = [None] * first                  # the steps not differentiated
    return (dy if input_grad else None), grads


class Stateless(Module):
    """Wraps a parameter-free forward/backward pair (sign, pooling, flatten, relu, ...)."""

    def __init__(self, forward_fn: Any, backward_fn: Any, **kwargs: Any) -> None:
        super().__init__("")
        self.forward_fn, self.backward_fn, self.kwargs = forward_fn, backward_fn, kwargs

    def forward(self, params, buffers, x, train):
        y, cache = self.forward_fn(x, **self.kwargs)
        return y, {}, cache

    def backward(self, dy, cache):
        return self.backward_fn(dy, cache), {}


def Sign(ste: str = "identity") -> Stateless:
    """Binarise activations: ``sign(x)`` (``sign(0) = +1``) with the chosen STE backward."""
    return Stateless(F.sign_forward, F.sign_backward, ste=ste)


def Flatten() -> Stateless:
    return Stateless(F.flatten_forward, F.flatten_backward)


def ReLU() -> Stateless:
    return Stateless(F.relu_forward, F.relu_backward)


def Hardtanh() -> Stateless:
    return Stateless(F.hardtanh_forward, F.hardtanh_backward)


def MaxPool2d(kernel: int = 2, stride: int | None = None, padding: int = 0) -> Stateless:
    return Stateless(F.maxpool2d_forward, F.maxpool2d_backward, kernel=kernel, stride=stride,
                     padding=padding)


def AvgPool2d(kernel: int = 2, stride: int | None = None, padding: int = 0) -> Stateless:
    return Stateless(F.avgpool2d_forward, F.avgpool2d_backward, kernel=kernel, stride=stride,
                     padding=padding)


def GlobalAvgPool() -> Stateless:
    return Stateless(F.global_avgpool_forward, F.global_avgpool_backward)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, dtype: Any,
             scale: float = 1.0) -> Array:
    """PyTorch's default init for dense/conv weights: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    check_weight_fits(shape, dtype)
    bound = scale / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Dense(Module):
    """Real-valued ``y = x W^T + b``; W (out, in)."""

    def __init__(self, name: str, in_features: int, out_features: int, bias: bool = True):
        super().__init__(name)
        self.in_features, self.out_features, self.bias = in_features, out_features, bias

    def init(self, rng, dtype):
        params = {self.key("w"): _uniform(rng, (self.out_features, self.in_features),
                                          self.in_features, dtype)}
        if self.bias:
            params[self.key("b")] = _uniform(rng, (self.out_features,), self.in_features, dtype)
        return params, {}

    def forward(self, params, buffers, x, train):
        y, cache = F.dense_forward(x, params[self.key("w")], params.get(self.key("b")))
        return y, {}, cache

    def backward(self, dy, cache, need_dx=True):
        dx, dw, db = F.dense_backward(dy, cache, need_dx)
        grads = {self.key("w"): dw}
        if self.bias:
            grads[self.key("b")] = db
        return dx, grads


class Conv2d(Module):
    """Real-valued 2-D convolution; W (out, in, k, k)."""

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel: int = 3,
                 stride: int = 1, padding: int = 1, bias: bool = False):
        super().__init__(name)
        self.shape = (out_channels, in_channels, kernel, kernel)
        self.stride, self.padding, self.bias = stride, padding, bias

    def init(self, rng, dtype):
        fan_in = int(np.prod(self.shape[1:]))
        params = {self.key("w"): _uniform(rng, self.shape, fan_in, dtype)}
        if self.bias:
            params[self.key("b")] = _uniform(rng, self.shape[:1], fan_in, dtype)
        return params, {}

    def forward(self, params, buffers, x, train):
        y, cache = F.conv2d_forward(x, params[self.key("w")], params.get(self.key("b")),
                                    stride=self.stride, padding=self.padding)
        return y, {}, cache

    def backward(self, dy, cache):
        dx, dw, db = F.conv2d_backward(dy, cache)
        grads = {self.key("w"): dw}
        if self.bias:
            grads[self.key("b")] = db
        return dx, grads


class BinaryWeightCache(NamedTuple):
    """What the weight binarisation needs for its backward pass (latent storage only)."""

    w: Array            # latent weights
    sign_w: Array       # sign(w)
    scale: Array | None  # per-output-channel mean|w|, broadcastable to w, or None


class _BinaryWeights(Module):
    """Shared part of binary dense/conv: how the effective weight is made and differentiated.

    latent storage:  W_eff = a * sign(w), a = mean_{in}|w| per output channel if ``scale``
                     else 1.  dL/dw = a * ste'(w) * dL/dW_eff
                                      + sign(w) * mean_{in}(dL/dW_eff * sign(w))   (if scale)
    binary storage:  W_eff = b, dL/db = dL/dW_eff (no STE: b is the parameter).
    """

    def __init__(self, name: str, shape: tuple[int, ...], storage: str, scale: bool,
                 weight_ste: str, init_scale: float):
        super().__init__(name)
        if storage not in BINARY_STORAGES:
            raise MinibnnError(f"unknown binary weight storage {storage!r}; expected "
                               f"{' or '.join(BINARY_STORAGES)}")
        if storage == "binary" and scale:
            raise MinibnnError("a mean|w| scale needs latent weights (storage='latent'); "
                               "with +-1 storage mean|b| is always 1")
        if weight_ste not in F.STE_NAMES:
            raise MinibnnError(f"unknown weight STE {weight_ste!r}; expected one of "
                               f"{', '.join(F.STE_NAMES)}")
        self.shape, self.storage, self.scale = shape, storage, scale
        self.weight_ste, self.init_scale = weight_ste, init_scale

    @property
    def binary_names(self) -> list[str]:
        return [self.key("w")]

    def init(self, rng, dtype):
        fan_in = int(np.prod(self.shape[1:]))
        w = _uniform(rng, self.shape, fan_in, dtype, self.init_scale)
        if self.storage == "binary":
            w = np.where(w >= 0, 1, -1).astype(dtype)   # b_0 = sign(w_0), sign(0) = +1
        return {self.key("w"): w}, {}

    def effective_weight(self, params: Params) -> tuple[Array, BinaryWeightCache | None]:
        w = params[self.key("w")]
        if self.storage == "binary":
            return w, None
        sign_w, _ = F.sign_forward(w)
        if not self.scale:
            return sign_w, BinaryWeightCache(w, sign_w, None)
        axes = tuple(range(1, w.ndim))
        a = abs(w).mean(axis=axes, keepdims=True)
        return a * sign_w, BinaryWeightCache(w, sign_w, a)

    def weight_grad(self, dw_eff: Array, cache: BinaryWeightCache | None) -> Array:
        if cache is None:
            return dw_eff
        a = 1.0 if cache.scale is None else cache.scale
        dw = a * F.ste_grad(cache.w, self.weight_ste) * dw_eff
        if cache.scale is not None:
            axes = tuple(range(1, cache.w.ndim))
            dw = dw + cache.sign_w * (dw_eff * cache.sign_w).mean(axis=axes, keepdims=True)
        return dw


class BinaryDense(_BinaryWeights):
    """Dense layer with binary weights (no bias; a following BatchNorm supplies the shift)."""

    def __init__(self, name: str, in_features: int, out_features: int,
                 storage: str = "latent", scale: bool = False, weight_ste: str = "identity",
                 init_scale: float = 1.0):
        super().__init__(name, (out_features, in_features), storage, scale, weight_ste,
                         init_scale)

    def forward(self, params, buffers, x, train):
        w_eff, wcache = self.effective_weight(params)
        y, cache = F.dense_forward(x, w_eff)
        return y, {}, (cache, wcache)

    def backward(self, dy, cache, need_dx=True):
        dense_cache, wcache = cache
        dx, dw_eff, _ = F.dense_backward(dy, dense_cache, need_dx)
        return dx, {self.key("w"): self.weight_grad(dw_eff, wcache)}


class BinaryConv2d(_BinaryWeights):
    """2-D convolution with binary weights (no bias)."""

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel: int = 3,
                 stride: int = 1, padding: int = 1, storage: str = "latent",
                 scale: bool = False, weight_ste: str = "identity", init_scale: float = 1.0):
        super().__init__(name, (out_channels, in_channels, kernel, kernel), storage, scale,
                         weight_ste, init_scale)
        self.stride, self.padding = stride, padding

    def forward(self, params, buffers, x, train):
        w_eff, wcache = self.effective_weight(params)
        y, cache = F.conv2d_forward(x, w_eff, stride=self.stride, padding=self.padding)
        return y, {}, (cache, wcache)

    def backward(self, dy, cache):
        conv_cache, wcache = cache
        dx, dw_eff, _ = F.conv2d_backward(dy, conv_cache)
        return dx, {self.key("w"): self.weight_grad(dw_eff, wcache)}


class BatchNorm(Module):
    """BatchNorm over axis 1 of (N, C) or (N, C, H, W); running stats live in ``buffers``."""

    def __init__(self, name: str, channels: int, momentum: float = 0.1, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__(name)
        self.channels, self.momentum, self.eps, self.affine = channels, momentum, eps, affine

    def init(self, rng, dtype):
        params = {}
        if self.affine:
            params = {self.key("gamma"): np.ones(self.channels, dtype),
                      self.key("beta"): np.zeros(self.channels, dtype)}
        buffers = {self.key("running_mean"): np.zeros(self.channels, dtype),
                   self.key("running_var"): np.ones(self.channels, dtype)}
        return params, buffers

    def forward(self, params, buffers, x, train):
        y, cache = F.batchnorm_forward(
            x, params.get(self.key("gamma")), params.get(self.key("beta")),
            buffers[self.key("running_mean")], buffers[self.key("running_var")],
            train=train, momentum=self.momentum, eps=self.eps)
        new_buffers = {self.key("running_mean"): cache.running_mean,
                       self.key("running_var"): cache.running_var}
        return y, new_buffers, cache

    def backward(self, dy, cache):
        dx, dgamma, dbeta = F.batchnorm_backward(dy, cache)
        if not self.affine:
            return dx, {}
        return dx, {self.key("gamma"): dgamma, self.key("beta"): dbeta}


def is_sign(module: Module) -> bool:
    """True for a ``Sign()`` module running the real ``sign_forward`` / ``sign_backward``."""
    return (isinstance(module, Stateless) and module.forward_fn is _sign.sign_forward
            and module.backward_fn is _sign.sign_backward)


#: ``F.sign_forward``'s defaults of its STE settings ``(ste, beta)``, read from its signature:
#: what a ``Sign()`` step without them runs, with no second copy of the numbers
SIGN_STE_DEFAULTS: tuple[str, float] = tuple(  # type: ignore[assignment]
    inspect.signature(_sign.sign_forward).parameters[k].default for k in ("ste", "beta"))


def sign_ste(sign: Stateless) -> tuple[str, float]:
    """The STE name and beta of a ``Sign()`` step's backward: its own kwargs, else
    ``F.sign_forward``'s defaults (``SIGN_STE_DEFAULTS``)."""
    ste, beta = SIGN_STE_DEFAULTS
    return sign.kwargs.get("ste", ste), sign.kwargs.get("beta", beta)


class BatchNormSign(Module):
    """An affine ``BatchNorm`` and the ``Sign`` right after it, run as one fused step.

    ``F.batchnorm_sign_forward`` gives the bits of the two modules run one after the other;
    parameters and buffers are the BatchNorm's own, under its names.
    """

    def __init__(self, bn: BatchNorm, sign: Stateless):
        if not (bn.affine and is_sign(sign)):
            raise MinibnnError(f"BatchNormSign({bn.name!r}) needs an affine BatchNorm and a Sign")
        super().__init__(bn.name)
        self.bn, self.sign = bn, sign

    def init(self, rng, dtype):
        return self.bn.init(rng, dtype)

    def forward(self, params, buffers, x, train):
        bn = self.bn
        ste, ste_beta = sign_ste(self.sign)
        s, cache = F.batchnorm_sign_forward(
            x, params[bn.key("gamma")], params[bn.key("beta")],
            buffers[bn.key("running_mean")], buffers[bn.key("running_var")], train=train,
            momentum=bn.momentum, eps=bn.eps, ste=ste, ste_beta=ste_beta)
        new_buffers = {bn.key("running_mean"): cache.running_mean,
                       bn.key("running_var"): cache.running_var}
        return s, new_buffers, cache

    def backward(self, dy, cache):
        dx, dgamma, dbeta = F.batchnorm_sign_backward(dy, cache)
        return dx, {self.bn.key("gamma"): dgamma, self.bn.key("beta"): dbeta}


class PReLU(Module):
    """Per-channel PReLU, slope initialised to 0.25 (PyTorch's default)."""

    def __init__(self, name: str, channels: int):
        super().__init__(name)
        self.channels = channels

    def init(self, rng, dtype):
        return {self.key("a"): np.full(self.channels, 0.25, dtype)}, {}

    def forward(self, params, buffers, x, train):
        y, cache = F.prelu_forward(x, params[self.key("a")])
        return y, {}, cache

    def backward(self, dy, cache):
        dx, da = F.prelu_backward(dy, cache)
        return dx, {self.key("a"): da}


class LearnableBias(Module):
    """Per-channel learnable shift ``y = x + b`` (ReActNet's RSign/RPReLU "move")."""

    def __init__(self, name: str, channels: int):
        super().__init__(name)
        self.channels = channels

    def init(self, rng, dtype):
        return {self.key("b"): np.zeros(self.channels, dtype)}, {}

    def forward(self, params, buffers, x, train):
        y, cache = F.bias_forward(x, params[self.key("b")])
        return y, {}, cache

    def backward(self, dy, cache):
        dx, db = F.bias_backward(dy, cache)
        return dx, {self.key("b"): db}


class RPReLU(Module):
    """ReActNet's RPReLU: ``y = PReLU(x + b_in) + b_out``, a per-channel shift before and after a
    per-channel PReLU. Made of the three layers it names (``LearnableBias``, ``PReLU``,
    ``LearnableBias``): their functional pairs are its forward and backward, and its
    parameters are theirs (``NAME.move_in.b``, ``NAME.prelu.a``, ``NAME.move_out.b``)."""

    def __init__(self, name: str, channels: int):
        super().__init__(name)
        self.layers = [LearnableBias(f"{name}.move_in", channels), PReLU(f"{name}.prelu", channels),
                       LearnableBias(f"{name}.move_out", channels)]

    def init(self, rng, dtype):
        params: Params = {}
        for layer in self.layers:
            params.update(layer.init(rng, dtype)[0])
        return params, {}

    def forward(self, params, buffers, x, train):
        y, _, caches = forward_steps(self.layers, params, buffers, x, train)
        return y, {}, caches

    def backward(self, dy, cache):
        return backward_steps(self.layers, dy, cache)


class SignsDense(Module):
    """A ``BinaryDense`` without a scale whose input comes straight from a sign step, run on
    bits: ``F.signs_dense_forward`` (the XNOR-popcount product of the packed signs of x and of
    the +-1 weights, exact, so the bits of the float product) keeps x as bits until the
    backward. The ``nhwc`` layout runs such a pair this way (``nn.containers``); parameters,
    names and gradients are the layer's own.
    """

    def __init__(self, layer: BinaryDense):
        if not isinstance(layer, BinaryDense) or layer.scale:
            raise MinibnnError(f"SignsDense({layer.name!r}) needs a BinaryDense without a scale")
        super().__init__(layer.name)
        self.layer = layer

    @property
    def binary_names(self) -> list[str]:
        return self.layer.binary_names

    def init(self, rng, dtype):
        return self.layer.init(rng, dtype)

    def forward(self, params, buffers, x, train):
        w_eff, wcache = self.layer.effective_weight(params)      # +-1: b, or sign(w)
        y, cache = F.signs_dense_forward(x, w_eff)
        return y, {}, (cache, wcache)

    def backward(self, dy, cache, need_dx=True):
        signs_cache, wcache = cache
        dx, dw_eff = F.signs_dense_backward(dy, signs_cache, need_dx)
        return dx, {self.layer.key("w"): self.layer.weight_grad(dw_eff, wcache)}


class BiasSign(Module):
    """A ``LearnableBias`` and the ``Sign`` right after it, as one step: ``s = sign(x + b)``.

    Runs the two layers' own functional pairs, so the bits and gradients are theirs; the
    parameter is the LearnableBias's, under its name. One step that emits signs is what
    ``nn.containers.group_channels_last`` looks for (Bi-Real's block: sign(x + b) -> bconv).
    """

    def __init__(self, bias: LearnableBias, sign: Stateless):
        if not is_sign(sign):
            raise MinibnnError(f"BiasSign({bias.name!r}) needs a LearnableBias and a Sign")
        super().__init__(bias.name)
        self.bias, self.sign = bias, sign

    def init(self, rng, dtype):
        return self.bias.init(rng, dtype)

    def forward(self, params, buffers, x, train):
        y, _, bias_cache = self.bias.forward(params, buffers, x, train)
        s, _, sign_cache = self.sign.forward(params, buffers, y, train)
        return s, {}, (bias_cache, sign_cache)

    def backward(self, dy, cache):
        bias_cache, sign_cache = cache
        d, _ = self.sign.backward(dy, sign_cache)
        return self.bias.backward(d, bias_cache)


#: the steps whose ``backward`` takes ``need_dx`` (``backward_steps`` skips a first one's dx)
DENSE_STEPS = (Dense, BinaryDense, SignsDense)
