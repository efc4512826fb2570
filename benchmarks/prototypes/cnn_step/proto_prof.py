"""Time the prototype step by section (alone in the process), via wrapping the module functions."""
import sys, time, collections
from common import blas_info, np
import proto_step, fused, vconv
from minibnn import kernels
blas_info()
prof = collections.defaultdict(float)
def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); prof[name] += time.perf_counter() - t0; return r
    setattr(proto_step, name, g)
for name in ("v_fwd", "v_bwd", "bn_sign_fwd", "bn_sign_bwd", "maxpool_fwd", "maxpool_bwd", "xnor_conv_nhwc"):
    wrap(proto_step, name)
width = int(sys.argv[1]); reps = int(sys.argv[2])
P, x, y = proto_step.build(width)
proto_step.step(P, x, y)
best = None
for _ in range(reps):
    prof.clear(); t0 = time.perf_counter(); proto_step.step(P, x, y); tot = time.perf_counter() - t0
    if best is None or tot < best[0]:
        best = (tot, dict(prof))
print(f"proto step width {width}: {best[0]*1e3:.1f} ms; sections:", {k: round(v * 1e3, 1) for k, v in best[1].items()},
      f"other {1e3*(best[0]-sum(best[1].values())):.1f}")
