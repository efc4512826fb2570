"""Whole training step, minibnn vs torch twin (bench_train.py's), at a given width; plus a
per-step-module profile of the minibnn step (forward/backward time per module)."""
import sys, time, collections
from common import blas_info, interleaved, np
import torch, numba
from bench_train import minibnn_step, torch_step
torch.set_num_threads(numba.get_num_threads())
blas_info()
width = int(sys.argv[1]); reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
step, model, params = minibnn_step("binary_cnn", (3, 32, 32), 128, {"width": width})
tstep = torch_step(torch, model, params, 128)
t = interleaved({"minibnn": step, "torch": tstep}, reps)
print(f"width {width}: minibnn {t['minibnn']*1e3:.1f} ms  torch {t['torch']*1e3:.1f} ms  ratio {t['torch']/t['minibnn']:.2f}")
# profile: wrap every step module's forward/backward
from minibnn.nn import modules as M
prof = collections.defaultdict(float)
seq = model.net
orig_steps = seq.steps
steps_list = orig_steps()
def wrap(mod, i):
    f, b = mod.forward, mod.backward
    name = f"{i:02d} {type(mod).__name__} {getattr(mod,'name','') or ''}"
    def fw(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); prof[name + " fwd"] += time.perf_counter() - t0; return r
    def bw(*a, **k):
        t0 = time.perf_counter(); r = b(*a, **k); prof[name + " bwd"] += time.perf_counter() - t0; return r
    mod.forward, mod.backward = fw, bw
for i, m in enumerate(steps_list):
    wrap(m, i)
seq.steps = lambda: steps_list
step()
best = None
for r in range(reps):
    prof.clear(); t0 = time.perf_counter(); step(); tot = time.perf_counter() - t0
    if best is None or tot < best[0]:
        best = (tot, dict(prof))
tot, p = best
print(f"profiled step {tot*1e3:.1f} ms; layers sum {sum(p.values())*1e3:.1f} ms; rest (loss+optimizer+flips) {(tot-sum(p.values()))*1e3:.1f} ms")
for k, v in sorted(p.items()):
    print(f"  {k:40s} {v*1e3:8.2f} ms")
