from common import np
import torch
from vconv import *
from minibnn import kernels
rng = np.random.default_rng(0)
for (n, c, o, h) in ((5, 8, 16, 6), (4, 70, 9, 5), (3, 3, 8, 7), (3, 136, 4, 5)):
    x = np.where(rng.standard_normal((n, c, h, h)) >= 0, 1, -1).astype(np.float32)
    wg = rng.standard_normal((o, c, 3, 3)).astype(np.float32); dy = rng.standard_normal((n, o, h, h)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True); wt = torch.tensor(wg, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, padding=1); y.backward(torch.tensor(dy))
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1)); dyh = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    t2 = np.ascontiguousarray(wg.transpose(2, 3, 1, 0).reshape(9 * c, o))
    yv = v_fwd(xh, t2, c, rows=2 * h * h)
    xb = kernels.call("pack_conv_input", x)
    for bits, src in ((False, xh), (True, xb)):
        dx, dw = v_bwd(dyh, src, t2, c, rows=2 * h * h, bits=bits)
        print(n, c, o, h, "bits" if bits else "float", "fwd", np.abs(yv.transpose(0, 3, 1, 2) - y.detach().numpy()).max(),
              "dx", np.abs(dx.transpose(0, 3, 1, 2) - xt.grad.numpy()).max(),
              "dw", np.abs(dw.reshape(3, 3, c, o).transpose(3, 2, 0, 1) - wt.grad.numpy()).max())
