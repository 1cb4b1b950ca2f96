"""Train-step speed of normlab's models on synthetic inputs (no data loading).

  python -m benchmarks.train_step                      # ResNet-20, BN, batch 128, 32x32x3
  python -m benchmarks.train_step --depth=56 --norm=layer --batch=64

Prints compile time, steps/s (median of repeats, with min-max spread), images/s and achieved
GFLOP/s from XLA's cost analysis of the compiled step, and the system (kernel) time per step.
"""

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import argparse
import resource
import statistics
import time

import jax
import numpy as np

from configs import default
from data.base import ArraySplit, Dataset
from training import experiment
from training.step import compile_steps


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--depth', type=int, default=20)
  p.add_argument('--norm', default='batch')
  p.add_argument('--residual', type=int, default=1)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--steps', type=int, default=10, help='steps per repeat')
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args()

  config = default.get_config(str(a.depth))
  config.model.norm, config.model.residual = a.norm, bool(a.residual)
  rng = np.random.default_rng(0)
  shape = (a.size, a.size, 3)
  batch = {'inputs': rng.normal(size=(a.batch, *shape)).astype(np.float32),
           'targets': rng.integers(0, 10, a.batch).astype(np.int32)}
  split = ArraySplit(batch)
  dataset = Dataset(split, split, 10, shape)
  exp = experiment.build_experiment(config, dataset=dataset)
  state = experiment.create_train_state(exp, jax.random.key(0))
  step = compile_steps(exp).train

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = (compiled.cost_analysis() or {}).get('flops', float('nan'))
  state, m = step(state, batch)
  jax.block_until_ready(m)

  rates = []
  sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    for _ in range(a.steps):
      state, m = step(state, batch)
    jax.block_until_ready((state, m))
    rates.append(a.steps / (time.perf_counter() - t0))
  med = statistics.median(rates)
  sys_ms = (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) / (a.repeats * a.steps) * 1e3
  print(f'resnet-{a.depth} norm={a.norm} residual={bool(a.residual)} batch={a.batch} '
        f'{a.size}x{a.size}x3 on {jax.devices()[0].device_kind}')
  print(f'  compile {compile_s:.2f} s | {med:.2f} steps/s (min {min(rates):.2f}, '
        f'max {max(rates):.2f}) | {med * a.batch:.0f} images/s | '
        f'{flops * med / 1e9:.1f} GFLOP/s (XLA cost analysis: {flops / 1e9:.2f} GFLOP/step) | '
        f'system {sys_ms:.0f} ms/step')


if __name__ == '__main__':
  main()
