"""Per conv layer fwd / bwd (dx+dw) time: minibnn today, torch, nine shifted GEMMs, blocked."""
import sys, time, json
from common import blas_info, shapes, np
import torch, numba
torch.set_num_threads(numba.get_num_threads())
from minibnn.nn import functional as F
from convs import *
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2]); only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
cands_sel = sys.argv[4].split(",") if len(sys.argv) > 4 else None
rng = np.random.default_rng(0)
res = {}
for name, n, c, o, h in shapes(width):
    if only and name not in only:
        continue
    first = name == "conv1"
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    if not first:
        x = np.where(x >= 0, 1, -1).astype(np.float32)
    wgt = np.where(rng.standard_normal((o, c, 3, 3)) >= 0, 1, -1).astype(np.float32)
    dy = rng.standard_normal((n, o, h, h)).astype(np.float32)
    xpf = to_padded_nhwc(x); taps = wtaps(wgt); t2 = taps.reshape(9 * c, o); dyf = topleft_from_nchw(dy)
    xt = torch.from_numpy(x).requires_grad_(not first); wt_ = torch.from_numpy(wgt).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    def mb():
        t0 = time.perf_counter(); y, cache = F.conv2d_forward(x, wgt, padding=1); t1 = time.perf_counter()
        F.conv2d_backward(dy, cache); return t1 - t0, time.perf_counter() - t1
    def tc():
        t0 = time.perf_counter(); y = torch.nn.functional.conv2d(xt, wt_, padding=1); t1 = time.perf_counter()
        wt_.grad = None; xt.grad = None
        y.backward(dyt); return t1 - t0, time.perf_counter() - t1
    def cc():
        t0 = time.perf_counter(); y = c_fwd(xpf, taps, n, h, h); t1 = time.perf_counter()
        c_bwd(dyf, xpf, taps, n, h, h, need_dx=not first); return t1 - t0, time.perf_counter() - t1
    def dd(B):
        def f():
            t0 = time.perf_counter(); y = d_fwd(xpf, t2, n, h, h, B=B); t1 = time.perf_counter()
            d_bwd(dyf, xpf, t2, n, h, h, need_dx=not first, B=B); return t1 - t0, time.perf_counter() - t1
        return f
    cands = {"minibnn": mb, "torch": tc, "c9gemm": cc, "dblk1k": dd(1024), "dblk4k": dd(4096), "dblk16k": dd(16384)}
    if cands_sel:
        cands = {k: v for k, v in cands.items() if k in cands_sel}
    for f in cands.values():
        f()
    best = {k: [1e9, 1e9, 1e9] for k in cands}
    for _ in range(reps):
        for k, f in cands.items():
            a, b = f()
            bb = best[k]; bb[0] = min(bb[0], a); bb[1] = min(bb[1], b); bb[2] = min(bb[2], a + b)
    gflop = 2 * n * h * h * 9 * c * o / 1e9
    tt = best["torch"][2]
    line = f"{name} N{n} C{c} O{o} {h}x{h} ({gflop:.2f} GF fwd)"
    print(line)
    for k, (a, b, s) in best.items():
        print(f"   {k:8s} fwd {a*1e3:7.2f}  bwd {b*1e3:7.2f}  sum {s*1e3:7.2f} ms  torch/this {tt/s:5.2f}")
    res[name] = {"shape": [n, c, o, h], **{k: v for k, v in best.items()}}
    sys.stdout.flush()
json.dump(res, open(f"conv_w{width}.json", "w"), indent=1)
