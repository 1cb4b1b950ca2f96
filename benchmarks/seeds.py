"""Seeds in one program (jax.vmap) vs one seed vs the same seeds one after another.

  python -m benchmarks.seeds                  # ResNet-20, BN, digits (8x8), batch 128, 8 seeds
  python -m benchmarks.seeds --seeds=4 --depth=8

Times the jitted train step only (no data loading, logging or eval), interleaving the variants
over several repeats; prints the median time per step of each and the ratios.
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

from configs import default
from data.pipeline import TrainBatches
from training import experiment, step as step_lib


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', type=int, default=8)
  p.add_argument('--depth', type=int, default=20)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--repeats', type=int, default=3)
  a = p.parse_args()
  med = measure(a.depth, a.seeds, a.steps, a.repeats)
  config = default.get_config(str(a.depth))
  print(f'resnet-{a.depth} on digits 8x8, batch {config.data.batch_size}, {a.seeds} seeds, '
        f'{jax.default_backend()}: median seconds per step over {a.repeats} interleaved repeats')
  for name, t in med.items():
    print(f'  {name:<24} {t * 1e3:9.1f} ms/step  ({t / med["1 seed"]:.2f}x one seed)')
  one_by_one, vm = med[f'{a.seeds} seeds one by one'], med[f'{a.seeds} seeds vmapped']
  print(f'  vmapped / one-by-one: {vm / one_by_one:.2f}  (< 1: vmapping is faster here)')


def measure(depth: int, n_seeds: int, steps: int, repeats: int,
            packed: bool = False) -> dict[str, float]:
  """{variant: median seconds per step}: 1 seed, n seeds one by one, n seeds vmapped; with
  `packed`, also the n seeds as n runs spread over the devices (run k on device k mod D, all
  dispatched asynchronously from this thread, as a packed sweep's processes run at once)."""
  config = default.get_config(str(depth))
  exp = experiment.build_experiment(config)
  single = step_lib.compile_steps(exp).train   # the programs the loop runs
  vmapped = step_lib.compile_steps(exp, population=n_seeds).train
  states = [experiment.create_train_state(exp, jax.random.key(s)) for s in range(n_seeds)]
  batches = [TrainBatches(exp.dataset.train, config.data.batch_size, s)(0) for s in range(n_seeds)]
  stacked_state = jax.tree.map(lambda *x: np.stack(x), *states)
  stacked_batch = jax.tree.map(lambda *x: np.stack(x), *batches)

  def run_single(count):
    nonlocal states
    for _ in range(steps):
      for k in range(count):
        states[k], m = single(states[k], batches[k])
    jax.block_until_ready(states[:count])

  def run_vmapped():
    nonlocal stacked_state
    for _ in range(steps):
      stacked_state, m = vmapped(stacked_state, stacked_batch)
    jax.block_until_ready(stacked_state)

  devices = jax.devices()
  placed = [jax.device_put(jax.tree.map(np.array, (states[k], batches[k])),   # own buffers:
                           devices[k % len(devices)]) for k in range(n_seeds)]  # steps donate

  def run_packed():
    for _ in range(steps):
      for k, (state, batch) in enumerate(placed):
        placed[k] = (single(state, batch)[0], batch)   # each on its state's device
    jax.block_until_ready(placed)

  variants = {'1 seed': lambda: run_single(1),
              f'{n_seeds} seeds one by one': lambda: run_single(n_seeds),
              f'{n_seeds} seeds vmapped': run_vmapped}
  if packed:
    variants[f'{n_seeds} seeds packed, one run per device ({len(devices)} devices)'] = run_packed
  for f in variants.values():  # compile
    f()
  times = {k: [] for k in variants}
  for _ in range(repeats):
    for name, f in variants.items():
      t0 = time.perf_counter()
      f()
      times[name].append((time.perf_counter() - t0) / steps)
  return {k: statistics.median(v) for k, v in times.items()}


if __name__ == '__main__':
  main()
