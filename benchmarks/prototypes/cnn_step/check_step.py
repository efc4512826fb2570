"""Check the prototype step's gradients against torch autograd on the same NHWC network (small)."""
from common import np
import torch
from proto_step import build, step
P, x, y = build(8, n=16, seed=3)
loss, G = step(P, x, y)
class S(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v): ctx.save_for_backward(v); return torch.where(v >= 0, 1.0, -1.0)
    @staticmethod
    def backward(ctx, d): (v,) = ctx.saved_tensors; return d * torch.clamp(2 - 2 * v.abs(), min=0)
T = {k: torch.tensor(v, requires_grad=True) for k, v in P.items() if isinstance(v, np.ndarray) and v.dtype == np.float32 and not k.startswith("wf")}
h = torch.tensor(x).permute(0, 3, 1, 2)
w1 = T["w1"].reshape(3, 3, 3, -1).permute(3, 2, 0, 1)
h = torch.nn.functional.conv2d(h, w1, padding=1)
h = S.apply(torch.nn.functional.batch_norm(h, None, None, T["g1"], T["b1"], True))
for k in range(2, 7):
    c = P[f"c{k}"]; w = T[f"w{k}"].reshape(3, 3, c, -1).permute(3, 2, 0, 1)
    h = torch.nn.functional.conv2d(h, w, padding=1)
    if k % 2 == 0: h = torch.nn.functional.max_pool2d(h, 2)
    h = S.apply(torch.nn.functional.batch_norm(h, None, None, T[f"g{k}"], T[f"b{k}"], True))
logits = h.permute(0, 2, 3, 1).reshape(16, -1) @ T["head"] + T["hb"]
lt = torch.nn.functional.cross_entropy(logits, torch.tensor(y)); lt.backward()
print("loss", float(loss), float(lt))
for k in G:
    ref = T[k].grad.numpy(); print(k, "max rel err", float(np.abs(G[k] - ref).max() / (np.abs(ref).max() + 1e-12)))
