"""Containers: ``Sequential`` (modules in order), ``Residual`` (``body(x) + shortcut(x)``) and
``Concat`` (branches side by side along the channels: ReActNet's widening block).

A ``Sequential`` runs its ``layers`` the way its ``layout`` says, chosen when it is built and
never behind the caller's back (``LAYOUTS``):

  * ``"nchw"`` (the default of a hand-built Sequential): the layers as written, one call each:
    ``nn/functional``'s conv, sign and batchnorm, the code the README teaches;
  * ``"nhwc"`` (the model builders' default, the fast engine; ``--layout``):
      1. every affine ``BatchNorm`` directly followed by the real ``Sign`` becomes one
         ``BatchNormSign`` step (one fused kernel, the same bits, the same parameter names),
         and every ``LearnableBias`` directly followed by it one ``BiasSign`` step; a
         ``BinaryDense`` without a scale right after a step that emits signs runs on bits
         (``SignsDense``: the XNOR-popcount product, the same bits; the MLP's hidden layers);
      2. every maximal run of steps with a channels-last twin (convolutions, affine
         BatchNorms, those sign steps, max-pools, block average pools, PReLUs, the global
         average pool, and Residuals whose body and shortcut are nhwc Sequentials of such
         steps, recursively) in which a sign step is directly followed by a binary
         convolution, in the run itself or inside one branch of a Residual in it (recursively;
         ``_feeds_binary``: adjacent steps of one list, never a sign step at the end of a
         branch and a convolution after the Residual, nor one with a pool between them),
         becomes one ``ChannelsLast`` step (``group_channels_last``; ``nn.channels_last``:
         NHWC inside, packed activations, the XNOR-popcount forward). A Residual inside a
         group runs as ``ResidualNHWC``, twinned from its Sequentials' *layers* (fused as in
         1.), not from the steps they run on their own.

The VGG-style CNN's group runs from its first convolution to its last BatchNorm+sign;
birealnet's from the stem convolution to the global average pool (every block, shortcut and
PReLU inside), so only the classifier runs outside it.

Either way the parameters, buffers and gradients are the layers' own, under their names, and
``layers`` stays as built (what ``init``, ``binary_names`` and the packed-inference rewrite
read); ``steps()`` lists what runs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minibnn.errors import MinibnnError
from minibnn.nn import functional as F
from minibnn.nn.channels_last import (ChannelsLast, ResidualNHWC, Twin, emits_signs,
                                      has_twin, is_global_avgpool, nhwc_twin)
from minibnn.nn.modules import (BatchNorm, BatchNormSign, BiasSign, BinaryConv2d, BinaryDense,
                                LearnableBias, Module, Params, SignsDense, backward_steps,
                                forward_steps, is_sign, model_dtype)

#: how a Sequential runs its layers: "nhwc" the fast engine, "nchw" the layers as written
LAYOUTS = ("nhwc", "nchw")


def check_layout(layout: str) -> str:
    """``layout`` if it is one of ``LAYOUTS``, else a one-line error naming ``--layout``."""
    if layout not in LAYOUTS:
        raise MinibnnError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def init_all(modules: Sequence[Module], rng: np.random.Generator, dtype: Any
             ) -> tuple[Params, Params]:
    """The parameters and buffers of ``modules``, initialised in order (one ``rng`` stream); a
    name two of them declare is a one-line error."""
    params: Params = {}
    buffers: Params = {}
    for module in modules:
        p, b = module.init(rng, dtype)
        duplicate = (set(p) | set(b)) & (set(params) | set(buffers))
        if duplicate:
            raise MinibnnError(f"duplicate parameter names in model: {sorted(duplicate)}")
        params.update(p)
        buffers.update(b)
    return params, buffers


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse.

    What runs are the *steps* (``steps()``), fixed once here from ``layers`` and ``layout``
    (module header: the layers themselves, or fused BatchNorm+sign and bias+sign pairs and
    channels-last groups). So the cache that ``forward`` returns holds one entry per step, not
    per layer, and its i-th entry belongs to ``steps()[i]``. ``layers`` is the model as
    declared; build a new Sequential rather than editing it in place.

    ``input_grad=False`` (a model's top level, whose backward ignores dx): ``backward``
    returns None for dx; a channels-last group that is the first step skips its first
    convolution's input gradient, and a dense layer that is the first step with parameters
    its ``dy . W`` (``backward_steps``; other first steps compute dx, which is dropped).
    """

    def __init__(self, layers: Sequence[Module], name: str = "", input_grad: bool = True,
                 layout: str = "nchw"):
        super().__init__(name)
        self.layers = list(layers)
        self.input_grad = input_grad
        self.layout = check_layout(layout)
        if layout == "nhwc":
            self._steps = group_channels_last(_dense_on_signs(_fuse_signs(self.layers)),
                                              input_grad)
        else:
            self._steps = list(self.layers)

    @property
    def binary_names(self) -> list[str]:
        return [n for layer in self.layers for n in layer.binary_names]

    def init(self, rng, dtype):
        return init_all(self.layers, rng, model_dtype(dtype))

    def steps(self) -> list[Module]:
        """The layers as they run (one entry per cache entry of ``forward``)."""
        return list(self._steps)

    def forward(self, params, buffers, x, train):
        return forward_steps(self._steps, params, buffers, x, train)

    def backward(self, dy, cache):
        return backward_steps(self._steps, dy, cache, self.input_grad)


def _fuse_signs(layers: Sequence[Module]) -> list[Module]:
    """``layers`` with each affine BatchNorm + the real Sign after it as one BatchNormSign,
    and each LearnableBias + the real Sign after it as one BiasSign."""
    steps: list[Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and is_sign(nxt) and isinstance(layer, BatchNorm) and layer.affine:
            steps.append(BatchNormSign(layer, nxt))
            i += 2
        elif nxt is not None and is_sign(nxt) and isinstance(layer, LearnableBias):
            steps.append(BiasSign(layer, nxt))
            i += 2
        else:
            steps.append(layer)
            i += 1
    return steps


def _dense_on_signs(steps: Sequence[Module]) -> list[Module]:
    """``steps`` with each BinaryDense without a scale that directly follows a step emitting
    signs (BatchNorm+sign, bias+sign, a Sign) as a ``SignsDense``: its input is all +-1, so
    its product runs on bits (the same bits)."""
    out = list(steps)
    for i in range(1, len(out)):
        emits = emits_signs(out[i - 1]) or is_sign(out[i - 1])
        if emits and isinstance(out[i], BinaryDense) and not out[i].scale:
            out[i] = SignsDense(out[i])
    return out


class Residual(Module):
    """``y = body(x) + shortcut(x)``, the shortcut being the identity when None."""

    def __init__(self, body: Module, shortcut: Module | None = None, name: str = ""):
        super().__init__(name)
        self.body, self.shortcut = body, shortcut

    @property
    def binary_names(self) -> list[str]:
        extra = self.shortcut.binary_names if self.shortcut else []
        return self.body.binary_names + extra

    def init(self, rng, dtype):
        params, buffers = self.body.init(rng, dtype)
        if self.shortcut is not None:
            p, b = self.shortcut.init(rng, dtype)
            params.update(p)
            buffers.update(b)
        return params, buffers

    def forward(self, params, buffers, x, train):
        y_body, new_buffers, body_cache = self.body.forward(params, buffers, x, train)
        short_cache = None
        y_short = x
        if self.shortcut is not None:
            y_short, updated, short_cache = self.shortcut.forward(params, buffers, x, train)
            new_buffers.update(updated)
        y, add_cache = F.add_forward(y_body, y_short)
        return y, new_buffers, (body_cache, short_cache, add_cache)

    def backward(self, dy, cache):
        body_cache, short_cache, add_cache = cache
        d_body, d_short = F.add_backward(dy, add_cache)
        dx, grads = self.body.backward(d_body, body_cache)
        if self.shortcut is not None:
            d_short, short_grads = self.shortcut.backward(d_short, short_cache)
            grads.update(short_grads)
        return dx + d_short, grads


class Concat(Module):
    """``y = [branch_1(x), branch_2(x), ...]`` along the channel axis: every branch reads the same
    input, so the input gradient is the sum of the branches' (``dx = sum_i dx_i``)."""

    def __init__(self, branches: Sequence[Module], name: str = ""):
        if len(branches) < 1:
            raise MinibnnError("Concat needs at least one branch")
        super().__init__(name)
        self.branches = list(branches)

    @property
    def binary_names(self) -> list[str]:
        return [n for branch in self.branches for n in branch.binary_names]

    def init(self, rng, dtype):
        return init_all(self.branches, rng, dtype)

    def forward(self, params, buffers, x, train):
        outs, caches, new_buffers = [], [], {}
        for branch in self.branches:
            y, updated, cache = branch.forward(params, buffers, x, train)
            outs.append(y)
            caches.append(cache)
            new_buffers.update(updated)
        y, concat_cache = F.concat_forward(outs)
        return y, new_buffers, (caches, concat_cache)

    def backward(self, dy, cache):
        caches, concat_cache = cache
        dx, grads = None, {}
        for branch, d, c in zip(self.branches, F.concat_backward(dy, concat_cache), caches):
            d_in, g = branch.backward(d, c)
            grads.update(g)
            dx = d_in if dx is None else dx + d_in
        return dx, grads


# ------------------------------------------------------------------ the nhwc layout's groups


def _branches(residual: Residual) -> list[list[Module]] | None:
    """The steps a Residual's body and shortcut (if any) run inside a channels-last group:
    each an nhwc Sequential's layers, fused (``_fuse_signs``); None if either is not an nhwc
    Sequential (it then runs as it is)."""
    branches = []
    for branch in (residual.body, residual.shortcut):
        if branch is None:
            continue
        if not (isinstance(branch, Sequential) and branch.layout == "nhwc"):
            return None
        branches.append(_fuse_signs(branch.layers))
    return branches


def _runs_nhwc(step: Module) -> bool:
    """True for a step a channels-last group can hold: one with a twin of its own
    (``has_twin``), or a Residual whose branches hold only such steps and no global average
    pool (its (N, C) output is no NHWC activation: it ends a group)."""
    if isinstance(step, Residual):
        branches = _branches(step)
        return branches is not None and all(_runs_nhwc(s) and not is_global_avgpool(s)
                                            for b in branches for s in b)
    return has_twin(step)


def _feeds_binary(steps: Sequence[Module]) -> bool:
    """True if a step that emits signs (BatchNorm+sign, bias+sign) feeds a binary convolution
    in ``steps`` or inside a Residual among them."""
    return (any(emits_signs(a) and isinstance(b, BinaryConv2d) for a, b in zip(steps, steps[1:]))
            or any(_feeds_binary(b) for s in steps if isinstance(s, Residual)
                   for b in _branches(s) or []))


def _nhwc_twin(step: Module, need_dx: bool) -> Twin:
    """The NHWC twin of a step with ``_runs_nhwc(step)``: a Residual's from the twins of its
    branches' steps (each needs its input gradient: the add passes it on), any other
    step's own (``nn.channels_last.nhwc_twin``)."""
    if not isinstance(step, Residual):
        return nhwc_twin(step, need_dx)
    body, *shortcut = [[_nhwc_twin(s, True) for s in branch] for branch in _branches(step)]
    return ResidualNHWC(body, shortcut[0] if shortcut else None)


def group_channels_last(steps: Sequence[Module], input_grad: bool = True) -> list[Module]:
    """``steps`` with each maximal run of steps that ``_runs_nhwc`` (ending at the latest with
    a global average pool) in which a sign step feeds a binary convolution (``_feeds_binary``)
    replaced by one ``ChannelsLast`` group (other runs stay as they are). ``input_grad=False``:
    a group that starts ``steps`` has no input gradient, and its first step's twin skips
    computing it."""
    out: list[Module] = []
    i = 0
    while i < len(steps):
        j = i
        while j < len(steps) and _runs_nhwc(steps[j]):
            j += 1
            if is_global_avgpool(steps[j - 1]):            # (N, C) out: the run ends here
                break
        run = list(steps[i:j])
        if _feeds_binary(run):
            group_dx = input_grad or i > 0
            twins = [_nhwc_twin(step, k > 0 or group_dx) for k, step in enumerate(run)]
            out.append(ChannelsLast(run, twins, input_grad=group_dx))
        else:
            out.extend(run)
        if j == i:
            out.append(steps[i])
            j += 1
        i = j
    return out
