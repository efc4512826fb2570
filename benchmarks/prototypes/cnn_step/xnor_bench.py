"""(e) binary layers forward via minibnn's XNOR-popcount binary_conv2d vs float paths; exactness; bytes."""
import sys, time
from common import blas_info, interleaved, shapes, np
import torch, numba
torch.set_num_threads(numba.get_num_threads())
from minibnn import kernels
from minibnn.nn import functional as F
from convs import *
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2])
rng = np.random.default_rng(0)
for name, n, c, o, h in shapes(width)[1:]:
    x = np.where(rng.standard_normal((n, c, h, h)) >= 0, 1, -1).astype(np.float32)
    wgt = np.where(rng.standard_normal((o, c, 3, 3)) >= 0, 1, -1).astype(np.float32)
    wbits, wsum = kernels.call("pack_conv_weights", wgt)
    xbits = kernels.call("pack_conv_input", x)
    y_ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wgt), padding=1).numpy()
    yb = kernels.call("binary_conv2d", xbits, wbits, wsum, c, 3, 3, 1, 1)
    exact = np.array_equal(yb.astype(np.float32), y_ref)
    xt, wt_ = torch.from_numpy(x), torch.from_numpy(wgt)
    xpf = to_padded_nhwc(x); t2 = wtaps(wgt).reshape(9 * c, o)
    fns = {"pack+xnor": lambda: kernels.call("binary_conv2d", kernels.call("pack_conv_input", x), wbits, wsum, c, 3, 3, 1, 1),
           "xnor only": lambda: kernels.call("binary_conv2d", xbits, wbits, wsum, c, 3, 3, 1, 1),
           "pack only": lambda: kernels.call("pack_conv_input", x),
           "torch fwd": lambda: torch.nn.functional.conv2d(xt, wt_, padding=1),
           "minibnn fwd": lambda: F.conv2d_forward(x, wgt, padding=1),
           "dblk1k fwd": lambda: d_fwd(xpf, t2, n, h, h, B=1024)}
    t = interleaved(fns, reps)
    gb = 2 * n * h * h * 9 * c * o / 1e9
    cols_b = n * h * h * 9 * c * 4; xf_b = x.nbytes; xb_b = xbits.nbytes
    print(f"{name} C{c} O{o} {h}x{h}: exact={exact}  cache bytes: im2col cols {cols_b/2**20:.1f} MiB, "
          f"float x {xf_b/2**20:.2f} MiB, packed x {xb_b/2**20:.3f} MiB ({cols_b/xb_b:.0f}x less than cols)")
    for k, v in t.items():
        print(f"   {k:12s} {v*1e3:7.2f} ms  ({gb/v:6.1f} G-MAC-equiv ops/s)  torch fwd/this {t['torch fwd']/v:5.2f}")
    sys.stdout.flush()
