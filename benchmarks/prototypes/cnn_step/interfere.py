"""Does alternating OpenBLAS / Numba / torch(OpenMP) calls in one process slow each other?"""
import sys, os
from common import blas_info, interleaved, np
import torch, numba
torch.set_num_threads(2)
from minibnn import kernels
from convs import *
blas_info()
print("numba threading layer:", end=" ")
rng = np.random.default_rng(0)
n, c, o, h = 128, 32, 32, 32
x = np.where(rng.standard_normal((n, c, h, h)) >= 0, 1, -1).astype(np.float32)
wgt = np.where(rng.standard_normal((o, c, 3, 3)) >= 0, 1, -1).astype(np.float32)
wbits, wsum = kernels.call("pack_conv_weights", wgt); xbits = kernels.call("pack_conv_input", x)
print(numba.threading_layer())
xpf = to_padded_nhwc(x); t2 = wtaps(wgt).reshape(9 * c, o); xt, wt_ = torch.from_numpy(x), torch.from_numpy(wgt)
A = lambda: d_fwd(xpf, t2, n, h, h, B=1024)
Bx = lambda: kernels.call("binary_conv2d", xbits, wbits, wsum, c, 3, 3, 1, 1)
T = lambda: torch.nn.functional.conv2d(xt, wt_, padding=1)
for combo in (("blas",), ("xnor",), ("torch",), ("blas", "xnor"), ("blas", "torch"), ("xnor", "torch"), ("blas", "xnor", "torch")):
    fns = {k: {"blas": A, "xnor": Bx, "torch": T}[k] for k in combo}
    t = interleaved(fns, 5)
    print(" + ".join(combo), {k: round(v * 1e3, 2) for k, v in t.items()})
