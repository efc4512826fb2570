"""Run minibnn's CUDA kernels on the CPU: each source compiled as C++ by g++ and launched over
an emulated grid, so the CUDA bodies (launchers and kernels) are executed and compared with
their references on a machine without a GPU. For tests only.

What is emulated, and how:
  * ``threadIdx``/``blockIdx``/``blockDim``/``gridDim``: thread-local and global variables.
    Blocks run one after the other. A kernel without ``__syncthreads`` or ``__ballot_sync``
    runs its threads one after the other too; one with ``__ballot_sync`` only runs a warp's 32
    lanes as OS threads, warp after warp (a per-warp barrier and vote table make the ballot);
    one with ``__syncthreads`` runs a block's threads as OS threads (one set for the whole
    grid, a barrier between blocks), with a barrier (mutex and condition variable) for
    ``__syncthreads``. Every barrier wait is a context switch: keep emulated shapes small.
    ``__shared__`` variables are function statics (one copy, used by each block in turn). ``atomicAdd`` is a real atomic; ``__popcll`` GCC's popcount.
  * Float arithmetic is the host's IEEE arithmetic with contraction off
    (``-ffp-contract=off``, the twin of NVRTC's ``--fmad=false``); ``exp``/``tanh`` are glibc's,
    not CUDA's.
  * Arguments are passed as CUDA passes them (``kernelParams``: one pointer per argument), and
    ``EmuKernel`` checks each against the kernel's parameter list first: the count, every
    scalar's size (an np.int64 where the kernel says ``int`` would be misread on a GPU, and
    CuPy does not check it) and every array's dtype against the pointee type.

Not emulated: the memory model beyond what the barriers give, warp divergence, limits on
registers/shared memory/grid size (the NVRTC build check and the GPU run cover those).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from fake_devices import DeviceArray, Namespace

PRELUDE = r"""
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>
using namespace std;                     // float overloads of exp, tanh, fabs, fmax, sqrt
struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
// A reusable barrier (mutex, condition variable, generation count): plain C++17, no reliance
// on std::barrier's atomic waits.
struct Barrier {
    explicit Barrier(unsigned n) : count(n), waiting(0), generation(0) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex);
        const unsigned long long gen = generation;
        if (++waiting == count) {
            waiting = 0;
            ++generation;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return generation != gen; });
        }
    }
    std::mutex mutex;
    std::condition_variable cv;
    unsigned count, waiting;
    unsigned long long generation;
};
static Barrier* block_barrier = nullptr;
static std::vector<Barrier*> warp_barriers;
static unsigned char warp_votes[32][32];
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline unsigned __ballot_sync(unsigned, bool vote) {
    const unsigned t = threadIdx.y * blockDim.x + threadIdx.x, warp = t / 32, lane = t % 32;
    warp_votes[warp][lane] = vote;
    warp_barriers[warp]->arrive_and_wait();
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= (unsigned)warp_votes[warp][l] << l;
    warp_barriers[warp]->arrive_and_wait();
    return bits;
}
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
"""

LAUNCHER = r"""
extern "C" int minibnn_emulate(unsigned gx, unsigned bx, unsigned by, void** a, int mode) {
    gridDim = {gx, 1, 1};
    blockDim = {bx, by, 1};
    const unsigned n = bx * by;
    if (mode == 0) {                       // threads one after the other, block by block
        for (unsigned b = 0; b < gx; ++b) {
            blockIdx = {b, 0, 0};
            for (unsigned t = 0; t < n; ++t) {
                threadIdx = {t % bx, t / bx, 0};
                CALL;
            }
        }
        return 0;
    }
    if (n % 32 != 0 || n > 1024) return 1;
    if (mode == 1) {                       // warp votes only: 32 OS threads, warp after warp
        Barrier next_warp(32);
        std::vector<Barrier*> warps;
        for (unsigned w = 0; w < n / 32; ++w) warps.push_back(new Barrier(32));
        warp_barriers = warps;
        std::vector<std::thread> lanes;
        for (unsigned lane = 0; lane < 32; ++lane)
            lanes.emplace_back([=, &next_warp] {
                for (unsigned b = 0; b < gx; ++b)
                    for (unsigned w = 0; w < n / 32; ++w) {
                        const unsigned t = w * 32 + lane;
                        blockIdx = {b, 0, 0};
                        threadIdx = {t % bx, t / bx, 0};
                        CALL;
                        next_warp.arrive_and_wait();
                    }
            });
        for (auto& th : lanes) th.join();
        for (auto* w : warps) delete w;
        return 0;
    }
    // __syncthreads: one OS thread per thread of a block, for the whole grid: blocks run one after another,
    // separated by a barrier (so the function-static __shared__ variables pass from block to
    // block, as each block's own copy would)
    Barrier block(n), next_block(n);
    std::vector<Barrier*> warps;
    for (unsigned w = 0; w < n / 32; ++w) warps.push_back(new Barrier(32));
    block_barrier = &block;
    warp_barriers = warps;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; ++t)
        threads.emplace_back([=, &next_block] {
            threadIdx = {t % bx, t / bx, 0};
            for (unsigned b = 0; b < gx; ++b) {
                blockIdx = {b, 0, 0};
                CALL;
                next_block.arrive_and_wait();
            }
        });
    for (auto& th : threads) th.join();
    for (auto* w : warps) delete w;
    return 0;
}
"""

#: C scalar types and pointee types -> NumPy dtype
_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
            "unsigned long long": np.uint64, "unsigned char": np.uint8, "unsigned int": np.uint32}

_BUILD_DIR = Path(tempfile.gettempdir()) / "minibnn-cuda-emulator"


def available() -> str | None:
    """None when the emulator can run here, else why not."""
    return None if shutil.which("g++") else "no g++ (the CUDA emulator compiles kernels as C++)"


def parameters(source: str, entry: str) -> list[tuple[str, str]]:
    """``(C type, name)`` of each parameter of ``entry`` in ``source``."""
    code = re.sub(r"//[^\n]*", "", source)                 # comments may sit between parameters
    found = re.search(re.escape(entry) + r"\s*\(([^)]*)\)", code)
    if found is None:
        raise ValueError(f"entry {entry} not found in its source")
    params = []
    for text in found.group(1).split(","):
        words = text.replace("__restrict__", " ").replace("*", " * ").split()
        params.append((" ".join(words[:-1]).replace("const ", "").strip(), words[-1]))
    return params


def _build(source: str, entry: str, params: list[tuple[str, str]]) -> ctypes.CDLL:
    """g++ the kernel with the prelude and the launcher; the shared library (cached by text)."""
    call = entry + "(" + ", ".join(f"*({ctype} *)a[{i}]" for i, (ctype, _) in
                                   enumerate(params)) + ")"
    text = PRELUDE + source + LAUNCHER.replace("CALL", call)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    _BUILD_DIR.mkdir(exist_ok=True)
    library = _BUILD_DIR / f"{entry}-{digest}.so"
    if not library.exists():
        cpp = library.with_name(f"{library.stem}.{os.getpid()}.cpp")
        cpp.write_text(text)
        partial = f"{library}.{os.getpid()}.tmp"         # other test processes may build too
        proc = subprocess.run(["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-shared",
                               "-fPIC", "-pthread", "-o", partial, str(cpp)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"g++ could not build {entry}:\n{proc.stderr[-3000:]}")
        os.replace(partial, library)
    return ctypes.CDLL(str(library))


class EmuKernel:
    """``cupy.RawKernel``'s interface, run by the emulator: ``kernel(grid, block, args)``."""

    def __init__(self, code: str, name: str, options: tuple[str, ...] = ()) -> None:
        self.name = name
        self.params = parameters(code, name)
        # 0: threads in turn; 1: a warp's lanes at once (votes); 2: a block's threads at once
        self.mode = 2 if "__syncthreads" in code else 1 if "__ballot_sync" in code else 0
        self.library = _build(code, name, self.params)

    def _argument(self, value: Any, ctype: str, pname: str) -> Any:
        """The ctypes object holding one argument, after checking it against its parameter."""
        where = f"{self.name}: argument {pname}"
        if ctype.endswith("*"):
            if not isinstance(value, EmuArray):        # CuPy refuses host arrays too
                raise TypeError(f"{where} must be an array on the device ({ctype}), got "
                                f"{type(value).__name__}")
            want = np.dtype(_C_TYPES[ctype[:-1].strip()])
            if value.dtype != want:
                raise TypeError(f"{where} is {value.dtype}, the kernel reads {ctype} ({want})")
            if not value.flags.c_contiguous:
                raise TypeError(f"{where} is not C-contiguous (kernels index flat)")
            return ctypes.c_void_p(value.ctypes.data)
        if not isinstance(value, np.generic):
            raise TypeError(f"{where} must be a NumPy scalar of {ctype}, got "
                            f"{type(value).__name__}")
        want = np.dtype(_C_TYPES[ctype])
        if value.dtype != want:
            raise TypeError(f"{where} is {value.dtype}, the kernel reads {ctype} ({want})")
        return (ctypes.c_char * want.itemsize).from_buffer_copy(value.tobytes())

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]
                 ) -> None:
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        held = [self._argument(v, c, n) for v, (c, n) in zip(args, self.params)]
        pointers = (ctypes.c_void_p * len(held))(*(ctypes.addressof(h) for h in held))
        block = tuple(block) + (1,) * (2 - len(block))
        if grid[1:] and any(g != 1 for g in grid[1:]):
            raise TypeError(f"{self.name}: the emulator runs 1-D grids, got {grid}")
        rc = self.library.minibnn_emulate(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]),
                                          ctypes.c_uint(block[1]), pointers,
                                          ctypes.c_int(self.mode))
        if rc:
            raise TypeError(f"{self.name}: the emulator cannot run blocks of {block}")


class EmuArray(DeviceArray):
    """An array on the emulated GPU: a CuPy array to minibnn (its class's module says so)."""

    __module__ = "cupy._emulated"


class _Event:
    """``cupy.cuda.Event``: a wall-clock mark (the emulated device is synchronous)."""

    def record(self) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass


class _Device:
    id = 0

    def synchronize(self) -> None:
        pass


class EmulatedCupy(Namespace):
    """``import cupy`` while emulating: NumPy for arrays, ``EmuKernel`` for ``RawKernel``, and
    the few device services the benchmarks ask for (events, device, memory pool)."""

    __version__ = "emulated"
    ndarray = EmuArray
    RawKernel = EmuKernel
    cuda = types.SimpleNamespace(
        is_available=lambda: True, Event=_Event, Device=_Device,
        get_elapsed_time=lambda start, end: 1e3 * (end.at - start.at),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"emulated"},
                                      runtimeGetVersion=lambda: 0, getDeviceCount=lambda: 1))

    @staticmethod
    def empty(shape: Any, dtype: Any = float, order: str = "C") -> EmuArray:
        """Uninitialised memory, made visible: NaN (floats) or all bits set (integers), so an
        output element no thread writes cannot pass for a right one."""
        return _poisoned(np.empty(shape, dtype=dtype, order=order))

    @staticmethod
    def empty_like(a: Any, dtype: Any = None) -> EmuArray:
        return _poisoned(np.empty_like(np.asarray(a), dtype=dtype))

    @staticmethod
    def asnumpy(a: Any) -> np.ndarray:
        return np.array(a.view(np.ndarray)) if isinstance(a, np.ndarray) else np.asarray(a)

    @staticmethod
    def get_default_memory_pool() -> Any:
        return types.SimpleNamespace(free_all_blocks=lambda: None)

    def __init__(self) -> None:
        super().__init__(np, EmuArray)


def _poisoned(a: np.ndarray) -> EmuArray:
    if a.dtype.kind == "f":
        a.fill(np.nan)
    else:
        a.view(np.uint8).fill(0xFF)
    return a.view(EmuArray)


EMULATED_CUPY = EmulatedCupy()
