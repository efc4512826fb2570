from common import np
import torch
from convs import *
rng = np.random.default_rng(0)
n, c, o, h = 4, 8, 16, 6
x = np.sign(rng.standard_normal((n, c, h, h))).astype(np.float32)
wgt = np.sign(rng.standard_normal((o, c, 3, 3))).astype(np.float32)
dy = rng.standard_normal((n, o, h, h)).astype(np.float32)
xt = torch.tensor(x, requires_grad=True); wt_ = torch.tensor(wgt, requires_grad=True)
yt = torch.nn.functional.conv2d(xt, wt_, padding=1); yt.backward(torch.tensor(dy))
xpf = to_padded_nhwc(x); taps = wtaps(wgt); dyf = topleft_from_nchw(dy)
for name, fwd, bwd, W in (("c", c_fwd, c_bwd, taps), ("d", d_fwd, d_bwd, taps.reshape(9*c, o)),
                          ("d-numba", lambda *a: d_fwd(*a, B=37, gather=gather_block),
                           lambda *a: d_bwd(*a, B=37, gather=gather_block), taps.reshape(9*c, o))):
    y = fwd(xpf, W, n, h, h)
    print(name, "fwd", np.abs(valid(y, n, h, h).transpose(0, 3, 1, 2) - yt.detach().numpy()).max())
    dx, dw = bwd(dyf, xpf, W, n, h, h)
    print(name, "dx", np.abs(valid(dx, n, h, h).transpose(0, 3, 1, 2) - xt.grad.numpy()).max(),
          "dw", np.abs(dw.reshape(3, 3, c, o).transpose(3, 2, 0, 1) - wt_.grad.numpy()).max())
