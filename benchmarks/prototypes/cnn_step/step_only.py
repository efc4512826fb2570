"""minibnn step alone (no torch in the process) or torch alone; for BLAS-spin experiments."""
import sys
from common import blas_info, interleaved, np
import numba
from bench_train import minibnn_step, torch_step
blas_info()
width = int(sys.argv[1]); which = sys.argv[2]; reps = int(sys.argv[3])
step, model, params = minibnn_step("binary_cnn", (3, 32, 32), 128, {"width": width})
if which == "torch":
    import torch; torch.set_num_threads(numba.get_num_threads())
    step = torch_step(torch, model, params, 128)
t = interleaved({which: step}, reps)
print(f"width {width} {which} alone: {t[which]*1e3:.1f} ms")
