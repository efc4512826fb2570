"""Analytic cache bytes per conv layer (batch 128): minibnn today (float im2col cols + BN/sign
float caches) vs the design (packed input bits + int32 conv output + uint8 argmax)."""
import sys
from common import shapes
def words(c): return (c + 63) // 64
for width in (32, 128):
    tot_cur = tot_new = 0
    print(f"width {width}")
    for i, (name, n, c, o, h) in enumerate(shapes(width)):
        pooled = i % 2 == 1
        hp = h // 2 if pooled else h
        cols = n * h * h * 9 * c * 4
        bn_float = 2 * n * hp * hp * o * 4                      # xhat + y (sign STE input)
        arg_cur = n * hp * hp * o * 8 if pooled else 0          # int64 argmax
        cur = cols + bn_float + arg_cur
        xin = n * h * h * c * 4 if i == 0 else n * h * h * words(c) * 8   # conv1: float input
        new = xin + n * hp * hp * o * 4 + (n * hp * hp * o if pooled else 0)
        tot_cur += cur; tot_new += new
        print(f"  {name}: cols {cols/2**20:7.1f} MiB  today {cur/2**20:7.1f} MiB   design: input {xin/2**20:6.2f} + z {n*hp*hp*o*4/2**20:6.2f} (+argmax) = {new/2**20:6.2f} MiB")
    print(f"  total cached: today {tot_cur/2**20:.0f} MiB, design {tot_new/2**20:.0f} MiB ({tot_cur/tot_new:.0f}x less)")
