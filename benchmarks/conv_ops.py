"""One 3x3 convolution of each ResNet-20 stage, op by op: XLA vs PyTorch (oneDNN) on this machine.

  python -m benchmarks.conv_ops [--batch=128 --repeats=7]

For each stage shape (16 ch at 32x32, 32 at 16x16, 64 at 8x8) it times the forward pass, the
input gradient and the weight gradient (XLA's own, and summed over chunks as `models/backend.py`
does) against PyTorch's `aten.convolution_backward` on channels_last tensors, interleaved, and
prints ms and GFLOP/s. This is what bounds the ResNet-20 step (benchmarks/RESULTS.md).
"""

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import argparse
import statistics
import time

import jax
import numpy as np
from jax import lax

from models import backend as conv_lib

DN = ('NHWC', 'HWIO', 'NHWC')


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)


def chunked(x, w):
  return conv_lib.chunked_wgrad_conv()(x, w, (1, 1), 'SAME', dimension_numbers=DN)


def jax_ops(x, w, dy):
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0])
  dw_chunked = jax.jit(lambda x, w, dy: jax.vjp(lambda w_: chunked(x, w_), w)[1](dy)[0])
  return {'jax forward': lambda: fwd(x, w).block_until_ready(),
          'jax input grad': lambda: dx(x, w, dy).block_until_ready(),
          'jax weight grad (xla)': lambda: dw(x, w, dy).block_until_ready(),
          'jax weight grad (chunked)': lambda: dw_chunked(x, w, dy).block_until_ready()}


def torch_ops(x, w, dy):
  import torch
  torch.set_num_threads(len(__import__('os').sched_getaffinity(0)))
  cl = torch.channels_last
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl)
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=cl)
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl)
  back = lambda mask: torch.ops.aten.convolution_backward(
      tdy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
  return {'torch forward': lambda: torch.nn.functional.conv2d(tx, tw, padding=1),
          'torch input grad': lambda: back([True, False, False]),
          'torch weight grad': lambda: back([False, True, False])}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--calls', type=int, default=5, help='calls per op per round')
  a = p.parse_args()
  rng = np.random.default_rng(0)
  for ch, size in ((16, 32), (32, 16), (64, 8)):
    x = rng.normal(size=(a.batch, size, size, ch)).astype(np.float32)
    w = (rng.normal(size=(3, 3, ch, ch)) * 0.1).astype(np.float32)
    dy = rng.normal(size=(a.batch, size, size, ch)).astype(np.float32)
    ops = {**jax_ops(*map(jax.device_put, (x, w, dy))), **torch_ops(x, w, dy)}
    for op in ops.values():
      op()
    times = {name: [] for name in ops}
    for _ in range(a.repeats):
      for name, op in ops.items():
        t0 = time.perf_counter()
        for _ in range(a.calls):
          op()
        times[name].append((time.perf_counter() - t0) / a.calls)
    flops = 2 * a.batch * size * size * 9 * ch * ch
    print(f'{ch} channels at {size}x{size}, batch {a.batch} ({flops / 1e9:.2f} GFLOP per op)')
    for name, t in times.items():
      med = statistics.median(t)
      print(f'  {name:28s} {med * 1e3:7.2f} ms  {flops / med / 1e9:6.1f} GFLOP/s')


if __name__ == '__main__':
  main()
