from common import np
import torch
from fused import *
from minibnn import kernels
rng = np.random.default_rng(1)
n, c, h = 8, 40, 6
z = rng.standard_normal((n, c, h, h)).astype(np.float32) * 3
gamma = rng.uniform(0.5, 1.5, c).astype(np.float32); beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
ds = rng.standard_normal((n, c, h, h)).astype(np.float32)
zt = torch.tensor(z, requires_grad=True); gt = torch.tensor(gamma, requires_grad=True); bt = torch.tensor(beta, requires_grad=True)
yt = torch.nn.functional.batch_norm(zt, None, None, gt, bt, True, 0.1, 1e-5)
st = torch.where(yt >= 0, 1.0, -1.0)
(yt * (torch.tensor(ds) * torch.clamp(2 - 2 * yt.detach().abs(), min=0))).sum().backward()
zn = np.ascontiguousarray(z.transpose(0, 2, 3, 1)).reshape(-1, c)
bits, mean, inv = bn_sign_fwd(zn, gamma, beta)
ref_bits = kernels.call("pack_signs", np.ascontiguousarray(st.numpy().transpose(0, 2, 3, 1)).reshape(-1, c))
print("bits equal", np.array_equal(bits, ref_bits), "mismatching", np.count_nonzero(bits != ref_bits))
dz, dg, db = bn_sign_bwd(np.ascontiguousarray(ds.transpose(0, 2, 3, 1)).reshape(-1, c), zn, mean, inv, gamma, beta)
print("dz err", np.abs(dz.reshape(n, h, h, c).transpose(0, 3, 1, 2) - zt.grad.numpy()).max(),
      "dgamma err", np.abs(dg - gt.grad.numpy()).max(), "dbeta err", np.abs(db - bt.grad.numpy()).max())
# maxpool
x = rng.standard_normal((n, h, h, c)).astype(np.float32)
out = np.empty((n, h // 2, h // 2, c), np.float32); arg = np.empty(out.shape, np.uint8); maxpool_fwd(x, out, arg)
xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True); pt = torch.nn.functional.max_pool2d(xt, 2)
d = rng.standard_normal(out.shape).astype(np.float32); pt.backward(torch.tensor(d.transpose(0, 3, 1, 2)))
dx = np.empty_like(x); maxpool_bwd(d, arg, dx)
print("pool fwd", np.array_equal(out.transpose(0, 3, 1, 2), pt.detach().numpy()), "bwd", np.array_equal(dx.transpose(0, 3, 1, 2), xt.grad.numpy()))
# xnor nhwc
for c2, o in ((32, 16), (128, 8), (70, 5)):
    xs = np.where(rng.standard_normal((n, c2, h + 1, h)) >= 0, 1, -1).astype(np.float32)
    ws = np.where(rng.standard_normal((o, c2, 3, 3)) >= 0, 1, -1).astype(np.float32)
    wbits, wsum = kernels.call("pack_conv_weights", ws); xb = kernels.call("pack_conv_input", xs)
    out = np.empty((n, h + 1, h, o), np.int32); xnor_conv_nhwc(xb, np.ascontiguousarray(wbits.T), c2, out)
    ref = torch.nn.functional.conv2d(torch.tensor(xs), torch.tensor(ws), padding=1).numpy()
    print("xnor nhwc exact", np.array_equal(out.transpose(0, 3, 1, 2), ref))
