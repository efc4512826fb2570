"""Every CUDA kernel minibnn can launch compiles, with NVRTC and no GPU (``kernels/cuda_build``).

CI installs the ``gpu-build`` extra (CuPy's NVRTC bindings and the NVRTC library) and sets
``MINIBNN_REQUIRE_NVRTC=1``, so there these tests run or fail: they never skip into green.
Elsewhere, without NVRTC, they skip with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minibnn.kernels import cuda_sources
from minibnn.kernels.cuda_build import ARCHS, CudaBuildError, compile_kernel, nvrtc


def _nvrtc_or_skip() -> None:
    try:
        nvrtc()
    except CudaBuildError as exc:
        if os.environ.get("MINIBNN_REQUIRE_NVRTC") == "1":
            raise
        pytest.skip(str(exc))


INSTANCES = [(kernel, types) for kernel in cuda_sources.KERNELS for types in kernel.variants]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel, types", INSTANCES,
                         ids=[k.entry(*t) for k, t in INSTANCES])
def test_kernel_compiles_without_spills(kernel, types, arch):
    _nvrtc_or_skip()
    entry, source = kernel.instance(*types)
    report = compile_kernel(entry, source, arch)
    assert report.cubin_bytes > 0 and report.registers > 0
    assert report.spill_stores == 0 and report.spill_loads == 0, report


def test_every_launched_kernel_is_in_the_list():
    """The launchers name only kernels of ``KERNELS``: each ``src.NAME`` used in gpu.py and
    gpu_channels_last.py is one of them, and every one of them is launched somewhere."""
    import re
    from pathlib import Path

    import minibnn.kernels as package

    folder = Path(package.__file__).parent
    used = set()
    for name in ("gpu.py", "gpu_channels_last.py"):
        used |= set(re.findall(r"\bsrc\.([A-Z][A-Z0-9_]+)\b", (folder / name).read_text()))
    used -= {"NVRTC_OPTIONS", "CTYPES"}
    listed = {name for name, value in vars(cuda_sources).items()
              if isinstance(value, cuda_sources.CudaKernel)}
    assert used == listed
    assert {getattr(cuda_sources, n) for n in listed} == set(cuda_sources.KERNELS)


def test_a_broken_kernel_fails_with_one_line_naming_it():
    _nvrtc_or_skip()
    entry, source = cuda_sources.CEMA.instance("float")
    broken = source.replace("m[i] = mi;", "m[i] = mi_typo;")
    with pytest.raises(CudaBuildError) as info:
        compile_kernel(entry, broken, "sm_90")
    message = str(info.value)
    assert "\n" not in message and entry in message and "mi_typo" in message
    assert f"{entry}.cu(" in message                    # the compiler names the line


def test_build_table_command():
    _nvrtc_or_skip()
    proc = subprocess.run([sys.executable, "-m", "minibnn.kernels.cuda_build"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    n = sum(len(k.variants) for k in cuda_sources.KERNELS) * len(ARCHS)
    assert f"{n} kernel builds" in proc.stdout
