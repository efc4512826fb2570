"""Per conv layer: fwd and bwd of each candidate, timed separately, interleaved, with a settle
sleep before every timed call (so OpenBLAS's spinning workers from the previous call are idle)."""
import sys, time, json
from common import blas_info, shapes, np
import torch, numba, threadpoolctl
torch.set_num_threads(numba.get_num_threads())
from minibnn.nn import functional as F
from minibnn import kernels
from convs import *
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2])
only = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else None
sel = sys.argv[4].split(",") if len(sys.argv) > 4 else None
SETTLE = 0.12
rng = np.random.default_rng(0)
res = {}
blas1 = threadpoolctl.threadpool_limits(2, "blas")
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
    wbits, wsum = kernels.call("pack_conv_weights", wgt)
    st = {}
    # each candidate: (fwd callable returning state, bwd callable taking state)
    def mb_f(): return F.conv2d_forward(x, wgt, padding=1)[1]
    def mb_b(cache): F.conv2d_backward(dy, cache)
    def tc_f():
        wt_.grad = None; xt.grad = None
        return torch.nn.functional.conv2d(xt, wt_, padding=1)
    def tc_b(y): y.backward(dyt)
    def xn_f(): return kernels.call("binary_conv2d", kernels.call("pack_conv_input", x), wbits, wsum, c, 3, 3, 1, 1)
    def one_thread(f):
        def g(*a):
            with threadpoolctl.threadpool_limits(1, "blas"):
                return f(*a)
        return g
    cands = {
        "minibnn": (mb_f, mb_b),
        "torch": (tc_f, tc_b),
        "c9gemm": (lambda: c_fwd(xpf, taps, n, h, h), lambda s: c_bwd(dyf, xpf, taps, n, h, h, not first)),
        "blk1k": (lambda: d_fwd(xpf, t2, n, h, h, B=1024), lambda s: d_bwd(dyf, xpf, t2, n, h, h, not first, B=1024)),
        "blk2k": (lambda: d_fwd(xpf, t2, n, h, h, B=2048), lambda s: d_bwd(dyf, xpf, t2, n, h, h, not first, B=2048)),
        "thr1k": (one_thread(lambda: dt_fwd(xpf, t2, n, h, h, B=1024)),
                  one_thread(lambda s: dt_bwd(dyf, xpf, t2, n, h, h, not first, B=1024))),
        "thr512": (one_thread(lambda: dt_fwd(xpf, t2, n, h, h, B=512)),
                   one_thread(lambda s: dt_bwd(dyf, xpf, t2, n, h, h, not first, B=512))),
        "mixed": (lambda: None, lambda s: mixed_bwd(dyf, xpf, t2, n, h, h, not first)),
    }
    if not first:
        cands["xnor"] = (xn_f, lambda s: None)
    if sel:
        cands = {k: v for k, v in cands.items() if k in sel}
    for f, b in cands.values():
        b(f())
    best = {k: [1e9, 1e9] for k in cands}
    for _ in range(reps):
        for k, (f, b) in cands.items():
            time.sleep(SETTLE); t0 = time.perf_counter(); s = f(); t1 = time.perf_counter()
            time.sleep(SETTLE); t2_ = time.perf_counter(); b(s); t3 = time.perf_counter()
            best[k][0] = min(best[k][0], t1 - t0); best[k][1] = min(best[k][1], t3 - t2_)
    gflop = 2 * n * h * h * 9 * c * o / 1e9
    tf, tb = best["torch"]
    print(f"{name} N{n} C{c} O{o} {h}x{h} ({gflop:.2f} GF per pass)")
    for k, (a, b) in best.items():
        print(f"   {k:8s} fwd {a*1e3:7.2f} ({tf/a:5.2f}x)  bwd {b*1e3:7.2f} ({tb/b:5.2f}x)  [torch/this]")
    res[name] = {"shape": [n, c, o, h], **best}
    sys.stdout.flush()
json.dump(res, open(f"bwd_w{width}.json", "w"), indent=1)
