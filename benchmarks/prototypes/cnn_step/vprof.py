"""Split of v_bwd time (one thread, all blocks): gather x-bits, gather dy, dw GEMM, dx GEMM."""
import sys, time
from common import blas_info, shapes, np
import threadpoolctl
from vconv import gather_b, gather_b2, gather_b3, LUT, gather_f, flipw
from minibnn import kernels
blas_info()
width = int(sys.argv[1]); rows = int(sys.argv[2])
rng = np.random.default_rng(0)
for name, n, c, o, h in shapes(width)[1:]:
    x = np.where(rng.standard_normal((n, c, h, h)) >= 0, 1, -1).astype(np.float32)
    xb = kernels.call("pack_conv_input", x)
    dy = rng.standard_normal((n, h, h, o)).astype(np.float32); dy2 = dy.reshape(-1, o)
    w2 = rng.standard_normal((9 * c, o)).astype(np.float32); wf = flipw(w2, c, o)
    per = max(1, rows // (h * h)); R = per * h * h
    cols = np.empty((R, 9 * c), np.float32); colsd = np.empty((R, 9 * o), np.float32)
    ubuf = np.empty((per, h, h, c), np.float32); tmp = np.empty((9 * c, o), np.float32); dx = np.empty((n * h * h, c), np.float32)
    T = dict(gx=1e9, gdy=1e9, dw=1e9, dx=1e9)
    with threadpoolctl.threadpool_limits(1, "blas"):
        for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
            t = dict(gx=0, gdy=0, dw=0, dx=0)
            for n0 in range(0, n, per):
                n1 = min(n, n0 + per); m = (n1 - n0) * h * h; r0 = n0 * h * h
                a = time.perf_counter(); gather_b3(xb, c, n0, n1, cols, ubuf); b = time.perf_counter()
                np.matmul(cols[:m].T, dy2[r0:r0 + m], out=tmp); d = time.perf_counter()
                gather_f(dy, n0, n1, colsd); e = time.perf_counter()
                np.matmul(colsd[:m], wf, out=dx[r0:r0 + m]); f = time.perf_counter()
                t["gx"] += b - a; t["dw"] += d - b; t["gdy"] += e - d; t["dx"] += f - e
            T = {k: min(T[k], t[k]) for k in T}
    gf = 2 * n * h * h * 9 * c * o / 1e9
    print(f"{name} C{c} O{o} {h}x{h} rows {R}: gather bits {T['gx']*1e3:6.1f}  dw GEMM {T['dw']*1e3:6.1f} ({gf/T['dw']:4.0f} GF/s)  "
          f"gather dy {T['gdy']*1e3:6.1f}  dx GEMM {T['dx']*1e3:6.1f} ({gf/T['dx']:4.0f} GF/s)  [ms, 1 thread]")
