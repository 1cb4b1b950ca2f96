"""Seeds of one config trained as one program: the only place that branches on their number.

A population of one is an ordinary run: its state and batches have no extra axis. With several
seeds, states and batches are stacked along a leading axis and the steps are vmapped over it
(`step.compile_steps(exp, population=n)`); each seed keeps its own data order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data import pipeline, stream
from errors import ConfigError
from training import parallel
from training import workdir as wd
from training.experiment import Experiment


def check_population(configs) -> None:
  """Seeds share one program only if their configs differ in nothing but the seed."""
  first = wd.config_to_dict(configs[0])
  for c in configs[1:]:
    diff = [k for k in wd.config_diff(first, wd.config_to_dict(c)) if k != 'seed']
    if diff:
      raise ConfigError(f'seeds in one program must share their config; they differ in {diff}')


class Population:
  """`size` seeds of one experiment: their batches by step, and their states stacked."""

  def __init__(self, exps: list[Experiment]):
    self.size, self.mesh = len(exps), exps[0].mesh
    config = exps[0].config
    self.seeds = [e.config.seed for e in exps]
    data, transform = config.data, exps[0].dataset.train_transform
    place = exps[0].resolved['data.pipeline']
    share = (jax.process_index(), jax.process_count())
    self._device, self._stream = None, None
    if place == 'device':   # one jitted function, every seed
      self._device = pipeline.DeviceBatches([e.dataset.train for e in exps], data.batch_size,
                                            self.seeds, self.mesh, data.augment, transform)
    elif place == 'stream':   # each process reads its rows' records through Grain workers
      self._stream = [stream.StreamBatches(e.dataset.train, data.batch_size, e.config.seed,
                                           self.mesh, data.augment, share, transform,
                                           data.stream_workers) for e in exps]
    else:   # each process reads its share on the host
      self._batches = [pipeline.TrainBatches(e.dataset.train, data.batch_size, e.config.seed,
                                             data.augment, share, e.dataset.train_transform)
                       for e in exps]

  def stack(self, trees):
    """One tree for all seeds, replicated over the mesh."""
    tree = trees[0] if self.size == 1 else jax.tree.map(lambda *x: jnp.stack(x), *trees)
    return parallel.replicate(tree, self.mesh)

  def member(self, tree, k: int):
    """Seed k's part of a stacked tree (on the devices: a static slice, since indexing with a
    Python int would move the index to the devices, a transfer the guard refuses)."""
    if self.size == 1:
      return tree
    return jax.tree.map(lambda x: jax.lax.index_in_dim(x, k, keepdims=False)
                        if isinstance(x, jax.Array) else x[k], tree)

  def batch(self, step: int):
    """The step's batch for every seed, on the devices (host path: stacked on the host, one
    transfer)."""
    if self._device is not None:
      return self._device(step)
    if self._stream is not None:
      return self._stacked([s(step) for s in self._stream])
    if self.size == 1:
      batch = self._batches[0](step)
    else:
      batch = jax.tree.map(lambda *x: np.stack(x), *[b(step) for b in self._batches])
    return parallel.shard_batch(batch, self.mesh, self.size, local=True)

  def batches(self, start: int, stop: int):
    """(step, batch) for start <= step < stop. The device path dispatches each step's batch in
    this thread (asynchronously, and under the loop's transfer guard, which is per thread); the
    host path prepares the next batch in a background thread while a step runs."""
    if self._device is not None:
      return self._device.prefetch(start, stop)
    if self._stream is not None:
      return ((steps[0][0], self._stacked([b for _, b in steps]))
              for steps in zip(*[s.prefetch(start, stop) for s in self._stream]))
    return pipeline.prefetch(self.batch, start, stop)

  def _stacked(self, batches: list):
    """Each seed's batch (on the devices) along a leading axis, sharded as the steps take it."""
    if self.size == 1:
      return batches[0]
    if not hasattr(self, '_stack'):   # compiled once
      self._stack = jax.jit(lambda b: jax.tree.map(lambda *x: jnp.stack(x), *b),
                            out_shardings=parallel.data_sharding(self.mesh, self.size))
    return self._stack(batches)

  def tag(self, k: int) -> str:
    """How log lines name seed k ('' for a lone run)."""
    return f'[seed {self.seeds[k]}] ' if self.size > 1 else ''
