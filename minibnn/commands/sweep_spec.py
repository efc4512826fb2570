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

Or a random search (``[random]``, beside or instead of ``[grid]``)::

    [random]
    trials = 32               # how many draws
    seed = 0                  # the search's seed (a run's own seed goes in [base] or [grid])
    lr = {log-uniform = [1e-4, 1.0]}
    momentum = {uniform = [0.0, 0.99]}
    batch-size = {int-uniform = [32, 256]}        # integers, both ends included
    schedule = {choice = ["constant", "linear"]}

Trial ``i`` draws each option from ``numpy.random.default_rng([seed, i, k])`` (k: the option's
place in the table), so the draws depend only on the seed, the trial and the option's place:
raising ``trials`` keeps every earlier trial (and its run: re-run the sweep into its folder
with ``--replace-spec``, which finds them done), and changing one option's range changes no
other option's values (moving, adding or removing an option changes the places after it).
NumPy keeps ``default_rng``'s streams from version to version in practice but does not promise
it. Drawn floats keep 4 significant digits (readable ids and tables), clamped to [lo, hi], so
either end can be drawn. With a ``[grid]`` too, every trial runs at every grid point. A trial
that draws an earlier trial's values is one run (dropped; the sweep says how many).
``summary.csv`` has a ``trial`` column and one per drawn option.

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
import math
import numbers
import tomllib
from dataclasses import dataclass
from typing import Any

import numpy as np

from minibnn.errors import MinibnnError
from minibnn.run.spec import (LATER_FIELDS, LOCAL_FIELDS, OPTION_NAMES, Local, RunSpec,
                              flag, spec_from_options)

TABLES = ("base", "grid", "random")
#: how a [random] option is drawn: its one key in the option's inline table
DISTRIBUTIONS = ("log-uniform", "uniform", "int-uniform", "choice")
#: significant digits kept of a drawn float
DRAW_DIGITS = 4
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
    """A parsed sweep spec: the columns that name a point (grid options as written, and for a
    random search ``trial`` and the drawn options) and its points, in order."""
    axes: tuple[str, ...]
    points: tuple[Point, ...]
    local: Local
    #: trials of a random search that drew an earlier trial's values (not run twice)
    repeated_trials: int = 0
    #: the ``[random]`` table, if the spec has one
    search: "RandomSearch | None" = None


def spec_id(spec: RunSpec) -> str:
    """12 hex digits of the SHA-256 of the spec's JSON: equal specs, equal ids.

    A field added later (``spec.LATER_FIELDS``: the model's ``layout``, ``weights`` and
    ``activations``, the loop's ``teacher``, ``distill``, ``init_from`` and
    ``init_weight_decay``) enters only when it differs from the value every spec had before it
    was a choice: so sweep folders made before then keep their ids, and a re-run still finds
    their run files."""
    data = spec.to_dict()
    for section, old in LATER_FIELDS.items():
        data[section] = {k: v for k, v in data[section].items()
                         if not (k in old and old[k] == v)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def value_key(value: Any, where: str) -> str:
    """What makes two option values one run, as text: JSON with every integral float written
    as the integer (``1`` and ``1.0`` are one value; large integers stay exact). A value TOML
    can hold but no option takes (a date or time) is a one-line error naming ``where``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (bool, str)) or v is None:
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return int(v) if v.is_integer() else v
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        raise MinibnnError(f"{where}: {v} is not an option value (a number, string, "
                           "true/false, or a list of them)")

    return json.dumps(plain(value), sort_keys=True)


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
    random_table = doc.get("random")
    if random_table is not None and not isinstance(random_table, dict):
        raise MinibnnError(f"{source}: [random] must be a table")
    if not base_table and not grid_table and not random_table:
        raise MinibnnError(f"{source}: the spec is empty; give the options of its runs in "
                           "[base] and the values to try in [grid] (or [random])")
    base: dict[str, Any] = {}
    for name, value in base_table.items():
        key = _option(name, f"{source} [base]")
        if key in base:
            raise MinibnnError(f"{source} [base]: {name!r} is given twice")
        base[key] = value
    if "threads" in base:
        raise MinibnnError(f"{source} [base]: threads is not a sweep setting: each worker runs "
                           "one thread (choose how many workers with --workers)")
    if base.get("tensorboard"):
        raise MinibnnError(f"{source} [base]: tensorboard is not a sweep setting: every point "
                           "would write into one folder (train a point alone with --tensorboard)")
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
    search = _random_search(random_table, source, taken={k for _, k, _ in axes} | set(base)) \
        if random_table is not None else None
    size = 1
    for _, _, values in axes:
        size *= len(values)
    trials = search.trials if search else 1
    if size * trials > MAX_POINTS:
        shape = " x ".join([f"{len(values)} {name}" for name, _, values in axes] +
                           ([f"{trials} trials"] if search else []))
        raise MinibnnError(f"{source}: the {'sweep' if search else 'grid'} has "
                           f"{size * trials:,} points ({shape}), more than the {MAX_POINTS:,} a "
                           "sweep may have; split it into several sweeps")
    for name, _, values in axes:
        if len({value_key(v, f"{source} [grid] {name}") for v in values}) < len(values):
            raise MinibnnError(f"{source} [grid]: {name} repeats a value ({values!r}): the "
                               "same runs twice")
    points: list[Point] = []
    seen: dict[str, Point] = {}
    draws: set[str] = set()
    repeated = 0
    for drawn in (search.draws() if search else [{}]):
        values_drawn = value_key({k: v for k, v in drawn.items() if k != "trial"}, source)
        if search and values_drawn in draws:   # a repeated draw: the same runs, made once
            repeated += 1
            continue
        draws.add(values_drawn)
        for combo in itertools.product(*(values for _, _, values in axes)):
            values = {**{name: value for (name, _, _), value in zip(axes, combo)}, **drawn}
            options = {**base, **{key: value for (_, key, _), value in zip(axes, combo)},
                       **{_option(k, source): v for k, v in drawn.items() if k != "trial"}}
            try:
                spec = spec_from_options(options)
            except MinibnnError as exc:
                where = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "the base"
                raise MinibnnError(f"{source}: point {where}: {exc}") from None
            point = Point(values, spec)
            if point.id in seen:               # e.g. 1 and 1.0: values that mean one run
                raise MinibnnError(f"{source}: points {seen[point.id].values} and "
                                   f"{point.values} are the same run (a grid value is repeated)")
            seen[point.id] = point
            points.append(point)
    columns = tuple(name for name, _, _ in axes) + (search.columns if search else ())
    return Sweep(columns, tuple(points), machine, repeated, search)


@dataclass(frozen=True)
class RandomSearch:
    """A parsed ``[random]`` table: trials, seed and each option's distribution, in file order."""
    trials: int
    seed: int
    options: tuple[tuple[str, str, Any], ...]      # (name as written, distribution, its range)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("trial",) + tuple(name for name, _, _ in self.options)

    def draws(self) -> list[dict[str, Any]]:
        """Every trial's values: ``{"trial": i, option: value, ...}`` (module docstring)."""
        out = []
        for trial in range(self.trials):
            values: dict[str, Any] = {"trial": trial}
            for k, (name, kind, bounds) in enumerate(self.options):
                values[name] = _draw(np.random.default_rng([self.seed, trial, k]), kind, bounds)
            out.append(values)
        return out


def _draw(rng: np.random.Generator, kind: str, bounds: Any) -> Any:
    """One value of a distribution (``DISTRIBUTIONS``)."""
    if kind == "choice":
        return bounds[int(rng.integers(len(bounds)))]
    lo, hi = bounds
    if kind == "int-uniform":
        return int(rng.integers(lo, hi + 1))
    u = float(rng.random())
    # uniform: lo + u (hi - lo);  log-uniform: exp(log lo + u (log hi - log lo))
    x = lo + u * (hi - lo) if kind == "uniform" else math.exp(
        math.log(lo) + u * (math.log(hi) - math.log(lo)))
    # DRAW_DIGITS significant digits, kept inside [lo, hi] (rounding may reach either end)
    return min(max(float(f"{x:.{DRAW_DIGITS}g}"), lo), hi)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _random_search(table: dict[str, Any], source: str, taken: set[str]) -> RandomSearch:
    """Check a ``[random]`` table (one-line errors naming the option) and parse it."""
    where = f"{source} [random]"
    trials, seed = table.get("trials"), table.get("seed", 0)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise MinibnnError(f"{where}: trials must be a positive integer (how many draws), "
                           f"got {trials!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise MinibnnError(f"{where}: seed must be an integer >= 0 (the search's seed; a run's "
                           f"own seed goes in [base] or [grid]), got {seed!r}")
    options = []
    for name, spec in table.items():
        if name in ("trials", "seed"):
            continue
        key = _option(name, where)
        if key in LOCAL_FIELDS:
            raise MinibnnError(f"{where}: {name!r} is machine-local (where a run runs, not "
                               "what it is); set it in [base]")
        if key in taken or any(_option(n, where) == key for n, _, _ in options):
            raise MinibnnError(f"{where}: {name!r} is given twice")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise MinibnnError(f"{where}: {name} must be one distribution, e.g. "
                               f"{{log-uniform = [1e-4, 1.0]}} (one of {', '.join(DISTRIBUTIONS)}"
                               f"), got {spec!r}")
        kind, bounds = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(bounds, list) or not bounds:
                raise MinibnnError(f"{where}: {name} choice must be a non-empty list, "
                                   f"got {bounds!r}")
            value_key(bounds, f"{where} {name}")
        else:
            ok = (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_number, bounds))
                  and bounds[0] < bounds[1])
            if kind == "int-uniform":
                ok = ok and all(isinstance(b, int) for b in bounds)
            if kind == "log-uniform":
                ok = ok and bounds[0] > 0
            if not ok:
                need = {"log-uniform": "two numbers 0 < lo < hi",
                        "uniform": "two numbers lo < hi",
                        "int-uniform": "two integers lo < hi"}[kind]
                raise MinibnnError(f"{where}: {name} {kind} needs [lo, hi], {need}; "
                                   f"got {bounds!r}")
        options.append((name, kind, bounds))
    if not options:
        raise MinibnnError(f"{where}: no option to draw; add one, e.g. "
                           "lr = {log-uniform = [1e-4, 1.0]}")
    return RandomSearch(trials, seed, tuple(options))


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
