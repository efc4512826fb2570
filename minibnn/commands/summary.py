"""``minibnn summary``: a per-layer table of a model, in the spirit of larq's ``summary``.

For every leaf layer (walking ``Sequential`` and ``Residual`` as declared): its output shape,
the precision of its input (``1-bit`` when every input value is +-1, as after a sign), its
parameters split by bit width (binary weights are 1 bit, everything else, BatchNorm running
statistics included, the model dtype's width), their memory, and its multiply-accumulates per
image split into *binary* (+-1 weights on +-1 input: XNOR-popcount) and *float*. Shapes and
input precisions come from one eval-mode forward pass of a zero image through the layers (the
values after the first layer are what the model computes, so a sign's +-1 output is detected,
not assumed).

    rows, totals = summarize(model)          # plain data
    print(format_summary(model))             # the table

For a run file, the table is followed by the run's provenance (``description["provenance"]``:
per training session, the data copy with its hash, threads, BLAS and CPU, library versions;
``minibnn.run.provenance``), when the file stores it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minibnn.nn import functional as F
from minibnn.nn.containers import Concat, Residual, Sequential
from minibnn.nn.models import Model
from minibnn.nn.modules import (BinaryConv2d, BinaryDense, Conv2d, Dense, Module, Stateless,
                                _BinaryWeights)
from minibnn.run.provenance import format_sessions


@dataclass
class LayerRow:
    name: str                  # parameter prefix, or the operation for parameter-free layers
    kind: str                  # class or operation name
    output_shape: tuple[int, ...]   # per image (no batch axis)
    input_bits: str            # "1-bit" or e.g. "32-bit"
    binary_params: int         # 1-bit parameters
    float_params: int          # parameters and buffers in the model dtype
    memory_bytes: float        # binary_params / 8 + float_params * itemsize
    binary_macs: int           # XNOR-popcount multiply-accumulates per image
    float_macs: int            # float multiply-accumulates per image


def _kind(module: Module) -> str:
    if isinstance(module, Stateless):
        return module.forward_fn.__name__.removesuffix("_forward")
    return type(module).__name__


def _macs(module: Module, y: np.ndarray) -> int:
    """Multiply-accumulates of one image: output elements times the fan-in."""
    if isinstance(module, (Dense, BinaryDense)):
        w_shape = module.shape if isinstance(module, BinaryDense) else (
            module.out_features, module.in_features)
        return int(w_shape[0] * w_shape[1])
    if isinstance(module, (Conv2d, BinaryConv2d)):
        _, c, kh, kw = module.shape
        return int(np.prod(y.shape[1:])) * c * kh * kw
    return 0


def _walk(module: Module, params: dict, buffers: dict, x: np.ndarray, binary: set[str],
          rows: list[LayerRow]) -> np.ndarray:
    if isinstance(module, Sequential):
        for layer in module.layers:
            x = _walk(layer, params, buffers, x, binary, rows)
        return x
    if isinstance(module, Residual):
        y = _walk(module.body, params, buffers, x, binary, rows)
        short = x if module.shortcut is None else _walk(module.shortcut, params, buffers, x,
                                                        binary, rows)
        out, _ = F.add_forward(y, short)
        rows.append(LayerRow("add", "add", tuple(out.shape[1:]), _bits(y), 0, 0, 0.0, 0, 0))
        return out
    if isinstance(module, Concat):
        outs = [_walk(branch, params, buffers, x, binary, rows) for branch in module.branches]
        out, _ = F.concat_forward(outs)
        rows.append(LayerRow("concat", "concat", tuple(out.shape[1:]), _bits(outs[0]), 0, 0, 0.0,
                             0, 0))
        return out
    y, _, _ = module.forward(params, buffers, x, False)
    p, b = module.init(np.random.default_rng(0), x.dtype)
    n_binary = sum(v.size for k, v in p.items() if k in binary)
    n_float = sum(v.size for k, v in p.items() if k not in binary) + sum(v.size for v in b.values())
    macs = _macs(module, y)
    binary_input = _bits(x) == "1-bit"
    xnor = isinstance(module, _BinaryWeights) and binary_input
    prefix = getattr(module, "name", "")
    rows.append(LayerRow(prefix or _kind(module), _kind(module), tuple(y.shape[1:]), _bits(x),
                         n_binary, n_float, n_binary / 8 + n_float * x.dtype.itemsize,
                         macs if xnor else 0, 0 if xnor else macs))
    return y


def _bits(x: np.ndarray) -> str:
    return "1-bit" if x.size and bool(np.all(np.abs(x) == 1)) else f"{8 * x.dtype.itemsize}-bit"


def summarize(model: Model, dtype: Any = np.float32,
              params: dict | None = None, buffers: dict | None = None
              ) -> tuple[list[LayerRow], dict[str, float]]:
    """Rows per leaf layer and totals (see the module docstring); ``params``/``buffers``
    default to the model's initial ones (shapes and counts do not depend on the values)."""
    if params is None or buffers is None:
        params, buffers = model.init(np.random.default_rng(0), dtype)
    dtype = np.dtype(next(iter(params.values())).dtype)
    x = np.zeros((1,) + tuple(model.input_shape), dtype=dtype)
    rows: list[LayerRow] = []
    _walk(model.net, params, buffers, x, set(model.binary_names), rows)
    totals: dict[str, float] = {k: sum(getattr(r, k) for r in rows) for k in
                                ("binary_params", "float_params", "memory_bytes",
                                 "binary_macs", "float_macs")}
    as_float = (totals["binary_params"] + totals["float_params"]) * 4
    totals["float32_bytes"] = as_float
    totals["float_bits"] = 8 * dtype.itemsize
    totals["compression"] = as_float / totals["memory_bytes"] if totals["memory_bytes"] else 1.0
    return rows, totals


def _kib(b: float) -> str:
    return f"{b / 1024:.2f}"


def provenance_lines(description: dict[str, Any] | None) -> list[str]:
    """A run file description's provenance, one "provenance:" line and the sessions' lines
    indented under it; none when the description has no ``provenance`` (older files)."""
    records = (description or {}).get("provenance") if isinstance(description, dict) else None
    if not records:
        return []
    return ["provenance:"] + [f"  {line}" for line in format_sessions(records)]


def format_summary(model: Model, dtype: Any = np.float32, params: dict | None = None,
                   buffers: dict | None = None,
                   description: dict[str, Any] | None = None) -> str:
    """The table ``minibnn summary`` prints; with a run file's ``description``, followed by
    its provenance (``provenance_lines``)."""
    rows, t = summarize(model, dtype, params, buffers)
    header = ["layer", "output shape", "input", "1-bit params", f"{int(t['float_bits'])}-bit params",
              "memory KiB", "binary MACs", "float MACs"]
    cells = [header] + [[r.name, "x".join(map(str, r.output_shape)), r.input_bits,
                         str(r.binary_params or ""), str(r.float_params or ""),
                         _kib(r.memory_bytes) if r.memory_bytes else "",
                         f"{r.binary_macs:,}" if r.binary_macs else "",
                         f"{r.float_macs:,}" if r.float_macs else ""] for r in rows]
    total = ["total", "", "", str(int(t["binary_params"])), str(int(t["float_params"])),
             _kib(t["memory_bytes"]), f"{int(t['binary_macs']):,}", f"{int(t['float_macs']):,}"]
    widths = [max(len(c[i]) for c in cells + [total]) for i in range(len(header))]

    def line(c: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                         enumerate(zip(c, widths)))
    rule = "-" * len(line(header))
    out = [f"{model.name}: input {'x'.join(map(str, model.input_shape))}, "
           f"{model.num_classes} classes", line(header), rule]
    out += [line(c) for c in cells[1:]] + [rule, line(total)]
    macs = t["binary_macs"] + t["float_macs"]
    share = 100 * t["binary_macs"] / macs if macs else 0.0
    out.append(f"parameters: {int(t['binary_params']):,} binary (1 bit) + "
               f"{int(t['float_params']):,} float (incl. BatchNorm statistics); memory "
               f"{_kib(t['memory_bytes'])} KiB vs {_kib(t['float32_bytes'])} KiB as float32: "
               f"{t['compression']:.1f}x smaller")
    out.append(f"MACs per image: {int(macs):,}, {share:.1f} % binary (XNOR-popcount)")
    return "\n".join(out + provenance_lines(description))
