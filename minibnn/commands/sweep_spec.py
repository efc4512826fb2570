"""Sweep specs: a TOML file of ``minibnn train`` options and a grid over some of them.

    [base]                    # options every point shares (long option names, no dashes)
    dataset = "mnist"
    hidden = [256, 256]       # lists as TOML arrays
    decoupled = true          # on/off flags as true/false
    epochs = 5

    [grid]                    # option -> the values to try; the sweep is their product
    lr = [0.01, 0.1]
    weight-decay = [1e-4, 1e-3]
    seed = [0, 1]

``-`` and ``_`` are the same in option names.  The machine-local ``data-dir``, ``device`` and
``backend`` may be set in ``[base]`` (they say where points run, not what they are; the
command line's ``--data-dir`` wins).  Every point's run spec is built (``spec_from_options``)
before anything starts, so an unknown option, a value of the wrong type, or an option that does
not apply to the chosen model or optimiser is a one-line error naming the point.  Each point is
named by a stable id of its spec (a hash of the spec JSON), so reordering the grid, or adding
values to it, reuses every run already made.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from typing import Any

from minibnn.errors import MinibnnError
from minibnn.run.spec import LOCAL_FIELDS, OPTION_NAMES, Local, RunSpec, flag, spec_from_options

TABLES = ("base", "grid")
#: the most points a sweep may have: checked from the grid's lengths, before any is built
MAX_POINTS = 100_000


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its grid values (named as in the spec file) and its run spec."""
    values: dict[str, Any]
    spec: RunSpec

    @property
    def id(self) -> str:
        return spec_id(self.spec)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep spec: the grid's option names (as written) and its points, in grid order."""
    axes: tuple[str, ...]
    points: tuple[Point, ...]
    local: Local


def spec_id(spec: RunSpec) -> str:
    """12 hex digits of the SHA-256 of the spec's JSON: equal specs, equal ids.

    ``model.layout`` enters only when it is not ``"nhwc"``, the engine every spec ran on before
    the layout was a choice: so sweep folders made before then keep their ids, and a re-run
    still finds their run files."""
    data = spec.to_dict()
    if data["model"].get("layout") == "nhwc":
        data = {**data, "model": {k: v for k, v in data["model"].items() if k != "layout"}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _option(name: Any, where: str) -> str:
    """An option name from the file (``weight-decay`` or ``weight_decay``) -> ``weight_decay``."""
    if not isinstance(name, str):
        raise MinibnnError(f"{where}: option names must be strings, got {name!r}")
    key = name.replace("-", "_")
    if key in OPTION_NAMES or key in LOCAL_FIELDS:
        return key
    raise MinibnnError(f"{where}: unknown option {name!r} (the options of minibnn train, "
                       f"e.g. {flag('weight_decay')[2:]}; not out/resume/overwrite)")


def parse_sweep(text: str, source: str = "sweep spec") -> Sweep:
    """Parse a sweep spec's TOML text; every problem is a one-line ``MinibnnError``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MinibnnError(f"{source}: not valid TOML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(doc) - set(TABLES))
    if unknown:
        raise MinibnnError(f"{source}: unknown table(s) {unknown}; a sweep spec has [base] "
                           "and [grid]")
    base_table, grid_table = doc.get("base", {}), doc.get("grid", {})
    for name, table in (("base", base_table), ("grid", grid_table)):
        if not isinstance(table, dict):
            raise MinibnnError(f"{source}: [{name}] must be a table")
    if not base_table and not grid_table:
        raise MinibnnError(f"{source}: the spec is empty; give the options of its runs in "
                           "[base] and the values to try in [grid]")
    base: dict[str, Any] = {}
    for name, value in base_table.items():
        key = _option(name, f"{source} [base]")
        if key in base:
            raise MinibnnError(f"{source} [base]: {name!r} is given twice")
        base[key] = value
    if "threads" in base:
        raise MinibnnError(f"{source} [base]: threads is not a sweep setting: each worker runs "
                           "one thread (choose how many workers with --workers)")
    local = {k: base.pop(k) for k in LOCAL_FIELDS if k in base}
    try:
        machine = Local(**local)
    except TypeError as exc:
        raise MinibnnError(f"{source} [base]: {exc}") from None
    axes: list[tuple[str, str, list[Any]]] = []       # (name as written, option, values)
    for name, values in grid_table.items():
        key = _option(name, f"{source} [grid]")
        if key in LOCAL_FIELDS:
            raise MinibnnError(f"{source} [grid]: {name!r} is machine-local (where a run "
                               "runs, not what it is); set it in [base]")
        if key in base or any(key == k for _, k, _ in axes):
            raise MinibnnError(f"{source} [grid]: {name!r} is given twice")
        if not isinstance(values, list) or not values:
            raise MinibnnError(f"{source} [grid]: {name} must be a non-empty list of values, "
                               f"got {values!r}")
        axes.append((name, key, values))
    size = 1
    for _, _, values in axes:
        size *= len(values)
    if size > MAX_POINTS:
        shape = " x ".join(f"{len(values)} {name}" for name, _, values in axes)
        raise MinibnnError(f"{source}: the grid has {size:,} points ({shape}), more than the "
                           f"{MAX_POINTS:,} a sweep may have; split it into several sweeps")
    points = []
    for combo in itertools.product(*(values for _, _, values in axes)):
        values = {name: value for (name, _, _), value in zip(axes, combo)}
        options = {**base, **{key: value for (_, key, _), value in zip(axes, combo)}}
        try:
            spec = spec_from_options(options)
        except MinibnnError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "the base"
            raise MinibnnError(f"{source}: point {where}: {exc}") from None
        points.append(Point(values, spec))
    seen: dict[str, Point] = {}
    for point in points:
        if point.id in seen:
            raise MinibnnError(f"{source}: points {seen[point.id].values} and {point.values} "
                               "are the same run (a grid value is repeated)")
        seen[point.id] = point
    return Sweep(tuple(name for name, _, _ in axes), tuple(points), machine)


def read_sweep(path: str) -> tuple[Sweep, str]:
    """The parsed spec file at ``path`` and its text."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise MinibnnError(f"sweep spec {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MinibnnError(f"cannot read sweep spec {path}: {exc}") from None
    return parse_sweep(text, path), text
