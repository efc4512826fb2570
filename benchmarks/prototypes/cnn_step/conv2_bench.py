"""Per conv layer, candidates of the recommended design vs torch and minibnn today.
fwd: torch / minibnn (im2col+GEMM) / XNOR (minibnn binary_conv2d NCHW; proto NHWC) / v_fwd (conv1)
bwd: torch / minibnn / v_bwd (valid-rows blocked, float x or packed-bit x) / thr1k (padded-flat blocked)."""
import sys, time, json
from common import blas_info, shapes, np
import torch, numba
torch.set_num_threads(numba.get_num_threads())
from minibnn.nn import functional as F
from minibnn import kernels
from convs import to_padded_nhwc, topleft_from_nchw, wtaps, dt_bwd, c_fwd, c_bwd
from vconv import v_bwd, v_fwd, flipw
from fused import xnor_conv_nhwc
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2])
only = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else None
sel = sys.argv[4].split(",") if len(sys.argv) > 4 else None
SETTLE = 0.12
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
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1)); dyh = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    t2 = wtaps(wgt).reshape(9 * c, o); wf = flipw(t2, c, o)
    xpf = to_padded_nhwc(x); dyf = topleft_from_nchw(dy)
    xt = torch.from_numpy(x).requires_grad_(not first); wt_ = torch.from_numpy(wgt).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    wbits, wsum = kernels.call("pack_conv_weights", wgt); wbT = np.ascontiguousarray(wbits.T)
    xb = kernels.call("pack_conv_input", x)
    def tc_f():
        wt_.grad = None; xt.grad = None
        return torch.nn.functional.conv2d(xt, wt_, padding=1)
    def xn_nhwc():
        out = np.empty((n, h, h, o), np.int32); xnor_conv_nhwc(xb, wbT, c, out); return out
    cands = {
        "torch": (tc_f, lambda y: y.backward(dyt)),
        "minibnn": (lambda: F.conv2d_forward(x, wgt, padding=1)[1], lambda cache: F.conv2d_backward(dy, cache)),
        "v512": (lambda: v_fwd(xh, t2, c, 512), lambda s: v_bwd(dyh, xh, t2, c, not first, 512, wf=wf)),
        "v1k": (lambda: v_fwd(xh, t2, c, 1024), lambda s: v_bwd(dyh, xh, t2, c, not first, 1024, wf=wf)),
        "v2k": (lambda: v_fwd(xh, t2, c, 2048), lambda s: v_bwd(dyh, xh, t2, c, not first, 2048, wf=wf)),
        "v1k-bits": (lambda: None, lambda s: v_bwd(dyh, xb, t2, c, not first, 1024, bits=True, wf=wf)),
        "v512-bits": (lambda: None, lambda s: v_bwd(dyh, xb, t2, c, not first, 512, bits=True, wf=wf)),
        "c9gemm": (lambda: c_fwd(xpf, wtaps(wgt), n, h, h), lambda s: c_bwd(dyf, xpf, wtaps(wgt), n, h, h, not first)),
        "thr1k": (lambda: None, lambda s: dt_bwd(dyf, xpf, t2, n, h, h, not first, B=1024)),
    }
    if not first:
        cands["xnor-mb"] = (lambda: kernels.call("binary_conv2d", xb, wbits, wsum, c, 3, 3, 1, 1), lambda s: None)
        cands["xnor-nhwc"] = (xn_nhwc, lambda s: None)
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
        fs = f"fwd {a*1e3:7.2f} ({tf/a:5.2f}x)" if a > 2e-3 else " " * 21
        bs = f"bwd {b*1e3:7.2f} ({tb/b:5.2f}x, {(1 if first else 2)*gflop/b:5.0f} GF/s)" if b > 1e-4 else ""
        print(f"   {k:9s} {fs}  {bs}")
    res[name] = {"shape": [n, c, o, h], **best}
    sys.stdout.flush()
json.dump(res, open(f"conv2_w{width}.json", "w"), indent=1)
