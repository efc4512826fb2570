"""HDF5 run files: configuration, per-epoch and per-step metrics and a checkpoint, written
atomically.

Layout of ``RUN.h5`` (every group, dataset and attribute: docs/run-file.md)::

    /                 attrs: format="minibnn-run", version, config (JSON), description (JSON:
                      input_shape, num_classes, mean, std, minibnn_version)
    /metrics/<metric> float64 (epochs,) one value per finished epoch
    /step_metrics/step      int64 (rows,) the logged optimiser steps (``minibnn.run.step_log``)
    /step_metrics/<metric>  float64 (rows,) one value per logged step
    /checkpoint       attrs: epoch, step, rng_state (JSON)
        /params/<param>      /buffers/<stat>     (model parameters, BatchNorm statistics;
                                                   +-1 binary weights as int8)
        /opt_state/<group>/<stage>/count           int64 step counter of a stage
        /opt_state/<group>/<stage>/<slot>/<param>  a stage's buffer for one parameter
                            (e.g. opt_state/binary/m/s/fc2.w: CEMA's first EMA of fc2.w)

A run file is never half-written: the new file goes to a temporary file beside the target, is
flushed and closed, and then ``os.replace``-d over the old one (atomic on POSIX); see
``atomic_h5``; it is sealed with checksums as its last step and verified on load
(``minibnn.run.integrity``).  ``atomic_h5``, ``open_h5``, ``check_version``, ``check_arrays`` and
``check_finite`` are shared with the packed file format (``minibnn.deploy.packed_file``).  Who may
write a file (one writer, stale temporaries) is ``minibnn.run.lock``; disk space is
``minibnn.run.resources``.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from minibnn.run import integrity
from minibnn.backend import first_nonfinite, to_numpy
from minibnn.errors import DataFileError, MinibnnError, os_reason

FORMAT = "minibnn-run"
#: the tag of a packed (inference-only) file, ``minibnn.deploy.packed_file``'s format; named
#: here so that a run-file read can say what it was given
PACKED_FORMAT = "minibnn-packed"
#: 2: optimiser state keyed by stage names ("binary/m/s/fc2.w"); 1: by chain position ("0", "1")
VERSION = 2


@dataclass
class Checkpoint:
    """What a run needs to continue exactly where it stopped."""

    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    opt_state: dict[str, Any]
    rng_state: dict[str, Any]
    epoch: int        # epochs finished
    step: int         # optimiser updates made
    #: parameters that are +-1 binary weights (filter optimisers): stored as int8, read back
    #: in their float dtype (exactly: +-1 is exact in every float)
    binary: tuple[str, ...] = ()


@dataclass
class RunFile:
    config_json: str
    metrics: dict[str, list[float]]
    checkpoint: Checkpoint | None
    #: what the model was trained on, so a run file describes itself: input_shape (C, H, W),
    #: num_classes, the normalisation mean/std per channel, minibnn_version. None in files
    #: written before it was stored.
    description: dict[str, Any] | None = None
    #: each time ``--resume --extend`` changed the run's epochs: {"at_epoch", "epochs_before",
    #: "epochs_after"} (the schedule was re-planned over the new epochs from there on)
    replans: list[dict[str, int]] = dataclasses.field(default_factory=list)
    #: every ``log_every``-th step's metrics (``minibnn.run.step_log``): ``step`` int64 and one
    #: float64 vector per metric, all one length; empty when no step was logged
    step_metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _json(text: Any, path: str) -> Any:
    try:
        return json.loads(str(text))
    except ValueError:
        raise DataFileError(f"{path}: checkpoint RNG state is not valid JSON") from None


def _description(text: Any, path: str) -> dict[str, Any]:
    """The stored model description: a JSON object with input_shape and num_classes."""
    try:
        d = json.loads(str(text))
        shape, classes = [int(v) for v in d["input_shape"]], int(d["num_classes"])
    except (ValueError, TypeError, KeyError):
        raise DataFileError(f"{path}: the stored model description is corrupt") from None
    if len(shape) != 3 or min(shape) < 1 or classes < 2:
        raise DataFileError(f"{path}: the stored model description is corrupt "
                            f"(input_shape {shape}, num_classes {classes})")
    return dict(d, input_shape=shape, num_classes=classes)


def _replans(rows: Any, path: str) -> list[dict[str, int]]:
    """``/replans`` int64 (k, 3) rows (at_epoch, epochs_before, epochs_after) as dicts."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 or rows.dtype.kind != "i":
        raise DataFileError(f"{path}: the stored schedule re-plans are corrupt")
    return [{"at_epoch": int(a), "epochs_before": int(b), "epochs_after": int(c)}
            for a, b, c in rows]


def _metrics(group: Any, path: str) -> dict[str, list[float]]:
    """``/metrics``: one float64 vector per metric, all of one length (epochs finished)."""
    metrics = {}
    for name, item in group.items():
        values = np.asarray(item[()])
        if values.ndim != 1 or values.dtype.kind != "f":
            raise DataFileError(f"{path}: metrics/{name} is not a float vector (got "
                                f"{values.dtype} of shape {values.shape})")
        metrics[name] = [float(v) for v in values]
    if len({len(v) for v in metrics.values()}) > 1:
        raise DataFileError(f"{path}: the metrics have different lengths; the file is corrupt")
    return metrics


def _step_metrics(group: Any, path: str, last_step: int | None) -> dict[str, np.ndarray]:
    """``/step_metrics``: ``step`` (int64, increasing, at most the checkpoint's step) and one
    float64 vector per metric, all of its length."""
    rows = {name: np.asarray(item[()]) for name, item in group.items()}
    steps = rows.get("step")
    if steps is None or steps.ndim != 1 or steps.dtype.kind != "i":
        raise DataFileError(f"{path}: step_metrics/step is missing or not an integer vector")
    for name, values in rows.items():
        if name != "step" and (values.dtype.kind != "f" or values.shape != steps.shape):
            raise DataFileError(f"{path}: step_metrics/{name} is not a float vector of "
                                f"{len(steps)} rows (got {values.dtype} of shape "
                                f"{values.shape})")
    if np.any(np.diff(steps) <= 0) or (len(steps) and (
            steps[0] < 1 or (last_step is not None and steps[-1] > last_step))):
        raise DataFileError(f"{path}: step_metrics/step is not increasing within the "
                            f"checkpoint's {last_step} steps; the file is corrupt")
    return rows


def _h5py() -> Any:
    import h5py

    return h5py


def _write_tree(group: Any, tree: dict[str, Any]) -> None:
    """Nested dicts become groups, arrays (and numbers) become datasets."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(key), value)
        else:
            group.create_dataset(key, data=to_numpy(value))


def _write_params(group: Any, params: dict[str, Any], binary: tuple[str, ...]) -> None:
    """Parameters as datasets; the +-1 ones in ``binary`` as int8 with attr ``float_dtype``."""
    for key, value in params.items():
        value = to_numpy(value)
        if key in binary:
            if not np.all(np.abs(value) == 1):
                raise MinibnnError(f"binary parameter {key} holds values other than +-1")
            ds = group.create_dataset(key, data=value.astype(np.int8))
            ds.attrs["float_dtype"] = value.dtype.name
        else:
            group.create_dataset(key, data=value)


def _read_params(group: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Inverse of ``_write_params``: every parameter in its float dtype, and the int8 names."""
    params, binary = {}, []
    for key, item in group.items():
        value = np.asarray(item[()])
        if "float_dtype" in item.attrs:
            dtype = str(item.attrs["float_dtype"])
            if (value.dtype != np.int8 or not np.all(np.abs(value) == 1)
                    or dtype not in ("float32", "float64")):
                raise DataFileError(f"params/{key} is marked binary but does not hold int8 "
                                    f"+-1 of float32/float64 (got {value.dtype}, {dtype!r})")
            value = value.astype(dtype)
            binary.append(key)
        params[key] = value
    return params, tuple(sorted(binary))


def _read_tree(group: Any) -> dict[str, Any]:
    h5py = _h5py()
    out: dict[str, Any] = {}
    for key, item in group.items():
        out[key] = _read_tree(item) if isinstance(item, h5py.Group) else item[()]
        if isinstance(out[key], np.generic):
            out[key] = np.asarray(out[key])
    return out


def check_version(stored: Any, path: str, what: str = "run file", supported: int = VERSION,
                  older: str = "retrain, or use the minibnn that wrote it") -> None:
    """A file of kind ``what`` must be of format version ``supported``; any other version is a
    one-line ``DataFileError`` saying why, with ``older`` as the way out for an older file."""
    try:
        version = int(stored)
    except (TypeError, ValueError):
        raise DataFileError(f"{path}: {what} has no readable format version "
                            f"(this minibnn reads version {supported})") from None
    if version < supported:
        raise DataFileError(f"{path}: {what} format version {version} is not supported: it was "
                            f"written by an older minibnn, this one reads version {supported} "
                            f"({older})")
    if version > supported:
        raise DataFileError(f"{path}: {what} format version {version} is not supported: it was "
                            f"written by a newer minibnn, this one reads version {supported} "
                            "(upgrade minibnn)")


def check_arrays(stored: dict[str, Any], expected: dict[str, Any], path: str, where: str,
                 what: str, owner: str) -> None:
    """The arrays read from ``where`` in ``path`` must be exactly those ``owner`` declares, with
    the same shapes and dtypes; the first difference is a one-line ``DataFileError`` naming
    the entry (its path in the tree, e.g. ``binary/m/s/fc2.w``)."""
    for name, value in expected.items():
        if name not in stored:
            raise DataFileError(f"{path}: {where} does not match {owner}: {what} {name!r} "
                                "is missing")
        if tuple(np.shape(stored[name])) != tuple(np.shape(value)):
            raise DataFileError(f"{path}: {where} does not match {owner}: {what} {name!r} has "
                                f"shape {np.shape(stored[name])}, expected {np.shape(value)}")
        found, declared = _dtype(stored[name]), _dtype(value)
        if found != declared:
            raise DataFileError(f"{path}: {where} does not match {owner}: {what} {name!r} is "
                                f"{found}, expected {declared}")
    for name in stored:
        if name not in expected:
            raise DataFileError(f"{path}: {where} does not match {owner}: {what} {name!r} "
                                "is not one it has")


def _dtype(value: Any) -> np.dtype:
    """An array's dtype (NumPy or CuPy: read, never copied to the host), or a scalar's."""
    return value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype


def check_writable(path: str) -> None:
    """Fail now, in one line, if ``path`` cannot be written (before any work is done)."""
    if os.path.isdir(path):
        raise DataFileError(f"cannot write run file {path}: it is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    above = directory
    while not os.path.exists(above):               # the nearest folder that exists, or a file
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise DataFileError(f"cannot write run file {path}: {above} is a file, not a folder")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".minibnn-probe-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise DataFileError(f"cannot write run file {path}: {os_reason(exc)}") from None


def check_output(out: str, overwrite: bool, sources: tuple[str, ...] = ()) -> None:
    """An export target must be a file (not a folder), not one of its own ``sources``, and
    must not exist unless ``overwrite``; each problem is a one-line error."""
    if os.path.isdir(out):
        raise MinibnnError(f"--out {out} is a directory; give a file name")
    for source in sources:
        if os.path.exists(out) and os.path.exists(source) and os.path.samefile(out, source):
            raise MinibnnError(f"--out {out} is the input file itself; give another name")
    if os.path.exists(out) and not overwrite:
        raise MinibnnError(f"{out} exists; pass --overwrite to replace it")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise MinibnnError(f"cannot write {out}: folder {directory} does not exist")


def temporary_pattern(path: str) -> "re.Pattern[str]":
    """The names ``atomic_path`` gives temporary files of ``path``: PATH.<8 mkstemp
    characters>.tmp (``minibnn.run.lock.one_writer`` removes stale ones)."""
    return re.compile(re.escape(os.path.basename(path)) + r"\.[a-z0-9_]{8}\.tmp")


def _umask_mode() -> int:
    """The mode a new file gets under the process umask (``mkstemp`` makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield the name of a temporary file that replaces ``path`` only when the block succeeds.

    The temporary file is made beside ``path`` (same file system), flushed to disk, given the
    umask's mode, renamed over ``path`` with ``os.replace`` (atomic on POSIX), and the folder is
    synced so the rename itself survives a crash.  On any error ``path`` is untouched and the
    temporary file is removed; an OSError becomes a one-line ``DataFileError``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                   dir=directory)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise DataFileError(f"could not write {path}: {os_reason(exc)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextmanager
def atomic_h5(path: str) -> Iterator[Any]:
    """Yield an open ``h5py.File`` on a temporary file that replaces ``path`` only on success
    (``atomic_path``); the checksums are stored last (``minibnn.run.integrity.seal``)."""
    h5py = _h5py()
    check_writable(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=integrity.LIBVER) as f:
        yield f
        integrity.seal(f)


def save_run(path: str, run: RunFile) -> None:
    """Write ``run`` to ``path`` atomically (see ``atomic_h5``)."""
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["config"] = run.config_json
        if run.description is not None:
            f.attrs["description"] = json.dumps(run.description)
        if run.replans:
            f.create_dataset("replans", data=np.array(
                [[r["at_epoch"], r["epochs_before"], r["epochs_after"]] for r in run.replans],
                dtype=np.int64))
        metrics = f.create_group("metrics")
        for name, values in run.metrics.items():
            metrics.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        if run.step_metrics:
            rows = f.create_group("step_metrics")
            for name, values in run.step_metrics.items():
                rows.create_dataset(name, data=np.asarray(
                    values, dtype=np.int64 if name == "step" else np.float64))
        if run.checkpoint is not None:
            ck = f.create_group("checkpoint")
            ck.attrs["epoch"] = run.checkpoint.epoch
            ck.attrs["step"] = run.checkpoint.step
            ck.attrs["rng_state"] = json.dumps(run.checkpoint.rng_state)
            _write_params(ck.create_group("params"), run.checkpoint.params,
                          run.checkpoint.binary)
            _write_tree(ck.create_group("buffers"), run.checkpoint.buffers)
            _write_tree(ck.create_group("opt_state"), run.checkpoint.opt_state)


#: what h5py and NumPy can raise while reading a damaged or foreign HDF5 file
READ_ERRORS = (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError,
               RuntimeError, OverflowError, MemoryError)


@contextmanager
def open_h5(path: str, what: str) -> Iterator[Any]:
    """Yield ``path`` opened read-only; anything a damaged file raises while the block reads it
    becomes a one-line ``DataFileError`` (``what``: "run file", "packed file")."""
    h5py = _h5py()
    if not os.path.exists(path):
        raise DataFileError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise DataFileError(f"{path} is not a file")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except MinibnnError:
        raise
    except READ_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"{path} is corrupt or unreadable: {reason}") from None


def check_finite(arrays: dict[str, Any], path: str, where: str) -> None:
    """Every floating array of a (nested) dict must be finite: a one-line ``DataFileError``
    naming the first that is not (a checkpoint of a diverged run)."""
    bad = first_nonfinite(arrays, where + "/")
    if bad is not None:
        raise DataFileError(f"{path}: {bad} holds NaN or infinite values (a diverged run?); "
                            "it cannot be evaluated or resumed")


def load_run(path: str) -> RunFile:
    """Read a run file; a missing, foreign, damaged (checksum) or corrupt file, or a
    checkpoint holding NaN/inf, is a one-line ``DataFileError``."""
    h5py = _h5py()
    with open_h5(path, "run file") as f:
        tag = f.attrs.get("format")
        if tag == PACKED_FORMAT:
            raise DataFileError(f"{path} is a packed file (for inference only), not a run "
                                "file: it cannot be resumed or trained further")
        if tag != FORMAT:
            raise DataFileError(f"{path} is not a minibnn run file (no format={FORMAT!r} tag)")
        check_version(f.attrs.get("version"), path)
        integrity.verify(f, path)
        config_json = str(f.attrs["config"])
        description = (_description(f.attrs["description"], path)
                       if "description" in f.attrs else None)
        replans = _replans(f["replans"][()], path) if "replans" in f else []
        metrics = _metrics(f["metrics"], path)
        checkpoint = None
        if "checkpoint" in f:
            ck = f["checkpoint"]
            if not isinstance(ck, h5py.Group):
                raise DataFileError(f"{path}: checkpoint is not a group")
            params, binary = _read_params(ck["params"])
            checkpoint = Checkpoint(
                params=params, buffers=_read_tree(ck["buffers"]),
                opt_state=_read_tree(ck["opt_state"]),
                rng_state=_json(ck.attrs["rng_state"], path),
                epoch=int(ck.attrs["epoch"]), step=int(ck.attrs["step"]), binary=binary)
            for where, arrays in (("params", checkpoint.params),
                                  ("buffers", checkpoint.buffers),
                                  ("opt_state", checkpoint.opt_state)):
                check_finite(arrays, path, f"checkpoint/{where}")
        if checkpoint is not None and any(len(v) != checkpoint.epoch for v in metrics.values()):
            raise DataFileError(f"{path}: the metrics do not hold one value per finished epoch "
                                f"({checkpoint.epoch}); the file is corrupt")
        step_metrics = (_step_metrics(f["step_metrics"], path,
                                      checkpoint.step if checkpoint is not None else None)
                        if "step_metrics" in f else {})
    return RunFile(config_json, metrics, checkpoint, description, replans, step_metrics)
