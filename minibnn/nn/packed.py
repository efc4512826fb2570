"""Bit-packed binary inference: packed layers, the module-tree rewrite, the packed model.

A trained model's binary layers (``BinaryDense`` / ``BinaryConv2d``) only ever use
``W_eff = a * sign(w)`` (``a`` = per-output-channel mean|w| with ``scale``, else 1), and in
every model a sign step sits right in front of them, so at inference they compute

    y = a * (sign(x) . sign(w))        sign(x) . sign(w) = K - 2 popcount(xbits XOR wbits)

which ``kernels.bitpack`` evaluates exactly, 64 weights per uint64 word.  Where a binary
layer is followed by ``[MaxPool2d ->] BatchNorm -> Sign``, that tail is folded at pack time into
per-channel integer thresholds on the exact count (``minibnn.nn.fold``); when the next module
is another binary layer, the thresholded signs go to it still packed: no float BatchNorm, no
float activations in between.

``pack_model`` rebuilds the module tree so that it runs the steps the float model runs
(``Sequential.steps()``), with the binary layers packed, each run of them one ``PackedBinary``:

  * a channels-last group of the float model (``nn.channels_last.ChannelsLast``: binary_cnn's
    front, birealnet from stem to global pool) becomes one PackedBinary that runs
    channels-last end to end: the group's own twins for its real steps (convolutions, sign
    steps, BatchNorms, pools, PReLU, residual adds), each binary conv on packed signs
    (``PackedStep``, inside residual blocks too), a binary conv with its ``[max-pool ->]
    BatchNorm+sign`` as one pass from packed signs to packed signs
    (``kernels.binary_conv2d_threshold_pack``), with a plain BatchNorm as one pass from packed
    signs to its output (``kernels.binary_conv2d_lookup``), a bias+sign as one pass
    (``kernels.bias_sign_pack``);
  * elsewhere each ``Sign -> binary layer [-> fold -> binary layer ...]`` run of declared
    layers (the MLP, the ``nchw`` layout) becomes one PackedBinary.

Every other module keeps its own forward, in eval mode.  Thresholds are exact for inputs in
the model dtype, which ``PackedModel.forward`` requires.  Packed inference runs on NumPy (host)
arrays only.

Exactness.  The real steps run the float model's own code (in a group, its own twin objects)
on the same arrays, so they give the same bits; a BatchNorm after an unfolded binary conv is
replaced by a table of its own outputs at every count (``_count_table``), the same bits too.
Without ``scale`` the float path sums K products of +-1 values, integers below 2**24, so its
dense/conv output is the exact integer the XNOR kernel returns: the packed logits
are bit-identical in float32 and float64.  With ``scale`` the float path sums K products
``x_k * (a * s_k)`` in BLAS order (one rounding per addition) while the packed path computes
``a * z`` (one rounding; the thresholds fold ``a * z``), so logits may differ in the last bits;
predictions are equal unless a BatchNorm output lands within those bits of 0
(``evaluate_packed(check=True)`` counts them).  Except where the float path computes ``a * z``
itself: a binary conv fed packed signs by a sign step inside its channels-last group
(``layout="nhwc"``; every binary conv of binary_cnn and birealnet) is an XNOR count there too,
so those logits are bit-identical with ``scale`` as well. A group's first binary conv fed by a
Sign *outside* the group (a hand-built net) runs the float GEMM on ``a * sign(w)``: the
previous case, last bits only.

The packed file format is ``minibnn.deploy.packed_file``; packing a run file, exporting and
evaluating it is ``minibnn.deploy.inference``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from minibnn import kernels
from minibnn.backend import check_finite_input
from minibnn.errors import DeviceError, DTypeError, MinibnnError, ShapeError
from minibnn.kernels.bitpack import (PackedConv2d, PackedDense, count, pack_conv2d, pack_dense,
                                     pack_input)
from minibnn.kernels.reference import maxpool_counts, pack_bits
from minibnn.kernels.threshold import Threshold, threshold_signs
from minibnn.nn.channels_last import (Activation, BatchNormNHWC, BatchNormSignNHWC, BiasSignNHWC,
                                      ChannelsLast, ConvNHWC, Counts, MaxPoolNHWC, Packed,
                                      ResidualNHWC, as_float, channels_first, channels_last)
from minibnn.nn.fold import Fold, fold_after, fold_batchnorm_sign, fold_sites, walk
from minibnn.nn.models import Model
from minibnn.nn.containers import Concat, Residual, Sequential
from minibnn.nn.modules import (BatchNormSign, BiasSign, BinaryConv2d, BinaryDense, Module,
                                SignsDense, _BinaryWeights, forward_steps, is_sign)

Params = dict[str, np.ndarray]


@dataclass
class PackedLayer:
    """One binary weight, packed: the on-disk bits, the kernel's layout, the folded tail."""

    name: str                       # parameter name, e.g. "fc2.w"
    kind: str                       # "dense" | "conv2d"
    shape: tuple[int, ...]          # weight shape: (O, I) or (O, C, kH, kW)
    stride: int
    padding: int
    bits: np.ndarray                # (O, ceil(K/64)) uint64: row o packs sign(w.reshape(O, K)[o])
    scale: np.ndarray | None        # (O,) mean|w| in the model dtype, or None
    kernel: PackedDense | PackedConv2d
    fold: Threshold | None = None   # [max-pool ->] BatchNorm -> sign on the count, or None
    fold_bn: str = ""               # the folded BatchNorm's name ("" when no fold)
    pool: tuple[int, int, int] | None = None   # max-pool (kernel, stride, padding) in the fold

    @property
    def k(self) -> int:
        """Fan-in K: the count y of this layer lies in [-K, K]."""
        return int(np.prod(self.shape[1:]))


def binary_layers(model: Model) -> list[_BinaryWeights]:
    """The model's binary dense/conv modules, in forward order."""
    return [m for m in walk(model.net) if isinstance(m, _BinaryWeights)]


def _without_fold(layer: PackedLayer) -> PackedLayer:
    """``layer`` with its fold left to the float modules (they are not where the run is)."""
    return dataclasses.replace(layer, fold=None, fold_bn="", pool=None)


def _real_output(y: np.ndarray, layer: PackedLayer, dtype: np.dtype, axis: int) -> np.ndarray:
    """A binary layer's float output ``a * y`` (y without a scale) from its count y, channels
    on ``axis``; exact: |y| <= K < 2**24."""
    out = y.astype(dtype)
    if layer.scale is not None:
        shape = [1] * y.ndim
        shape[axis] = -1
        out *= layer.scale.astype(dtype).reshape(shape)             # y = a_o * z
    return out


def _folded_signs(bits: np.ndarray, layer: PackedLayer) -> np.ndarray:
    """The packed signs of a folded layer's ``[max-pool ->] BatchNorm -> sign`` from its packed
    input: (N, ceil(O/64)) for a dense layer, (N, PH, PW, ceil(O/64)) for a conv layer.

    A conv layer whose thresholds are all steps runs ``binary_conv2d_threshold_pack`` (one
    pass); otherwise the count, its max-pool and the thresholds are separate steps.
    """
    fold, k = layer.fold, layer.kernel
    if isinstance(k, PackedConv2d) and fold.lookup is None:
        return kernels.binary_conv2d_threshold_pack(
            bits, k.wbits, k.wsum, k.in_channels, k.kh, k.kw, k.stride, k.padding,
            fold.threshold, fold.direction, *(layer.pool or (1, 1, 0)))
    y = count(bits, k, "nhwc")                      # channels last: (N, O) or (N, OH, OW, O)
    if layer.pool is not None:
        y = maxpool_counts(y, *layer.pool)
    y = np.moveaxis(y, -1, 1)                       # the threshold ops take channels at axis 1
    if fold.lookup is None:
        return kernels.threshold_pack(y, fold.threshold, fold.direction)
    return pack_bits(np.moveaxis(threshold_signs(y, fold), 1, -1))


class PackedStep:
    """A packed binary layer as a step of a channels-last run (``nn.channels_last.Twin``).

    Input: packed signs (``Packed``), or +-1 values from a Sign, channels last.  Output: the
    packed signs of its fold when it folds ``[MaxPool2d ->] BatchNorm -> Sign``; with a
    ``table`` of the BatchNorm after it (``_count_table``), that BatchNorm's output
    (``kernels.binary_conv2d_lookup``: the counts never leave the kernel); else what the float
    twin (``ConvNHWC``) gives: the exact counts (``Counts``), or ``a * y`` with a scale.
    Inference only: ``backward`` raises.
    """

    def __init__(self, layer: PackedLayer, table: np.ndarray | None = None):
        self.layer, self.table = layer, table

    @staticmethod
    def bits(x: Activation) -> np.ndarray:
        """The packed signs of x: ``Packed`` bits as they are, +-1 values packed."""
        return x.bits if isinstance(x, Packed) else kernels.pack_signs(x)

    def counts(self, x: Activation, layout: str = "nhwc") -> np.ndarray:
        """The layer's exact int32 counts of x (a conv's in ``layout``)."""
        return count(self.bits(x), self.layer.kernel, layout)

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Activation, Params, None]:
        layer, k, bits = self.layer, self.layer.kernel, self.bits(x)
        if layer.fold is not None:
            return Packed(_folded_signs(bits, layer), layer.shape[0], x.dtype), {}, None
        if self.table is not None:
            return kernels.binary_conv2d_lookup(bits, k.wbits, k.wsum, k.in_channels, k.kh, k.kw,
                                                k.stride, k.padding, self.table), {}, None
        y = count(bits, k, "nhwc")
        return (Counts(y, x.dtype) if layer.scale is None
                else _real_output(y, layer, x.dtype, -1)), {}, None

    def backward(self, dy: Any, cache: Any) -> tuple[Any, Params]:
        raise MinibnnError(f"{self.layer.name}: packed layers are inference-only")


class BiasSignStep:
    """``BiasSignNHWC`` at inference in one pass (``kernels.bias_sign_pack``): its bits, the
    sign of ``x + b`` added in the model dtype, without the float y in between."""

    def __init__(self, twin: BiasSignNHWC):
        self.key = twin.key

    def forward(self, params: Params, buffers: Params, x: Activation, train: bool
                ) -> tuple[Packed, Params, None]:
        b = params[self.key]
        x = as_float(x, b.dtype)
        n, h, w, c = x.shape
        bits = kernels.bias_sign_pack(x.reshape(n * h * w, c), b)
        return Packed(bits.reshape(n, h, w, -1), c, b.dtype), {}, None

    def backward(self, dy: Any, cache: Any) -> tuple[Any, Params]:
        raise MinibnnError(f"{self.key}: packed inference steps are inference-only")


def _step_layers(step: Any) -> list[PackedLayer]:
    """The packed layers of a step of a PackedBinary, a Residual's branches included."""
    if isinstance(step, PackedStep):
        return [step.layer]
    if isinstance(step, ResidualNHWC):
        return [layer for branch in (step.body, step.shortcut or []) for s in branch
                for layer in _step_layers(s)]
    return []


class PackedBinary(Module):
    """A run of binary layers at inference, channels-last inside, activations packed between.

    ``steps``: what runs, channels-last, in order: each packed binary layer as a
    ``PackedStep`` and, where the run replaces a channels-last group of the float model
    (``nn.channels_last.ChannelsLast``), the group's other twins, the very objects the float
    model runs (the same kernels on the same arrays: the same bits), except a ``ResidualNHWC``
    with its branches' binary layers packed and a bias+sign in one pass (``BiasSignStep``).
    A packed layer reads packed signs (the first one packs ``sign(x)``); one that folds
    ``[MaxPool2d ->] BatchNorm -> Sign`` outputs the packed signs of the fold, a conv layer in
    one pass (``kernels.binary_conv2d_threshold_pack``).

    Input and output are the model's arrays: NCHW (or (N, features)), in x's dtype; a run ending
    in a folded layer outputs its thresholded signs as +-1.  Inference only: ``backward`` raises.
    """

    def __init__(self, steps: Sequence[Any]):
        self.steps = list(steps)
        super().__init__(self.layers[0].name.rsplit(".", 1)[0])

    @property
    def layers(self) -> list[PackedLayer]:
        """The packed binary layers of the run, in order."""
        return [layer for step in self.steps for layer in _step_layers(step)]

    def forward(self, params, buffers, x, train):
        first, last = self.steps[0], self.steps[-1]
        if isinstance(first, PackedStep):       # sign(x), packed channels-last
            h = Packed(pack_input(x, first.layer.kernel), first.layer.shape[1], x.dtype)
        else:
            h = channels_last(x)
        h, _, _ = forward_steps(self.steps[:-1], params, buffers, h, False)
        if isinstance(last, PackedStep) and last.layer.fold is None and last.table is None:
            # the run's real output, counted NCHW directly (no transpose); a layer with a
            # count table outputs its BatchNorm's values instead (PackedStep.forward)
            return _real_output(last.counts(h, "nchw"), last.layer, x.dtype, 1), {}, None
        h, _, _ = last.forward(params, buffers, h, False)
        return channels_first(as_float(h, x.dtype)), {}, None

    def backward(self, dy, cache):
        raise MinibnnError(f"{self.layers[0].name}: packed layers are inference-only")


def _not_after_sign(module: _BinaryWeights) -> MinibnnError:
    return MinibnnError(f"binary layer {module.key('w')!r} is not directly preceded by a Sign; "
                        "packed inference needs +-1 inputs")


def _check_signs(net: Module) -> None:
    """Every binary layer must come right after a Sign among its Sequential's declared layers
    (whichever steps run them: a fused sign step ends with that Sign)."""
    for module in walk(net):
        if isinstance(module, Sequential):
            for i, layer in enumerate(module.layers):
                if isinstance(layer, _BinaryWeights) and not (i and is_sign(module.layers[i - 1])):
                    raise _not_after_sign(layer)


def _packed_tree(module: Module, pm: PackedModel) -> Module:
    """Copy of the module tree with its binary layers packed, each Sequential running the
    steps its float twin runs (``Sequential.steps()``): a channels-last group becomes one
    PackedBinary (``_packed_twins``), and among the other steps each ``Sign -> binary layer
    [-> fold -> binary layer]*`` run of declared layers does (``_packed_layers``)."""
    if isinstance(module, Concat):
        return Concat([_packed_tree(branch, pm) for branch in module.branches], module.name)
    if isinstance(module, Residual):
        short = module.shortcut
        return Residual(_packed_tree(module.body, pm),
                        None if short is None else _packed_tree(short, pm), module.name)
    if isinstance(module, _BinaryWeights):
        raise _not_after_sign(module)
    if not isinstance(module, Sequential):
        return module
    steps = module.steps()
    declared = [_declared(step) for step in steps]
    if [id(m) for d in declared for m in d] != [id(m) for m in module.layers]:
        raise MinibnnError(f"packed inference: the steps of {module.name or 'a Sequential'} "
                           f"({', '.join(type(s).__name__ for s in steps)}) do not run its "
                           "declared layers in order")
    out: list[Module] = []
    pending: list[Module] = []                  # declared layers of the steps since the group
    for step, mods in zip(steps, declared):
        if isinstance(step, ChannelsLast):
            out += _packed_layers(pending, pm)
            out.append(PackedBinary(_packed_twins(step.twins, pm)))
            pending = []
        else:
            pending += mods
    return Sequential(out + _packed_layers(pending, pm), module.name)


def _declared(step: Module) -> list[Module]:
    """The declared layers a step of a Sequential runs (``Sequential.steps()``: fused sign steps
    and channels-last groups run several)."""
    if isinstance(step, ChannelsLast):
        return [m for s in step.steps for m in _declared(s)]
    if isinstance(step, BatchNormSign):
        return [step.bn, step.sign]
    if isinstance(step, BiasSign):
        return [step.bias, step.sign]
    if isinstance(step, SignsDense):
        return [step.layer]
    return [step]


def _packed_layers(mods: Sequence[Module], pm: PackedModel) -> list[Module]:
    """``mods`` with each ``Sign -> binary layer [-> fold -> binary layer]*`` run replaced by
    one PackedBinary (folded modules and the Signs they feed are dropped)."""
    out: list[Module] = []
    i = 0
    while i < len(mods):
        if not (is_sign(mods[i]) and i + 1 < len(mods)
                and isinstance(mods[i + 1], _BinaryWeights)):
            out.append(_packed_tree(mods[i], pm))
            i += 1
            continue
        run, i = [], i + 1                      # mods[i] is a binary layer fed by a Sign
        while True:
            layer = pm.layers[mods[i].key("w")]
            site = fold_after(mods, i) if layer.fold is not None else None
            run.append(PackedStep(layer if site is not None else _without_fold(layer)))
            i += 1 + (site.span if site is not None else 0)
            if not (site is not None and i < len(mods) and isinstance(mods[i], _BinaryWeights)):
                break                           # else the folded Sign feeds mods[i]: stay packed
        out.append(PackedBinary(run))
    return out


def _packed_twins(twins: Sequence[Any], pm: PackedModel) -> list[Any]:
    """The steps of the PackedBinary that replaces a channels-last group (its ``twins``): each
    binary conv packed (the ``[max-pool ->] BatchNorm+sign`` twins of its fold dropped, or the
    plain BatchNorm after it as a count table), a Residual's branches likewise, a bias+sign as
    ``BiasSignStep``, every other twin as the group runs it."""
    steps: list[Any] = []
    i = 0
    while i < len(twins):
        twin = twins[i]
        if isinstance(twin, ResidualNHWC):
            steps.append(ResidualNHWC(_packed_twins(twin.body, pm),
                                      None if twin.shortcut is None
                                      else _packed_twins(twin.shortcut, pm)))
            i += 1
        elif isinstance(twin, ConvNHWC) and twin.binary:
            layer = pm.layers[twin.layer.key("w")]
            span = _fold_span(twins, i, layer)
            if span:
                steps.append(PackedStep(layer))
            else:
                layer = _without_fold(layer)
                after = twins[i + 1] if i + 1 < len(twins) else None
                table = _count_table(layer, after, pm)
                steps.append(PackedStep(layer, table))
                span = 0 if table is None else 1
            i += 1 + span
        elif type(twin) is BiasSignNHWC:
            steps.append(BiasSignStep(twin))
            i += 1
        else:
            steps.append(twin)
            i += 1
    return steps


#: entries (2K+1)*O of the largest count table ``_count_table`` builds (4 MiB in float32; the
#: lookups should stay in cache: birealnet w32's largest is 0.3M), beyond it the BatchNorm runs
COUNT_TABLE_MAX = 1 << 20


def _count_table(layer: PackedLayer, twin: Any, pm: PackedModel) -> np.ndarray | None:
    """What ``twin``, the float step after the unfolded binary conv ``layer``, outputs for each
    count y in [-K, K] of each channel, computed by the twin itself: (2K+1, O), row y + K.

    Only for a plain BatchNorm (``BatchNormNHWC``: eval mode, elementwise per channel, so each
    entry is the bits it gives that count anywhere), with at most ``COUNT_TABLE_MAX`` entries;
    else None (the twin runs).  The input is what ``ConvNHWC`` gives it: counts, or ``a * y``.
    """
    k, o = layer.k, layer.shape[0]
    if type(twin) is not BatchNormNHWC or (2 * k + 1) * o > COUNT_TABLE_MAX:
        return None
    y = np.repeat(np.arange(-k, k + 1, dtype=np.int32)[:, None], o, axis=1)[None, None]
    if layer.scale is None:
        conv_out = Counts(y, pm.dtype)
    else:
        conv_out = _real_output(y, layer, pm.dtype, -1)
    table, _, _ = twin.forward(pm.params, pm.buffers, conv_out, False)
    return np.ascontiguousarray(table.reshape(2 * k + 1, o))


def _fold_span(twins: Sequence[Any], i: int, layer: PackedLayer) -> int:
    """How many of the twins after the binary conv ``twins[i]`` its fold replaces:
    ``[max-pool,] BatchNorm+sign`` (2 or 1), or 0 when they are not those twins."""
    if layer.fold is None:
        return 0
    j = i + 1
    if layer.pool is not None:
        pool = twins[j] if j < len(twins) else None
        if not (isinstance(pool, MaxPoolNHWC) and (pool.kernel, pool.stride, 0) == layer.pool):
            return 0
        j += 1
    bn = twins[j] if j < len(twins) else None
    return j - i if isinstance(bn, BatchNormSignNHWC) and bn.bn.name == layer.fold_bn else 0


def layer_geometry(module: _BinaryWeights) -> tuple[str, int, int]:
    """(kind, stride, padding) of a binary module: ``("dense", 1, 0)`` or its conv's."""
    if isinstance(module, BinaryConv2d):
        return "conv2d", int(module.stride), int(module.padding)
    if isinstance(module, BinaryDense):
        return "dense", 1, 0
    raise MinibnnError(f"{module.key('w')}: no packed kernel for {type(module).__name__}")


def _kernel(kind: str, sign_w: np.ndarray, stride: int, padding: int
            ) -> PackedDense | PackedConv2d:
    if kind == "dense":
        return pack_dense(sign_w)
    return pack_conv2d(sign_w, stride, padding)


def pack_layer(module: _BinaryWeights, params: Params) -> PackedLayer:
    """Pack one binary layer's weights from its trained parameters (latent or +-1 storage).

    Uses the module's own ``effective_weight``, so ``a`` is bit-for-bit the float path's.
    """
    name = module.key("w")
    kind, stride, padding = layer_geometry(module)
    w = np.asarray(params[name])
    _, wcache = module.effective_weight(params)
    scale = None
    if wcache is not None and wcache.scale is not None:
        scale = np.ascontiguousarray(wcache.scale.reshape(-1))
    # bit = (w >= 0) = (sign(w) == +1): for +-1 storage w is its own sign
    bits = kernels.pack_signs(np.ascontiguousarray(w).reshape(w.shape[0], -1))
    return PackedLayer(name, kind, tuple(int(s) for s in w.shape), stride, padding, bits, scale,
                       _kernel(kind, w, stride, padding))


def fold_layer(layer: PackedLayer, site: Fold, params: Params, buffers: Params, dtype: Any
               ) -> PackedLayer:
    """``layer`` with the BatchNorm + sign (and max-pool) after it folded into thresholds."""
    fold = fold_batchnorm_sign(site.bn, site.sign, params, buffers, layer.k, dtype, layer.scale)
    return dataclasses.replace(layer, fold=fold, fold_bn=site.bn.name, pool=site.pool_args)


def layer_from_bits(name: str, kind: str, shape: tuple[int, ...], stride: int, padding: int,
                    bits: np.ndarray, scale: np.ndarray | None, dtype: np.dtype
                    ) -> PackedLayer:
    """Rebuild a PackedLayer (with its kernel layout) from stored bits: uint64
    (O, ``words_for(K)``), as ``minibnn.deploy.packed_file`` checks them on reading."""
    k = int(np.prod(shape[1:]))
    sign_w = kernels.unpack_signs(bits, k, dtype).reshape(shape)
    return PackedLayer(name, kind, shape, stride, padding, bits, scale,
                       _kernel(kind, sign_w, stride, padding))


@dataclass
class PackedModel:
    """A model ready for bit-packed inference: ``logits = pm.forward(x)``."""

    model: Model                    # the float model (structure, input shape, binary names)
    params: Params                  # real-valued parameters only
    buffers: Params
    layers: dict[str, PackedLayer]
    config_json: str
    epoch: int
    source: str
    source_params: Params | None = None   # the checkpoint's full params, when packed from one
    net: Sequential = field(init=False)

    def __post_init__(self) -> None:
        _check_signs(self.model.net)
        self.net = _packed_tree(self.model.net, self)

    @property
    def dtype(self) -> np.dtype:
        """The model dtype (that of its real parameters)."""
        return next(iter(self.params.values())).dtype

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of x (N, *input_shape) in the model dtype, BatchNorm in eval mode.

        x must be a finite NumPy array: the packed kernels and the integer max-pool run on the
        host, and NaN or infinite values are a one-line error (``backend.check_finite_input``).
        """
        if not isinstance(x, np.ndarray):
            kind = f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"
            raise DeviceError(f"{self.model.name}: packed inference runs on the CPU: x must be a "
                              f"NumPy array, got {kind} (copy it to the host first)")
        if tuple(x.shape[1:]) != self.model.input_shape:
            raise ShapeError(f"{self.model.name}: input must have shape (N, "
                             f"{', '.join(map(str, self.model.input_shape))}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise DTypeError(f"{self.model.name}: the packed model is {self.dtype.name} (its "
                             f"thresholds fold {self.dtype.name} BatchNorm), got x {x.dtype}")
        check_finite_input(f"{self.model.name} (packed)", x)
        logits, _, _ = self.net.forward(self.params, self.buffers, x, False)
        return logits

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).argmax(axis=1)

    def float_params(self) -> Params:
        """Parameters for the float model's forward: the checkpoint's when known, else rebuilt.

        Rebuilt binary weights are sign(w) (times ``a`` with scale; the float path then
        recomputes ``a`` = mean|a sign(w)|, equal to the stored ``a`` up to rounding).
        """
        if self.source_params is not None:
            return self.source_params
        params = dict(self.params)
        for name, layer in self.layers.items():
            w = kernels.unpack_signs(layer.bits, layer.k, self.dtype)
            if layer.scale is not None:
                w = w * layer.scale.reshape(-1, 1)
            params[name] = w.reshape(layer.shape)
        return params

    def sizes(self) -> dict[str, float]:
        """Binary weights: count, float32 bytes (4 per weight) and packed bytes, their ratio;
        bytes of the scales and of the folded thresholds (threshold, direction, lookup)."""
        layers = self.layers.values()
        count_w = sum(int(np.prod(layer.shape)) for layer in layers)
        packed = sum(int(layer.bits.nbytes) for layer in layers)
        scales = sum(int(layer.scale.nbytes) for layer in layers if layer.scale is not None)
        folds = [layer.fold for layer in layers if layer.fold is not None]
        thresholds = sum(int(f.threshold.nbytes + f.direction.nbytes)
                         + (0 if f.lookup is None else int(f.lookup.nbytes)) for f in folds)
        return {"binary_layers": len(self.layers), "binary_weights": count_w,
                "float32_bytes": 4 * count_w, "packed_bytes": packed, "scale_bytes": scales,
                "folded_layers": len(folds), "threshold_bytes": thresholds,
                "weight_ratio": 4 * count_w / packed if packed else float("nan")}


def pack_model(model: Model, params: Params, buffers: Params, *, config_json: str = "{}",
               epoch: int = 0, source: str = "") -> PackedModel:
    """Pack a model's binary layers from (float) params and fold each ``[MaxPool2d ->]
    BatchNorm -> Sign`` after one into thresholds; keep everything else as it is."""
    binary = set(model.binary_names)
    real = {k: np.asarray(v) for k, v in params.items() if k not in binary}
    bufs = {k: np.asarray(v) for k, v in buffers.items()}
    dtype = next(iter(real.values())).dtype
    sites = fold_sites(model)
    layers = {}
    for module in binary_layers(model):
        layer = pack_layer(module, params)
        if layer.name in sites:
            layer = fold_layer(layer, sites[layer.name], real, bufs, dtype)
        layers[layer.name] = layer
    return PackedModel(model, real, bufs, layers, config_json, epoch, source, dict(params))


__all__ = ["PackedBinary", "PackedLayer", "PackedModel", "PackedStep", "binary_layers",
           "fold_layer", "layer_from_bits", "layer_geometry", "pack_layer", "pack_model"]
