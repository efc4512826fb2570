"""End-to-end prototype of the recommended design: one binary_cnn training step (forward, loss,
backward; optimiser cost taken from minibnn's profile) in NHWC with
  conv1: blocked im2col+GEMM (float), BN+sign fused -> packed bits,
  binary convs forward: XNOR-popcount on packed bits (NHWC int32 out, exact),
  maxpool on int32 conv output (uint8 argmax), BN(+sign+pack) fused, statistics recomputed,
  backward: fused STE+BN (recompute xhat from cached int32 z), blocked valid-rows GEMMs with
  cols unpacked from the cached bits, 2 Python threads x 1-thread OpenBLAS.
usage: proto_step.py WIDTH REPS [--memory FRAMEWORK]"""
import sys, time, os
from common import blas_info, interleaved, np
import numba, threadpoolctl
from fused import bn_sign_fwd, bn_sign_bwd, maxpool_fwd, maxpool_bwd, xnor_conv_nhwc
from vconv import v_fwd, v_bwd, flipw
from minibnn import kernels

def build(width, n=128, seed=0):
    rng = np.random.default_rng(seed)
    ch = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    P = {"w1": (rng.standard_normal((27, ch[0])) * 0.2).astype(np.float32)}
    c_in = ch[0]
    for k in range(2, 7):
        o = ch[k - 1]
        w = np.where(rng.standard_normal((o, c_in, 3, 3)) >= 0, 1, -1).astype(np.float32)
        P[f"w{k}"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(9 * c_in, o))   # (9C, O)
        P[f"wf{k}"] = flipw(P[f"w{k}"], c_in, o)
        wb, _ = kernels.call("pack_conv_weights", w); P[f"wb{k}"] = np.ascontiguousarray(wb.T)
        P[f"c{k}"] = c_in
        c_in = o
    for k in range(1, 7):
        P[f"g{k}"] = np.ones(ch[k - 1], np.float32); P[f"b{k}"] = np.zeros(ch[k - 1], np.float32)
    P["head"] = (rng.standard_normal((16 * ch[5], 10)) * 0.01).astype(np.float32); P["hb"] = np.zeros(10, np.float32)
    x = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return P, x, y

def step(P, x, y):
    n = x.shape[0]
    G = {}
    with threadpoolctl.threadpool_limits(1, "blas"):
        z = v_fwd(x, P["w1"], 3)
        cache = []
        h = 32
        zc = z
        bits, mean, inv = bn_sign_fwd(zc.reshape(-1, zc.shape[-1]), P["g1"], P["b1"])
        cache.append((zc, mean, inv, None))
        for k in range(2, 7):
            o = P[f"w{k}"].shape[1]
            xb = bits.reshape(n, h, h, -1)
            z = np.empty((n, h, h, o), np.int32)
            xnor_conv_nhwc(xb, P[f"wb{k}"], P[f"c{k}"], z)
            arg = None
            if k % 2 == 0:
                h //= 2
                zp = np.empty((n, h, h, o), np.int32); arg = np.empty(zp.shape, np.uint8)
                maxpool_fwd(z, zp, arg); z = zp
            bits, mean, inv = bn_sign_fwd(z.reshape(-1, o), P[f"g{k}"], P[f"b{k}"])
            cache.append((z, mean, inv, arg, xb))
        # last sign as float for the real head
        s6 = kernels.call("unpack_signs", bits, P["w6"].shape[1]).reshape(n, -1)
        logits = s6 @ P["head"] + P["hb"]
        e = np.exp(logits - logits.max(1, keepdims=True)); p = e / e.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean()
        dl = p; dl[np.arange(n), y] -= 1; dl /= n
        G["head"] = s6.T @ dl; G["hb"] = dl.sum(0)
        ds = (dl @ P["head"].T).reshape(n, h, h, -1)
        for k in range(6, 1, -1):
            z, mean, inv, arg, xb = cache[k - 1]
            o = z.shape[-1]
            dz, G[f"g{k}"], G[f"b{k}"] = bn_sign_bwd(np.ascontiguousarray(ds).reshape(-1, o), z.reshape(-1, o), mean, inv, P[f"g{k}"], P[f"b{k}"])
            dz = dz.reshape(z.shape)
            if arg is not None:
                h *= 2
                dfull = np.empty((n, h, h, o), np.float32); maxpool_bwd(dz, arg, dfull); dz = dfull
            ds, G[f"w{k}"] = v_bwd(dz, xb, P[f"w{k}"], P[f"c{k}"], True, 512, bits=True, wf=P[f"wf{k}"])
        z, mean, inv, _ = cache[0]
        dz, G["g1"], G["b1"] = bn_sign_bwd(ds.reshape(-1, z.shape[-1]), z.reshape(-1, z.shape[-1]), mean, inv, P["g1"], P["b1"])
        _, G["w1"] = v_bwd(dz.reshape(z.shape), x, P["w1"], 3, False, 1024)
    return loss, G

if __name__ == "__main__":
    width = int(sys.argv[1]); reps = int(sys.argv[2])
    if "--memory" in sys.argv:
        from bench_train import step_peak_memory, minibnn_step, torch_step
        fw = sys.argv[sys.argv.index("--memory") + 1]
        if fw == "proto":
            P, x, y = build(width); f = lambda: step(P, x, y)
        else:
            f, model, params = minibnn_step("binary_cnn", (3, 32, 32), 128, {"width": width})
            if fw == "torch":
                import torch; torch.set_num_threads(numba.get_num_threads()); f = torch_step(torch, model, params, 128)
        print(f"MEMORY {fw} width {width}: {step_peak_memory(f) / 2**20:.1f} MiB")
        sys.exit()
    blas_info()
    import torch
    torch.set_num_threads(numba.get_num_threads())
    from bench_train import minibnn_step, torch_step
    P, x, y = build(width)
    mstep, model, params = minibnn_step("binary_cnn", (3, 32, 32), 128, {"width": width})
    tstep = torch_step(torch, model, params, 128)
    fns = {"proto": lambda: step(P, x, y), "torch": tstep}
    if "--with-minibnn" in sys.argv:
        fns["minibnn"] = mstep
    t = interleaved(fns, reps)
    print(f"width {width}: " + "  ".join(f"{k} {v*1e3:.1f} ms" for k, v in t.items()) +
          f"  torch/proto {t['torch']/t['proto']:.2f}" + (f"  torch/minibnn {t['torch']/t['minibnn']:.2f}" if "minibnn" in t else ""))
