"""Model builders: binary MLP, VGG-small-like binary CNN, Bi-Real-style small ResNet, and a small
ReActNet-A-like network.

As the field does, the first and last layers are real-valued by default; every other weight
layer is binary, with binary activations in front of it:

    binary_mlp:  flatten -> dense -> BN -> [sign -> bdense -> BN]* -> sign -> dense
    binary_cnn:  conv -> BN -> [sign -> bconv -> (maxpool) -> BN]*5 -> sign -> flatten -> dense
    birealnet:   conv -> BN -> stages of Bi-Real blocks  x + BN(bconv(sign(x)))  -> GAP -> dense
    reactnet:    conv -> BN -> ReActNet blocks (3x3 then 1x1 binary convs, each
                 RPReLU(x + BN(bconv(RSign(x)))), the 1x1 doubled side by side to widen) -> GAP -> dense

Every builder takes ``weights`` and ``activations`` (``PRECISIONS``): ``"binary"`` (the binary
network) or ``"real"``: real weights make each binary dense/conv an ordinary ``Dense``/``Conv2d``
(no bias, under the same name, so a run can start from another's weights: two-step training's
first step keeps real weights with binary activations), real activations make each sign a ReLU
(a real-valued teacher for distillation).

Every builder takes ``layout`` (``nn.containers.LAYOUTS``): ``"nhwc"`` (the default) runs the
fast engine, ``"nchw"`` the layers as written in ``nn/functional`` (the same parameters and, in
float64, the same binary weights; ``tests/test_layout.py``). A ``Model`` is a ``Sequential``
plus what the trainer needs to know (input shape, classes, which parameters are binary):

    params, buffers = model.init(rng, dtype)
    logits, new_buffers, cache = model.forward(params, buffers, x, train=True)
    grads = model.backward(dlogits, cache)
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np

from minibnn.errors import MinibnnError, ShapeError
from minibnn.nn.containers import Concat, Residual, Sequential, check_layout
from minibnn.nn.modules import (AvgPool2d, BatchNorm, BinaryConv2d, BinaryDense, Conv2d, Dense,
                                Flatten, GlobalAvgPool, LearnableBias, MaxPool2d, Module,
                                PReLU, ReLU, RPReLU, Sign, model_dtype)

Array = Any
Params = dict[str, Array]


class Model:
    """A named network with its input shape, class count and list of binary weights."""

    def __init__(self, name: str, net: Sequential, input_shape: tuple[int, ...],
                 num_classes: int, config: dict[str, Any]):
        self.name, self.net = name, net
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.config = config

    @property
    def binary_names(self) -> list[str]:
        return self.net.binary_names

    def param_label(self, name: str) -> str:
        """``"binary"`` for binary weights, ``"real"`` for everything else (for partition)."""
        return "binary" if name in set(self.binary_names) else "real"

    def init(self, rng: np.random.Generator, dtype: Any = np.float32) -> tuple[Params, Params]:
        """Fresh parameters and buffers in ``dtype`` (float32 or float64, else DTypeError)."""
        dtype = model_dtype(dtype)
        if not isinstance(rng, np.random.Generator):
            raise MinibnnError(f"{self.name}: rng must be a numpy.random.Generator "
                               f"(np.random.default_rng(seed)), got {type(rng).__name__}")
        return self.net.init(rng, dtype)

    def forward(self, params: Params, buffers: Params, x: Array, train: bool = True
                ) -> tuple[Array, Params, Any]:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"{self.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        return self.net.forward(params, buffers, x, train)

    def backward(self, dlogits: Array, cache: Any) -> Params:
        _, grads = self.net.backward(dlogits, cache)
        return grads


#: what the binary layers' weights and activations are: the binary network, or real-valued
PRECISIONS = ("binary", "real")


def check_precision(name: str, value: str) -> str:
    """``value`` if it is one of ``PRECISIONS``, else a one-line error naming ``--NAME``."""
    if value not in PRECISIONS:
        raise MinibnnError(f"--{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


class _Layers:
    """Makes a builder's binary layers, binary or real as its ``weights``/``activations`` say."""

    def __init__(self, binary_storage: str, scale: bool, weight_ste: str, init_scale: float,
                 act_ste: str, weights: str, activations: str):
        self.bkw = dict(storage=binary_storage, scale=scale, weight_ste=weight_ste,
                        init_scale=init_scale)
        self.act_ste = act_ste
        self.real_weights = check_precision("weights", weights) == "real"
        self.real_activations = check_precision("activations", activations) == "real"

    def act(self) -> Module:
        """The activation in front of a binary layer: sign (with its STE), or ReLU."""
        return ReLU() if self.real_activations else Sign(self.act_ste)

    def dense(self, name: str, n_in: int, n_out: int) -> Module:
        if self.real_weights:
            return Dense(name, n_in, n_out, bias=False)
        return BinaryDense(name, n_in, n_out, **self.bkw)

    def conv(self, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1,
             padding: int = 1) -> Module:
        if self.real_weights:
            return Conv2d(name, c_in, c_out, kernel, stride, padding)
        return BinaryConv2d(name, c_in, c_out, kernel, stride, padding, **self.bkw)


def binary_mlp(input_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (1024, 1024),
               num_classes: int = 10, binary_storage: str = "latent", scale: bool = False,
               weight_ste: str = "identity", act_ste: str = "approx",
               init_scale: float = 1.0, real_first: bool = True, in_features: int | None = None,
               layout: str = "nhwc", weights: str = "binary", activations: str = "binary"
               ) -> Model:
    """Binary MLP: a real first layer, ``len(hidden) - 1`` binary hidden layers, a real last layer.

    The activation STE defaults to Bi-Real's polynomial ``approx`` (the identity STE stalls
    training near 93 % on MNIST; README, Results).

    With ``real_first=False`` the first layer is binary too (on binarised inputs).
    ``in_features`` overrides ``input_shape`` with a flat ``(in_features,)`` input.
    """
    if in_features is not None:
        input_shape = (in_features,)
    hidden = list(hidden)
    if not hidden or min(hidden) < 1:
        raise MinibnnError(f"binary_mlp: hidden must be a non-empty list of positive widths, got {hidden}")
    make = _Layers(binary_storage, scale, weight_ste, init_scale, act_ste, weights, activations)
    n_in = int(np.prod(input_shape))
    layers: list[Module] = [Flatten()]
    if real_first:
        layers.append(Dense("fc1", n_in, hidden[0], bias=False))
    else:
        layers += [make.act(), make.dense("fc1", n_in, hidden[0])]
    layers.append(BatchNorm("bn1", hidden[0]))
    for i, (n_prev, n_next) in enumerate(zip(hidden[:-1], hidden[1:]), start=2):
        layers += [make.act(), make.dense(f"fc{i}", n_prev, n_next), BatchNorm(f"bn{i}", n_next)]
    layers += [make.act(), Dense("head", hidden[-1], num_classes)]
    config = dict(model="binary_mlp", input_shape=list(input_shape), hidden=hidden,
                  num_classes=num_classes, binary_storage=binary_storage, scale=scale,
                  weight_ste=weight_ste, act_ste=act_ste, init_scale=init_scale,
                  real_first=real_first, layout=check_layout(layout), weights=weights,
                  activations=activations)
    return Model("binary_mlp", Sequential(layers, input_grad=False, layout=layout),
                 tuple(input_shape), num_classes, config)


def binary_cnn(input_shape: Sequence[int] = (1, 28, 28), width: int = 32, num_classes: int = 10,
               binary_storage: str = "latent", scale: bool = False,
               weight_ste: str = "identity", act_ste: str = "approx",
               init_scale: float = 1.0, layout: str = "nhwc", weights: str = "binary",
               activations: str = "binary") -> Model:
    """VGG-small-like binary CNN for 28x28 or 32x32 inputs.

    Channels (w, w, 2w, 2w, 4w, 4w) with 3x3 convolutions; 2x2 max pooling after the 2nd, 4th
    and 6th; the first convolution and the classifier are real-valued; the activation STE
    defaults to Bi-Real's polynomial ``approx``.
    """
    c, h, w_in = (int(s) for s in input_shape)
    if h < 8 or w_in < 8:
        raise ShapeError(f"binary_cnn: input must be at least 8x8, got {h}x{w_in}")
    if width < 1:
        raise MinibnnError(f"binary_cnn: width must be >= 1, got {width}")
    make = _Layers(binary_storage, scale, weight_ste, init_scale, act_ste, weights, activations)
    chans = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers: list[Module] = [Conv2d("conv1", c, chans[0], 3, padding=1), BatchNorm("bn1", chans[0])]
    for i in range(1, 6):
        layers += [make.act(), make.conv(f"conv{i + 1}", chans[i - 1], chans[i], 3)]
        if i % 2 == 1:
            layers.append(MaxPool2d(2))
        layers.append(BatchNorm(f"bn{i + 1}", chans[i]))
    out_hw = (h // 8) * (w_in // 8)
    layers += [make.act(), Flatten(), Dense("head", chans[-1] * out_hw, num_classes)]
    config = dict(model="binary_cnn", input_shape=[c, h, w_in], width=width,
                  num_classes=num_classes, binary_storage=binary_storage, scale=scale,
                  weight_ste=weight_ste, act_ste=act_ste, init_scale=init_scale,
                  layout=check_layout(layout), weights=weights, activations=activations)
    return Model("binary_cnn", Sequential(layers, input_grad=False, layout=layout), (c, h, w_in),
                 num_classes, config)


def _bireal_block(name: str, c_in: int, c_out: int, stride: int, make: _Layers, prelu: bool,
                  layout: str) -> list[Module]:
    """Bi-Real block: ``y = BN(bconv(sign(x + shift))) + shortcut(x)`` (real shortcut).

    When the block downsamples or widens, the shortcut is AvgPool(2) -> real 1x1 conv -> BN
    (Bi-Real Net's real-valued downsampling).
    """
    body = Sequential([LearnableBias(f"{name}.move", c_in), make.act(),
                       make.conv(f"{name}.conv", c_in, c_out, 3, stride, 1),
                       BatchNorm(f"{name}.bn", c_out)], layout=layout)
    shortcut = None
    if stride != 1 or c_in != c_out:
        pool = [AvgPool2d(stride)] if stride != 1 else []
        shortcut = Sequential(pool + [Conv2d(f"{name}.down", c_in, c_out, 1, 1, 0),
                                      BatchNorm(f"{name}.down_bn", c_out)], layout=layout)
    block: list[Module] = [Residual(body, shortcut)]
    if prelu:
        block.append(PReLU(f"{name}.prelu", c_out))
    return block


def birealnet(input_shape: Sequence[int] = (3, 32, 32), width: int = 16,
              blocks_per_stage: Sequence[int] = (2, 2, 2), num_classes: int = 10,
              binary_storage: str = "latent", scale: bool = False,
              weight_ste: str = "identity", act_ste: str = "approx", init_scale: float = 1.0,
              prelu: bool = True, layout: str = "nhwc", weights: str = "binary",
              activations: str = "binary") -> Model:
    """Bi-Real-style small ResNet for 32x32 inputs: a shortcut around every binary convolution.

    Stages of widths (w, 2w, 4w); each later stage starts with a stride-2 block.  The stem
    convolution and the classifier are real-valued; the activation STE defaults to Bi-Real's
    polynomial ``approx``.
    """
    c, h, w_in = (int(s) for s in input_shape)
    make = _Layers(binary_storage, scale, weight_ste, init_scale, act_ste, weights, activations)
    layers: list[Module] = [Conv2d("stem", c, width, 3, padding=1), BatchNorm("stem_bn", width)]
    c_prev = width
    for s, n_blocks in enumerate(blocks_per_stage):
        c_out = width * 2 ** s
        for j in range(n_blocks):
            stride = 2 if (s > 0 and j == 0) else 1
            layers += _bireal_block(f"s{s + 1}b{j + 1}", c_prev, c_out, stride, make, prelu,
                                    check_layout(layout))
            c_prev = c_out
    layers += [GlobalAvgPool(), Dense("head", c_prev, num_classes)]
    config = dict(model="birealnet", input_shape=[c, h, w_in], width=width,
                  blocks_per_stage=list(blocks_per_stage), num_classes=num_classes,
                  binary_storage=binary_storage, scale=scale, weight_ste=weight_ste,
                  act_ste=act_ste, init_scale=init_scale, prelu=prelu, layout=layout,
                  weights=weights, activations=activations)
    return Model("birealnet", Sequential(layers, input_grad=False, layout=layout), (c, h, w_in),
                 num_classes, config)


def _rsign_conv_bn(name: str, c_in: int, c_out: int, kernel: int, stride: int, make: _Layers,
                   layout: str) -> Sequential:
    """``BN(bconv(RSign(x)))``: ReActNet's RSign is a learnable per-channel threshold,
    ``sign(x + b)`` (``LearnableBias`` then ``Sign``)."""
    return Sequential([LearnableBias(f"{name}.move", c_in), make.act(),
                       make.conv(f"{name}.conv", c_in, c_out, kernel, stride, kernel // 2),
                       BatchNorm(f"{name}.bn", c_out)], layout=layout)


def _reactnet_block(name: str, c_in: int, c_out: int, stride: int, make: _Layers,
                    layout: str) -> list[Module]:
    """ReActNet-A's block, a MobileNet-V1 pair with a shortcut around each binary conv:

        h = RPReLU(BN(bconv3x3(RSign(x))) + pool(x))      pool: AvgPool(2) when stride 2
        y = RPReLU(BN(bconv1x1(RSign(h))) + h)            c_out == c_in
        y = RPReLU([BN(bconv1x1_a(RSign_a(h))) + h, BN(bconv1x1_b(RSign_b(h))) + h])
                                                          c_out == 2 c_in: two halves side by side

    (ReActNet shares one RSign between the two halves; here each half has its own threshold,
    so each half is an ordinary Residual.)
    """
    if c_out not in (c_in, 2 * c_in):
        raise ShapeError(f"a ReActNet block keeps or doubles its channels: {c_in} -> {c_out}")
    pool = Sequential([AvgPool2d(2)], layout=layout) if stride == 2 else None
    layers: list[Module] = [
        Residual(_rsign_conv_bn(f"{name}.b3", c_in, c_in, 3, stride, make, layout), pool),
        RPReLU(f"{name}.act3", c_in)]
    if c_out == c_in:
        layers.append(Residual(_rsign_conv_bn(f"{name}.b1", c_in, c_in, 1, 1, make, layout)))
    else:
        layers.append(Concat([Residual(_rsign_conv_bn(f"{name}.b1{half}", c_in, c_in, 1, 1,
                                                      make, layout))
                              for half in ("a", "b")]))
    return layers + [RPReLU(f"{name}.act1", c_out)]


def reactnet(input_shape: Sequence[int] = (3, 32, 32), width: int = 16,
             blocks_per_stage: Sequence[int] = (1, 2, 2, 2), num_classes: int = 10,
             binary_storage: str = "latent", scale: bool = False,
             weight_ste: str = "identity", act_ste: str = "approx", init_scale: float = 1.0,
             layout: str = "nchw", weights: str = "binary", activations: str = "binary"
             ) -> Model:
    """A small ReActNet-A-like network for 32x32 inputs (Liu et al. 2020; the recipe of the
    paper's official code): a real stem, then stages of ReActNet blocks of widths 2w, 4w, 8w,
    16w, each stage's first block widening (and, after the first stage, halving the image).

    ``scale=True`` (latent weights only) gives each binary conv ReActNet's per-channel
    ``mean|w|`` scale. ``layout`` defaults to ``"nchw"``: the widening ``Concat`` has no
    channels-last twin, so the layers run as written.
    """
    c, h, w_in = (int(s) for s in input_shape)
    halvings = max(len(blocks_per_stage) - 1, 0)
    if h % 2 ** halvings or w_in % 2 ** halvings:
        # the shortcut's 2x2 average pool and the stride-2 conv must give one size
        raise ShapeError(f"reactnet: each stage after the first halves the image, so its sides "
                         f"must be divisible by {2 ** halvings}; got {h}x{w_in}")
    if width < 1:
        raise MinibnnError(f"reactnet: width must be >= 1, got {width}")
    layout = check_layout(layout)
    make = _Layers(binary_storage, scale, weight_ste, init_scale, act_ste, weights, activations)
    layers: list[Module] = [Conv2d("stem", c, width, 3, padding=1), BatchNorm("stem_bn", width)]
    c_prev = width
    for s, n_blocks in enumerate(blocks_per_stage):
        c_out = width * 2 ** (s + 1)
        for j in range(n_blocks):
            stride = 2 if (s > 0 and j == 0) else 1
            layers += _reactnet_block(f"s{s + 1}b{j + 1}", c_prev, c_out if j == 0 else c_prev,
                                      stride, make, layout)
            c_prev = c_out
    layers += [GlobalAvgPool(), Dense("head", c_prev, num_classes)]
    config = dict(model="reactnet", input_shape=[c, h, w_in], width=width,
                  blocks_per_stage=list(blocks_per_stage), num_classes=num_classes,
                  binary_storage=binary_storage, scale=scale, weight_ste=weight_ste,
                  act_ste=act_ste, init_scale=init_scale, layout=layout, weights=weights,
                  activations=activations)
    return Model("reactnet", Sequential(layers, input_grad=False, layout=layout), (c, h, w_in),
                 num_classes, config)


MODEL_BUILDERS = {"binary_mlp": binary_mlp, "binary_cnn": binary_cnn, "birealnet": birealnet,
                  "reactnet": reactnet}


def defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of builder ``name``: the one source of every model default.

    ``minibnn.run.spec`` and the CLI read their model defaults from here, so they cannot drift
    from the builders (``defaults("birealnet")["width"] == 16``).
    """
    if name not in MODEL_BUILDERS:
        raise MinibnnError(f"unknown model {name!r}; expected one of {', '.join(MODEL_BUILDERS)}")
    signature = inspect.signature(MODEL_BUILDERS[name])
    return {k: p.default for k, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_model(name: str, **kwargs: Any) -> Model:
    """Build a model by name (``binary_mlp``, ``binary_cnn``, ``birealnet``, ``reactnet``)."""
    if name not in MODEL_BUILDERS:
        raise MinibnnError(f"unknown model {name!r}; expected one of {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](**kwargs)
