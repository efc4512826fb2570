"""Provenance: what shaped a run's bits besides its spec, recorded once per training session.

A run's results depend on its spec (stored in the run file) and on things the spec does not
say: which copy of the data was read (the CIFAR-10 JPEG copy is not the canonical pickles),
the BLAS library and the CPU core type it picked (AVX2 and AVX-512 kernels round differently),
and the library versions. ``collect`` gathers them into one JSON-serialisable record:

    {"data": {"kind", "path", "sha256", "cached"[, "params"]},   # minibnn.data.source
     "threads": 2, "backend": "auto", "device": "cpu",
     "blas": [{"internal_api", "version", "architecture", "num_threads"}],  # NumPy's BLAS
     "cpu": {"machine": "x86_64", "features": ["avx2", "fma", "avx512f", ...]},
     "env": {"OPENBLAS_CORETYPE": ...},        # only the variables that are set
     "versions": {"python", "numpy", "numba", "h5py", "minibnn"[, "cupy"]}}

No host name or user name is recorded. ``format_provenance`` turns a record into a few
readable lines and accepts records with keys missing (older files). The thread count is
recorded although results do not depend on it (``minibnn.kernels.threads``): it explains a
run's speed. The benchmarks print the same machine facts (``benchmarks/_bench.py`` imports
``blas_info``, ``cpu_features`` and ``blas_environment`` from here).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from minibnn._version import __version__

if TYPE_CHECKING:                       # only for the annotations: no import cycle at run time
    from minibnn.data.base import Dataset
    from minibnn.run.spec import Local

#: CPU flags that change which kernels BLAS and LLVM pick
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vpopcntdq")
#: environment variables that force OpenBLAS's kernels (core type, cache size)
BLAS_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: libraries whose versions are recorded (cupy only when the run imported it)
LIBRARIES = ("numpy", "numba", "h5py")


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The vector features of ``VECTOR_FLAGS`` this CPU has (Linux ``cpuinfo``; elsewhere
    an empty list)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [v for v in VECTOR_FLAGS if v in flags]
    except OSError:
        pass
    return []


def blas_info() -> list[dict[str, Any]]:
    """The BLAS libraries loaded in this process as threadpoolctl sees them (library, version,
    core type, threads): NumPy's, and any other a library brought in."""
    import numpy  # noqa: F401  (loads NumPy's BLAS)
    import threadpoolctl

    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]


def blas_environment() -> dict[str, str]:
    """The variables of ``BLAS_ENVIRONMENT`` that are set, with their values."""
    return {k: os.environ[k] for k in BLAS_ENVIRONMENT if k in os.environ}


def versions() -> dict[str, str]:
    """Python's, minibnn's and the numeric libraries' versions (read from the installed
    packages' metadata, so nothing is imported); cupy's when it is already imported."""
    out = {"minibnn": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        out["cupy"] = str(getattr(cupy, "__version__", "unknown"))
    return out


def data_record(ds: "Dataset") -> dict[str, Any]:
    """The data set's ``DataSource`` record; a Dataset built by hand (no record): its name
    as the kind and its ``source`` phrase as the path."""
    if ds.origin is not None:
        return ds.origin.record()
    return {"kind": ds.name, "path": ds.source or None, "sha256": None, "cached": False}


def collect(ds: "Dataset", local: "Local") -> dict[str, Any]:
    """The provenance record of a session training on ``ds`` with machine settings ``local``
    (see the module docstring); JSON-serialisable."""
    from minibnn.kernels.threads import get_threads

    return {"data": data_record(ds), "threads": get_threads(), "backend": local.backend,
            "device": local.device, "blas": blas_info(),
            "cpu": {"machine": platform.machine(), "features": cpu_features()},
            "env": blas_environment(), "versions": versions()}


def _short_hash(sha: Any) -> str:
    """A hex digest shortened to 16 digits; other text (``HASH_UNKNOWN``) as it is."""
    text = str(sha)
    return f"{text[:16]}..." if len(text) == 64 and all(c in "0123456789abcdef" for c in text) \
        else text


def _data_line(data: dict[str, Any]) -> str:
    from minibnn.data.source import KIND_TITLES

    kind = data.get("kind")
    words = [KIND_TITLES.get(str(kind), str(kind)) if kind else "unknown source"]
    params = data.get("params")
    if isinstance(params, dict):
        words.append("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")")
    if data.get("path"):
        words.append(str(data["path"]))
    if data.get("sha256"):
        words.append(f"(sha256 {_short_hash(data['sha256'])})")
    if data.get("cached"):
        words.append("via the cache")
    return "data: " + " ".join(words)


def _machine_line(record: dict[str, Any]) -> str | None:
    parts = []
    if "threads" in record or "backend" in record or "device" in record:
        parts.append(f"threads: {record.get('threads', '?')}, backend "
                     f"{record.get('backend', '?')} on {record.get('device', '?')}")
    blas = record.get("blas")
    if isinstance(blas, list):
        libs = ", ".join(f"{b.get('internal_api', '?')} {b.get('version', '?')} "
                         f"{b.get('architecture', '?')} ({b.get('num_threads', '?')} threads)"
                         for b in blas if isinstance(b, dict))
        parts.append(f"BLAS {libs or 'none found'}")
    env = record.get("env")
    if isinstance(env, dict) and env:
        parts.append("forced by " + ", ".join(f"{k}={v}" for k, v in env.items()))
    cpu = record.get("cpu")
    if isinstance(cpu, dict):
        features = " ".join(map(str, cpu.get("features") or [])) or "no listed vector features"
        parts.append(f"CPU {cpu.get('machine', '?')} {features}")
    return "; ".join(parts) if parts else None


def format_provenance(record: dict[str, Any]) -> list[str]:
    """A few readable lines for one provenance record (data; threads, BLAS and CPU; versions),
    each only when the record has its keys: an empty record gives no lines."""
    lines = []
    if isinstance(record.get("data"), dict):
        lines.append(_data_line(record["data"]))
    machine = _machine_line(record)
    if machine:
        lines.append(machine if machine.startswith("threads") else f"machine: {machine}")
    vers = record.get("versions")
    if isinstance(vers, dict) and vers:
        order = ["minibnn", "numpy", "numba", "h5py", "cupy", "python"]
        names = [n for n in order if n in vers] + sorted(set(vers) - set(order))
        lines.append("versions: " + ", ".join(f"{n} {vers[n]}" for n in names))
    return lines


def format_sessions(records: Any) -> list[str]:
    """The lines of every session's record (a run file's ``description["provenance"]``), each
    under a "session from epoch N:" line when the record has ``from_epoch``; a file written
    before provenance was stored says so in one line."""
    if not isinstance(records, list) or not records:
        return ["provenance: not recorded (run file written before it was stored)"]
    lines = []
    for record in records:
        body = (format_provenance(record) if isinstance(record, dict) else []) or [
            "provenance: an empty record"]
        if isinstance(record, dict) and "from_epoch" in record:
            lines += [f"session from epoch {record['from_epoch']}:"] + [f"  {b}" for b in body]
        else:
            lines += body
    return lines
