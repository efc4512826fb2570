"""The kernel registry: every hot op, its implementations by backend, one dispatch path.

An op is declared by its reference body, and the declaration returns the op itself::

    @op                                   # kernels/reference.py
    def im2col(x, kh, kw, stride, padding):
        <readable array code: the oracle and the documentation>

    @register(reference.im2col, "numba")  # kernels/cpu.py: a compiled body of that op
    def im2col(x, kh, kw, stride, padding): ...

    cols = kernels.im2col(x, 3, 3, 1, 1)  # a layer: runs the body chosen below

So a reader, or an editor's go-to-definition, follows a layer's call to the op's definition,
and from there (``register(reference.im2col``) to its compiled bodies. Each op has

  * a reference body (backend ``"numpy"``): readable array code, the oracle and the
    documentation of the arithmetic.  Written against ``xp`` where the op allows it, so the
    same body also runs on CuPy arrays;
  * optional compiled bodies: ``"numba"`` (NumPy arrays, CPU) and ``"cuda"`` (CuPy arrays).

Calling the op (or ``call(name, *args)``, the same by name) picks the body from the type of the
array arguments::

    NumPy arrays  ->  "numba" if registered, else "numpy"
    CuPy arrays   ->  "cuda"  if registered, else "numpy" (the reference on CuPy arrays)

``use_backend(name)`` (a context manager, nestable) overrides that choice: ``"numpy"`` forces
the reference everywhere (``minibnn train --backend numpy``), ``"numba"``/``"cuda"`` insist on
that compiled backend, ``"auto"`` restores the default.  Insisting means: the backend must be
able to run the arrays given (Numba on CuPy arrays or CUDA on NumPy arrays is a one-line
``BackendError`` naming both); an op with no body of that backend runs its reference, as it
does under ``"auto"``. A compiled backend whose module does not import is a one-line
``BackendError`` whenever it would run, under ``"auto"`` too: never a silent fallback.

Compiled bodies register themselves with ``@register(op, backend)`` when their module is
imported; the registry imports the compiled modules lazily (``kernels.cpu`` on the first NumPy
call, ``kernels.gpu`` on the first CuPy call), so importing minibnn needs neither Numba nor
CuPy.
Nothing here imports ``minibnn.nn``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
from typing import Any, Callable, Iterator, TypeVar

from minibnn.errors import MinibnnError

F = TypeVar("F", bound=Callable[..., Any])

#: the modules that declare the ops (their reference bodies), imported on the first use of the
#: registry by name
REFERENCE_MODULES = ("minibnn.kernels.reference", "minibnn.kernels.channels_last")
#: compiled backends and the module that registers each one's bodies
COMPILED_MODULES = {"numba": "minibnn.kernels.cpu", "cuda": "minibnn.kernels.gpu"}
#: every backend name a caller may force; "auto" means "choose by array type"
BACKENDS = ("auto", "numpy", "numba", "cuda")
#: which array kind each compiled backend runs on, and what its module needs to import
_ARRAY_KIND = {"numba": "numpy", "cuda": "cupy"}
_MODULE_NEEDS = {"numba": "Numba", "cuda": "minibnn.kernels.gpu"}


class BackendError(MinibnnError):
    """A kernel backend is unknown, unavailable, or cannot run the arrays it was given."""


_IMPLS: dict[str, dict[str, Callable[..., Any]]] = {}
_FORCED: contextvars.ContextVar[str] = contextvars.ContextVar("minibnn_kernel_backend",
                                                               default="auto")
_LOADED: dict[str, bool] = {}       # backend -> its module has been imported
_FAILED: dict[str, str] = {}        # compiled backend -> why its module did not import


def op_name(op: str | Callable[..., Any]) -> str:
    """The name of an op given as its name or as the op itself (what ``op`` returned)."""
    return op if isinstance(op, str) else getattr(op, "op_name")


def register(op: str | Callable[..., Any], backend: str) -> Callable[[F], F]:
    """Decorator: ``fn`` is the ``backend`` body of ``op`` (the op, or its name)."""
    name = op_name(op)
    if backend not in ("numpy",) + tuple(COMPILED_MODULES):
        raise BackendError(f"cannot register {name!r} under unknown backend {backend!r}")

    def decorate(fn: F) -> F:
        _IMPLS.setdefault(name, {})[backend] = fn
        return fn

    return decorate


def op(reference_body: F) -> F:
    """Declare an op by its reference body (the module docstring); returns the op.

    The op has the body's name, signature and docstring; calling it runs the body the registry
    picks for its arguments. ``op.reference`` is the reference body itself (what a compiled body
    falls back to for arrays it does not handle: calling the op there would pick it again).
    """
    name = reference_body.__name__
    register(name, "numpy")(reference_body)

    @functools.wraps(reference_body)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return call(name, *args, **kwargs)

    dispatch.reference = reference_body          # type: ignore[attr-defined]
    dispatch.op_name = name                      # type: ignore[attr-defined]
    return dispatch                              # type: ignore[return-value]


def _load(backend: str) -> None:
    """Import a compiled backend's module once; a one-line BackendError when it cannot be.

    Never a silent fallback to the reference: a broken install (say, a Numba that does not
    import) would otherwise train 1.2-4x slower with no word. ``--backend numpy`` runs the
    reference on purpose and never imports a compiled module.
    """
    if backend not in _LOADED and backend not in _FAILED:
        try:
            importlib.import_module(COMPILED_MODULES[backend])
            _LOADED[backend] = True
        except ImportError as exc:
            _FAILED[backend] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if backend in _FAILED:
        raise BackendError(f"kernel backend {backend!r} did not import ({_MODULE_NEEDS[backend]}: "
                           f"{_FAILED[backend]}); reinstall it, or run the readable reference "
                           f"with --backend numpy")


def _reference_loaded() -> None:
    if "numpy" not in _LOADED:
        for module in REFERENCE_MODULES:
            importlib.import_module(module)
        _LOADED["numpy"] = True


def array_kind(*arrays: Any) -> str:
    """``"cupy"`` if any argument is a CuPy array, else ``"numpy"`` (non-arrays are ignored)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return "cupy"
    return "numpy"


def check_backend(name: str) -> str:
    """``name`` if it is one of ``BACKENDS``, else a one-line BackendError."""
    if name not in BACKENDS:
        raise BackendError(f"unknown kernel backend {name!r}; expected one of "
                           f"{', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, every ``call`` uses backend ``name`` (``"auto"``: by array type)."""
    token = _FORCED.set(check_backend(name))
    try:
        yield
    finally:
        _FORCED.reset(token)


def _ops(op: str | Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    _reference_loaded()
    op = op_name(op)
    if op not in _IMPLS:
        raise BackendError(f"unknown kernel op {op!r}; known: {', '.join(sorted(_IMPLS))}")
    return _IMPLS[op]


def backend_for(op: str | Callable[..., Any], *arrays: Any) -> str:
    """The backend ``call(op, *arrays)`` would use, under the current ``use_backend``."""
    op = op_name(op)
    impls = _ops(op)
    kind = array_kind(*arrays)
    compiled = "cuda" if kind == "cupy" else "numba"
    forced = _FORCED.get()
    if forced == "numpy":
        return "numpy"
    if forced != "auto" and _ARRAY_KIND[forced] != kind:
        raise BackendError(f"kernel backend {forced!r} cannot run {kind} arrays "
                           f"(op {op!r}; {forced} runs {_ARRAY_KIND[forced]} arrays)")
    _load(compiled)
    return compiled if compiled in impls else "numpy"


def get(op: str | Callable[..., Any], backend: str) -> Callable[..., Any]:
    """One specific body of ``op`` (parity tests compare these); BackendError if missing."""
    op = op_name(op)
    impls = _ops(op)
    if backend in COMPILED_MODULES:
        _load(backend)
    if backend not in impls:
        raise BackendError(f"kernel op {op!r} has no {backend!r} body "
                           f"(registered: {', '.join(sorted(impls))})")
    return impls[backend]


def has_compiled(op: str | Callable[..., Any], *arrays: Any) -> bool:
    """True when ``call(op, *arrays)`` would run a compiled body (not the reference)."""
    return backend_for(op, *arrays) != "numpy"


def call(op: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``op`` (the op, or its name) on the backend chosen from its array arguments."""
    op = op_name(op)
    return _ops(op)[backend_for(op, *args, *kwargs.values())](*args, **kwargs)


def registered() -> dict[str, tuple[str, ...]]:
    """``op -> backends registering it`` for every op, after importing what imports here."""
    _reference_loaded()
    for backend in COMPILED_MODULES:
        _load(backend)
    return {op: tuple(sorted(impls)) for op, impls in sorted(_IMPLS.items())}
