from common import blas_info, interleaved, np
import torch, numba, sys
torch.set_num_threads(2)
blas_info()
rng = np.random.default_rng(0)
for (m, k, n) in [(131072, 288, 32), (131072, 32, 32), (32768, 576, 64), (32768, 64, 64), (8192, 1152, 128), (8192,128,128),
                  (4096, 288, 32), (2048, 576, 64), (1024, 1152, 128), (288, 131072, 32), (576, 32768, 64)]:
    a = rng.standard_normal((m, k)).astype(np.float32); b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    at, bt = torch.from_numpy(a), torch.from_numpy(b); ot = torch.empty(m, n)
    t = interleaved({"np": lambda: np.matmul(a, b, out=out), "torch": lambda: torch.matmul(at, bt, out=ot)}, 7)
    gf = 2 * m * k * n / 1e9
    print(f"({m},{k})@({k},{n}): numpy {gf/t['np']:6.1f} GF/s   torch(mkl) {gf/t['torch']:6.1f} GF/s")
