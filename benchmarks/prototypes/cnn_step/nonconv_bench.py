"""Non-conv parts per layer: BN(+sign STE approx) fwd+bwd and 2x2 maxpool fwd+bwd: torch vs
minibnn (fused batchnorm_sign, separate batchnorm + sign) vs Numba NHWC fused prototypes."""
import sys, time
from common import blas_info, shapes, np
import torch, numba
torch.set_num_threads(numba.get_num_threads())
from minibnn.nn import functional as F
from fused import *
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2])
SETTLE = 0.05
rng = np.random.default_rng(0)

class SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x); return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors; return dy * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)

def bench(cands):
    for f, b in cands.values():
        b(f())
    best = {k: [1e9, 1e9] for k in cands}
    for _ in range(reps):
        for k, (f, b) in cands.items():
            time.sleep(SETTLE); t0 = time.perf_counter(); s = f(); t1 = time.perf_counter()
            time.sleep(SETTLE); t2 = time.perf_counter(); b(s); t3 = time.perf_counter()
            best[k][0] = min(best[k][0], t1 - t0); best[k][1] = min(best[k][1], t3 - t2)
    return best

def show(title, best):
    tt = sum(best["torch"])
    print(title)
    for k, (a, b) in best.items():
        print(f"   {k:14s} fwd {a*1e3:6.2f}  bwd {b*1e3:6.2f}  sum {(a+b)*1e3:6.2f} ms  torch/this {tt/(a+b):5.2f}")

for i, (name, n, c, o, h) in enumerate(shapes(width)):
    pooled = i % 2 == 1
    # maxpool on the conv output
    if pooled:
        x = rng.standard_normal((n, o, h, h)).astype(np.float32)
        xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        d = rng.standard_normal((n, o, h // 2, h // 2)).astype(np.float32); dh = np.ascontiguousarray(d.transpose(0, 2, 3, 1))
        xt = torch.from_numpy(x).requires_grad_(True); dt = torch.from_numpy(d)
        def tp_f():
            xt.grad = None; return torch.nn.functional.max_pool2d(xt, 2)
        def np_f():
            out = np.empty((n, h // 2, h // 2, o), np.float32); arg = np.empty(out.shape, np.uint8); maxpool_fwd(xh, out, arg); return arg
        def np_b(arg):
            dx = np.empty_like(xh); maxpool_bwd(dh, arg, dx)
        best = bench({"torch": (tp_f, lambda y: y.backward(dt)),
                      "minibnn": (lambda: F.maxpool2d_forward(x, 2)[1], lambda cache: F.maxpool2d_backward(d, cache)),
                      "nhwc numba": (np_f, np_b)})
        show(f"maxpool after {name}: ({n},{o},{h},{h})", best)
        h //= 2
    z = (rng.standard_normal((n, o, h, h)) * 5).astype(np.float32)
    zn = np.ascontiguousarray(z.transpose(0, 2, 3, 1)).reshape(-1, o)
    ds = rng.standard_normal(z.shape).astype(np.float32); dsn = np.ascontiguousarray(ds.transpose(0, 2, 3, 1)).reshape(-1, o)
    gamma = np.ones(o, np.float32); beta = np.zeros(o, np.float32); rm = np.zeros(o, np.float32); rv = np.ones(o, np.float32)
    zt = torch.from_numpy(z).requires_grad_(True); gt = torch.ones(o, requires_grad=True); bt = torch.zeros(o, requires_grad=True)
    rmt, rvt = torch.zeros(o), torch.ones(o); dst = torch.from_numpy(ds)
    def t_f():
        zt.grad = None; gt.grad = None; bt.grad = None
        return SignSTE.apply(torch.nn.functional.batch_norm(zt, rmt, rvt, gt, bt, True, 0.1, 1e-5))
    def mf_f(): return F.batchnorm_sign_forward(z, gamma, beta, rm, rv, True, ste="approx")[1]
    def ms_f():
        y, c1 = F.batchnorm_forward(z, gamma, beta, rm, rv, True); s, c2 = F.sign_forward(y, "approx"); return c1, c2
    def ms_b(cc):
        F.batchnorm_backward(F.sign_backward(ds, cc[1]), cc[0])
    best = bench({"torch": (t_f, lambda s: s.backward(dst)),
                  "minibnn fused": (mf_f, lambda cache: F.batchnorm_sign_backward(ds, cache)),
                  "minibnn sep": (ms_f, ms_b),
                  "nhwc numba": (lambda: bn_sign_fwd(zn, gamma, beta), lambda r: bn_sign_bwd(dsn, zn, r[1], r[2], gamma, beta))})
    show(f"BN{i+1}+sign after {name}: ({n},{o},{h},{h})", best)
    sys.stdout.flush()
