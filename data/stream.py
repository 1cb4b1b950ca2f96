"""data.pipeline=stream: training batches for data too large to hold, read through Grain.

The same batches as the `device` and `host` places (data/pipeline.py: a pure function of
(seed, step)), made differently. For each stretch of steps the loop asks for, this process
works out which examples each step takes (the epoch's order, as every place does) and keeps its
own rows of each global batch (`share_rows`: each host reads only its slice of the records);
Grain then reads those records in `workers` processes (`grain.MapDataset` over the rows,
`mp_prefetch`), in their stored form (uint8 images), ahead of the step that needs them. The
stored rows go to the devices as they are, and the decode, the dataset's transform and the
augmentation run there in one jitted function on the global batch (`Recipe.finish`, as the
device place does), so the host does no per-pixel work and what it sends is uint8.

Workers are spawned processes: the split must pickle (a `tfds.data_source` does; so do the
numpy splits the tests make). `workers=0` reads in this process (Grain then only iterates).
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from data.base import Split, stored
from data.pipeline import EpochOrders, recipe, share_rows


class ReadRows:
  """Grain's map function: a step's example indices -> those examples as stored (picklable)."""

  def __init__(self, split: Split):
    self.split = split

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return stored(self.split, indices)


class StreamBatches:
  """`batches(step)` and `batches.prefetch(start, stop)` as the other places give them: the
  step's global batch on `mesh`, this process contributing its share."""

  def __init__(self, split: Split, batch_size: int, seed: int, mesh, augment: str = 'none',
               share: tuple[int, int] = (0, 1), transform=None, workers: int = 0,
               buffer: int = 2):
    from training import parallel   # data/ does not import training/ at module level
    self.recipe = recipe(split, batch_size, augment, transform)
    self.split, self.seed, self.mesh, self.workers, self.buffer = (split, seed, mesh, workers,
                                                                    buffer)
    self.rows = share_rows(batch_size, share)
    self.orders = EpochOrders(self.recipe, seed)
    self._rep = parallel.replicated(mesh)
    self._place = lambda examples: parallel.shard_batch(examples, mesh, local=True)
    self._finish = jax.jit(self.recipe.finish, out_shardings=parallel.data_sharding(mesh))

  def _rows_of(self, step: int) -> np.ndarray:
    return self.orders.indices(step)[self.rows]

  def _finished(self, examples: dict, step: int):
    put = lambda v: jax.device_put(v, self._rep)
    return self._finish(self._place(examples), put(np.uint32(self.seed)), put(np.int32(step)))

  def __call__(self, step: int):
    return self._finished(stored(self.split, self._rows_of(step)), step)

  def prefetch(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
    import grain
    if start >= stop:
      return
    rows = np.stack([self._rows_of(step) for step in range(start, stop)])
    dataset = grain.MapDataset.source(rows).map(ReadRows(self.split)).to_iter_dataset(
        grain.ReadOptions(num_threads=0 if self.workers else 1, prefetch_buffer_size=self.buffer))
    if self.workers:
      from absl import flags   # Grain reads its absl flags; outside an absl app (tests, the
      if not flags.FLAGS.is_parsed():   # benchmarks) they keep their defaults
        flags.FLAGS.mark_as_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=self.buffer))
    it = iter(dataset)
    try:
      for step, examples in zip(range(start, stop), it):
        yield step, self._finished(examples, step)
    finally:
      close = getattr(it, 'close', None)
      if close is not None:
        close()
