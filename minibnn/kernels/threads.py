"""Threads: how many minibnn uses, and the GEMM whose bits do not depend on them.

One place sets every thread count minibnn uses (``set_threads``, the CLI's ``--threads``; a
process-wide setting):

  * the pool of Python threads that runs blocks of GEMMs and convolutions (``run_blocks``);
  * Numba's threads for the ``prange`` kernels (at most ``numba.config.NUMBA_NUM_THREADS``;
    Numba keeps this count per calling thread: it is set for the thread that calls
    ``set_threads`` and when Numba is first imported);
  * BLAS: always **one** thread inside minibnn's GEMMs (``one_blas_thread``).

Why BLAS runs one-threaded: a threaded OpenBLAS GEMM may split the summation over k between
threads, so ``x @ w.T`` for (100, 784) x (784, 1024) differs in the last bits between one and
two threads. minibnn instead cuts a GEMM's *output* into blocks of ``GEMM_BLOCK`` rows (or
columns) and computes each block with one-threaded BLAS; each output element is still one dot
product over all of k, computed by the same code whatever thread runs its block, so

    matmul(a, b)  ==  the same bits with 1, 2 or 64 threads.

Sums of partial results (a convolution's weight gradient over blocks of samples) are formed in
``REDUCE_GROUPS`` fixed groups of consecutive blocks and added in group order (``reduce_blocks``),
never per thread. Bits can still differ between machines whose BLAS picks other kernels
(AVX2 vs AVX-512): they depend on the machine, never on the thread count.

The one environment setting minibnn makes lives here too: ``OMP_WAIT_POLICY=passive`` (unless the
user set it) just before Numba is imported, because GNU OpenMP's default policy spins between
parallel regions and, on cores shared with another process, made each parallel region cost
milliseconds.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import threadpoolctl

from minibnn.backend import get_array_module
from minibnn.errors import MinibnnError

T = TypeVar("T")

#: output rows (or columns) per block of a GEMM
GEMM_BLOCK = 128
#: multiply-adds below which a GEMM is one block (waking threads costs more than it saves)
GEMM_MIN_WORK = 1 << 21
#: number of fixed groups a sum over blocks is cut into (the most threads it can use)
REDUCE_GROUPS = 8

_lock = threading.Lock()
_threads: int | None = None                 # None: the machine's cores
_pools: dict[int, ThreadPoolExecutor] = {}  # size -> pool; never shut down (a caller may hold it)
_in_pool = threading.local()                # set in pool threads: nested blocks run inline
_blas = threadpoolctl.ThreadpoolController()
_blas_depth = 0
_blas_saved: list[tuple[Any, int]] = []


def cores() -> int:
    """The cores this process may run on (its affinity), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                  # not Linux
        return os.cpu_count() or 1


def check_threads(n: Any) -> int:
    """``n`` if it is a positive int, else a one-line error naming ``--threads``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MinibnnError(f"--threads must be a positive integer, got {n!r}")
    return int(n)


def get_threads() -> int:
    """The thread count now in force (``set_threads``; default: ``cores()``)."""
    return _threads if _threads is not None else cores()


def import_numba() -> ModuleType:
    """Import Numba after making the one environment setting minibnn makes (module docstring),
    and give it the thread count now in force."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import numba

    _numba_threads(numba)
    return numba


def _numba_threads(numba: ModuleType) -> None:
    numba.set_num_threads(max(1, min(get_threads(), numba.config.NUMBA_NUM_THREADS)))


def set_threads(n: int | None) -> None:
    """Use ``n`` threads from now on (None: the cores), process-wide. Results do not depend on
    it. Numba, if already imported, gets the count now; else when it is imported (so the
    reference backend, ``--backend numpy``, never imports it)."""
    global _threads
    n = None if n is None else check_threads(n)
    with _lock:
        _threads = n
    if "numba" in sys.modules and sys.modules["numba"] is not None:
        _numba_threads(sys.modules["numba"])


@contextlib.contextmanager
def using_threads(n: int | None) -> Iterator[None]:
    """``set_threads(n)`` for the block, the previous count restored after it."""
    before = _threads
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS runs one thread inside the block (reentrant, and safe from several threads)."""
    global _blas_depth
    with _lock:
        if _blas_depth == 0:
            for lib in _blas.select(user_api="blas").lib_controllers:
                _blas_saved.append((lib, lib.get_num_threads()))
                lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in _blas_saved:
                    lib.set_num_threads(n)
                _blas_saved.clear()


def _get_pool(n: int) -> ThreadPoolExecutor:
    """The pool of ``n`` worker threads: one per thread count, made once and kept (idle pool
    threads wait on a queue and cost nothing; shutting one down could fail a caller that
    fetched it a moment before)."""
    with _lock:
        if n not in _pools:
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="minibnn",
                                           initializer=_mark_pool_thread)
        return _pools[n]


def _mark_pool_thread() -> None:
    _in_pool.active = True


def run_blocks(work: Callable[[T], Any], blocks: Sequence[T]) -> list[Any]:
    """``[work(b) for b in blocks]``, spread over ``get_threads()`` threads, in block order.

    The blocks are cut into one contiguous share per thread; the calling thread runs the first
    share and the pool the others (one task per thread, not per block: a pool task costs tens
    of microseconds). Each block's result must not depend on which thread runs it (the callers'
    work is one-threaded BLAS and nogil Numba loops), so neither does the list returned.
    Called from a pool thread, it runs inline.
    """
    n = min(get_threads(), len(blocks))
    if n <= 1 or getattr(_in_pool, "active", False):
        return [work(b) for b in blocks]
    cut = [len(blocks) * i // n for i in range(n + 1)]
    shares = [blocks[cut[i]:cut[i + 1]] for i in range(n)]

    def run_share(share: Sequence[T]) -> list[Any]:
        return [work(b) for b in share]

    pool = _get_pool(get_threads() - 1)        # one pool per thread count, whatever n is
    futures = [pool.submit(run_share, share) for share in shares[1:]]
    results = run_share(shares[0])
    for f in futures:
        results.extend(f.result())
    return results


def reduce_blocks(partial: Callable[[T], Any], blocks: Sequence[T]) -> Any:
    """``sum(partial(b) for b in blocks)`` in a fixed order: ``REDUCE_GROUPS`` groups of
    consecutive blocks, each summed in block order, then the groups added in order."""
    g = max(1, min(REDUCE_GROUPS, len(blocks)))
    cut = [len(blocks) * i // g for i in range(g + 1)]

    def group(i: int) -> Any:
        total = partial(blocks[cut[i]])
        for b in blocks[cut[i] + 1:cut[i + 1]]:
            total += partial(b)
        return total

    sums = run_blocks(group, range(g))
    total = sums[0]
    for s in sums[1:]:
        total += s
    return total


def _is_numpy(*arrays: Any) -> bool:
    return all(isinstance(a, np.ndarray) for a in arrays)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for 2-D a (M, K), b (K, N), with bits that do not depend on the thread count.

    NumPy arrays: the output is cut into fixed blocks of ``GEMM_BLOCK`` rows (when M >= N) or
    columns, each computed by one-threaded BLAS, spread over the thread pool. CuPy arrays:
    ``a @ b`` (cuBLAS on one device).
    """
    if not _is_numpy(a, b):
        return a @ b
    if a.ndim != 2 or b.ndim != 2:
        raise MinibnnError(f"matmul: 2-D arrays expected, got {a.ndim}-D and {b.ndim}-D")
    m, k = a.shape
    n = b.shape[1]
    # the output lives where the inputs do (an ndarray subclass keeps its own namespace)
    out = get_array_module(a, b).empty((m, n), dtype=np.result_type(a.dtype, b.dtype))
    with one_blas_thread():
        if m * n * k < GEMM_MIN_WORK or max(m, n) <= GEMM_BLOCK:
            np.matmul(a, b, out=out)
            return out
        rows = m >= n
        starts = range(0, m if rows else n, GEMM_BLOCK)

        def block(s: int) -> None:
            if rows:
                np.matmul(a[s:s + GEMM_BLOCK], b, out=out[s:s + GEMM_BLOCK])
            else:
                out[:, s:s + GEMM_BLOCK] = a @ b[:, s:s + GEMM_BLOCK]

        run_blocks(block, starts)
    return out
