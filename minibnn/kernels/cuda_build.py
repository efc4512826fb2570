"""Compile every CUDA kernel minibnn can launch with NVRTC, without a GPU: the build check.

NVRTC (the CUDA runtime compiler, a library) turns CUDA C++ into a cubin for a named GPU
architecture on any machine; no driver or device is involved. CuPy ships the bindings
(``cupy_backends.cuda.libs.nvrtc``), and the ``nvidia-cuda-nvrtc`` wheel the library, so
``pip install 'minibnn[gpu-build]'`` is all a CPU-only machine needs. (CuPy's own
``compile_using_nvrtc`` asks the driver for the architecture first, so it is not used here.)

    python -m minibnn.kernels.cuda_build              # every kernel, sm_80 and sm_90: a table

Each instance of each kernel in ``cuda_sources.KERNELS`` is compiled with the options the
launchers use (``NVRTC_OPTIONS``) plus ``--ptxas-options=-v``, whose log gives the registers,
spill stores/loads and barriers of the entry function. A compile error is a one-line
``CudaBuildError`` naming the kernel, the architecture and the compiler's first error (with its
line number in the kernel's source).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable

from minibnn.errors import MinibnnError
from minibnn.kernels.cuda_sources import NVRTC_OPTIONS, all_instances

#: the architectures the build check compiles for: A100 (sm_80) and H100/H200 (sm_90)
ARCHS = ("sm_80", "sm_90")


class CudaBuildError(MinibnnError):
    """A CUDA kernel does not compile, or NVRTC is not available."""


@dataclass(frozen=True)
class BuildReport:
    """What ptxas says about one compiled entry function."""

    entry: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    cubin_bytes: int


def nvrtc() -> Any:
    """CuPy's NVRTC bindings with a loadable libnvrtc, else a one-line CudaBuildError."""
    try:
        from cupy_backends.cuda.libs import nvrtc as bindings  # type: ignore[import-not-found]

        bindings.getVersion()
    except Exception as exc:                       # ImportError, or the library is missing
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CudaBuildError(f"NVRTC is not available ({first}); install it with "
                             f"pip install 'minibnn[gpu-build]'") from None
    return bindings


def _count(pattern: str, log: str) -> int:
    found = re.search(pattern, log)
    return int(found.group(1)) if found else 0


def compile_kernel(entry: str, source: str, arch: str = "sm_90") -> BuildReport:
    """Compile one kernel source for ``arch``; its ptxas report, or a one-line CudaBuildError."""
    lib = nvrtc()
    program = lib.createProgram(source, f"{entry}.cu", [], [])
    try:
        try:
            lib.compileProgram(program, [*NVRTC_OPTIONS, f"--gpu-architecture={arch}",
                                         "--ptxas-options=-v"])
        except lib.NVRTCError:
            log = lib.getProgramLog(program)
            errors = [line for line in log.splitlines() if "error" in line] or [log.strip()]
            raise CudaBuildError(f"{entry} does not compile for {arch}: "
                                 f"{errors[0].strip()}") from None
        log = lib.getProgramLog(program)
        cubin = lib.getCUBIN(program)
    finally:
        lib.destroyProgram(program)
    return BuildReport(
        entry=entry, arch=arch,
        registers=_count(r"Used (\d+) registers", log),
        spill_stores=_count(r"(\d+) bytes spill stores", log),
        spill_loads=_count(r"(\d+) bytes spill loads", log),
        shared_bytes=_count(r"(\d+) bytes smem", log),
        cubin_bytes=len(cubin))


def compile_all(archs: Iterable[str] = ARCHS) -> list[BuildReport]:
    """Compile every instance of every kernel for every architecture in ``archs``."""
    return [compile_kernel(entry, source, arch)
            for entry, source in all_instances() for arch in archs]


def report_table(reports: list[BuildReport]) -> str:
    """The build reports as a fixed-width table, one line per entry and architecture."""
    lines = [f"{'kernel':<48} {'arch':<6} {'regs':>4} {'spill st/ld':>11} {'smem':>6} "
             f"{'cubin':>7}"]
    for r in reports:
        lines.append(f"{r.entry:<48} {r.arch:<6} {r.registers:>4} "
                     f"{f'{r.spill_stores}/{r.spill_loads}':>11} {r.shared_bytes:>6} "
                     f"{r.cubin_bytes:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the build table of every kernel; exit 2 with one line if any does not compile."""
    try:
        reports = compile_all()
    except CudaBuildError as exc:
        print(f"minibnn: {exc}", file=sys.stderr)
        return 2
    print(report_table(reports))
    print(f"{len(reports)} kernel builds, NVRTC {'.'.join(map(str, nvrtc().getVersion()))}, "
          f"options {' '.join(NVRTC_OPTIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
