"""Checkpoint cost: save time and size of a ResNet train state, and the overhead of saving
every N steps relative to the train step time.

  python -m benchmarks.checkpoint                 # ResNet-56, BN, batch 128, every 500 steps
  python -m benchmarks.checkpoint --depth=110 --every=1000
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

from configs import default
from data.base import ArraySplit, Dataset
from training import checkpoints as ckpt_lib, experiment
from training.step import compile_steps


def dir_size(path):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--depth', type=int, default=56)
  p.add_argument('--every', type=int, default=500)
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args()
  config = default.get_config(str(a.depth))
  root = jax.random.key(0)
  print(f'resnet-{a.depth}, batch 128, checkpoint every {a.every} steps, on {jax.devices()[0].device_kind}')
  for size, channels in ((8, 1), (32, 3)):
    rng = np.random.default_rng(0)
    batch = {'inputs': rng.normal(size=(128, size, size, channels)).astype(np.float32),
             'targets': rng.integers(0, 10, 128).astype(np.int32)}
    split = ArraySplit(batch)
    dataset = Dataset(split, split, 10, (size, size, channels))
    exp = experiment.build_experiment(config, dataset=dataset)
    state = experiment.create_train_state(exp, root)
    step = compile_steps(exp).train
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(5):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / 5

    workdir = tempfile.mkdtemp()
    ckpts = ckpt_lib.Checkpoints(workdir, keep=2)
    times = []
    for i in range(a.repeats):
      tree = ckpt_lib.state_tree(state, root)
      t0 = time.perf_counter()
      ckpts.save(i + 1, tree)
      times.append(time.perf_counter() - t0)
    size_mb = dir_size(os.path.join(ckpts.directory, str(a.repeats))) / 2**20
    t0 = time.perf_counter()
    ckpts.restore_latest(ckpt_lib.state_tree(state, root))
    restore_s = time.perf_counter() - t0
    ckpts.close()
    shutil.rmtree(workdir)
    save_s = statistics.median(times)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f'  inputs {size}x{size}x{channels}: {n_params / 1e6:.3f}M params | checkpoint '
          f'{size_mb:.1f} MiB | save {save_s * 1e3:.0f} ms (median of {a.repeats}, min '
          f'{min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}) | restore {restore_s * 1e3:.0f} ms '
          f'| step {step_s * 1e3:.0f} ms | overhead every {a.every} steps: '
          f'{100 * save_s / (a.every * step_s):.2f} %')


if __name__ == '__main__':
  main()
